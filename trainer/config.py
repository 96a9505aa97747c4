"""`TrainConfig`: every setting of `pslider-train` in one dataclass (one `help` per field), presets and TOML.

Precedence, lowest first: field defaults < `--preset` < `--config FILE.toml` < command-line options. The CLI options
are generated from the fields, so every option is also a TOML key (same name with underscores).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from pslider_core import available_backbones, get_backbone
from pslider_core.module_config import CONDITIONING_MODES
from pslider_core.objectives.config import ADVANTAGE_STDS, ODE_SOLVERS, SDE_KINDS, GRPOConfig, NFTConfig

OBJECTIVES = ("nft", "grpo")
MIXED_PRECISION = ("no", "fp16", "bf16")


def _opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None, resumable: bool = False,
         group: str = "optimisation") -> Any:
    """A config field: `help` for --help and docs; `resumable` fields may change when resuming a run."""
    meta = {"help": help, "resumable": resumable, "group": group}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------- presets
def _tiny(backbone: str) -> dict[str, Any]:
    size = get_backbone(backbone).tiny_sample_size
    return dict(
        height=size["height"], width=size["width"], num_frames=size.get("num_frames", 1), images_per_prompt=4,
        slots_per_prompt=2, num_steps=4, train_timesteps=3, prompts_per_epoch=2, epochs=2, batch_size=8,
        lora_rank=4, lora_alpha=8.0, num_threads=1, device="cpu", mixed_precision="no",
        max_sequence_length=16, lr=1e-2, pref_lr_mult=10.0,
    )


def _paper(backbone: str) -> dict[str, Any]:
    return dict(
        images_per_prompt=24, slots_per_prompt=3, num_steps=25, train_timesteps=24, solver="dpm2", height=512,
        width=512, lr=3e-4, weight_decay=1e-4, max_grad_norm=1.0, beta=0.1, adv_clip=5.0, kl_weight=1e-4,
        lora_rank=32, lora_alpha=64.0, prompts_per_epoch=48, epochs=31, guidance_scale=1.0, max_sequence_length=128,
        conditioning_mode="global+block", num_freqs=1, preference_mixture="paper", ema_max_decay=0.9,
        mixed_precision="bf16", gradient_checkpointing=True,
    )


PRESETS: dict[str, Callable[[str], dict[str, Any]]] = {"tiny": _tiny, "paper": _paper}


@dataclass
class TrainConfig:
    """Settings of one training run; `__post_init__` rejects bad combinations and says what to pass instead."""

    # ------------------------------------------------------------------ what to train
    backbone: str = _opt("sd3", f"Backbone adapter, one of {', '.join(available_backbones())} (sd3: text-to-image, "
                                "fluxkontext: editing, ltx2: video).", group="inputs")
    base: str = _opt("", "Base model: a hub id or a local diffusers directory. Empty: the backbone's default hub "
                         "model, or with --preset tiny a freshly built tiny model saved next to --output.",
                     group="inputs")
    rewards: str = _opt("", "Comma-separated reward specs, one weight of w per reward, in this order "
                            "(e.g. 'brightness,saturation'; see docs/rewards.md).", group="inputs")
    prompts: str = _opt("", "Prompts file: one prompt per line (.txt) or JSONL with \"prompt\" (and \"image\", "
                            "a path relative to the file, for fluxkontext).", group="inputs")
    output: str = _opt("", "Where to write the trained ParetoSlider .safetensors file.", resumable=True,
                       group="inputs")
    preset: str = _opt("", "Preset applied under the config file and options: 'tiny' (seconds-long CPU run on the "
                           "backbone's tiny model) or 'paper' (the paper's SD3.5 hyperparameters).",
                       choices=("", *PRESETS), resumable=True, group="inputs")

    # ------------------------------------------------------------------ method
    objective: str = _opt("nft", "Loss: 'nft' (DiffusionNFT, the paper) or 'grpo' (Flow-GRPO clipped ratio).",
                          choices=OBJECTIVES, group="method")
    fixed_weights: tuple[float, ...] = _opt((), "Early-scalarization baseline: fixed reward weights such as "
                                                "'0.7,0.3' (summed before normalising, no preference conditioning).",
                                            group="method")
    preference_mixture: str = _opt("paper", "How training preferences are drawn: 'paper' or e.g. "
                                            "'corners=0.1,edges=0,interior=0.9,alpha=1' (unused by --fixed-weights, "
                                            "so one config serves both).", group="method")
    corners_first: float = _opt(0.0, "Curriculum: the first share (0-1) of the epochs draws only corner preferences "
                                     "(w = one reward), then --preference-mixture; the ends learn first.",
                                group="method")
    advantage_std: str = _opt("group", "Whose std scales each reward's advantages: 'group' (each (prompt, w) group's, "
                                       "the paper's) or 'pooled' (the group-centred rewards' over the whole batch: "
                                       "keeps the trade-off's curvature when both rewards follow one factor).",
                              choices=ADVANTAGE_STDS, group="method")
    modules_first: float = _opt(0.0, "Warm-up: for the first share (0-1) of the epochs only the preference modules "
                                     "train and the LoRA waits, so w steers before the shared LoRA moves (unused by "
                                     "--fixed-weights).", group="method")
    conditioning_mode: str = _opt("global+block", "Preference paths: 'global' (adaLN vector only) or "
                                                  "'global+block' (also the shared block vector).",
                                  choices=CONDITIONING_MODES, group="method")
    num_freqs: int = _opt(1, "Sinusoidal frequencies of the block path's encoding of w.", group="method")
    lora_rank: int = _opt(32, "LoRA rank (the ranks every w shares).", group="method")
    lora_reward_ranks: int = _opt(0, "w-conditioned LoRA: ranks per reward, on top of --lora-rank's shared ones, "
                                     "each scaled by its reward's weight, so each end trains ranks of its own "
                                     "(Panacea-style; 0: a plain LoRA).", group="method")
    lora_alpha: float = _opt(64.0, "LoRA alpha (scale = alpha / rank).", group="method")

    # ------------------------------------------------------------------ rollouts
    epochs: int = _opt(31, "Number of epochs (one rollout batch and one optimiser step each, by default).",
                       resumable=True, group="rollouts")
    prompts_per_epoch: int = _opt(48, "Prompts drawn per epoch (all of them if the file has fewer; 0 = all).",
                                  group="rollouts")
    images_per_prompt: int = _opt(24, "Rollouts per prompt and epoch (K).", group="rollouts")
    slots_per_prompt: int = _opt(3, "Preference slots per prompt and epoch (S): groups of K/S rollouts share w.",
                                 group="rollouts")
    num_steps: int = _opt(25, "Sampler steps per rollout.", group="rollouts")
    solver: str = _opt("dpm2", "ODE solver of the nft rollouts.", choices=ODE_SOLVERS, group="rollouts")
    guidance_scale: float = _opt(1.0, "Classifier-free guidance of the rollouts (1 = off, as the paper).",
                                 group="rollouts")
    height: int = _opt(512, "Rollout height in pixels.", group="rollouts")
    width: int = _opt(512, "Rollout width in pixels.", group="rollouts")
    num_frames: int = _opt(1, "Frames per rollout (video backbones; 1 for images).", group="rollouts")
    batch_size: int = _opt(8, "Micro-batch per process for rollouts and loss passes.", group="rollouts")
    max_sequence_length: int = _opt(0, "Text tokens per prompt (0 = the backbone's default; the reference SD3.5 "
                                       "run uses 128).", group="rollouts")

    # ------------------------------------------------------------------ optimisation
    lr: float = _opt(3e-4, "AdamW learning rate of the LoRA.")
    pref_lr_mult: float = _opt(1.0, "Learning-rate multiplier of the preference modules relative to the LoRA "
                                    "(their last layers start at zero and move slowly at the LoRA's rate).")
    weight_decay: float = _opt(1e-4, "AdamW weight decay.")
    adam_beta1: float = _opt(0.9, "AdamW beta1.")
    adam_beta2: float = _opt(0.999, "AdamW beta2.")
    adam_eps: float = _opt(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = off).")
    optimizer_steps_per_epoch: int = _opt(1, "Optimiser steps per epoch; gradients accumulate in between.")
    train_timesteps: int = _opt(24, "nft: grid timesteps trained per sample (a random subset, shuffled).")
    beta: float = _opt(NFTConfig.beta, "nft: DiffusionNFT beta (mix of current and old velocity).")
    adv_clip: float = _opt(NFTConfig.adv_clip, "Advantage clip (A_max).")
    adv_eps: float = _opt(1e-4, "Added to the group std when normalising rewards.")
    kl_weight: float = _opt(NFTConfig.kl_weight, "nft: weight of mean (v_theta - v_ref)^2 (reference: base model, "
                                                 "no w).")
    ema: bool = _opt(True, "Keep an EMA of the trained weights; checkpoints and the output carry it.")
    ema_max_decay: float = _opt(0.9, "EMA decay cap: decay = min((1 + s) / (10 + s), this).")
    noise_level: float = _opt(GRPOConfig.noise_level, "grpo: SDE noise level a.")
    sde_kind: str = _opt("sde", "grpo: 'sde' (Flow-GRPO) or 'cps' (coefficients-preserving) steps.",
                         choices=SDE_KINDS)
    sde_window: int = _opt(0, "grpo: SDE only inside a random window of this many steps, ODE elsewhere "
                              "(Flow-GRPO-Fast); 0 = every step.")
    clip_range: float = _opt(GRPOConfig.clip_range, "grpo: ratio clip epsilon.")
    grpo_kl_weight: float = _opt(GRPOConfig.kl_weight, "grpo: weight of the KL term on the step means.")

    # ------------------------------------------------------------------ runtime
    seed: int = _opt(0, "Run seed (preference slots, noise, timestep choice).", group="runtime")
    device: str = _opt("auto", "'auto' (accelerate's choice), 'cpu' or 'cuda'.", resumable=True, group="runtime")
    mixed_precision: str = _opt("no", "Autocast dtype on GPU; frozen weights are loaded in it, trained ones "
                                      "stay float32.", choices=MIXED_PRECISION, resumable=True, group="runtime")
    gradient_checkpointing: bool = _opt(False, "Recompute transformer activations in the backward pass.",
                                        resumable=True, group="runtime")
    num_threads: int = _opt(0, "torch CPU threads (0 = torch's default; 1 is fastest for tiny models).",
                            resumable=True, group="runtime")
    reward_device: str = _opt("", "Device of the reward models (empty = the training device).", resumable=True,
                              group="runtime")
    offload_text_encoders: bool = _opt(True, "Encode every prompt once at the start, keep the embeddings (and Kontext's "
                                             "source latents) in host memory and release the text encoders; needs "
                                             "the whole prompt set to fit --cache-max-gb, else the encoders stay and "
                                             "prompts are encoded (and cached as far as it allows) when first drawn.",
                                       resumable=True, group="runtime")
    cache_max_gb: float = _opt(16.0, "Host memory the cached prompt embeddings may use, in GB.", resumable=True,
                               group="runtime")
    offload_vae: bool = _opt(True, "Keep the VAE in host memory and on the training device only while it encodes or "
                                   "decodes (no effect on CPU).", resumable=True, group="runtime")
    offload_rewards: bool = _opt(False, "Keep reward models in host memory between reward stages (no effect on CPU "
                                        "or with --reward-device cpu).", resumable=True, group="runtime")
    checkpoint_every: int = _opt(1, "Write a resumable checkpoint every N epochs (0 = only at the end).",
                                 resumable=True, group="runtime")
    keep_checkpoints: int = _opt(2, "How many checkpoints to keep (oldest deleted first).", resumable=True,
                                 group="runtime")
    checkpoint_dir: str = _opt("", "Checkpoint folder (empty: <output>.checkpoints next to the output).",
                               resumable=True, group="runtime")
    resume: str = _opt("", "Resume from a checkpoint folder (its 'latest' or one epoch-NNNNNN subfolder).",
                       resumable=True, group="runtime")
    log_dir: str = _opt("", "Metrics folder: metrics.jsonl and TensorBoard events (empty: <output>.logs).",
                        resumable=True, group="runtime")
    max_bad_steps: int = _opt(3, "Abort after this many consecutive steps skipped for NaN/inf rewards or loss.",
                              resumable=True, group="runtime")
    progress: bool = _opt(True, "Show progress bars.", resumable=True, group="runtime")

    def __post_init__(self) -> None:
        self.fixed_weights = parse_weights(self.fixed_weights)
        if isinstance(self.rewards, (list, tuple)):
            self.rewards = ",".join(self.rewards)
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                value = getattr(self, f.name)
                raise ValueError(f"{_flag(f.name)} must be one of {list(choices)}, got {value!r}.")
        _check_backbone(self.backbone)
        self._check_ranges()
        self._check_combinations()

    def _check_ranges(self) -> None:
        positive = ("epochs", "images_per_prompt", "slots_per_prompt", "num_steps", "height", "width", "num_frames",
                    "batch_size", "num_freqs", "optimizer_steps_per_epoch", "train_timesteps",
                    "max_bad_steps", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}.")
        non_negative = ("lora_rank", "lora_reward_ranks", "prompts_per_epoch", "weight_decay", "max_grad_norm",
                        "kl_weight", "grpo_kl_weight", "checkpoint_every", "num_threads", "sde_window", "adv_eps",
                        "max_sequence_length")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}.")
        for name in ("lr", "lora_alpha", "adv_clip", "beta", "clip_range", "pref_lr_mult", "guidance_scale",
                     "cache_max_gb"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{_flag(name)} must be a positive number, got {value}.")
        for name in ("ema_max_decay", "adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be in [0, 1), got {getattr(self, name)}.")
        if not 0 <= self.noise_level <= 1:
            raise ValueError(f"--noise-level must be in [0, 1] (Flow-GRPO uses 0.7), got {self.noise_level}.")

    def _check_combinations(self) -> None:
        k, s = self.images_per_prompt, self.slots_per_prompt
        if not self.fixed_weights:
            if k % s:
                raise ValueError(
                    f"--images-per-prompt ({k}) must be a multiple of --slots-per-prompt ({s}) so that every "
                    f"preference slot gets the same number of rollouts; e.g. --images-per-prompt {k - k % s or s}."
                )
            if k // s < 2:
                raise ValueError(
                    f"Each preference group has {k // s} rollout (K={k}, S={s}); advantages need >= 2 per group. "
                    f"Raise --images-per-prompt to at least {2 * s} or lower --slots-per-prompt."
                )
        elif k < 2:
            raise ValueError(f"--images-per-prompt must be >= 2 for per-prompt advantages, got {k}.")
        if self.train_timesteps > self.num_steps:
            raise ValueError(
                f"--train-timesteps ({self.train_timesteps}) cannot exceed --num-steps ({self.num_steps}): they are "
                "drawn from the sampler's grid. Lower it or raise --num-steps."
            )
        if self.sde_window > self.num_steps:
            raise ValueError(f"--sde-window ({self.sde_window}) cannot exceed --num-steps ({self.num_steps}).")
        if self.objective == "grpo" and self.guidance_scale != 1:
            raise ValueError(
                "--objective grpo scores its rollouts' log-probabilities without CFG, so the rollouts must not use it "
                "either: pass --guidance-scale 1 (CFG rollouts work with --objective nft)."
            )
        if self.objective == "grpo" and self.sde_kind == "sde" and self.noise_level == 0:
            raise ValueError("--objective grpo needs --noise-level > 0: a deterministic step has no log-probability.")
        if self.mixed_precision == "fp16" and self.device == "cpu":
            raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use 'no' or 'bf16'.")
        from pslider_core.preference_sampling import PreferenceMixture  # numpy and torch: not for --help

        PreferenceMixture.parse(self.preference_mixture, num_rewards=2)  # syntax check; M known later
        _check_share("--corners-first", self.corners_first, "with corner preferences only", 0.5)
        _check_share("--modules-first", self.modules_first, "in which only the preference modules train", 0.125)
        if self.lora_rank + self.lora_reward_ranks < 1:
            raise ValueError("--lora-rank must be >= 1 (or --lora-reward-ranks >= 1 for a LoRA of reward ranks only).")
        if self.fixed_weights and self.lora_reward_ranks:
            raise ValueError("--lora-reward-ranks needs a preference w, which --fixed-weights runs do not have: "
                             "drop one of the two.")
        if self.fixed_weights:
            bad = [x for x in self.fixed_weights if not (math.isfinite(x) and x >= 0)]
            if bad or sum(self.fixed_weights) <= 0:
                raise ValueError(
                    f"--fixed-weights must be non-negative numbers with a positive sum, got "
                    f"{list(self.fixed_weights)}; e.g. --fixed-weights 0.7,0.3."
                )

    # ------------------------------------------------------------------ derived values
    @property
    def is_baseline(self) -> bool:
        """True for the fixed-weights (early scalarization) baseline."""
        return bool(self.fixed_weights)

    def lora_rank_total(self, num_rewards: int) -> int:
        """The LoRA adapter's rank: the shared ranks and each reward's own (`--lora-reward-ranks`)."""
        return self.lora_rank + self.lora_reward_ranks * num_rewards

    def output_path(self) -> Path:
        return Path(self.output)

    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else _sibling(self.output_path(), ".checkpoints")

    def log_path(self) -> Path:
        return Path(self.log_dir) if self.log_dir else _sibling(self.output_path(), ".logs")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fixed_weights"] = list(self.fixed_weights)
        return data

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (everything that changes the math)."""
        data = self.to_dict()
        return {f.name: data[f.name] for f in fields(self) if not f.metadata["resumable"]}

    def setting_diffs(self, saved: dict[str, Any] | None, record: str = "checkpoint",
                      ignore: tuple[str, ...] = ()) -> list[str]:
        """The settings that change the math and differ from a record of them (a checkpoint's, a file's), one
        "name: <record> X, now Y" each. A setting newer than the record counts at its default, which is how the run
        that wrote it trained. Resumable options in the record (paths, devices) are not compared; a setting the
        record has and this version lacks still is."""
        skip = {f.name for f in fields(self) if f.metadata["resumable"]} | set(ignore)
        current = {k: v for k, v in self.fingerprint_fields().items() if k not in ignore}
        defaults = {f.name: f.default for f in fields(self) if f.name in current and f.default is not MISSING}
        saved = {**defaults, **{k: v for k, v in saved.items() if k not in skip}} if saved else {}
        return [f"{k}: {record} {saved.get(k)!r}, now {current.get(k)!r}"
                for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]

    def fingerprint(self) -> str:
        payload = json.dumps(self.fingerprint_fields(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


def _check_share(option: str, value: float, what: str, example: float) -> None:
    """A curriculum's share of the epochs: 0 turns it off, 1 would leave no epoch for the rest of training."""
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{option} is the share of epochs {what}, from 0 (off) to below 1, got {value}; e.g. "
                         f"{option} {example:g}.")


def _check_backbone(name: str) -> None:
    if name not in available_backbones():
        raise ValueError(f"Unknown backbone {name!r}; pass --backbone with one of {available_backbones()}.")


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_weights(value: Any) -> tuple[float, ...]:
    """'0.7,0.3', [0.7, 0.3] or () -> a tuple of floats (range checks happen in TrainConfig)."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(float(x) for x in items)
    except (TypeError, ValueError):
        raise ValueError(f"--fixed-weights must be numbers separated by commas, e.g. 0.7,0.3; got {value!r}.") from None


# ---------------------------------------------------------------------- loading
def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_toml(path: str | Path) -> dict[str, Any]:
    """A flat TOML file of TrainConfig keys; unknown keys are rejected with the closest known one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {str(path)!r} does not exist; check --config.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"Config file {path.name} is not valid TOML: {err}.") from None
    known = field_names()
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Known keys: {', '.join(known)}."
            raise ValueError(f"Unknown key {key!r} in {path.name}.{hint}")
        if isinstance(value, dict):
            raise ValueError(f"{path.name}: key {key!r} is a table; the config is flat (key = value lines).")
    return {key.replace("-", "_"): value for key, value in data.items()}


def resolve_config(file_values: dict[str, Any], cli_values: dict[str, Any]) -> TrainConfig:
    """defaults < preset < TOML < command line; `cli_values` holds only the options actually given."""
    merged = {**file_values, **cli_values}
    preset = merged.get("preset", "")
    backbone = merged.get("backbone", TrainConfig.backbone)
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        _check_backbone(backbone)
        values.update(PRESETS[preset](backbone))
    values.update(merged)
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise ValueError(f"Bad config value: {err}.") from None


def to_toml(config: TrainConfig) -> str:
    """The config as a flat TOML file (`--print-config`), readable back by `read_toml`."""
    lines, group = [], ""
    for f in fields(config):
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines.append(f"\n# ---------------- {group}")
        lines.append(f"# {f.metadata['help']}")
        lines.append(f"{f.name} = {_toml_value(config.to_dict()[f.name])}")
    return "\n".join(lines).lstrip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
