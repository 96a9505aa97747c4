"""What `pslider-eval` does once its options are parsed (the command is `eval_cli.py`, which imports this module
only then): plan the methods, prompts, seeds and grid, draw and score what is missing, write summary and pictures.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from tqdm import tqdm

from pslider_core.backbones import BackboneAdapter
from pslider_core.controls import describe_controls
from pslider_core.evaluation import (
    MethodMeans,
    ScoreRow,
    ScoreTable,
    compute_summary,
    contact_sheet,
    format_table,
    plot_front,
    video_strip,
    weight_grid,
    write_summary,
)
from pslider_core.generation import (
    BASE,
    PARETO_SLIDER,
    CheckpointInfo,
    generate,
    load_sample,
    sample_name,
    save_sample,
)
from pslider_core.rewards import Reward, RewardBatch, get_reward, parse_reward_list
from pslider_core.soup import SOUP, SoupInfo

from .controls import eval_controls, guided_methods
from .data import InputError, PromptItem, _check_reward_fits, load_sources, read_prompts
from .sampling import (
    Settings,
    backbone_adapter,
    checkpoint_info,
    load_base,
    load_slider,
    load_soup,
    parse_floats,
    resolve_base,
    resolve_settings,
    soup_info,
)

Weights = tuple[float, ...] | None
BASE_NAME = "base"


@dataclass(frozen=True)
class Method:
    """One evaluated model: a checkpoint (swept over the grid, or at its fixed weights), a LoRA soup of checkpoints
    (swept over the same grid, its weights the strengths of its files) or the base model."""

    name: str
    kind: str
    info: CheckpointInfo | None
    points: tuple[Weights, ...]
    soup: SoupInfo | None = None


@dataclass(frozen=True)
class Job:
    """One sample to draw: its scores still missing for `missing` rewards, its file to be written if `save`."""

    method: Method
    weights: Weights
    item: int
    seed: int
    missing: tuple[str, ...]
    save: bool


@dataclass(frozen=True)
class Plan:
    """Everything a run evaluates, validated before any model loads."""

    adapter: BackboneAdapter
    methods: list[Method]
    items: list[PromptItem]
    labels: list[str]  # the prompt column of scores.csv (the source image's name appended when editing)
    rewards: list[Reward]
    judges: list[Reward]
    seeds: list[int]
    settings: Settings
    controls: tuple = ()  # preference guidance of the ParetoSliders (trainer/controls.py)

    @property
    def scorers(self) -> list[Reward]:
        return self.rewards + self.judges

    def keys(self) -> set[tuple[str, Weights, str, int]]:
        return {
            (method.name, w, label, seed)
            for method in self.methods for w in method.points for label in self.labels for seed in self.seeds
        }


# ---------------------------------------------------------------------------------------------------- validation
def plan_methods(infos: list[CheckpointInfo], soups: list[SoupInfo], include_base: bool,
                 grid: list[tuple[float, ...]]) -> list[Method]:
    methods = []
    for info in infos:
        points = tuple(grid) if info.kind == PARETO_SLIDER else (info.fixed_weights,)
        methods.append(Method(info.path.stem, info.kind, info, points))
    methods += [Method(soup.name, SOUP, None, tuple(grid), soup) for soup in soups]
    if include_base:
        methods.append(Method(BASE_NAME, BASE, None, (None,)))
    names = [method.name for method in methods]
    for name in sorted({name for name in names if names.count(name) > 1}):
        raise click.UsageError(
            f"Two methods are named {name!r} (methods are named after their file, the base model is 'base'); give "
            "the checkpoint files distinct names."
        )
    return methods


def build_scorers(text: str, option: str, adapter: BackboneAdapter) -> list[Reward]:
    try:
        rewards = [get_reward(spec) for spec in parse_reward_list(text)]
        for reward in rewards:
            _check_reward_fits(reward, adapter)
    except (KeyError, ValueError, ImportError, AttributeError, TypeError) as err:
        raise click.UsageError(f"{option}: {err}") from None
    for reward in rewards:
        if reward.needs_audio:
            raise click.UsageError(f"{option}: reward {reward.name!r} scores audio, which pslider-eval does not pass "
                                   "yet; evaluate the video with image or video rewards.")
    return rewards


def training_rewards(text: str | None, infos: list[CheckpointInfo], soups: list[SoupInfo],
                     adapter: BackboneAdapter) -> list[Reward]:
    """--rewards, by default the checkpoints' own (else the first soup's); every checkpoint must have been trained
    on exactly these, and every soup has one file per reward, trained on some of them."""
    if text is None:
        if not infos and not soups:
            raise click.UsageError("Pass --rewards: with only the base model there is no checkpoint to take them from.")
        text = ",".join(infos[0].reward_names if infos else soups[0].reward_names)
    rewards = build_scorers(text, "--rewards", adapter)
    names = tuple(reward.name for reward in rewards)
    if len(set(names)) != len(names):
        raise click.UsageError(f"--rewards names a reward twice: {list(names)}.")
    for info in infos:
        if info.reward_names != names:
            raise click.UsageError(
                f"{info.path.name} was trained on rewards {list(info.reward_names)} but --rewards gives {list(names)}. "
                f"Pass the training rewards in the checkpoint's order (or leave --rewards out to use them), put "
                "held-out scorers in --judges, and evaluate checkpoints of other reward sets separately."
            )
    for soup in soups:
        if len(soup.files) != len(names) or not set(soup.reward_names) <= set(names):
            raise click.UsageError(
                f"--soup {','.join(str(info.path) for info in soup.files)}: a soup is swept over the rewards' weight "
                f"grid, so it takes one file per training reward ({len(names)}: {', '.join(names)}), each trained on "
                f"some of them (these were trained on {list(soup.reward_names)}); the file best at a reward goes in "
                "its place."
            )
    return rewards


def prompt_labels(items: list[PromptItem]) -> list[str]:
    labels = [item.prompt if item.image is None else f"{item.prompt} [{item.image.name}]" for item in items]
    for label in labels:
        if "\n" in label or "\r" in label:
            raise click.UsageError(f"Prompt {label!r} contains a line break; write each prompt on one line.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise click.UsageError(f"The prompts file repeats {duplicates[:3]}; list each prompt (and source) once.")
    return labels


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise click.UsageError(f"--seeds {text!r} is not a comma-separated list of integers such as 0,1,2.") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise click.UsageError(f"--seeds must be distinct integers >= 0, got {seeds}.")
    return seeds


def parse_reference(text: str | None, rewards: list[Reward]) -> list[float] | None:
    if text is None:
        return None
    values = parse_floats(text, "--ref")
    if len(values) != len(rewards) or not all(np.isfinite(values)):
        raise click.UsageError(
            f"--ref needs {len(rewards)} finite numbers, one per training reward "
            f"({', '.join(r.name for r in rewards)}), got {text!r}."
        )
    return values


def judge_weight_index(text: str | None, judges: list[Reward], num_weights: int) -> dict[str, int]:
    """Which weight component each judge should rise with ('-' for none); no controllability for judges without."""
    if text is None:
        return {}
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != len(judges):
        raise click.UsageError(f"--judge-components needs one entry per judge ({len(judges)}), got {text!r}.")
    index = {}
    for judge, part in zip(judges, parts):
        if part == "-":
            continue
        if not part.isdigit() or int(part) >= num_weights:
            raise click.UsageError(
                f"--judge-components: {part!r} for judge {judge.name!r} must be a weight index in 0..{num_weights - 1} "
                "(the position of the training reward it should follow) or '-'."
            )
        index[judge.name] = int(part)
    return index


# ---------------------------------------------------------------------------------------------------- sampling
def prompt_id(label: str) -> str:
    """Short stable file-name id of a prompt."""
    return "p" + hashlib.sha1(label.encode("utf-8")).hexdigest()[:8]


def sample_dir(out: Path, method: Method) -> Path:
    return out / "samples" / method.name


def sample_path(out: Path, method: Method, label: str, weights: Weights, seed: int, ext: str) -> Path:
    return sample_dir(out, method) / f"{sample_name(weights, seed, prompt_id(label))}.{ext}"


def plan_jobs(plan: Plan, table: ScoreTable, out: Path, ext: str) -> list[Job]:
    """Samples whose scores are missing, or whose picture (first seed) is missing: the resumable part."""
    have: dict[tuple, set[str]] = defaultdict(set)
    for row in table.rows:
        have[row.key].add(row.reward)
    jobs = []
    for method in plan.methods:
        for weights in method.points:
            for index, label in enumerate(plan.labels):
                for seed in plan.seeds:
                    done = have[(method.name, weights, label, seed)]
                    missing = tuple(r.name for r in plan.scorers if r.name not in done)
                    save = seed == plan.seeds[0] and not sample_path(out, method, label, weights, seed, ext).is_file()
                    if missing or save:
                        jobs.append(Job(method, weights, index, seed, missing, save))
    return jobs


def run_jobs(plan: Plan, jobs: list[Job], table: ScoreTable, out: Path, base: str, device: str, dtype: str,
             video_format: str, progress: bool) -> None:
    """Load the base once, then each method's checkpoint in turn; generate, score and append batch by batch."""
    adapter, settings = plan.adapter, plan.settings
    pipe = load_base(adapter, base, device, dtype)
    for reward in plan.scorers:
        reward.to(pipe.transformer.device)
    bar = tqdm(total=len(jobs), desc="sampling", unit="sample", disable=not progress)
    for number, method in enumerate(plan.methods):
        todo = [job for job in jobs if job.method is method]
        if not todo:
            continue
        slider = None if method.info is None else load_slider(method.info, pipe, f"pslider_eval_{number}")
        soup = None if method.soup is None else load_soup(method.soup, pipe, f"pslider_eval_{number}")
        for batch in _batches(todo, settings.batch_size, same_weights=soup is not None):
            items = [plan.items[job.item] for job in batch]
            sources = load_sources(items, settings.height, settings.width) if adapter.needs_source else None
            try:
                samples = generate(
                    adapter, pipe, [item.prompt for item in items], seeds=[job.seed for job in batch],
                    slider=slider, weights=[job.weights for job in batch] if method.kind == PARETO_SLIDER else None,
                    lora_scales=None if soup is None else soup.scales(batch[0].weights),
                    sources=sources, **settings.as_kwargs(),
                    controls=plan.controls if method.kind == PARETO_SLIDER else (),
                )
            except ValueError as err:  # a setting the model cannot draw, e.g. a size the toy base does not know
                raise click.ClickException(str(err)) from None
            table.append(score(plan, batch, items, samples, sources))
            for job, sample in zip(batch, samples):
                if job.save:
                    label = plan.labels[job.item]
                    metadata = {"method": method.name, "kind": method.kind, "prompt": label, "seed": job.seed,
                                "weights": None if job.weights is None else list(job.weights)}
                    stem = sample_name(job.weights, job.seed, prompt_id(label))
                    save_sample(sample, sample_dir(out, method), stem, metadata, video_format,
                                adapter.frame_rate)
            bar.update(len(batch))
        if slider is not None and slider.lora is not None:
            pipe.transformer.delete_adapters(slider.adapter_name)
        if soup is not None:
            soup.remove()
    bar.close()


def _batches(jobs: list[Job], size: int, same_weights: bool) -> list[list[Job]]:
    """Consecutive jobs in batches of `size`; with `same_weights` (a soup: one set of LoRA strengths per model call)
    a batch never spans two weights. A method's jobs come sorted by weights (`plan_jobs`)."""
    groups = [list(group) for _, group in itertools.groupby(jobs, key=lambda job: job.weights)] if same_weights \
        else [jobs]
    return [group[start : start + size] for group in groups for start in range(0, len(group), size)]


def score(plan: Plan, batch: list[Job], items: list[PromptItem], samples: torch.Tensor,
          sources: torch.Tensor | None) -> list[ScoreRow]:
    """Every reward a sample still lacks, run on just the samples that lack it."""
    rows = []
    for reward in plan.scorers:
        pick = [k for k, job in enumerate(batch) if reward.name in job.missing]
        if not pick:
            continue
        scored = RewardBatch(
            images=samples[pick], prompts=[items[k].prompt for k in pick],
            sources=None if sources is None else sources[pick],
        )
        try:
            values = reward(scored)
        except ValueError as err:
            method = batch[pick[0]].method.name
            raise click.ClickException(f"Reward {reward.name!r} failed on method {method!r}: {err}") from None
        for k, value in zip(pick, values.tolist()):
            job = batch[k]
            rows.append(ScoreRow(job.method.name, job.weights, plan.labels[job.item], job.seed, reward.name, value))
    return rows


# ---------------------------------------------------------------------------------------------------- results
def oriented_means(table: ScoreTable, plan: Plan, scorers: list[Reward]) -> dict[str, MethodMeans]:
    """Means of this run's methods, with lower-is-better rewards negated so that every reward is maximised."""
    signs = np.array([1.0 if reward.higher_is_better else -1.0 for reward in scorers])
    means = table.means([reward.name for reward in scorers])
    return {method.name: replace(means[method.name], values=means[method.name].values * signs)
            for method in plan.methods}


def draw_grid(plan: Plan, out: Path, ext: str) -> list[Path]:
    """grid.png: rows = (ParetoSlider or soup, prompt), columns = grid weights, first seed; videos by their middle
    frame, plus one strip per (method, prompt) of evenly spaced frames."""
    sliders = [method for method in plan.methods if method.kind in (PARETO_SLIDER, SOUP)]
    if not sliders:
        return []
    points = sliders[0].points
    rows, labels, written = [], [], []
    for method in sliders:
        for label in plan.labels:
            samples = [_enlarged(load_sample(sample_path(out, method, label, w, plan.seeds[0], ext))) for w in points]
            if plan.adapter.modality == "video":
                strip = out / "strips" / method.name / f"{prompt_id(label)}.png"
                written.append(video_strip(samples, [_weights_label(w) for w in points], strip, thumb=192))
                samples = [video[len(video) // 2] for video in samples]
            rows.append(samples)
            labels.append(f"{method.name}: {label}" if len(sliders) > 1 else label)
    grid = contact_sheet(rows, labels, [_weights_label(w) for w in points], out / "grid.png", thumb=192)
    return [grid, *written]


def _weights_label(weights: Weights) -> str:
    return "(" + ", ".join(f"{x:.2g}" for x in weights) + ")" if weights is not None else "base"


def _enlarged(sample: np.ndarray, at_least: int = 128) -> np.ndarray:
    """Tiny samples (toy, tests) repeated pixel by pixel to a size where labels and shapes are legible."""
    factor = max(1, at_least // min(sample.shape[-3:-1]))
    return sample.repeat(factor, axis=-3).repeat(factor, axis=-2)


def report(plan: Plan, table: ScoreTable, out: Path, ext: str, reference: list[float] | None,
           weight_index: dict[str, int], run_info: dict[str, Any]) -> None:
    """summary.json, front.png (front_judges.png with 2+ judges), grid.png, and the tables on stdout."""
    kinds = {method.name: method.kind for method in plan.methods}
    train_means = oriented_means(table, plan, plan.rewards)
    judge_means = oriented_means(table, plan, plan.judges) if plan.judges else None
    summary = compute_summary(train_means, kinds, ref=reference)
    summary["judges"] = compute_summary(judge_means, kinds, weight_index=weight_index) if judge_means else None
    summary["lower_is_better_negated"] = [r.name for r in plan.scorers if not r.higher_is_better]
    summary["run"] = run_info
    written = [write_summary(summary, out / "summary.json")]
    if len(plan.rewards) >= 2:
        written.append(plot_front(train_means, kinds, out / "front.png"))
    if judge_means is not None and len(plan.judges) >= 2:
        written.append(plot_front(judge_means, kinds, out / "front_judges.png"))
    written += draw_grid(plan, out, ext)
    click.echo(format_table(summary))
    if summary["judges"] is not None:
        click.echo("\nHeld-out judges:\n" + format_table(summary["judges"]))
    click.echo("\nWrote " + ", ".join(str(path) for path in [table.path, *written]))


# ---------------------------------------------------------------------------------------------------- the run
def evaluate(checkpoints: tuple[str, ...], soups: tuple[str, ...], include_base: bool, prompts: str,
             rewards: str | None, judges: str | None, judge_components: str | None, grid_size: int, seeds: str,
             ref: str | None, out: str, progress: bool, backbone: str, base: str | None, device: str, dtype: str,
             video_format: str, **given: Any) -> None:
    """pslider-eval: ParetoSliders against fixed-weights baselines, LoRA soups and the base model: scores, fronts,
    hypervolume."""
    if not checkpoints and not soups and not include_base:
        raise click.UsageError("Nothing to evaluate: pass --checkpoint FILE (repeatable), --soup A,B and/or "
                               "--include-base.")
    adapter = backbone_adapter(backbone)
    infos = [checkpoint_info(path, backbone) for path in checkpoints]
    soup_infos = [soup_info(text, backbone) for text in soups]
    train = training_rewards(rewards, infos, soup_infos, adapter)
    held_out = build_scorers(judges, "--judges", adapter) if judges else []
    clash = {r.name for r in train} & {j.name for j in held_out}
    if clash:
        raise click.UsageError(f"--judges repeats training rewards {sorted(clash)}; judges must be other scorers.")
    files = infos + [info for soup in soup_infos for info in soup.files]
    try:
        grid = weight_grid(len(train), grid_size) if len(train) >= 2 else []
    except ValueError as err:
        raise click.UsageError(f"--grid: {err}") from None
    try:
        items = read_prompts(prompts, adapter.needs_source, backbone)
    except InputError as err:
        raise click.UsageError(f"--prompts: {err}") from None
    plan = Plan(
        adapter, plan_methods(infos, soup_infos, include_base, grid), items, prompt_labels(items), train, held_out,
        parse_seeds(seeds), resolve_settings(adapter, next(iter(files), None), given), eval_controls(given, infos),
    )
    plan = replace(plan, methods=guided_methods(plan.methods, plan.controls))
    reference = parse_reference(ref, train)
    weight_index = judge_weight_index(judge_components, held_out, len(train))

    out_dir = Path(out)
    try:
        table = ScoreTable(out_dir / "scores.csv")
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    stale = {row.key for row in table.rows} - plan.keys()
    if stale:
        example = min(stale, key=str)
        raise click.UsageError(
            f"{table.path} holds {len(stale)} samples this run does not plan (e.g. method {example[0]!r}, weights "
            f"{example[1]}, prompt {example[2]!r}, seed {example[3]}): it belongs to another evaluation. Pass the same "
            "checkpoints, prompts, seeds and --grid as before (adding more is fine), or use a new --out."
        )
    ext = "png" if adapter.modality == "image" else video_format
    base = resolve_base(base, files, adapter)
    jobs = plan_jobs(plan, table, out_dir, ext)
    if jobs:
        run_jobs(plan, jobs, table, out_dir, base, device, dtype, video_format, progress)
    scored = sum(bool(job.missing) for job in jobs)
    click.echo(f"{scored} samples scored now, {len(plan.keys()) - scored} already in {table.path}.")

    run_info = {
        "backbone": backbone, "base": base,
        "checkpoints": {info.path.stem: str(info.path) for info in infos},
        "soups": {soup.name: [str(info.path) for info in soup.files] for soup in soup_infos}, "prompts": len(items),
        "seeds": plan.seeds, "grid": grid_size, **plan.settings.as_kwargs(), **describe_controls(plan.controls),
    }
    report(plan, table, out_dir, ext, reference, weight_index, run_info)
