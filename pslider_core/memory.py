"""GPU memory of a `pslider-train` run, from configs alone: no weights are read or downloaded.

Weights: every component of the base pipeline is built on the meta device from its `config.json` (a shipped copy
of a real base's configs, `backbones/real_configs/<org>--<name>/`, or a local base folder, of which only the
config files are read) in the dtype the trainer loads it in, and its parameters and buffers are counted.

Activations are measured, not modelled. The adapter's real `predict_velocity` runs the full-depth meta transformer,
with the LoRA and preference hooks attached, on meta inputs of the configured micro-batch and size
(`BackboneAdapter.random_conditioning`), and then backward runs on meta too. Meanwhile:

- a TorchDispatchMode follows every storage an op creates until it is released: the live-bytes high-water mark is
  the stage's transient peak, and what is still alive when the forward returns is what the backward needs (tensors
  autograd saved, the block inputs that non-reentrant checkpointing holds outside saved_tensors_hooks, the output);
  the backward pass then recomputes the checkpointed blocks one at a time, which the same tracker sees;
- saved_tensors_hooks sum what autograd itself saved (the cross-check of the above without checkpointing);
- CUDA autocast's cast policy is applied by a TorchFunctionMode (meta tensors have no autocast dispatch key; the
  op lists are ATen's `AT_FORALL_LOWER_PRECISION_FP`, `AT_FORALL_FP32`, `AT_FORALL_FP32_SET_OPT_DTYPE` and
  `AT_FORALL_PROMOTE`, aten/src/ATen/autocast_mode.h), including the cache of low-precision copies of float32
  leaf weights that lives until the forward ends;
- scaled_dot_product_attention is replaced by a stand-in that behaves like the GPU's flash / memory-efficient
  kernels: it returns the output and saves q, k, v, the output and the logsumexp (O(N) memory), where the math
  path that meta tensors would take materialises the N x N scores, which no GPU kernel does; its backward
  allocates dq, dk, dv and the per-row softmax statistics;
- `fast_meta` answers the hottest ops without aten's Python meta kernels (same shapes, strides and dtypes;
  `LiveBytes(check=True)` compares them), which would otherwise make a full-depth step take minutes.

The stages (encode, rollout, rewards, training) add these parts up the way the trainer holds them (`_Footprint`);
the FSDP rows divide the transformer's blocks and the trained tensors' copies by the number of processes and add
the units gathered while they run.

The loss of the measured training step is a mean square of the velocity: `nft_loss` and `grpo_loss` read floats
for their statistics, which meta tensors do not have; their other temporaries are latent-sized.

Not counted: the CUDA context and the caching allocator's fragmentation (the reason for a 64 GiB target on 80 GB
GPUs), NCCL buffers, DDP's gradient buckets (one more gradient-sized copy of the trained tensors under DDP), the
aesthetic reward's MLP head (under a million parameters) and host memory.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._prims_common import compute_elementwise_output_strides
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._python_dispatch import TorchDispatchMode

from .backbones import BackboneAdapter, get_backbone
from .lora import LoraSpec
from .slider import ParetoSlider

REAL_CONFIGS = Path(__file__).parent / "backbones" / "real_configs"
MODEL_INDEX = "model_index.json"
GIB = 2**30
TARGET_GIB = 64.0  # one 80 GB GPU, with room for the CUDA context and allocator fragmentation
FSDP_PROCESSES = (2, 4, 8)
META = torch.device("meta")
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REWARD_IMAGE_DEFAULTS = {"clip": "openai/clip-vit-large-patch14", "dinov2": "facebook/dinov2-base"}


# ---------------------------------------------------------------------- configs as data
def shipped_configs(hub_id: str) -> Path | None:
    """The shipped copy of a hub repository's config files (`org/name` -> real_configs/org--name), if any."""
    folder = REAL_CONFIGS / hub_id.replace("/", "--")
    return folder if "/" in hub_id and folder.is_dir() else None


def config_folder(source: str | Path, option: str = "--base") -> Path:
    """A local folder as it is, else the shipped configs of a hub id; the error says what to pass to `option`."""
    path = Path(source)
    if path.is_dir():
        return path
    shipped = shipped_configs(str(source))
    if shipped is None:
        known = sorted(p.name.replace("--", "/", 1) for p in REAL_CONFIGS.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"No configs for {str(source)!r}: it is not a local folder and its configs are not shipped (shipped: "
            f"{', '.join(known)}). Pass {option} a local folder of the model (only its config files are read)."
        )
    return shipped


def _component_class(library: str, class_name: str) -> type:
    """The class a model_index.json entry names, resolved as diffusers does (pipeline-local classes by folder)."""
    import diffusers
    import transformers

    if library == "diffusers":
        return getattr(diffusers, class_name)
    if library == "transformers":
        return getattr(transformers, class_name)
    return getattr(importlib.import_module(f"diffusers.pipelines.{library}"), class_name)


def model_from_config(
    cls: type, folder: Path, dtype: torch.dtype, device: torch.device | str = META, overrides: dict | None = None,
) -> nn.Module:
    """`cls` built from `folder/config.json` (with `overrides`, e.g. fewer layers) on `device`, with the dtypes
    `from_pretrained(dtype=...)` gives: everything in `dtype` but the model's keep-in-float32 modules (diffusers:
    always; transformers: the strict list for fp16/bf16, the plain list for fp16) and, in transformers, buffers its
    init creates in float32. On a real device the weights are the model's own random init, made in `dtype` directly
    (a 19B model initialised in float32 would not fit an 80 GB GPU)."""
    from diffusers import ModelMixin
    from transformers import AutoConfig, PreTrainedModel

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; pass a folder in the diffusers layout.")
    overrides = overrides or {}
    with torch.device(device), _default_dtype(dtype if torch.device(device) != META else torch.float32):
        if issubclass(cls, ModelMixin):
            model = cls.from_config({**cls.load_config(str(folder)), **overrides})
        elif issubclass(cls, PreTrainedModel):
            config = AutoConfig.from_pretrained(str(folder))
            for key, value in overrides.items():
                setattr(config, key, value)
            model = cls._from_config(config, dtype=dtype)
        else:
            raise TypeError(f"{cls.__name__} is neither a diffusers nor a transformers model; cannot build it.")
    if isinstance(model, ModelMixin):
        for t in [*model.parameters(), *model.buffers()]:  # what from_pretrained(dtype=...) loads
            if t.is_floating_point():
                t.data = t.data.to(dtype)
        keep = list(getattr(model, "_keep_in_fp32_modules", None) or []) if dtype != torch.float32 else []
        _upcast(model, keep, lambda pattern, name: pattern in name)
    else:
        keep = list(getattr(model, "_keep_in_fp32_modules_strict", None) or []) if dtype != torch.float32 else []
        if dtype == torch.float16:
            keep += list(getattr(model, "_keep_in_fp32_modules", None) or [])
        _upcast(model, keep, lambda pattern, name: re.search(rf"(^|\.){re.escape(pattern)}(\.|$)", name) is not None)
    return model.eval().requires_grad_(False)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _upcast(model: nn.Module, patterns: list[str], matches: Callable[[str, str], bool]) -> None:
    for name, param in model.named_parameters():
        if param.is_floating_point() and any(matches(p, name) for p in patterns):
            param.data = param.data.float()


def build_pipeline(
    adapter: BackboneAdapter, folder: str | Path, dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = META, skip: tuple[str, ...] = (), overrides: dict[str, dict] | None = None,
) -> Any:
    """The adapter's diffusers pipeline from a folder of configs: every model on `device` (meta: shapes only; else
    random weights), the components named in `skip` and tokenizers/processors None, `overrides` per component
    (e.g. {"transformer": {"num_layers": 2}})."""
    from diffusers import SchedulerMixin

    folder = Path(folder)
    index_path = folder / MODEL_INDEX
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {MODEL_INDEX}: building a pipeline from configs needs a diffusers pipeline folder "
            f"(save_pretrained layout) of a {adapter.pipeline_class.__name__}."
        )
    index = json.loads(index_path.read_text())
    if index.get("_class_name") != adapter.pipeline_class.__name__:
        raise ValueError(
            f"{folder} holds a {index.get('_class_name')}, but backbone {adapter.name!r} needs a "
            f"{adapter.pipeline_class.__name__}; pass the matching --backbone or --base."
        )
    components: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        library, class_name = entry
        if library is None or name in skip:
            components[name] = None
            continue
        cls = _component_class(library, class_name)
        if issubclass(cls, nn.Module):
            components[name] = model_from_config(cls, folder / name, dtype, device, (overrides or {}).get(name))
        elif issubclass(cls, SchedulerMixin):
            config = folder / name / "scheduler_config.json"
            components[name] = cls.from_config(cls.load_config(str(config.parent))) if config.is_file() else cls()
        else:  # tokenizers and processors hold no GPU memory
            components[name] = None
    return adapter.pipeline_class(**components)


# ---------------------------------------------------------------------- counting
def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Parameters and buffers, each shared tensor once (tied embeddings)."""
    return sum(tensor_bytes(t) for t in [*module.parameters(), *module.buffers()])


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _storage(t: torch.Tensor) -> int:
    """Identity of the storage behind a tensor (views share it); valid on meta, where data pointers are 0."""
    return t.untyped_storage()._cdata


aten = torch.ops.aten
_ELEMENTWISE = {
    aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.add.Scalar, aten.sub.Scalar,
    aten.mul.Scalar, aten.div.Scalar, aten.pow.Tensor_Scalar, aten.rsqrt.default, aten.neg.default,
    aten.exp.default, aten.silu.default, aten.tanh.default, aten.sigmoid.default,
}
_GELU = {aten.gelu.default, aten.gelu_backward.default}
_MATMUL = {aten.addmm.default, aten.mm.default, aten.bmm.default}
_REDUCTION = {aten.mean.dim, aten.sum.dim_IntList}
_IN_PLACE = {aten.addcmul_.default, aten.add_.Tensor, aten.add_.Scalar, aten.mul_.Tensor, aten.mul_.Scalar}


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in an op's arguments or results (tuples, lists and dicts of them; pytree is 3x slower here)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(fn, item) for item in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(fn, v) for k, v in obj.items()}
    return obj


def fast_meta(func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The output of the hottest ops on meta tensors without aten's Python meta kernels (about 1 ms an op: most of a
    full-depth forward); None where the op needs its kernel. Shapes, strides and dtypes are the kernels' (the
    elementwise layout rule is the one prims use; `LiveBytes(check=True)` compares every result with aten's)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or any(t.device.type != "meta" for t in tensors):
        return None
    first = tensors[0]
    if func in _IN_PLACE:
        return first
    if func in _MATMUL and not kwargs:  # a fresh row-major result whatever the input strides
        a, b = args[-2], args[-1]
        shape = (a.shape[0], a.shape[1], b.shape[2]) if func is aten.bmm.default else (a.shape[0], b.shape[1])
        return torch.empty(shape, dtype=a.dtype, device=META)
    if func in _ELEMENTWISE and not kwargs:
        return _elementwise(tensors, torch.result_type(*args) if len(args) == 2 else first.dtype)
    if func in _GELU and set(kwargs) <= {"approximate"}:
        return _elementwise(tensors, first.dtype)
    if func is aten.slice_backward.default:
        return torch.empty(args[1], dtype=first.dtype, device=META)
    if func is aten._to_copy.default and len(args) == 1 and set(kwargs) <= {"dtype", "layout", "device"}:
        same_place = kwargs.get("layout", torch.strided) == torch.strided and kwargs.get("device", META) == META
        if same_place and first.is_contiguous():
            return torch.empty(first.shape, dtype=kwargs.get("dtype", first.dtype), device=META)
    reduces = func in _REDUCTION and isinstance(args[1], (list, tuple)) and len(args[1]) > 0
    if reduces and first.is_contiguous() and first.is_floating_point() and set(kwargs) <= {"dtype"}:
        dims = [d % first.ndim for d in args[1]]
        keep = len(args) > 2 and args[2]
        shape = [1 if i in dims else n for i, n in enumerate(first.shape) if keep or i not in dims]
        return torch.empty(shape, dtype=kwargs.get("dtype") or first.dtype, device=META)
    return None


def _elementwise(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    ndim = max(t.ndim for t in tensors)
    shape = [1] * ndim
    for t in tensors:
        for i, n in enumerate(t.shape, start=ndim - t.ndim):
            if n != 1:
                if shape[i] not in (1, n):
                    raise RuntimeError(f"shapes {[tuple(t.shape) for t in tensors]} do not broadcast")
                shape[i] = n
    if all(t.is_contiguous() for t in tensors):
        return torch.empty(shape, dtype=dtype, device=META)
    key = (tuple(shape), *((tuple(t.shape), t.stride()) for t in tensors))
    strides = _STRIDES.get(key)
    if strides is None:  # the same layouts recur in every block
        strides = _STRIDES[key] = compute_elementwise_output_strides(*(t.expand(shape) for t in tensors))
    return torch.empty_strided(shape, strides, dtype=dtype, device=META)


_STRIDES: dict[tuple, tuple[int, ...]] = {}


class LiveBytes(TorchDispatchMode):
    """High-water mark of the bytes of the storages ops create inside the mode, each followed to its release.

    Only storages born inside count: an op output that shares an input's storage (a view, an in-place op) adds
    nothing, so weights, gradients accumulated in place and inputs made before are never counted. `check` runs
    aten's own meta kernel next to every `fast_meta` result and raises on any difference.
    """

    def __init__(self, check: bool = False) -> None:
        super().__init__()
        self.check = check
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = fast_meta(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        elif self.check:
            real = func(*args, **kwargs)
            if (real.shape, real.stride(), real.dtype) != (out.shape, out.stride(), out.dtype):
                raise AssertionError(f"fast_meta({func}) gave {out.shape} {out.stride()} {out.dtype}, aten "
                                     f"{real.shape} {real.stride()} {real.dtype}")
        outputs = list(_tensors(out))
        if outputs:
            inputs = {_storage(t) for t in _tensors((args, kwargs))}
            for t in outputs:
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live or key in inputs:
            return
        size = storage.nbytes()
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


@contextmanager
def saved_for_backward(tracker: LiveBytes) -> Iterator[dict[int, int]]:
    """{storage: bytes} of the tensors autograd saves inside the block that `tracker` saw born (weights left out)."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage(t)
        if key in tracker.live:
            saved[key] = tracker.live[key]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


# ---------------------------------------------------------------------- CUDA autocast on meta
_LOWER_PRECISION = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "prelu",
    "addmm", "addmv", "addr", "matmul", "__matmul__", "__rmatmul__", "einsum", "mm", "mv", "linalg_vecdot", "linear",
    "addbmm", "baddbmm", "bmm", "chain_matmul", "multi_dot", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell", "scaled_dot_product_attention",
})
_FLOAT32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh",
    "tan", "pow", "__pow__", "__rpow__", "softplus", "layer_norm", "group_norm", "norm", "nuclear_norm",
    "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss", "kl_div",
    "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss",
    "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist",
    "pdist", "cdist", "renorm", "logsumexp", "prod", "softmax", "log_softmax", "cumprod", "cumsum", "vector_norm",
    "matrix_norm", "sum",
})
_PROMOTE = frozenset({
    "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put", "tensordot",
    "scatter_add",
})


@dataclass(frozen=True)
class AutocastPolicy:
    """Which torch functions autocast runs in the low-precision dtype, in float32, or in their widest input dtype."""

    lower_precision: frozenset[str] = _LOWER_PRECISION
    float32: frozenset[str] = _FLOAT32
    promote: frozenset[str] = _PROMOTE


CUDA_AUTOCAST = AutocastPolicy()


class EmulatedAutocast(TorchFunctionMode):
    """torch.autocast's casts for tensors without an autocast dispatch key (meta): floating inputs of the policy's
    functions are cast, float32 leaf weights that require grad once per region (autocast's weight cache)."""

    def __init__(self, dtype: torch.dtype, policy: AutocastPolicy = CUDA_AUTOCAST) -> None:
        super().__init__()
        self.dtype = dtype
        self.policy = policy
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = None
        if name in self.policy.lower_precision:
            target = self.dtype
        elif name in self.policy.float32:
            target = torch.float32
        elif name in self.policy.promote:
            floats = [a.dtype for a in _tensors((args, kwargs)) if _eligible(a)]
            if floats:
                target = floats[0]
                for dtype in floats[1:]:
                    target = torch.promote_types(target, dtype)
        if target is not None:
            args, kwargs = _map_tensors(lambda a: self._cast(a, target), (args, kwargs))
        return func(*args, **kwargs)

    def _cast(self, a: Any, dtype: torch.dtype) -> Any:
        if not _eligible(a) or a.dtype == dtype:
            return a
        cacheable = dtype == self.dtype and a.dtype == torch.float32 and a.requires_grad and a.is_leaf
        if not cacheable:
            return a.to(dtype)
        hit = self.cache.get(id(a))
        if hit is None or hit[0] is not a:
            hit = (a, a.to(dtype))
            self.cache[id(a)] = hit
        return hit[1]

    def __exit__(self, *exc: object) -> None:
        self.cache.clear()
        super().__exit__(*exc)


@contextmanager
def autocast_in_recompute(blocks: list[nn.Module], casts: EmulatedAutocast) -> Iterator[None]:
    """`casts` re-entered around every block call made without it: activation checkpointing recomputes blocks from
    the autograd engine, where torch function modes are not active (real autocast's state is restored there)."""
    entered: list[bool] = []

    def before(_module: nn.Module, _args: Any) -> None:
        outside = casts not in _get_current_function_mode_stack()
        if outside:
            casts.__enter__()
        entered.append(outside)

    def after(_module: nn.Module, _args: Any, _out: Any) -> None:
        if entered.pop():
            casts.__exit__(None, None, None)

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(before),
                                           b.register_forward_hook(after, always_call=True))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _eligible(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64


class _FlashAttention(torch.autograd.Function):
    """Shapes, dtypes and saved tensors of a flash / memory-efficient SDPA kernel, on meta."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=v.dtype)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse, *(() if mask is None else (mask,)))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, _out, lse = ctx.saved_tensors[:5]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        row_statistics = torch.empty_like(lse)  # the kernels' per-row dot(dO, O), alive next to dq, dk, dv
        del row_statistics
        return dq, dk, dv, None


def flash_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> torch.Tensor:
    """Drop-in for `F.scaled_dot_product_attention` during measurements (see the module docstring); dropout,
    causality and scale change no shape, so they are ignored."""
    return _FlashAttention.apply(query, key, value, attn_mask)


@contextmanager
def gpu_like_attention(dtype: torch.dtype | None = None) -> Iterator[list[int]]:
    """SDPA replaced by `flash_sdpa` (inputs cast to `dtype`, as autocast does; None: as they come); yields a
    one-item list counting the calls (a model that bypasses SDPA materialises its scores, and the count tells)."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    calls = [0]

    def counted(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        if dtype is not None:
            query, key, value = (t.to(dtype) if _eligible(t) else t for t in (query, key, value))
        return flash_sdpa(query, key, value, *args, **kwargs)

    functional.scaled_dot_product_attention = counted
    try:
        yield calls
    finally:
        functional.scaled_dot_product_attention = original


# ---------------------------------------------------------------------- measurements on meta
@dataclass(frozen=True)
class StepMeasurement:
    """Bytes one transformer call leaves and reaches, created inside the call (its inputs excluded)."""

    kept: int  # alive when the forward returns: what the backward needs (and the output)
    saved: int  # what autograd saved (saved_tensors_hooks); under checkpointing only what is outside the blocks
    peak: int  # high-water mark over the forward and, for training steps, the backward
    attention_calls: int


def measure_velocity(
    adapter: BackboneAdapter, pipe: Any, slider: ParetoSlider, x: torch.Tensor, cond: dict[str, Any],
    w: torch.Tensor | None, *, train: bool, autocast: torch.dtype | None, backward: bool = True, check: bool = False,
) -> StepMeasurement:
    """One `predict_velocity` on meta as the trainer calls it (autocast, preference hooks when `w` is given); with
    `train`, under grad and (with `backward`) followed by the backward of a mean-square loss, the trained tensors'
    gradients already allocated (the steady state of gradient accumulation). `check`: see `LiveBytes`."""
    transformer = pipe.transformer
    trained = list(slider.trainable_parameters())
    for param in trained:
        param.requires_grad_(train)
        param.grad = torch.zeros_like(param) if train else None
    sigma = torch.full((x.shape[0],), 0.5, device=x.device)
    tracker = LiveBytes(check)
    with ExitStack() as stack:
        stack.enter_context(torch.set_grad_enabled(train))
        calls = stack.enter_context(gpu_like_attention(autocast))
        stack.enter_context(tracker)
        saved = stack.enter_context(saved_for_backward(tracker))
        if w is not None:
            stack.enter_context(adapter.condition(transformer, slider.modules, w))
        casts = stack.enter_context(EmulatedAutocast(autocast)) if autocast is not None else None
        if casts is not None:
            blocks = [m for m in transformer.modules() if type(m).__name__ in adapter.fsdp_block_classes]
            stack.enter_context(autocast_in_recompute(blocks, casts))
        v = adapter.predict_velocity(pipe, transformer, x, sigma, cond)
        if casts is not None:
            casts.cache.clear()  # autocast's weight cache ends with the forward's autocast region
        kept = tracker.current
        if train and backward:
            v.float().square().mean().backward()
        del v
        peak = tracker.peak
    for param in trained:
        param.grad = None
    return StepMeasurement(kept=kept, saved=sum(saved.values()), peak=peak, attention_calls=calls[0])


def measure_no_grad(fn: Callable[[], Any]) -> int:
    """High-water mark of the bytes `fn` creates under no_grad (its result included while it lives)."""
    tracker = LiveBytes()
    with torch.no_grad(), gpu_like_attention(), tracker:
        out = fn()
        del out
    return tracker.peak


def attach_trainables(
    adapter: BackboneAdapter, transformer: nn.Module, reward_names: list[str], *, rank: int, alpha: float,
    mode: str, num_freqs: int, reward_ranks: int = 0,
) -> ParetoSlider:
    """The trained LoRA and preference modules on `transformer`, in float32 as `trainer/policies.py` keeps them."""
    slider = ParetoSlider.attach(
        transformer, adapter.name, reward_names, mode=mode, num_freqs=num_freqs,
        lora=LoraSpec(rank, alpha, adapter.lora_target_modules), reward_ranks=reward_ranks,
    )
    for param in slider.trainable_parameters():
        param.data = param.data.float()
    return slider


def measure_text_encoder(model: nn.Module, batch: int, max_tokens: int) -> int:
    """Peak of one no-grad forward of a transformers text encoder on `batch` prompts padded to its length (its
    position limit, or `max_tokens`), all hidden states returned (the pipelines read them). No padding mask: on
    meta, transformers cannot inspect one (its (B, 1, L, L) boolean form is a few MB at these lengths)."""
    config = getattr(model.config, "text_config", model.config)
    tokens = min(max_tokens, getattr(config, "max_position_embeddings", None) or max_tokens)
    ids = torch.zeros((batch, tokens), dtype=torch.long, device=META)
    return measure_no_grad(lambda: model(input_ids=ids, output_hidden_states=True))


# ---------------------------------------------------------------------- reward models
@dataclass(frozen=True)
class RewardModel:
    """One reward model as the rewards share it (same checkpoint and processor: one copy), in float32."""

    kind: str  # "clip" or "dinov2"
    model: str
    processor: str
    rewards: tuple[str, ...]
    parameters: int
    bytes: int
    peak: int  # one scoring chunk: images (and, for CLIP, texts) through the model


def reward_model_sources(reward: Any) -> list[tuple[str, str, str]]:
    """(kind, model, processor) of each model a reward loads; [] for model-free and remote rewards. A reward that
    loads a model this estimate does not know raises a TypeError naming it."""
    from .rewards.aesthetic import Aesthetic
    from .rewards.base import ModelReward
    from .rewards.clip import ClipScore
    from .rewards.fidelity import EmbeddingFidelity
    from .rewards.remote import RemoteReward
    from .rewards.video import TemporalConsistency

    if isinstance(reward, (ClipScore, Aesthetic)):
        return [("clip", reward.model, reward.processor or reward.model)]
    if isinstance(reward, EmbeddingFidelity):
        model = reward.model or REWARD_IMAGE_DEFAULTS[reward.backbone]
        return [(reward.backbone, model, reward.processor or model)]
    if isinstance(reward, TemporalConsistency):
        if reward.metric == "ssim":
            return []
        model = reward.model or REWARD_IMAGE_DEFAULTS[reward.metric]
        return [(reward.metric, model, reward.processor or model)]
    if isinstance(reward, ModelReward) and not isinstance(reward, RemoteReward):
        raise TypeError(
            f"The memory estimate does not know which model reward {reward.name!r} loads: serve it with "
            "pslider-reward-server (a remote: spec keeps its weights on the server) or estimate without it."
        )
    return []


def build_reward_models(rewards: list[Any], batch: int, frames: int = 1) -> list[RewardModel]:
    """The distinct reward models of `rewards` on meta (float32, the rewards' dtype), each measured on its largest
    chunk of a micro-batch of `batch` samples of `frames` frames (rewards score in chunks of `batch_size` samples:
    frames of videos, whole videos for video rewards)."""
    from transformers import CLIPModel, Dinov2Model

    from .rewards.hf import ImagePreprocessor

    users: dict[tuple[str, str, str], list[Any]] = {}
    for reward in rewards:
        for source in reward_model_sources(reward):
            users.setdefault(source, []).append(reward)
    out = []
    for (kind, model_id, processor), using in users.items():
        option = f"{using[0].base_name}(model=...)"
        model = model_from_config({"clip": CLIPModel, "dinov2": Dinov2Model}[kind], config_folder(model_id, option),
                           torch.float32)
        processor_option = option.replace("model=", "processor=")
        preprocessor_file = config_folder(processor, processor_option) / "preprocessor_config.json"
        if not preprocessor_file.is_file():
            raise FileNotFoundError(f"{preprocessor_file.parent} has no preprocessor_config.json; pass "
                                    f"{processor_option} the folder that has it (its image size sets the input).")
        preprocessor = json.loads(preprocessor_file.read_text())
        crop = ImagePreprocessor.from_config(preprocessor).crop
        chunk = max(_chunk_images(r, batch, frames) for r in using)
        peak = measure_no_grad(partial(_score_chunk, kind, model, chunk, crop))
        out.append(RewardModel(kind, model_id, processor, tuple(r.name for r in using), parameter_count(model),
                               module_bytes(model), peak))
    return out


def _chunk_images(reward: Any, batch: int, frames: int) -> int:
    if reward.needs_video:
        return min(batch, reward.batch_size or batch) * frames
    return min(batch * frames, reward.batch_size or batch * frames)


def _score_chunk(kind: str, model: nn.Module, chunk: int, crop: tuple[int, int]) -> Any:
    """What the embedders run per chunk: CLIP image and text features, or DINOv2's pooled output."""
    pixels = torch.empty((chunk, 3, *crop), device=META)
    if kind == "dinov2":
        return model(pixel_values=pixels)
    ids = torch.zeros((chunk, model.config.text_config.max_position_embeddings), dtype=torch.long, device=META)
    return model.get_image_features(pixel_values=pixels), model.get_text_features(input_ids=ids)


# ---------------------------------------------------------------------- the estimate
@dataclass(frozen=True)
class Component:
    """One model of the base pipeline, as the trainer holds it."""

    name: str
    class_name: str
    role: str  # "transformer", "text encoder" (released once prompts are cached), "VAE" (the other models: offloadable)
    parameters: int
    bytes: int
    dtype: str


@dataclass(frozen=True)
class Stage:
    """What one GPU holds at the peak of a stage, item by item."""

    name: str
    items: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.items)


@dataclass
class MemoryReport:
    """Per-GPU memory of a run; `table()` renders it."""

    backbone: str
    base: str
    config_source: str
    settings: dict[str, Any]
    components: list[Component]
    reward_models: list[RewardModel]
    rewards_device: str  # "" when the reward models share the training GPU
    trained: dict[str, int]  # parameters: LoRA, preference modules
    copies: dict[str, int]  # bytes per copy of the trained tensors
    training_steps: dict[bool, StepMeasurement]  # by gradient checkpointing on/off
    transients: dict[str, int]  # rollout forward, decode, encode, ...
    states: dict[str, int]  # conditioning, rollout states, decoded samples
    stages: list[Stage]
    fsdp: dict[int, list[Stage]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(stage.total for stage in self.stages)

    def fits(self, limit_gib: float = TARGET_GIB) -> bool:
        return self.peak <= limit_gib * GIB

    def fsdp_needed(self, limit_gib: float = TARGET_GIB) -> int | None:
        """The fewest FSDP processes whose per-GPU peak fits `limit_gib` (None: none of FSDP_PROCESSES)."""
        for n, stages in sorted(self.fsdp.items()):
            if max(s.total for s in stages) <= limit_gib * GIB:
                return n
        return None

    def table(self) -> str:
        return _render(self)


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f}"


def _dtype_name(module: nn.Module) -> str:
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    dtypes = sorted({names.get(p.dtype, str(p.dtype)) for p in module.parameters() if p.is_floating_point()})
    return "+".join(dtypes)


def _role(adapter: BackboneAdapter, name: str) -> str:
    if name == "transformer":
        return "transformer"
    return "text encoder" if name in adapter.text_encoder_names else "VAE"


def estimate_memory(config: Any, base_folder: str | Path | None = None) -> MemoryReport:
    """The memory model of `config` (a TrainConfig: backbone, base, rewards, sizes, precision, residency), built from
    configs alone. `base_folder` overrides where the base's configs are read (default: `config.base`, else the
    backbone's default base: a local folder, or the shipped configs of a hub id)."""
    from .rewards import get_reward, parse_reward_list

    adapter = get_backbone(config.backbone)
    if config.max_sequence_length:
        adapter.max_sequence_length = config.max_sequence_length
    if not config.prompts_per_epoch:
        raise ValueError("--prompts-per-epoch 0 (all prompts) leaves the epoch's size to the prompts file; pass "
                         "--prompts-per-epoch N for the memory estimate.")
    base = config.base or adapter.default_base
    folder = Path(base_folder) if base_folder is not None else config_folder(base)
    dtype = WEIGHT_DTYPES[config.mixed_precision]
    pipe = build_pipeline(adapter, folder, dtype)
    adapter.check_sample_size(pipe, config.height, config.width, config.num_frames)
    rewards = [get_reward(spec) for spec in parse_reward_list(config.rewards)]
    names = [r.name for r in rewards]

    modules = {name: m for name, m in vars(pipe).items() if isinstance(m, nn.Module)}
    components = [
        Component(name, type(m).__name__, _role(adapter, name), parameter_count(m), module_bytes(m), _dtype_name(m))
        for name, m in modules.items()
    ]
    roles: dict[str, int] = {}
    for c in components:
        roles[c.role] = roles.get(c.role, 0) + c.bytes
    slider = attach_trainables(  # a lone reward (the fixed-weights baseline) still gets modules of 2 inputs
        adapter, pipe.transformer, names if len(names) >= 2 else [*names, "unused"],
        rank=config.lora_rank_total(len(names)), alpha=config.lora_alpha, mode=config.conditioning_mode,
        num_freqs=config.num_freqs, reward_ranks=config.lora_reward_ranks,
    )
    copies = _copies(config, pipe.transformer, slider)
    steps, transients, x, cond = _measure(config, adapter, pipe, slider, rewards, dtype)
    states = _epoch_states(config, adapter, x, cond)
    frames = config.num_frames if adapter.modality == "video" else 1
    reward_models = build_reward_models(rewards, config.batch_size, frames)
    reward_device = "" if config.reward_device in ("", "cuda", "cuda:0") else config.reward_device
    footprint = _Footprint(
        config, roles, copies, 0 if reward_device else sum(r.bytes for r in reward_models),
        max((r.peak for r in reward_models), default=0), steps[config.gradient_checkpointing].peak, transients,
        states,
    )
    fsdp = {}
    blocks = [m for m in pipe.transformer.modules() if type(m).__name__ in adapter.fsdp_block_classes]
    if blocks:
        frozen = sum(tensor_bytes(t) for b in blocks for n, t in [*b.named_parameters(), *b.named_buffers()]
                     if "lora_" not in n)
        lora_in = [sum(tensor_bytes(p) for n, p in b.named_parameters() if "lora_" in n) for b in blocks]
        # the unit in use and the one prefetched, whole (frozen + LoRA), one unit's LoRA gradients before the
        # reduce-scatter, and the preference modules of the root unit while it runs
        gathered = 2 * max(module_bytes(b) for b in blocks) + max(lora_in) + module_bytes(slider.modules)
        fsdp = {n: footprint.stages(processes=n, sharded=frozen, gathered=gathered) for n in FSDP_PROCESSES}
    notes = []
    if reward_device:
        notes.append(f"reward models on {reward_device} (--reward-device): not in the training GPU's stages")
    settings = {
        "precision": config.mixed_precision, "micro-batch": config.batch_size,
        "size": f"{config.width}x{config.height}", "frames": config.num_frames,
        "gradient checkpointing": config.gradient_checkpointing, "objective": config.objective, "EMA": config.ema,
        "LoRA rank": config.lora_rank_total(len(names)), "rewards": len(names),
        "epoch": f"{config.prompts_per_epoch} prompts x {config.images_per_prompt} rollouts",
        "offload text encoders": config.offload_text_encoders, "offload VAE": config.offload_vae,
        "offload rewards": config.offload_rewards,
    }
    lora = [p for n, p in pipe.transformer.named_parameters() if "lora_" in n]
    return MemoryReport(
        backbone=adapter.name, base=str(base), config_source=str(folder), settings=settings, components=components,
        reward_models=reward_models, rewards_device=reward_device,
        trained={"LoRA": sum(p.numel() for p in lora), "preference modules": parameter_count(slider.modules)},
        copies=copies, training_steps=steps, transients=transients, states=states, stages=footprint.stages(),
        fsdp=fsdp, notes=notes,
    )


def _copies(config: Any, transformer: nn.Module, slider: ParetoSlider) -> dict[str, int]:
    """Bytes of each copy of the trained tensors (float32), as `trainer/policies.py` and the trainer keep them: the
    modules exist (and have an old copy) even when the fixed-weights baseline trains the LoRA alone."""
    lora = sum(tensor_bytes(p) for n, p in transformer.named_parameters() if "lora_" in n)
    modules = module_bytes(slider.modules)
    trained = lora + (0 if config.is_baseline else modules)
    return {
        "weights": lora + modules, "old policy": lora + modules if config.objective == "nft" else 0,
        "EMA": trained if config.ema else 0, "gradients": trained, "Adam m": trained, "Adam v": trained,
    }


def _measure(
    config: Any, adapter: BackboneAdapter, pipe: Any, slider: ParetoSlider, rewards: list[Any], dtype: torch.dtype,
) -> tuple[dict[bool, StepMeasurement], dict[str, int], torch.Tensor, dict[str, Any]]:
    """The training step with and without checkpointing (the configured one with its backward), and the other
    stages' transients; also the micro-batch's state and conditioning they ran on."""
    from transformers import PreTrainedModel

    height, width, frames, batch = config.height, config.width, config.num_frames, config.batch_size
    autocast = None if config.mixed_precision == "no" else dtype
    x = adapter.initial_noise(pipe, batch, height, width, torch.Generator().manual_seed(0), frames).to(META)
    cond = adapter.random_conditioning(pipe, batch, height=height, width=width, num_frames=frames, device=META)
    num_rewards = slider.spec.num_rewards
    w = None if config.is_baseline else torch.full((batch, num_rewards), 1 / num_rewards, device=META)
    steps = {}
    for checkpointing in (False, True):
        if checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        steps[checkpointing] = measure_velocity(adapter, pipe, slider, x, cond, w, train=True, autocast=autocast,
                                                backward=checkpointing == config.gradient_checkpointing)
    decode = measure_no_grad(lambda: adapter.decode(pipe, x, height, width, frames))
    if any(r.needs_audio for r in rewards):
        decode = max(decode, measure_no_grad(lambda: adapter.decode_audio(pipe, x, height, width, frames)))
    text = [m for name, m in vars(pipe).items() if name in adapter.text_encoder_names
            and isinstance(m, PreTrainedModel)]  # LTX-2's connectors (diffusers) count as weights only
    transients = {
        "rollout forward (no grad)": measure_velocity(adapter, pipe, slider, x, cond, w, train=False,
                                                      autocast=autocast).peak,
        "decode": decode,
        "text encoders (largest forward)": max(
            (measure_text_encoder(m, batch, adapter.max_sequence_length) for m in text), default=0
        ),
    }
    if adapter.needs_source:
        image = torch.empty((batch, 3, height, width), device=META, dtype=dtype)
        transients["source encoding"] = measure_no_grad(lambda: pipe.vae.encode(image))
    return steps, transients, x, cond


def _epoch_states(config: Any, adapter: BackboneAdapter, x: torch.Tensor, cond: dict[str, Any]) -> dict[str, int]:
    """What an epoch keeps on the GPU besides models, for one process: its prompts' conditioning (twice with CFG),
    every rollout's state (x0; grpo also the latents of its SDE window), a decoded micro-batch (and its sources)
    and the loss's latent-sized inputs."""
    batch, height, width = config.batch_size, config.height, config.width
    cond_one = sum(tensor_bytes(t) for k, t in cond.items() if not k.startswith("shared_")) // batch
    state_one = tensor_bytes(x) // batch
    per_sample = 1
    if config.objective == "grpo":
        last = config.num_steps - (1 if config.sde_kind == "cps" else 0)
        per_sample += min(config.sde_window, last) + 1 if config.sde_window else last + 1
    frames = config.num_frames if adapter.modality == "video" else 1
    image = 3 * height * width * 4  # float32 in [0, 1]
    return {
        "epoch conditioning": config.prompts_per_epoch * cond_one * (2 if config.guidance_scale > 1 else 1),
        "rollout states": config.prompts_per_epoch * config.images_per_prompt * state_one * per_sample,
        "decoded micro-batch": batch * image * frames + (batch * image if adapter.needs_source else 0),
        "loss inputs (x_t, noise, v_old, v_ref)": 4 * batch * state_one,
    }


@dataclass
class _Footprint:
    """Stage peaks from the parts of the estimate, on one GPU or per GPU of `processes` FSDP processes.

    Residency follows the trainer: the text encoders encode every prompt before the transformer and the trained
    tensors come to the GPU and are then released (unless --no-offload-text-encoders), the VAEs come to the GPU only
    to encode or decode (--offload-vae), the reward models load at their first use and stay (unless
    --offload-rewards), Adam's moments exist from the first step on, gradients only in the optimisation stage; the
    epoch's conditioning and every rollout's state stay for the epoch, and the optimisation stage stacks the states
    into one more copy.
    """

    config: Any
    roles: dict[str, int]
    copies: dict[str, int]
    reward_bytes: int
    reward_peak: int
    train_peak: int
    transients: dict[str, int]
    states: dict[str, int]

    def stages(self, processes: int = 1, sharded: int = 0, gathered: int = 0) -> list[Stage]:
        config, roles, n = self.config, self.roles, processes
        transformer = roles.get("transformer", 0)
        if n > 1:
            transformer = transformer - sharded + sharded // n + gathered
        text, vae = roles.get("text encoder", 0), roles.get("VAE", 0)
        prompts = config.prompts_per_epoch
        conditioning = self.states["epoch conditioning"] * math.ceil(prompts / n) // prompts
        rollouts = self.states["rollout states"] // n
        label = "transformer" if n == 1 else f"transformer (1/{n} of the blocks + gathered units)"
        base = [(label, transformer)]
        before_step = [(f"trained tensors: {k}" + ("" if n == 1 else f" (1/{n})"), v // n)
                       for k, v in self.copies.items() if v and k not in ("gradients", "Adam m", "Adam v")]
        adam = [(f"trained tensors: {k}" + ("" if n == 1 else f" (1/{n})"), self.copies[k] // n)
                for k in ("Adam m", "Adam v")]
        resident = base + before_step + adam
        if not config.offload_text_encoders:
            resident.append(("text encoders (kept)", text))
        if not config.offload_vae:
            resident.append(("VAE (kept)", vae))
        if not config.offload_rewards and self.reward_bytes:
            resident.append(("reward models (kept after their first use)", self.reward_bytes))
        encoding = max(self.transients["text encoders (largest forward)"], self.transients.get("source encoding", 0))
        vae_in = [] if not config.offload_vae else [("VAE (on the GPU for this stage)", vae)]
        if config.offload_text_encoders:  # before the transformer moves; the VAE encodes sources (Kontext)
            sources = "source encoding" in self.transients
            vae_here = [("VAE (encodes the sources)", vae)] if sources or not config.offload_vae else []
            encode = Stage("encode", tuple([("text encoders", text)] + vae_here
                                           + [("text encoder / source encoding forward", encoding)]))
        else:
            encode = Stage("encode", tuple(resident + vae_in + [("epoch conditioning", conditioning),
                                                                ("text encoder / source encoding forward", encoding)]))
        epoch = [("epoch conditioning", conditioning), ("rollout states", rollouts)]
        rollout_forward = self.transients["rollout forward (no grad)"]
        decode = self.transients["decode"] + (vae if config.offload_vae else 0)
        transient = (("transformer forward (no grad)", rollout_forward) if rollout_forward >= decode
                     else ("VAE (on the GPU for decoding) + decode", decode))
        rollout = Stage("rollout", tuple(resident + epoch + [transient]))
        rewards_in = [] if not config.offload_rewards else [("reward models (on the GPU for this stage)",
                                                             self.reward_bytes)]
        rewards = Stage("rewards", tuple(resident + epoch + rewards_in + [
            ("decoded micro-batch (and sources)", self.states["decoded micro-batch"]),
            ("reward model forward (one chunk)", self.reward_peak)]))
        step = "with" if config.gradient_checkpointing else "without"
        training = Stage("training", tuple(resident + epoch + [
            ("gradients" + ("" if n == 1 else f" (1/{n})"), self.copies["gradients"] // n),
            ("stacked rollout states", rollouts),
            ("loss inputs (x_t, noise, v_old, v_ref)", self.states["loss inputs (x_t, noise, v_old, v_ref)"]),
            (f"training step peak ({step} checkpointing)", self.train_peak)]))
        return [encode, rollout, rewards, training]


def _render(report: MemoryReport) -> str:
    """The report as text: components, trained tensors and copies, activations, stage peaks, FSDP."""
    s = report.settings
    lines = [
        f"pslider-train memory estimate: {report.backbone} on {report.base} (configs: {report.config_source})",
        "settings: " + ", ".join(f"{k} {v}" for k, v in s.items()),
        "GiB = 2^30 bytes; allocated tensors only (CUDA context and allocator fragmentation not included)",
        "",
        f"{'component':<58}{'params':>10}  {'dtype':<9}{'GiB':>8}",
    ]
    for c in report.components:
        lines.append(f"{c.name + ' (' + c.class_name + ', ' + c.role + ')':<58}{c.parameters / 1e9:>9.3f}B  "
                     f"{c.dtype:<9}{_gib(c.bytes)}")
    for r in report.reward_models:
        where = f", on {report.rewards_device}" if report.rewards_device else ""
        lines.append(f"{'reward model ' + r.model + where:<58}{r.parameters / 1e9:>9.3f}B  {'fp32':<9}{_gib(r.bytes)}")
        lines.append(f"    used by {', '.join(r.rewards)}; one scoring chunk peaks at {r.peak / GIB:.2f} GiB")
    lines += ["", (f"trained tensors (float32): LoRA {report.trained['LoRA'] / 1e6:.1f} M, preference modules "
                   f"{report.trained['preference modules'] / 1e6:.1f} M parameters")]
    for name, size in report.copies.items():
        lines.append(f"    {name:<54}{_gib(size)}")
    lines.append(f"    {'all copies':<54}{_gib(sum(report.copies.values()))}")
    lines += ["", (f"activations of one training forward (micro-batch {s['micro-batch']}, {s['size']}, "
                   f"{s['frames']} frame(s)), measured on meta:")]
    for checkpointing, step in report.training_steps.items():
        kind = "with" if checkpointing else "without"
        peak = f", forward+backward peak {step.peak / GIB:.2f}" if checkpointing == s["gradient checkpointing"] else ""
        lines.append(f"    {kind + ' checkpointing: kept for backward':<54}{_gib(step.kept)}  "
                     f"(saved by autograd {step.saved / GIB:.2f}{peak})")
    for name, size in report.transients.items():
        lines.append(f"    {name + ' peak':<54}{_gib(size)}")
    for name, size in report.states.items():
        lines.append(f"    {name:<54}{_gib(size)}")
    lines += ["", "stage peaks on one GPU (GiB):"]
    for stage in report.stages:
        lines.append(f"  {stage.name:<56}{_gib(stage.total)}")
        lines += [f"      {label:<52}{_gib(size)}" for label, size in stage.items if size]
    verdict = "fits" if report.fits() else "does not fit"
    lines += ["", f"peak {report.peak / GIB:.2f} GiB: {verdict} {TARGET_GIB:g} GiB on one GPU"]
    if report.fsdp:
        cells = ", ".join(f"{n} GPUs {max(st.total for st in stages) / GIB:.2f}" for n, stages in report.fsdp.items())
        needed = report.fsdp_needed()
        lines.append(f"FSDP2 per-GPU peak: {cells}")
        if not report.fits():
            lines.append(f"needs FSDP over {needed} GPUs" if needed else
                         f"does not fit {TARGET_GIB:g} GiB even with FSDP over {max(report.fsdp)} GPUs")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
