"""Flow-matching pretraining of the toy base (transformer and text encoder together) on the procedural data.

Why a library function: the script is a thin argparse face, and tests can run a few steps of the same code.
Every batch is a pure function of (step, seed), noise and sigmas come from one seeded generator, so a run is
reproducible on the same machine and torch build. Sigma ~ logit-normal(0, 1) as in SD3 (the middle noise levels,
where the shape is decided, get most of the training); plain MSE on v = noise - x0; EMA weights are saved.
The learning rate is constant after warm-up, so a run cut short by `max_minutes` (shared CPUs are slow in unknown
ways) is exactly the first steps of a longer run: `toy_base.json` records the steps done, and `--steps` with that
number and no time limit reproduces it.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel

from .base_model import INFO_FILE, build_toy_base, load_toy_base, save_toy_base
from .dataset import heldout_prompts, make_batch, train_prompts
from .judge import ToyJudge
from .pipeline import sample, to_model_space, velocity
from .text_encoder import ToyTextEncoder


@dataclass
class PretrainConfig:
    steps: int = 8000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    max_minutes: float = 0.0  # stop after this wall time (0 = run all steps)
    ema_decay: float = 0.999
    seed: int = 0
    hidden: int = 96
    head_dim: int = 32
    layers: int = 4
    patch: int = 4
    text_dim: int = 64
    log_every: int = 100
    save_every: int = 1000  # also save the EMA weights every this many steps (0 = only at the end)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


@torch.no_grad()
def judge_base(
    transformer: SD3Transformer2DModel,
    text_encoder: ToyTextEncoder,
    judge: ToyJudge,
    prompts: list[str],
    per_prompt: int,
    steps: int,
    seed: int = 1234,
) -> float:
    """Valid image rate of the base on `prompts` (per_prompt samples each, deterministic noise)."""
    batch = [p for p in prompts for _ in range(per_prompt)]
    images = sample(transformer, text_encoder, batch, steps, generator=torch.Generator().manual_seed(seed))
    return judge.valid_image_rate(images, batch)


def record_judge_scores(
    base_dir: str | os.PathLike,
    judge: ToyJudge,
    per_prompt: int = 16,
    steps: int = 20,
    log: Callable[[str], None] = print,
) -> dict:
    """Score the saved base (exactly the weights on disk) with the judge and write the rates into toy_base.json."""
    transformer, text_encoder, _, info = load_toy_base(base_dir)
    scores = {
        split: round(judge_base(transformer, text_encoder, judge, prompts, per_prompt, steps), 4)
        for split, prompts in (("heldout", heldout_prompts()), ("train", train_prompts()))
    }
    info["judge_valid_rate"] = {**scores, "euler_steps": steps, "per_prompt": per_prompt}
    (Path(base_dir) / INFO_FILE).write_text(json.dumps(info, indent=1))
    log(f"judge valid rate of {base_dir} ({steps} Euler steps, {per_prompt} samples per prompt): {scores}")
    return info


def pretrain(
    cfg: PretrainConfig,
    out_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the toy base; save its EMA weights to out_dir (if given); return the run info."""
    torch.manual_seed(cfg.seed)
    transformer, text_encoder, tokenizer = build_toy_base(cfg.hidden, cfg.head_dim, cfg.layers, cfg.patch, cfg.text_dim)
    transformer.train(), text_encoder.train()
    ema_transformer, ema_text = copy.deepcopy(transformer).eval(), copy.deepcopy(text_encoder).eval()
    params = [*transformer.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    gen = torch.Generator().manual_seed(cfg.seed)
    n_params = sum(p.numel() for p in transformer.parameters())
    log(
        f"toy base: transformer {n_params / 1e6:.2f}M params, text encoder "
        f"{sum(p.numel() for p in text_encoder.parameters()) / 1e3:.1f}k params"
    )
    start, running, steps_done = time.time(), None, 0
    for step in range(cfg.steps):
        images, prompts = make_batch(range(step * cfg.batch_size, (step + 1) * cfg.batch_size), cfg.seed, "train")
        x0 = to_model_space(images)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        embeds, pooled = text_encoder(*tokenizer(prompts))
        loss = F.mse_loss(velocity(transformer, x_t, sigma, embeds, pooled), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_transformer, transformer, decay)
        _ema_update(ema_text, text_encoder, decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        steps_done = step + 1
        out_of_time = cfg.max_minutes > 0 and time.time() - start > 60 * cfg.max_minutes
        if step % cfg.log_every == 0 or step == cfg.steps - 1 or out_of_time:
            elapsed = time.time() - start
            eta = elapsed / (step + 1) * (cfg.steps - step - 1)
            log(
                f"step {step:6d}  loss {loss.item():.4f}  avg {running:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{elapsed / 60:.1f} min, eta {eta / 60:.1f} min"
            )
        if out_of_time:
            log(f"stopping after {steps_done} steps: --max-minutes {cfg.max_minutes} reached")
            break
        if out_dir is not None and cfg.save_every and steps_done % cfg.save_every == 0:
            save_toy_base(out_dir, ema_transformer, ema_text, tokenizer, {"train": {"partial_steps": steps_done}})
    info = {
        "train": {
            **asdict(cfg),
            "steps_done": steps_done,
            "final_loss_avg": round(running, 5),
            "minutes": round((time.time() - start) / 60, 1),
            "transformer_params": n_params,
            "torch": torch.__version__,
        }
    }
    if out_dir is not None:
        save_toy_base(out_dir, ema_transformer, ema_text, tokenizer, info)
        log(f"saved toy base to {out_dir}")
    return info
