"""Should the LoRA target SD3.5 Medium's MMDiT-X `attn2` layers? A measurement on a tiny dual-attention SD3.

SD3.5 Medium adds a second, image-only self-attention (`attn2`) to joint blocks 0-12; the attention targets the
authors use (`attn.to_q`, ...) do not match it. Here a 2-block SD3 with `dual_attention_layers=(0,)` (block 0 has
attn2, as Medium's first 13 blocks do) trains brightness vs saturation with the LoRA on the usual targets and on
the usual targets plus attn2, same seeds and settings, and reports:

- the LoRA parameters added by attn2, and at real scale on the meta device (SD3.5 Medium, rank 32);
- the share of the first step's LoRA gradient norm that attn2 gets, per parameter relative to the attention;
- after training, each reward at w = (1, 0) and w = (0, 1) on held-out noise, and the gap between the ends.

    python benchmarks/mmditx_attn2.py [--seeds 0,1,2] [--epochs 8]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import click
import diffusers
import torch
import transformers
from diffusers import SD3Transformer2DModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pslider_core import ParetoSlider, get_backbone  # noqa: E402
from pslider_core.rewards import RewardBatch, get_reward  # noqa: E402
from pslider_core.samplers import ode_sample  # noqa: E402
from trainer.config import resolve_config  # noqa: E402
from trainer.data import validate_inputs  # noqa: E402
from trainer.trainer import ParetoSliderTrainer  # noqa: E402

ATTN2 = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
REWARDS = ("brightness", "saturation")
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross"]


def _dual_base(folder: Path) -> Path:
    """The tiny SD3 pipeline with a transformer whose block 0 is an MMDiT-X block (attn2), saved as a base."""
    pipe = get_backbone("sd3").tiny_pipeline(seed=0)
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    config.update(dual_attention_layers=(0,), qk_norm="rms_norm")
    torch.manual_seed(0)
    pipe.transformer = SD3Transformer2DModel(**config).eval()
    pipe.save_pretrained(folder)
    return folder


def _targets(with_attn2: bool) -> tuple[str, ...]:
    usual = tuple(t for t in get_backbone("sd3").lora_target_modules if not t.startswith("attn2."))
    return usual + ATTN2 if with_attn2 else usual


def _trainer(base: Path, folder: Path, with_attn2: bool, seed: int, epochs: int) -> ParetoSliderTrainer:
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    config = resolve_config({}, {
        "backbone": "sd3", "preset": "tiny", "base": str(base), "rewards": ",".join(REWARDS),
        "prompts": str(folder / "prompts.txt"), "output": str(folder / f"attn2-{with_attn2}-{seed}.safetensors"),
        "epochs": epochs, "images_per_prompt": 8, "prompts_per_epoch": 4, "lr": 3e-3, "pref_lr_mult": 10.0,
        "seed": seed, "checkpoint_every": 0, "progress": False,
    })
    inputs = validate_inputs(config)
    inputs.adapter.lora_target_modules = _targets(with_attn2)
    return ParetoSliderTrainer(config, inputs)


def _capture_gradient_share(trainer: ParetoSliderTrainer) -> list[float]:
    """Per optimiser step, attn2's LoRA gradient norm per parameter over the attention's (read before the step)."""
    shares: list[float] = []
    step = trainer._optimizer_step

    def capturing_step() -> float | None:
        norms = {"attn2": [0.0, 0], "attn": [0.0, 0]}
        for name, param in trainer.policies.named_trainable:
            if "lora_" in name and param.grad is not None:
                kind = norms["attn2" if ".attn2." in name else "attn"]
                kind[0] += float(param.grad.pow(2).sum())
                kind[1] += param.numel()
        shares.append((norms["attn2"][0] / norms["attn2"][1]) ** 0.5 / (norms["attn"][0] / norms["attn"][1]) ** 0.5)
        return step()

    trainer._optimizer_step = capturing_step
    return shares


def _ends(base: Path, output: Path) -> dict[str, float]:
    """Mean reward at each end of the front on held-out noise (seed 1000), 8 samples per end."""
    adapter = get_backbone("sd3")
    adapter.max_sequence_length = 16
    pipe = adapter.load_pipeline(base)
    slider = ParetoSlider.from_file(output, pipe.transformer, "sd3")
    rewards = {name: get_reward(name) for name in REWARDS}
    prompts = PROMPTS * 2
    out = {}
    with torch.no_grad():
        cond = adapter.encode_prompts(pipe, prompts, height=32, width=32)
        noise = adapter.initial_noise(pipe, len(prompts), 32, 32, torch.Generator().manual_seed(1000))
        sigmas = adapter.sigmas(pipe, 4, noise, cond)
        for w, tag in (((1.0, 0.0), "w=(1,0)"), ((0.0, 1.0), "w=(0,1)")):
            with slider.condition(w):
                x0 = ode_sample(lambda x, s: adapter.predict_velocity(pipe, pipe.transformer, x, s, cond), noise, sigmas)
            images = adapter.decode(pipe, x0, 32, 32)
            for name, reward in rewards.items():
                out[f"{name} {tag}"] = float(reward(RewardBatch(images, prompts)).mean())
    out["brightness gap"] = out["brightness w=(1,0)"] - out["brightness w=(0,1)"]
    out["saturation gap"] = out["saturation w=(0,1)"] - out["saturation w=(1,0)"]
    return out


def _real_scale_params() -> tuple[int, int]:
    """LoRA parameters (rank 32) of SD3.5 Medium's usual targets and of its attn2 layers, counted on meta."""
    real = dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
    )  # SD3.5 Medium's transformer/config.json (shared/reference/models.md)
    with torch.device("meta"):
        model = SD3Transformer2DModel(**real)
    counts = {"usual": 0, "attn2": 0}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            kind = "attn2" if any(name.endswith("." + t) for t in ATTN2) else (
                "usual" if any(name.endswith("." + t) for t in _targets(False)) else None)
            if kind:
                counts[kind] += 32 * (module.in_features + module.out_features)
    return counts["usual"], counts["attn2"]


@click.command()
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--epochs", default=8, show_default=True)
def main(seeds: str, epochs: int) -> None:
    """Print the table: usual targets vs usual + attn2, per seed and on average."""
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    usual, attn2 = _real_scale_params()
    print(f"SD3.5 Medium, rank 32: usual targets {usual / 1e6:.1f} M LoRA parameters, attn2 adds {attn2 / 1e6:.1f} M "
          f"(+{attn2 / usual:.1%})")
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        base = _dual_base(Path(tmp) / "base")
        for seed in map(int, seeds.split(",")):
            for with_attn2 in (False, True):
                trainer = _trainer(base, Path(tmp), with_attn2, seed, epochs)
                shares = _capture_gradient_share(trainer) if with_attn2 else []
                trainer.train()
                # from the second step on: at the first, lora_B is zero and only B gets a gradient
                row = {"attn2 grad / attn grad": statistics.mean(shares[1:])} if with_attn2 else {}
                row.update(_ends(base, trainer.config.output_path()))
                rows[with_attn2].append(row)
    keys = list(rows[True][0])
    print(f"{'targets':<20} " + " ".join(f"{k:>22}" for k in keys))
    for with_attn2, values in rows.items():
        cells = [statistics.mean(v[k] for v in values) if k in values[0] else float("nan") for k in keys]
        label = "usual + attn2" if with_attn2 else "usual"
        print(f"{label:<20} " + " ".join(f"{c:>22.4f}" for c in cells) + f"   (mean of {len(values)} seeds)")
        for seed, v in zip(seeds.split(","), values):
            print(f"{'  seed ' + seed:<20} " + " ".join(f"{v.get(k, float('nan')):>22.4f}" for k in keys))


if __name__ == "__main__":
    main()
