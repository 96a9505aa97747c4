"""Resumable checkpoints: safetensors for every tensor, JSON for the rest, never pickle.

Layout of a checkpoint folder (`--checkpoint-dir`):

    epoch-000003/          one complete checkpoint: trainable / old / ema / optimizer .safetensors + state.json
    latest                 text file naming the newest complete checkpoint, replaced last

A checkpoint is written into a hidden temporary folder and renamed into place; `latest` is rewritten through a
temporary file and `os.replace` (`pslider_core.atomic`: modes follow the umask). A process killed at any moment
leaves `latest` naming a complete checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from pslider_core.atomic import PREFIX as TEMPORARY_PREFIX
from pslider_core.atomic import atomic_dir, write_text_atomic
from pslider_core.lora import full_tensor

if TYPE_CHECKING:
    from .config import TrainConfig

FORMAT_VERSION = 1
LATEST = "latest"
STATE_FILE = "state.json"
_NAME = re.compile(r"^epoch-(\d{6})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message says why and what to do."""


class DiskWriteError(OSError):
    """A checkpoint or output file that could not be written; the message says what is still intact on disk."""


def write_error(err: Exception, what: str, option: str, root: str | os.PathLike, epochs: int) -> DiskWriteError:
    """The error for a failed write of `what`: its cause (named as a full disk when it is one; safetensors reports
    ENOSPC as a SafetensorError, not an OSError), where to make room, and what `--resume root` will do after that."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    full = getattr(err, "errno", None) in codes or any(f"(os error {code})" in str(err) for code in codes)
    cause = f"the disk is full ({err})" if full else str(err)
    fix = f"free space there or pass {option} on another disk" if full else f"fix that or pass another {option}"
    try:
        last = find_checkpoint(root)
    except (CheckpointError, OSError):
        return DiskWriteError(f"Could not write {what}: {cause}; {fix}. There is no earlier checkpoint: then run the "
                              "same command again.")
    done = last.state.get("epoch")
    then = "writes the output file without training again" if done == epochs else "continues from it"
    return DiskWriteError(f"Could not write {what}: {cause}; {fix}. The checkpoint {last.path} (epoch {done}) is "
                          f"intact: then --resume {root} {then}.")


@dataclass
class Checkpoint:
    """A complete checkpoint on disk: its JSON state now, its tensors on demand."""

    path: Path
    state: dict[str, Any]

    def tensors(self, group: str) -> dict[str, torch.Tensor]:
        file = self.path / f"{group}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"Checkpoint {self.path} lacks {file.name}; it is damaged, resume from another one.")
        return load_file(str(file))


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:06d}"


def save_checkpoint(
    root: str | os.PathLike, epoch: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint atomically, point `latest` at it, then delete all but the newest `keep`."""
    root = Path(root)
    name = checkpoint_name(epoch)
    final = root / name
    with atomic_dir(final) as tmp:  # replaces a folder of that name left by an earlier run that went further
        for group, values in tensors.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in values.items()}, str(tmp / f"{group}.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **state}))
    write_text_atomic(root / LATEST, name + "\n")
    _prune(root, keep, name)
    return final


def _complete(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first (a folder only gets its final name once complete)."""
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def _prune(root: Path, keep: int, current: str) -> None:
    for stale in root.glob(f"{TEMPORARY_PREFIX}epoch-*"):
        shutil.rmtree(stale, ignore_errors=True)
    complete = _complete(root)
    for old in complete[: max(len(complete) - keep, 0)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint folder itself, or a checkpoint root (its `latest`, else its newest complete checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        target = path
    elif path.is_dir():
        latest = path / LATEST
        named = path / latest.read_text().strip() if latest.is_file() else None
        complete = _complete(path)
        if named is not None and (named / STATE_FILE).is_file():
            target = named
        elif complete:
            target = complete[-1]
        else:
            raise CheckpointError(
                f"{str(path)!r} holds no complete checkpoint (no {LATEST} file, no epoch-NNNNNN folder with "
                f"{STATE_FILE}). A run stopped before its first checkpoint leaves none: start it again without "
                "--resume; otherwise pass the --checkpoint-dir of an earlier run."
            )
    else:
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist; pass the --checkpoint-dir of an earlier run.")
    try:
        state = json.loads((target / STATE_FILE).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{target / STATE_FILE} is not valid JSON ({err}); resume from another checkpoint."
        ) from None
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {target} has format {state.get('format_version')!r}; this version reads {FORMAT_VERSION}."
        )
    return Checkpoint(target, state)


def check_resume(path: str | os.PathLike, config: "TrainConfig") -> Checkpoint:
    """The checkpoint to resume, refusing one written with settings that change the training math."""
    checkpoint = find_checkpoint(path)
    if checkpoint.state.get("fingerprint") != config.fingerprint():
        diffs = config.setting_diffs(checkpoint.state.get("config_fields"))
        if diffs:
            raise CheckpointError(
                f"Cannot resume from {checkpoint.path}: it was trained with other settings ({'; '.join(diffs)}). "
                "Pass the same settings as that run, or start a new run with another --checkpoint-dir."
            )
    if checkpoint.state["epoch"] > config.epochs:  # equal: a run stopped while writing its output file
        raise CheckpointError(
            f"Checkpoint {checkpoint.path} already completed {checkpoint.state['epoch']} epochs and --epochs is "
            f"{config.epochs}; pass --epochs {checkpoint.state['epoch']} to write its output file, or more to train "
            "further."
        )
    return checkpoint


def check_fresh(root: str | os.PathLike, epochs: int) -> None:
    """Refuse to start a new run on top of an existing one (its checkpoints would be overwritten), with advice that
    fits: a finished run (`epochs` done) cannot be resumed without more epochs."""
    root = Path(root)
    if not (root.is_dir() and ((root / LATEST).is_file() or _complete(root))):
        return
    try:
        done = find_checkpoint(root).state.get("epoch")
    except CheckpointError:
        done = None
    if isinstance(done, int) and done >= epochs:
        raise CheckpointError(
            f"{root} holds the checkpoints of a finished run ({done} epochs, --epochs is {epochs}). To train it "
            f"further pass --resume {root} with --epochs above {done}; to start a new run remove {root} or pick "
            "another --output (or --checkpoint-dir)."
        )
    raise CheckpointError(
        f"{root} already holds checkpoints of a run; pass --resume {root} to continue it, or pick another "
        "--checkpoint-dir (or --output) for a new run."
    )


# ---------------------------------------------------------------------- sharded (FSDP2) tensors
def gathered(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Whole CPU copies of tensors that FSDP2 may have sharded. A collective: every process calls it with the same
    tensors in the same order; only a process that will write them (`keep`) holds the copies."""
    out = {}
    for name, tensor in tensors.items():
        whole = full_tensor(tensor.detach())
        if keep:
            out[name] = whole.cpu()
    return out


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor read from a checkpoint, cut as `like` is: this process's shard of a DTensor, else whole.
    Every process reads the file, so no data moves between processes."""
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(state_dict: dict[str, Any], params: list[torch.Tensor]) -> dict[str, Any]:
    """Per-element optimizer state (Adam's moments: shaped like the parameter) cut like its parameter, in place;
    `params` in the optimizer's order (its state's indices)."""
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.shape == params[index].shape:
                values[key] = shard_like(value, params[index])
    return state_dict


# ---------------------------------------------------------------------- optimizer state
def optimizer_to_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state -> (flat tensors "<param index>.<key>", JSON: param groups and non-tensor state)."""
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                extra.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "extra": extra}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["extra"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------- random number generators
def rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / Python generator states, as JSON-able values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
