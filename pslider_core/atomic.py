"""Atomic writes whose results get the modes the umask gives, like any file the user creates (stdlib only).

Everything that writes an output (ParetoSlider files, summary.json, checkpoints) writes into a temporary name in
the target's folder and renames it into place, so a crash never leaves a half-written file under the final name.
Temporaries from `tempfile.mkstemp` / `mkdtemp` are 0600 / 0700 whatever the umask, and safetensors (0.8) writes
0600 files through its own temporary, so a ComfyUI running as another user could not read the results. Here the
temporary is created 0666 / 0777 and the kernel takes the umask off, as for `open()` and `mkdir()`; that mode is
put back on the result (and on every file of a folder) before the rename, whatever the writer did. Temporary names
are `.tmp-<final name>-<random>`: hidden, never ending in the final name's suffix (ComfyUI lists `*.safetensors`),
and recognisable as debris by `PREFIX`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = ".tmp-"


def temporary_name(path: Path) -> Path:
    """A fresh hidden sibling name for writing `path`."""
    return path.with_name(f"{PREFIX}{path.name}-{secrets.token_hex(6)}")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary file next to `path` (the folder is created if missing); when the block succeeds it
    gets 0666 minus the umask and replaces `path`, when it fails it is removed. The block may write the temporary
    in place or replace it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = _mode(tmp)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder next to `path`; when the block succeeds its folders get 0777 and its files
    0666 minus the umask, and it takes the name `path`, replacing a folder already there. When the block fails it is
    removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    os.mkdir(tmp, 0o777)
    mode = _mode(tmp)
    try:
        yield tmp
        for folder, subfolders, files in os.walk(tmp):
            for name in subfolders:
                os.chmod(os.path.join(folder, name), mode)
            for name in files:
                os.chmod(os.path.join(folder, name), mode & 0o666)
        if path.exists():  # moved aside first: a kill while deleting never leaves a half-deleted `path`
            stale = temporary_name(path)
            os.rename(path, stale)
            os.rename(tmp, path)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
