"""`ParetoSliderTrainer`: one epoch reads as trl's stages.

    plan (prompts, preference slots) -> generate (old policy conditioned on w) -> calculate_rewards (N x M)
    -> compute_advantages (gathered, per (prompt, w) group and per reward) -> compute_loss (nft | grpo)
    -> optimizer step -> old-policy lag and EMA -> log -> checkpoint

Every random draw comes from a generator seeded by (run seed, stage, epoch, ...), so a resumed run repeats exactly
what an uninterrupted one would have done, and rollouts do not depend on the number of processes.

Several processes run data parallel (DDP through `accelerate.prepare`) or, under an FSDP version 2 accelerate config,
with the transformer sharded (`shard_policies`): parameters are then DTensors, gathered whole for the output file and
checkpoints, which are the same files either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import gc
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DistributedType,
    FullyShardedDataParallelPlugin,
    gather_object,
    parse_flag_from_env,
    set_seed,
)
from safetensors import SafetensorError
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
from tqdm.auto import tqdm

from pslider_core import LoraSpec, ParetoSlider
from pslider_core.advantages import (
    NonFiniteRewardError,
    fixed_weight_advantages,
    group_advantages,
    scalarize_advantages,
)
from pslider_core.atomic import atomic_dir
from pslider_core.backbones import Conditioning, select_conditioning
from pslider_core.ema import EMA
from pslider_core.file_format import save_pareto_slider
from pslider_core.lora import full_tensor
from pslider_core.memory import WEIGHT_DTYPES
from pslider_core.objectives import (
    GRPOConfig,
    NFTConfig,
    grpo_loss,
    lagged_decay,
    nft_loss,
    nft_reward_weight,
    update_old_policy_,
)
from pslider_core.preference_sampling import epoch_mixture, preference_slots
from pslider_core.rewards import NonFiniteScoreError, Reward, RewardBatch
from pslider_core.samplers import (
    VelocityFn,
    guided_velocity,
    ode_sample,
    sample_sde_window,
    sde_sample,
    sde_step,
    sde_transition,
)

from .checkpoint import (
    Checkpoint,
    check_resume,
    checkpoint_name,
    gathered,
    optimizer_from_tensors,
    optimizer_to_tensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
    shard_like,
    shard_optimizer_state,
    write_error,
)
from .config import TrainConfig
from .data import InputError, PromptItem, TrainInputs, load_sources, validate_inputs
from .metrics import MetricsLogger, format_summary, reward_metrics
from .policies import CURRENT, OLD, REFERENCE, Policies, shard_policies
from .prompt_cache import PromptCache

logger = logging.getLogger("pslider.train")


class TrainingAborted(RuntimeError):
    """Training cannot go on (persistent NaN/inf); the message says what to check."""


def derive_seed(*parts: Any) -> int:
    """A torch seed from any JSON-able tuple (stage name, epoch, sample index...), the same in every process."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class EpochPlan:
    """Which prompt, preference group and w every sample of an epoch gets (global, identical on every process)."""

    items: list[PromptItem]
    file_index: list[int]  # per item, its line in the prompts file (the prompt cache's index)
    prompt_of: torch.Tensor  # (N,) index into items
    group_of: torch.Tensor  # (N,) (prompt, slot) group id
    w: torch.Tensor  # (N, M): the preference (the fixed weights for the baseline)
    local: range  # this process's samples
    epoch: int


@dataclass
class Rollouts:
    """This process's samples of an epoch: what the loss needs, and the scores."""

    index: torch.Tensor  # (n,) global sample indices
    cond: Conditioning  # per local prompt
    cond_of: torch.Tensor  # (n,) row of `cond` for every sample
    sigmas: torch.Tensor | None = None  # the sampler's grid
    x0: list[torch.Tensor] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)  # grpo: (window steps + 1, b, ...) per chunk
    log_probs: list[torch.Tensor] = field(default_factory=list)  # grpo: (window steps, b) per chunk
    rewards: list[torch.Tensor] = field(default_factory=list)  # (b, M) per chunk

    def stacked(self) -> dict[str, torch.Tensor]:
        """The per-chunk lists joined along the sample dimension (x0, and for grpo latents and log_probs)."""
        out = {"x0": torch.cat(self.x0)}
        if self.latents:
            out["latents"] = torch.cat(self.latents, dim=1)
            out["log_probs"] = torch.cat(self.log_probs, dim=1)
        return out


@dataclass
class Chunk:
    """One micro-batch of rollouts on its way from the sampler to the rewards."""

    samples: torch.Tensor  # decoded images (b, 3, H, W) or videos (b, T, 3, H, W)
    prompts: list[str]
    sources: torch.Tensor | None
    audio: tuple[torch.Tensor, int] | None


class ParetoSliderTrainer:
    """Late-scalarized multi-objective RL on one backbone (method.md), runnable under `accelerate launch`."""

    def __init__(
        self, config: TrainConfig, inputs: TrainInputs | None = None, pipeline: Any = None,
        conditioning: Conditioning | None = None,
    ) -> None:
        """`pipeline`: an already built base pipeline to train instead of loading `config.base`; `conditioning`: the
        conditioning of every prompt of the prompts file (one batch, file order) to use instead of encoding them
        (benchmarks on random-weight real configurations, whose text encoders are not built)."""
        self.config = config
        self.inputs = inputs if inputs is not None else validate_inputs(config)
        self.adapter = self.inputs.adapter
        if config.max_sequence_length:
            self.adapter.max_sequence_length = config.max_sequence_length
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        # accelerate keeps one state per process; a process may train several times (tests, notebooks,
        # benchmarks) with other settings, so each trainer starts from a fresh one (the process group stays)
        AcceleratorState._reset_state(reset_partial_state=False)
        check_fsdp_version()
        self.accelerator = Accelerator(
            cpu=config.device == "cpu", mixed_precision=config.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        self._check_world_size()
        self.fsdp = self._fsdp_plugin()
        set_seed(config.seed)
        self.pipe, self.base_model = self._load_pipeline(pipeline)
        self.prompt_cache = self._new_prompt_cache(negative=False)
        self.negative_cache = self._new_prompt_cache(negative=True) if config.guidance_scale > 1 else None
        if conditioning is not None:
            for cache in self._caches:
                cache.put(list(range(len(self.inputs.items))), conditioning)
        self._encode_once()
        if self.fsdp is None:  # after encoding: the text encoders and the transformer are never on the GPU together
            self.pipe.transformer.to(self.accelerator.device)
        rank = config.lora_rank_total(self.inputs.spec.num_rewards)
        lora = LoraSpec(rank, config.lora_alpha, self.adapter.lora_target_modules)
        self.slider = ParetoSlider.attach(
            self.pipe.transformer, self.adapter.name, self.inputs.spec.reward_names,
            reward_descriptions=self.inputs.spec.reward_descriptions, mode=config.conditioning_mode,
            num_freqs=config.num_freqs, lora=lora, reward_ranks=config.lora_reward_ranks, base_model=self.base_model,
        )
        self.policies = Policies(
            self.slider, self.adapter, self.pipe, conditioned=not config.is_baseline,
            with_old=config.objective == "nft",
            autocast=self.accelerator.autocast if self.fsdp is not None else nullcontext,
        )
        if self.fsdp is not None:  # shard first: the optimizer must hold the sharded parameters
            blocks = self.fsdp.transformer_cls_names_to_wrap or self.adapter.fsdp_block_classes
            self.model = shard_policies(self.policies, blocks, self.accelerator.device)
            self.optimizer = self._new_optimizer()
        else:
            with warnings.catch_warnings():  # torch renamed broadcast_buffers; accelerate only passes the old name
                warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
                self.model, self.optimizer = self.accelerator.prepare(self.policies, self._new_optimizer())
        self.ema = EMA(self.policies.trainable, config.ema_max_decay) if config.ema else None
        self.reward_device = torch.device(config.reward_device or self.accelerator.device)
        self.rewards: list[Reward] = [r.to(self.reward_device) for r in self.inputs.rewards]
        self.signs = torch.tensor([1.0 if r.higher_is_better else -1.0 for r in self.rewards])
        self.nft = NFTConfig(beta=config.beta, adv_clip=config.adv_clip, kl_weight=config.kl_weight)
        self.grpo = GRPOConfig(
            clip_range=config.clip_range, kl_weight=config.grpo_kl_weight, adv_clip=config.adv_clip,
            noise_level=config.noise_level, kind=config.sde_kind,
        )
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        self.skipped = 0  # steps skipped for NaN/inf
        self.bad_in_a_row = 0
        self.history: list[dict[str, Any]] = []
        if config.resume:
            self._restore(check_resume(config.resume, config))
        self.metrics = MetricsLogger(config.log_path(), self.accelerator.is_main_process, start_epoch=self.epoch)

    # ------------------------------------------------------------------ setup
    @property
    def num_samples(self) -> int:
        p = self.config.prompts_per_epoch or len(self.inputs.items)
        return min(p, len(self.inputs.items)) * self.config.images_per_prompt

    def _check_world_size(self) -> None:
        world, n = self.accelerator.num_processes, self.num_samples
        if n % world:
            raise InputError(
                f"An epoch has {n} rollouts (prompts per epoch x --images-per-prompt), which {world} processes cannot "
                "share evenly; change --prompts-per-epoch or --images-per-prompt, or the number of processes."
            )

    def _fsdp_plugin(self) -> FullyShardedDataParallelPlugin | None:
        """The accelerate config's FSDP settings, checked; None for data parallel or one process.

        accelerate runs an FSDP config on CPU as data parallel (it shards on accelerators only); pslider-train
        shards the model itself, so it reads the same settings there and shards over gloo too.
        """
        accelerator = self.accelerator
        if accelerator.distributed_type == DistributedType.FSDP:
            plugin = accelerator.state.fsdp_plugin
        elif accelerator.distributed_type == DistributedType.MULTI_CPU and parse_flag_from_env("ACCELERATE_USE_FSDP"):
            plugin = FullyShardedDataParallelPlugin()  # the same settings, read from the same environment
        else:
            return None
        check_fsdp_settings(plugin, self.config.mixed_precision)
        return plugin

    def _new_optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        groups = [{"params": self.policies.lora_parameters, "lr": config.lr}]
        if self.policies.module_parameters:
            groups.append({"params": self.policies.module_parameters, "lr": config.lr * config.pref_lr_mult})
        return torch.optim.AdamW(
            groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )

    def _load_pipeline(self, pipe: Any = None) -> tuple[Any, str]:
        config, adapter = self.config, self.adapter
        base = config.base
        if pipe is None:
            if not base and config.preset == "tiny":  # built once, then loaded like any base (and by pslider-sample)
                folder = config.output_path().with_name(config.output_path().stem + ".tiny-base")
                if self.accelerator.is_main_process and not folder.is_dir():
                    with atomic_dir(folder) as partial:
                        adapter.tiny_pipeline(seed=config.seed).save_pretrained(partial)
                    logger.info("Saved the tiny %s base to %s (recorded in the output file: pslider-sample and "
                                "pslider-eval load it when --base is left out).", adapter.name, folder)
                self.accelerator.wait_for_everyone()
                base = str(folder)
            base = base or adapter.default_base
            pipe = adapter.load_pipeline(base, torch_dtype=WEIGHT_DTYPES[config.mixed_precision])
        try:
            adapter.check_sample_size(pipe, config.height, config.width, config.num_frames)
        except ValueError as err:
            raise InputError(str(err)) from None
        coders = _coders(pipe, adapter)
        for component in vars(pipe).values():  # diffusers pipelines and plain component holders alike
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False).eval()
                later = component is pipe.transformer  # after the prompts are encoded (FSDP: only its shard)
                if not later and not (config.offload_vae and any(component is c for c in coders)):
                    component.to(self.accelerator.device)
        if config.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        return pipe, base or "custom pipeline"

    @contextmanager
    def _resident(
        self, modules: Callable[[], Iterable[torch.nn.Module | None]], device: torch.device, offload: bool
    ) -> Iterator[None]:
        """`modules()` on `device` inside the block; with `offload`, in host memory again after it (no-op on CPU).
        Listed again on exit: reward models load on their first call, inside the block."""
        offload = offload and device.type != "cpu"
        if offload:
            for module in filter(None, modules()):
                module.to(device)
        try:
            yield
        finally:
            if offload:
                for module in filter(None, modules()):
                    module.to("cpu")

    def _vae_resident(self) -> Any:
        """The VAE (and LTX-2's audio VAE and vocoder) on the training device for one encode or decode."""
        return self._resident(lambda: _coders(self.pipe, self.adapter), self.accelerator.device,
                              self.config.offload_vae)

    # ------------------------------------------------------------------ prompt conditioning, encoded once
    def _new_prompt_cache(self, negative: bool) -> PromptCache:
        """Keys: the prompt (with its source image) and the encoder settings it was encoded with."""
        config = self.config
        settings = (self.adapter.name, getattr(self.adapter, "max_sequence_length", None), config.height,
                    config.width, config.num_frames, negative)
        return PromptCache(
            [(item.key, *settings) for item in self.inputs.items], config.batch_size,
            lambda indices: self._encode([self.inputs.items[i] for i in indices], negative),
            int(config.cache_max_gb * 1e9),
        )

    @property
    def _caches(self) -> list[PromptCache]:
        return [c for c in (self.prompt_cache, self.negative_cache) if c is not None]

    def _encode_once(self) -> None:
        """Before the transformer comes to the GPU: with --offload-text-encoders, encode every prompt (a resumed run
        too) and release the encoders."""
        if not self.config.offload_text_encoders:
            return
        with self._vae_resident() if self.adapter.needs_source else nullcontext():  # Kontext encodes its sources
            fits = all(cache.fill() for cache in self._caches)
        size = sum(cache.nbytes for cache in self._caches)
        if not fits:
            logger.warning(
                "The embeddings of all %d prompts would not fit --cache-max-gb %g, so the text encoders stay loaded "
                "and prompts are encoded when first drawn; raise --cache-max-gb to release them.",
                len(self.inputs.items), self.config.cache_max_gb,
            )
            return
        for name in self.adapter.text_encoder_names:
            if getattr(self.pipe, name, None) is not None:
                setattr(self.pipe, name, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("Encoded %d prompts once (cache %.1f MB in host memory); text encoders released.",
                    len(self.inputs.items), size / 1e6)

    def _conditioning(self, file_index: list[int], negative: bool = False) -> Conditioning:
        cache = self.negative_cache if negative else self.prompt_cache
        with self._vae_resident() if self.adapter.needs_source and not cache.complete else nullcontext():
            return cache.get(file_index, self.accelerator.device)

    # ------------------------------------------------------------------ the loop
    def train(self) -> Path:
        """Run the remaining epochs, write checkpoints and the output file; returns the output path."""
        config = self.config
        bar = tqdm(total=config.epochs, initial=self.epoch, desc="epochs", unit="epoch", disable=self._quiet)
        while self.epoch < config.epochs:
            metrics = self.train_epoch(self.epoch)
            self.epoch += 1
            self.log(metrics)
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items() if k.startswith("reward/")})
            due = config.checkpoint_every and self.epoch % config.checkpoint_every == 0
            if due or self.epoch == config.epochs:
                self.save_checkpoint()
        bar.close()
        self._check_replicas()
        path = self.save_output()
        self.metrics.close()
        return path

    def summary(self) -> str:
        """The end-of-run report (settings, rewards first vs last epoch, per-w means, time per stage)."""
        return format_summary(self.history, self.inputs.spec.reward_names, self.summary_header())

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch; returns its metrics (the step is skipped, and counted, on NaN/inf rewards or loss)."""
        plan = self.plan(epoch)
        timer = _Timer(self.accelerator.device)
        if timer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(timer.device)
        with timer("rollout"):
            rollouts = self._new_rollouts(plan)
        for chunk in self.generate(plan, rollouts, timer):
            with timer("reward"):
                rollouts.rewards.append(self.calculate_rewards(chunk))
        with timer("optimisation"):
            rewards = self.accelerator.gather(torch.cat(rollouts.rewards).to(self.accelerator.device)).cpu()
            advantages = self.compute_advantages(plan, rewards)
            stats = self.optimize(plan, rollouts, advantages) if advantages is not None else {}
        metrics = reward_metrics(rewards, self.inputs.spec.reward_names, None if self.config.is_baseline else plan.w)
        return {**metrics, **stats, **timer.totals(), **self._memory(), "optimizer_steps": self.step,
                "skipped_steps": self.skipped}

    def _memory(self) -> dict[str, float]:
        """GB of pipeline weights on the training device after the epoch, of the prompt cache (host), and on CUDA
        the epoch's allocation peak."""
        device = self.accelerator.device
        modules = [m for m in vars(self.pipe).values() if isinstance(m, torch.nn.Module)]
        tensors = [t.to_local() if hasattr(t, "to_local") else t  # this process's shard under FSDP
                   for m in modules for t in (*m.parameters(), *m.buffers()) if t.device.type == device.type]
        out = {"memory/weights_gb": sum(t.numel() * t.element_size() for t in tensors) / 1e9,
               "memory/prompt_cache_gb": sum(c.nbytes for c in self._caches) / 1e9}
        if device.type == "cuda":
            out["memory/peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        return out

    # ------------------------------------------------------------------ stage 0: plan
    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's prompts and, per (prompt, slot), its w: the same on every process and after a resume."""
        config, items = self.config, self.inputs.items
        num_prompts = self.num_samples // config.images_per_prompt
        file_index = list(range(len(items)))
        if num_prompts < len(items):
            file_index = torch.randperm(len(items), generator=_generator(config.seed, "prompts", epoch))[
                :num_prompts].tolist()
            items = [items[i] for i in file_index]
        k = config.images_per_prompt
        prompt_of = torch.arange(num_prompts).repeat_interleave(k)
        if config.is_baseline:
            w = torch.tensor(config.fixed_weights).expand(len(prompt_of), -1)
            group_of = prompt_of
        else:
            slots = preference_slots(
                [item.key for item in items], epoch, config.slots_per_prompt, self.inputs.spec.num_rewards,
                config.seed, epoch_mixture(self.inputs.mixture, epoch, config.epochs, config.corners_first),
            )
            slot_of = (torch.arange(k) // (k // config.slots_per_prompt)).repeat(num_prompts)
            w = slots[prompt_of, slot_of]
            group_of = prompt_of * config.slots_per_prompt + slot_of
        per_process = len(prompt_of) // self.accelerator.num_processes
        start = self.accelerator.process_index * per_process
        return EpochPlan(items, file_index, prompt_of, group_of, w.float(), range(start, start + per_process), epoch)

    def _new_rollouts(self, plan: EpochPlan) -> Rollouts:
        """This process's prompts' conditioning (text embeddings, and source latents when editing), one row each."""
        index = torch.tensor(list(plan.local))
        prompts_here = sorted(set(plan.prompt_of[index].tolist()))
        row = {p: r for r, p in enumerate(prompts_here)}
        cond = self._conditioning([plan.file_index[p] for p in prompts_here])
        return Rollouts(index, cond, torch.tensor([row[p] for p in plan.prompt_of[index].tolist()]))

    def _sources(self, items: list[PromptItem]) -> torch.Tensor | None:
        if not self.adapter.needs_source:
            return None
        return load_sources(items, self.config.height, self.config.width).to(self.accelerator.device)

    @torch.no_grad()
    def _encode(self, items: list[PromptItem], negative: bool = False) -> Conditioning:
        """One batch through the text encoders (the prompt cache calls it with one block of the prompts file)."""
        prompts = [""] * len(items) if negative else [item.prompt for item in items]
        return self.adapter.encode_prompts(
            self.pipe, prompts, self._sources(items), height=self.config.height, width=self.config.width,
            num_frames=self.config.num_frames,
        )

    # ------------------------------------------------------------------ stage 1: generate
    def generate(self, plan: EpochPlan, rollouts: Rollouts, timer: "_Timer") -> Iterator[Chunk]:
        """Roll out this process's samples micro-batch by micro-batch and yield them decoded.

        nft: deterministic ODE with the old policy, keeping x0. grpo: SDE (in a window) with the current weights,
        keeping the trained steps' latents and log-probabilities.
        """
        config, adapter, pipe, epoch = self.config, self.adapter, self.pipe, plan.epoch
        policy = OLD if config.objective == "nft" else CURRENT
        negative = None
        if config.guidance_scale > 1:
            prompts_here = sorted(set(plan.prompt_of[rollouts.index].tolist()))
            negative = self._conditioning([plan.file_index[p] for p in prompts_here], negative=True)
        window = self._sde_window(epoch)
        n = len(rollouts.index)
        bar = tqdm(total=n, desc=f"epoch {epoch + 1} rollouts", leave=False, disable=self._quiet)
        for start in range(0, n, config.batch_size):
            pos = slice(start, min(start + config.batch_size, n))
            with timer("rollout"), torch.no_grad():
                index = rollouts.index[pos]
                cond = select_conditioning(rollouts.cond, rollouts.cond_of[pos])
                uncond = select_conditioning(negative, rollouts.cond_of[pos]) if negative is not None else None
                w = plan.w[index].to(self.accelerator.device)
                noise = torch.cat([
                    adapter.initial_noise(pipe, 1, config.height, config.width,
                                          _generator(config.seed, "noise", epoch, int(i)), config.num_frames)
                    for i in index
                ])
                sigmas = adapter.sigmas(pipe, config.num_steps, noise, cond)
                rollouts.sigmas = sigmas.cpu()  # read per loss pass: from host memory, no GPU sync
                velocity = self._velocity(cond, uncond, w, policy)
                if config.objective == "nft":
                    x0 = ode_sample(velocity, noise, sigmas, solver=config.solver)
                else:
                    traj = sde_sample(
                        velocity, noise, sigmas, noise_level=config.noise_level, kind=config.sde_kind,
                        sde_window=window, generator=_generator(config.seed, "sde", epoch, int(index[0])),
                    )
                    x0 = traj.latents[-1]
                    rollouts.latents.append(traj.latents[window[0] : window[1] + 1])
                    rollouts.log_probs.append(traj.log_probs[window[0] : window[1]])
                rollouts.x0.append(x0)
                audio = None
                with self._vae_resident():
                    samples = adapter.decode(pipe, x0, config.height, config.width, config.num_frames)
                    if any(r.needs_audio for r in self.rewards):
                        audio = adapter.decode_audio(pipe, x0, config.height, config.width, config.num_frames)
                items = [plan.items[p] for p in plan.prompt_of[index].tolist()]
                sources = self._sources(items)
            bar.update(pos.stop - pos.start)
            yield Chunk(samples, [item.prompt for item in items], sources, audio)
        bar.close()

    def _velocity(self, cond: Conditioning, uncond: Conditioning | None, w: torch.Tensor, policy: str) -> VelocityFn:
        def predictor(c: Conditioning) -> VelocityFn:
            return lambda x, sigma: self.model(x, sigma, c, w, policy)

        return guided_velocity(
            predictor(cond), predictor(uncond) if uncond is not None else None, self.config.guidance_scale
        )

    def _sde_window(self, epoch: int) -> tuple[int, int]:
        """grpo steps that are stochastic and trained; "cps" skips the last step, whose std is zero."""
        config = self.config
        last = config.num_steps - (1 if config.sde_kind == "cps" else 0)
        if not config.sde_window:
            return 0, last
        size = min(config.sde_window, last)
        return sample_sde_window(config.num_steps, size, _generator(config.seed, "window", epoch), last - size)

    # ------------------------------------------------------------------ stage 2: rewards
    def calculate_rewards(self, chunk: Chunk) -> torch.Tensor:
        """(b, M): every sample scored by every reward, never summed; NaN marks a reward that failed to score."""
        audio, rate = chunk.audio if chunk.audio is not None else (None, None)
        batch = RewardBatch(
            images=chunk.samples, prompts=chunk.prompts, sources=chunk.sources, audio=audio, audio_sample_rate=rate
        )
        with self._resident(lambda: [m for reward in self.rewards for m in reward.torch_modules()],
                            self.reward_device, self.config.offload_rewards):
            return torch.stack([_score(reward, batch) for reward in self.rewards], dim=1)

    # ------------------------------------------------------------------ stage 3: advantages
    def compute_advantages(self, plan: EpochPlan, rewards: torch.Tensor) -> torch.Tensor | None:
        """(N, M) per-reward advantages within each (prompt, w) group ((N, 1) for the baseline); None to skip."""
        config = self.config
        signed = rewards * self.signs
        try:
            if config.is_baseline:
                adv = fixed_weight_advantages(
                    signed, torch.tensor(config.fixed_weights), plan.prompt_of, config.adv_eps, config.adv_clip
                )
                return adv[:, None]
            return group_advantages(signed, plan.group_of, config.adv_eps, config.adv_clip, config.advantage_std)
        except NonFiniteRewardError as err:
            self._bad_step(f"epoch {plan.epoch + 1}: {err}")
            return None

    def _preference_of(self, plan: EpochPlan, index: torch.Tensor) -> torch.Tensor:
        """The w the loss scalarizes with: the sample's preference, or a single 1 for the baseline's one advantage."""
        if self.config.is_baseline:
            return torch.ones(len(index), 1)
        return plan.w[index]

    # ------------------------------------------------------------------ stage 4: loss and optimiser
    def optimize(self, plan: EpochPlan, rollouts: Rollouts, advantages: torch.Tensor) -> dict[str, float]:
        """Accumulate the loss over the epoch's samples and trained steps; `optimizer_steps_per_epoch` steps."""
        config, device, epoch = self.config, self.accelerator.device, plan.epoch
        index = rollouts.index
        adv = advantages[index]
        w = self._preference_of(plan, index)
        if config.objective == "nft":
            weight = nft_reward_weight(adv, w, config.adv_clip)  # r = sum_m w_m r_m, one NFT loss per sample
        else:
            weight = scalarize_advantages(adv, w)  # A_w = sum_m w_m A_m
        data = rollouts.stacked()
        n = len(index)
        order = torch.randperm(n, generator=_generator(config.seed, "order", epoch, self.accelerator.process_index))
        passes = self._passes(rollouts, epoch)
        num_passes = passes.shape[1]
        stats: list[dict[str, torch.Tensor]] = []
        norms: list[float] = []
        bar = tqdm(total=n * num_passes, desc=f"epoch {epoch + 1} loss", leave=False, disable=self._quiet)
        model_w = plan.w[index].to(device)
        for part in order.chunk(config.optimizer_steps_per_epoch):
            jobs = [(mb, j) for mb in part.split(config.batch_size) for j in range(num_passes)]
            for count, (mb, j) in enumerate(jobs):
                last = count == len(jobs) - 1
                with nullcontext() if last else self._no_sync():
                    loss, info = self.compute_loss(
                        plan, rollouts, data, passes, mb, j, model_w[mb], weight[mb].to(device)
                    )
                    self.accelerator.backward(loss * (len(mb) / (len(part) * num_passes)))
                stats.append(info)
                bar.update(len(mb))
            norm = self._optimizer_step()
            if norm is not None:
                norms.append(norm)
        bar.close()
        if norms and config.objective == "nft":
            update_old_policy_(self.policies.old, self.policies.trainable, lagged_decay(self.step))
        keys = sorted(stats[0])
        local = torch.stack([torch.stack([s[k].double() for k in keys]) for s in stats]).mean(dim=0)
        means = self.accelerator.reduce(local.to(device), reduction="mean").cpu().tolist()  # over processes
        out = dict(zip(keys, means))
        if norms:
            out["grad_norm"] = sum(norms) / len(norms)
        return out

    def _no_sync(self) -> Any:
        """Accumulate gradients without communication until the last micro-batch of an optimiser step."""
        if isinstance(self.model, FSDPModule):
            return _gradients_unsynced(self.model)
        return self.accelerator.no_sync(self.model)

    def _passes(self, rollouts: Rollouts, epoch: int) -> torch.Tensor:
        """Per local sample, the grid steps it is trained at: (n, steps) indices into the sigma grid."""
        config = self.config
        if config.objective == "grpo":
            steps = rollouts.log_probs[0].shape[0]
            return torch.arange(steps).expand(len(rollouts.index), -1)
        return torch.stack([
            torch.randperm(config.num_steps, generator=_generator(config.seed, "timesteps", epoch, int(i)))
            [: config.train_timesteps]
            for i in rollouts.index
        ])

    def compute_loss(
        self, plan: EpochPlan, rollouts: Rollouts, data: dict[str, torch.Tensor], passes: torch.Tensor,
        mb: torch.Tensor, j: int, w: torch.Tensor, weight: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the local samples `mb` at their j-th trained step (a mean over the micro-batch) and its stats.

        nft: x_t = (1 - t) x0 + t eps at a grid timestep; v_theta (with grad), v_old, v_ref (no adapter, no w).
        grpo: the stored SDE step's log-probability under the current weights, and the reference step mean.
        """
        config = self.config
        cond = select_conditioning(rollouts.cond, rollouts.cond_of[mb])
        sigmas = rollouts.sigmas
        if config.objective == "nft":
            x = data["x0"][mb]
            t = _to_device(sigmas[passes[mb, j]], x.device)
            eps = _to_device(torch.stack([  # per sample: the draw depends neither on batching nor on processes
                torch.randn(x.shape[1:], generator=_generator(config.seed, "eps", plan.epoch, int(i), j))
                for i in rollouts.index[mb]
            ]), x.device).to(x.dtype)
            shape = (-1,) + (1,) * (x.ndim - 1)
            x_t = (1 - t.view(shape)) * x + t.view(shape) * eps
            with torch.no_grad():
                v_ref = self.model(x_t, t, cond, None, REFERENCE) if config.kl_weight > 0 else None
                v_old = self.model(x_t, t, cond, w, OLD)
            v_theta = self.model(x_t, t, cond, w, CURRENT)
            return nft_loss(v_theta, v_old, v_ref, x_t, x, t, weight, self.nft)
        start = self._sde_window(plan.epoch)[0]
        old_log_prob = data["log_probs"][j, mb]
        x, x_next = data["latents"][j, mb], data["latents"][j + 1, mb]
        s, s_next = (_to_device(sigmas[k], x.device) for k in (start + j, start + j + 1))
        sigma = s.expand(len(mb))
        kwargs = dict(noise_level=config.noise_level, kind=config.sde_kind, sigma_max_denominator=float(sigmas[1]))
        v_theta = self.model(x, sigma, cond, w, CURRENT)
        step = sde_step(v_theta, x, s, s_next, prev_sample=x_next, **kwargs)
        mean_ref = None
        if config.grpo_kl_weight > 0:
            with torch.no_grad():
                v_ref = self.model(x, sigma, cond, None, REFERENCE)
                mean_ref = sde_transition(v_ref, x, s, s_next, **kwargs)[0]
        return grpo_loss(step.log_prob, old_log_prob, weight, step.mean, mean_ref, step.std, self.grpo)

    def _optimizer_step(self) -> float | None:
        """Clip, check and step; a non-finite gradient norm (NaN/inf loss on any process) skips the step."""
        params = self.policies.trainable
        if self._lora_waits():
            for param in self.policies.lora_parameters:
                param.grad = None  # AdamW skips it: no step, no decay, no moments until the warm-up ends
        max_norm = self.config.max_grad_norm or math.inf
        norm = float(full_tensor(self.accelerator.clip_grad_norm_(params, max_norm)))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_step(f"epoch {self.epoch + 1}: the loss or its gradient is NaN/inf (grad norm {norm})")
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.bad_in_a_row = 0
        if self.ema is not None:
            self.ema.update(params)
        return norm

    def _lora_waits(self) -> bool:
        """--modules-first: during the first epochs only the preference modules step. Measured on the toy world
        (docs/toy.md): while w cannot yet steer, every corner's gradient lands on the one shared LoRA, which follows
        the easier reward and drags the slower end below the base before the modules tell the ends apart."""
        config = self.config
        return not config.is_baseline and self.epoch < round(config.modules_first * config.epochs)

    def _bad_step(self, message: str) -> None:
        self.skipped += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.config.max_bad_steps:
            raise TrainingAborted(
                f"{message}. {self.bad_in_a_row} steps in a row were skipped for NaN/inf, so training stopped. Check "
                "the rewards' inputs and servers, lower --lr, or turn on --max-grad-norm; raise --max-bad-steps to "
                "tolerate more."
            )
        logger.warning("%s; skipping this step (%d skipped so far).", message, self.skipped)

    # ------------------------------------------------------------------ stage 5: log, checkpoint, output
    def log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        self.metrics.log(self.epoch, metrics)
        if self.accelerator.is_main_process and self._quiet:
            rewards = " ".join(f"{k[7:]}={v:.4g}" for k, v in metrics.items() if k.startswith("reward/"))
            loss = f"loss={metrics['loss']:.4g} " if "loss" in metrics else "skipped "
            logger.info("epoch %d/%d %s%s", self.epoch, self.config.epochs, loss, rewards)

    @property
    def _quiet(self) -> bool:
        return not (self.config.progress and self.accelerator.is_main_process)

    def _named_state(self) -> dict[str, dict[str, torch.Tensor]]:
        tensors = {"trainable": {n: p for n, p in self.policies.named_trainable}}
        if self.policies.named_old:
            tensors["old"] = {n: p for (n, _), p in zip(self.policies.named_trainable, self.policies.old)}
        if self.ema is not None:
            tensors["ema"] = self.ema.state_dict()
        return tensors

    def save_checkpoint(self) -> None:
        """Whole tensors (gathered by every process under FSDP), written atomically by the main process."""
        rng = gather_object([rng_state()])
        main = self.accelerator.is_main_process
        tensors = {group: gathered(named, main) for group, named in self._named_state().items()}
        opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer.state_dict())
        tensors["optimizer"] = gathered(opt_tensors, main)
        if main:
            state = {
                "epoch": self.epoch, "step": self.step, "skipped": self.skipped, "bad_in_a_row": self.bad_in_a_row,
                "fingerprint": self.config.fingerprint(), "config_fields": self.config.fingerprint_fields(),
                "optimizer": opt_meta, "rng": rng, "history": self.history,
            }
            root = self.config.checkpoint_path()
            try:
                save_checkpoint(root, self.epoch, tensors, state, self.config.keep_checkpoints)
            except (OSError, SafetensorError) as err:  # a full disk; the previous checkpoint is untouched
                raise write_error(err, f"checkpoint {checkpoint_name(self.epoch)} in {root}", "--checkpoint-dir", root,
                                  self.config.epochs) from None
        self.accelerator.wait_for_everyone()

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Every process reads the whole tensors and keeps its shard of them (all of them without FSDP)."""
        state = checkpoint.state
        with torch.no_grad():
            for group, named in self._named_state().items():
                saved = checkpoint.tensors(group)
                if group == "ema":
                    self.ema.load_state_dict({k: shard_like(v, named.get(k, v)) for k, v in saved.items()})
                    continue
                missing = sorted(set(named) - set(saved))
                if missing:
                    raise InputError(f"Checkpoint {checkpoint.path} lacks {group} tensors {missing[:3]}; resume from "
                                     "another checkpoint.")
                for name, param in named.items():
                    param.copy_(shard_like(saved[name], param))
        optimizer_state = optimizer_from_tensors(checkpoint.tensors("optimizer"), state["optimizer"])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.load_state_dict(shard_optimizer_state(optimizer_state, params))
        self.epoch, self.step, self.skipped = state["epoch"], state["step"], state["skipped"]
        self.bad_in_a_row, self.history = state["bad_in_a_row"], state["history"]
        if len(state["rng"]) == self.accelerator.num_processes:
            set_rng_state(state["rng"][self.accelerator.process_index])
        logger.info("Resumed from %s after epoch %d (step %d).", checkpoint.path, self.epoch, self.step)

    def _check_replicas(self) -> None:
        """Every process must hold the same weights after training (gradients were synchronised); under FSDP each
        holds a shard, and the sums are over the whole tensors."""
        total = torch.stack([full_tensor(p.detach().double().sum()) for p in self.policies.trainable]).sum()
        sums = self.accelerator.gather(total.reshape(1).to(self.accelerator.device))
        if not torch.equal(sums, sums[:1].expand_as(sums)):
            raise RuntimeError(f"Processes ended with different weights (checksums {sums.tolist()}).")

    def training_metadata(self) -> dict[str, Any]:
        config = self.config
        return {
            "objective": config.objective,
            "method": "fixed_weights" if config.is_baseline else "paretoslider",
            "fixed_weights": list(config.fixed_weights) if config.is_baseline else None,
            "early_scalarization_baseline": config.is_baseline,
            "epochs": self.epoch,
            "steps": self.step,
            "skipped_steps": self.skipped,
            "rewards": list(self.inputs.spec.reward_names),
            "seed": config.seed,
            "ema": config.ema,
            "processes": self.accelerator.num_processes,
            "fsdp": self.fsdp is not None,
            "preference_mixture": None if config.is_baseline else self.inputs.mixture.to_text(),
            "config": config.to_dict(),
        }

    def save_output(self) -> Path:
        """The ParetoSlider file, with the EMA weights when EMA is on (every process gathers, the main one writes)."""
        path = self.config.output_path()
        with self.ema.swapped_in(self.policies.trainable) if self.ema is not None else nullcontext():
            file = self.slider.to_file(self.training_metadata())  # may share storage with the weights: save here
            if self.accelerator.is_main_process:
                try:
                    save_pareto_slider(path, file)
                except (OSError, SafetensorError) as err:  # the final checkpoint holds everything the file would
                    raise write_error(err, f"the output file {path}", "--output", self.config.checkpoint_path(),
                                      self.config.epochs) from None
        self.accelerator.wait_for_everyone()
        return path

    def summary_header(self) -> dict[str, Any]:
        config = self.config
        method = f"fixed weights {list(config.fixed_weights)}" if config.is_baseline else "ParetoSlider"
        return {
            "output": str(config.output_path()), "method": f"{method}, {config.objective}", "backbone": config.backbone,
            "epochs": self.epoch, "optimiser steps": self.step, "skipped steps": self.skipped,
            "processes": self.accelerator.num_processes, "metrics": str(config.log_path()),
        }


def check_fsdp_version() -> None:
    """Refuse FSDP1 from `accelerate launch`'s environment, before accelerate builds its plugin (which fails on CPU
    with a message about devices)."""
    version = os.environ.get("FSDP_VERSION", "1")
    if parse_flag_from_env("ACCELERATE_USE_FSDP") and version != "2":
        raise InputError(
            f"pslider-train supports FSDP version 2 only, but the accelerate config asks for version {version} (its "
            "wrappers rename the modules that the preference hooks attach to). Set `fsdp_version: 2` under "
            "fsdp_config (or pass --fsdp_version 2 to accelerate launch); see trainer/configs/accelerate_fsdp.yaml."
        )


def check_fsdp_settings(plugin: FullyShardedDataParallelPlugin, mixed_precision: str) -> None:
    """Refuse FSDP2 settings the trainer's sharding cannot honour, naming the setting and its fix."""
    unsupported = {
        "fsdp_offload_params: true": isinstance(plugin.cpu_offload, CPUOffloadPolicy),
        "fsdp_activation_checkpointing: true (use --gradient-checkpointing)": plugin.activation_checkpointing,
        "fsdp_reshard_after_forward: false": plugin.reshard_after_forward is False,
        "--mixed-precision fp16 (use bf16)": mixed_precision == "fp16",
    }
    refused = [name for name, used in unsupported.items() if used]
    if refused:
        raise InputError(
            f"pslider-train under FSDP does not support {'; '.join(refused)}. Change these settings; see "
            "trainer/configs/accelerate_fsdp.yaml and docs/training.md (FSDP)."
        )


@contextmanager
def _gradients_unsynced(model: FSDPModule) -> Iterator[None]:
    """FSDP2's no_sync: gradients stay whole and local until a backward with sync on reduce-scatters them."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the GPU (a pageable copy would: pinned and asynchronous)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _coders(pipe: Any, adapter: Any) -> list[torch.nn.Module]:
    """The pipeline's models other than the transformer and the text encoders: VAEs (and LTX-2's vocoder), which
    run only to encode sources and decode samples."""
    skip = {"transformer", *adapter.text_encoder_names}
    return [m for name, m in vars(pipe).items() if isinstance(m, torch.nn.Module) and name not in skip]


def _generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def _score(reward: Reward, batch: RewardBatch) -> torch.Tensor:
    """One reward's scores; a reward that rejects its own NaN/inf output yields NaNs so the step is skipped."""
    try:
        return reward(batch)
    except NonFiniteScoreError:
        return torch.full((len(batch),), math.nan)


class _Timer:
    """Wall time per stage (synchronising CUDA so that queued kernels count where they were launched)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._stage = ""

    def __call__(self, stage: str) -> "_Timer":
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self._sync()
        self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + time.perf_counter() - self._start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def totals(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()}
