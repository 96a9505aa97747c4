"""Preference controls on the tiny backbones (random weights, random non-zero preference modules and LoRA): what the
controls compute, where they act and what they cost, per backbone (docs/controls.md).

- guidance: the controlled velocity vs v(w_from) + s (v(w) - v(w_from)) from two plain calls (max abs error relative
  to the velocity's scale); sampling time for s = 2 vs s = 1, without and with CFG (scale 3);
- regional (half mask, inside (0, 1), outside (1, 0)): mean |pixel difference| of the render to the inside-only and
  to the outside-only render, on the left (inside) and the right (outside) half;
- per-frame (LTX-2, 17 frames = 9 latent frames, (1, 0) at the first frame to (0, 1) at the last): per pixel frame,
  lambda_f = the projection of the frame onto the step from the (1, 0) render to the (0, 1) render (0: the first
  weights, 1: the last), its Spearman correlation with the frame's weight a_f and its mean |lambda_f - a_f|, and the
  per-frame brightness and saturation trends (Spearman with a_f, signed by the direction the end renders differ in).
  Random modules barely move those rewards; `--ltx2-file` measures a tiny LTX-2 file trained on them instead.

The models are random, so only relations between renders mean something here (the toy world, benchmarks/
controls_toy.py, measures rewards). One CPU thread.

    python benchmarks/controls_tiny.py --results bench/controls_tiny.md
    python benchmarks/controls_tiny.py --ltx2-file bench/ltx2/slider.safetensors --results bench/controls_tiny.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pslider_core import LoraSpec, ParetoSlider, get_backbone  # noqa: E402
from pslider_core.controls import (  # noqa: E402
    ControlContext,
    FrameWeights,
    PreferenceGuidance,
    RegionalWeights,
    controlled_velocity,
)
from pslider_core.evaluation.controllability import spearman  # noqa: E402
from pslider_core.file_format import load_pareto_slider  # noqa: E402
from pslider_core.generation import generate  # noqa: E402
from pslider_core.rewards import get_reward  # noqa: E402
from pslider_core.rewards.base import RewardBatch  # noqa: E402

REWARDS = ("brightness", "saturation")
BACKBONES = ("sd3", "fluxkontext", "ltx2")


def setup(name: str):
    adapter = get_backbone(name)
    pipe = adapter.tiny_pipeline(seed=0)
    slider = ParetoSlider.attach(pipe.transformer, name, REWARDS, lora=LoraSpec(4, 4, adapter.lora_target_modules))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in slider.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return adapter, pipe, slider


def run(adapter, pipe, slider, n, size, weights, controls=(), guidance_scale=1.0, steps=4):
    sources = torch.rand(n, 3, size["height"], size["width"], generator=torch.Generator().manual_seed(5)) \
        if adapter.needs_source else None
    start = time.perf_counter()
    out = generate(adapter, pipe, ["a red circle", "a blue square"] * (n // 2), seeds=list(range(n)), slider=slider,
                   weights=weights, sources=sources, num_steps=steps, batch_size=n, guidance_scale=guidance_scale,
                   controls=list(controls), **size)
    return out, time.perf_counter() - start


def velocity_inputs(adapter, pipe, size):
    """(x, sigma, cond) of one velocity call for two prompts at sigma 0.6."""
    gen = torch.Generator().manual_seed(0)
    sources = torch.rand(2, 3, size["height"], size["width"], generator=gen) if adapter.needs_source else None
    with torch.no_grad():
        cond = adapter.encode_prompts(pipe, ["a red circle", "a blue square"], sources, **size)
    x = adapter.initial_noise(pipe, 2, size["height"], size["width"], gen, size["num_frames"])
    return x, torch.full((2,), 0.6), cond


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(fn()[1] for _ in range(repeats))


def guidance_row(name: str, repeats: int) -> dict:
    adapter, pipe, slider = setup(name)
    size = {"num_frames": 1, **adapter.tiny_sample_size}
    x, sigma, cond = velocity_inputs(adapter, pipe, size)
    w = torch.tensor([[0.0, 1.0]] * 2)
    ctx = ControlContext(adapter, pipe, slider.spec, **size)
    with torch.no_grad():
        got = controlled_velocity(adapter, pipe, slider, cond, w, [PreferenceGuidance(2.0, "opposite")], ctx)(x, sigma)
        with slider.condition(w):
            at_w = adapter.predict_velocity(pipe, pipe.transformer, x, sigma, cond)
        with slider.condition(1 - w):
            at_from = adapter.predict_velocity(pipe, pipe.transformer, x, sigma, cond)
    error = float((got - (at_from + 2 * (at_w - at_from))).abs().max() / at_w.abs().max())
    row = {"backbone": name, "error": error, "effect": float((at_w - at_from).abs().mean() / at_w.abs().mean())}
    for cfg in (1.0, 3.0):
        plain = timed(lambda: run(adapter, pipe, slider, 4, size, [0.0, 1.0], guidance_scale=cfg), repeats)
        guided = timed(lambda: run(adapter, pipe, slider, 4, size, [0.0, 1.0], [PreferenceGuidance(2.0)],
                                   guidance_scale=cfg), repeats)
        row[f"ratio_cfg{cfg:g}"] = guided / plain
    # regional: left half inside (0, 1), right half outside (1, 0)
    mask = torch.zeros(size["height"], size["width"])
    mask[:, : size["width"] // 2] = 1
    if adapter.modality == "video":
        size = {**size, "num_frames": 9}
    inside, _ = run(adapter, pipe, slider, 2, size, [0.0, 1.0])
    outside, _ = run(adapter, pipe, slider, 2, size, [1.0, 0.0])
    both, seconds = run(adapter, pipe, slider, 2, size, [0.0, 1.0], [RegionalWeights(mask, (1.0, 0.0))])
    half = size["width"] // 2
    for side, cols in (("left", slice(0, half - 2)), ("right", slice(half + 2, None))):
        row[f"{side}_to_inside"] = float((both - inside)[..., cols].abs().mean())
        row[f"{side}_to_outside"] = float((both - outside)[..., cols].abs().mean())
    return row


def trained(file: Path):
    """A trained tiny LTX-2 file on the tiny base its training saved (recorded in the file)."""
    adapter = get_backbone("ltx2")
    base = load_pareto_slider(file, "ltx2").base_model
    pipe = adapter.load_pipeline(base)
    return adapter, pipe, ParetoSlider.from_file(file, pipe.transformer, "ltx2")


def per_frame(samples: int, file: Path | None = None) -> dict:
    adapter, pipe, slider = setup("ltx2") if file is None else trained(file)
    size = {"height": 32, "width": 32, "num_frames": 17}
    start, _ = run(adapter, pipe, slider, samples, size, [1.0, 0.0])
    end, _ = run(adapter, pipe, slider, samples, size, [0.0, 1.0])
    moving, seconds = run(adapter, pipe, slider, samples, size, [1.0, 0.0], [FrameWeights((0.0, 1.0))])
    layout = adapter.layout(pipe, **size)
    ratio = pipe.vae_temporal_compression_ratio
    latent_of = [0] + [(t - 1) // ratio + 1 for t in range(1, size["num_frames"])]
    a = torch.tensor([f / (layout.latent_frames - 1) for f in latent_of])
    step = (end - start).flatten(2)  # (B, T, pixels)
    lam = ((moving - start).flatten(2) * step).sum(-1) / step.pow(2).sum(-1).clamp(min=1e-12)  # (B, T)
    out = {"frames": size["num_frames"], "latent_frames": layout.latent_frames, "a": a.tolist(),
           "lambda": lam.mean(0).tolist(), "spearman_lambda": float(spearman(lam.mean(0).tolist(), a.tolist())),
           "per_sample_spearman": [float(spearman(row.tolist(), a.tolist())) for row in lam],
           "mean_abs_lambda_minus_a": float((lam - a).abs().mean())}
    for name in REWARDS:
        reward = get_reward(name)

        def per_frame_scores(video):
            flat = video.flatten(0, 1)
            return reward(RewardBatch(images=flat, prompts=["a red circle"] * flat.shape[0])).view(video.shape[:2])

        s, e, m = (per_frame_scores(v) for v in (start, end, moving))
        sign = 1.0 if float((e - s).mean()) >= 0 else -1.0
        out[name] = {"start": float(s.mean()), "end": float(e.mean()), "per_frame": m.mean(0).tolist(),
                     "spearman": float(sign * spearman(m.mean(0).tolist(), a.tolist()))}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats (the fastest counts).")
    parser.add_argument("--samples", type=int, default=8, help="LTX-2 videos for the per-frame measurement.")
    parser.add_argument("--ltx2-file", type=Path, default=None,
                        help="A tiny LTX-2 file trained on brightness,saturation for the per-frame measurement (random "
                             "modules barely move those rewards); e.g. pslider-train --backbone ltx2 --preset tiny "
                             "--rewards brightness,saturation --epochs 40.")
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [guidance_row(name, args.repeats) for name in BACKBONES]
    frames = per_frame(args.samples, args.ltx2_file)
    lines = ["| backbone | guidance error (rel.) | w vs w_from effect (rel.) | time s=2 / s=1 | same, with CFG 3 | "
             "left half: to inside / to outside render | right half: to inside / to outside render |",
             "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['error']:.1e} | {r['effect']:.2f} | {r['ratio_cfg1']:.2f} | "
                     f"{r['ratio_cfg3']:.2f} | {r['left_to_inside']:.4f} / {r['left_to_outside']:.4f} | "
                     f"{r['right_to_inside']:.4f} / {r['right_to_outside']:.4f} |")
    modules = f"trained file {args.ltx2_file.name}" if args.ltx2_file else "random modules"
    lines += ["", f"Per-frame weights, tiny LTX-2 ({frames['frames']} frames = {frames['latent_frames']} latent frames, "
              f"{args.samples} videos, {modules}):", "",
              "| pixel frame | " + " | ".join(str(t) for t in range(frames["frames"])) + " |",
              "|" + "---|" * (frames["frames"] + 1),
              "| weight a_f | " + " | ".join(f"{v:.2f}" for v in frames["a"]) + " |",
              "| lambda_f | " + " | ".join(f"{v:.2f}" for v in frames["lambda"]) + " |"]
    for name in REWARDS:
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in frames[name]["per_frame"]) + " |")
    lines += ["", f"Spearman(lambda_f, a_f) = {frames['spearman_lambda']:.3f} (per video: min "
              f"{min(frames['per_sample_spearman']):.3f}); mean |lambda_f - a_f| = "
              f"{frames['mean_abs_lambda_minus_a']:.3f}; per-frame reward trend (Spearman with a_f, signed toward "
              "the last weights' render): " + ", ".join(
                  f"{n} {frames[n]['spearman']:.3f} ({frames[n]['start']:.3f} at (1,0) everywhere, "
                  f"{frames[n]['end']:.3f} at (0,1))" for n in REWARDS)]
    text = "\n".join(lines)
    print(text)
    if args.results:
        Path(args.results).write_text(text + "\n")
    return {"rows": rows, "frames": frames, "text": text}


if __name__ == "__main__":
    main()
