"""kill -9 at any moment, and full disks: what a training run leaves on disk is always resumable.

A real `pslider-train` process (tiny sd3 base on disk, a checkpoint every epoch) is killed with SIGKILL at seeded
random moments aimed at startup, rollouts, the loss/optimiser stage, checkpoint writing and the output write, and
resumed with `--resume` after each kill. After every kill `latest` names a complete checkpoint whose every file
loads, and the output file is absent or whole; at the end the output file and the last checkpoint are bit-identical
to an uninterrupted run's. Kills are aimed by watching what any run shows: its progress bars on stderr
("epoch N rollouts", "epoch N loss") and the hidden temporary entries that checkpoints and the output are written
into; where each kill landed is read back from the log and the disk.

The killed runs are forked from a server that has imported the trainer once (multiprocessing's forkserver), so a
start costs seconds instead of the ~10 s of imports; each is still its own process running `pslider-train`'s entry
point, killed by the kernel. The uninterrupted reference is the installed `pslider-train` script.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_trainer import metrics_lines, run_cli, tiny_args, tiny_base, write_prompts  # noqa: F401  (a fixture)

import pslider_core.file_format
import trainer.checkpoint
import trainer.trainer
from pslider_core import load_pareto_slider
from trainer.checkpoint import checkpoint_name, find_checkpoint

SEED = 14
GROUPS = {"trainable", "old", "ema", "optimizer"}
STAGES = ["startup"] + ["rollouts"] * 3 + ["loss"] * 3 + ["checkpoint"] * 4  # then one "output" kill, last
DISK_FULL = "I/O error: No space left on device (os error 28)"  # what safetensors raises on a full disk


def _pslider_train(argv: list[str], log: str) -> None:
    """A forked child: `pslider-train argv`, stdout and stderr into `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from tqdm import tqdm

    from trainer.cli import main

    tqdm.set_lock(threading.RLock())  # its default lock is a named semaphore, which every kill would leak
    main(argv, prog_name="pslider-train")


class Run:
    """One killable `pslider-train` process and what it adds to the checkpoint and output folders."""

    def __init__(self, context, argv: list[str], log: Path, checkpoints: Path, output: Path) -> None:
        self.log, self.checkpoints, self.output = log, checkpoints, output
        self.before = self._hidden(checkpoints) | self._hidden(output.parent)
        self.process = context.Process(target=_pslider_train, args=(argv, str(log)))
        self.process.start()

    @staticmethod
    def _hidden(folder: Path) -> set[str]:
        return {n for n in os.listdir(folder) if n.startswith(".")} if folder.is_dir() else set()

    def new_temporaries(self, folder: Path, part: str = "") -> list[str]:
        """Hidden entries (temporary files and folders) that appeared in `folder` since this run started."""
        return sorted(n for n in self._hidden(folder) - self.before if part in n)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 120.0, tick: float = 0.001) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.process.is_alive():
                raise AssertionError(f"pslider-train exited ({self.process.exitcode}) before {what}:\n"
                                     f"{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(tick)

    def kill(self) -> bool:
        """SIGKILL; False when the run had already finished."""
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()
        return self.process.exitcode == -signal.SIGKILL


def _latest_epoch(checkpoints: Path) -> int:
    latest = checkpoints / "latest"
    return int(latest.read_text().strip().removeprefix("epoch-")) if latest.is_file() else 0


def _aim(run: Run, stage: str, target: int, rng: random.Random) -> None:
    """Wait for `stage` of epoch `target` to begin, then a random moment into it."""
    if stage == "startup":
        time.sleep(rng.uniform(0.2, 3.0))
    elif stage in ("rollouts", "loss"):
        run.wait_for(lambda: f"epoch {target} {stage}" in run.text(), f"epoch {target} {stage}")
        time.sleep(rng.uniform(0, 0.02 if stage == "rollouts" else 0.05))
    elif stage == "checkpoint":
        run.wait_for(lambda: run.new_temporaries(run.checkpoints, checkpoint_name(target)),
                     f"checkpoint {target} being written")
        time.sleep(rng.uniform(0, 0.01))
    else:  # output: the moment its temporary file appears
        run.wait_for(lambda: run.new_temporaries(run.output.parent), "the output being written", tick=0.0002)


def _landing(run: Run, resumed_from: int, epochs: int) -> str:
    """Where a kill landed, from the disk and the log."""
    latest = _latest_epoch(run.checkpoints)
    named = [int(p.name[6:]) for p in run.checkpoints.glob("epoch-*") if (p / "state.json").is_file()]
    if run.new_temporaries(run.output.parent):
        return "output write"
    if any(run.new_temporaries(run.checkpoints, checkpoint_name(e)) for e in range(1, epochs + 1)):
        return "checkpoint write (temporary folder)"
    if named and max(named) > latest:
        return "checkpoint write (renamed, latest not yet replaced)"
    text = run.text()
    marks = [(m.start(), m.group(2), 0) for m in re.finditer(r"epoch (\d+) (rollouts|loss)", text)]
    done = [(m.start(), "done", int(m.group(1)))
            for m in re.finditer(rf"epochs:[^\r\n|]*\|[^|]*\| *(\d+)/{epochs}", text) if int(m.group(1)) > resumed_from]
    events = sorted(marks + done)
    if not events:
        return "startup"
    _, last, epoch = events[-1]
    if last == "done":
        return "after a checkpoint (prune, next epoch)" if latest == epoch else "after an epoch, before its checkpoint"
    return last


def _check_resumable(checkpoints: Path, output: Path) -> int:
    """`latest` names a complete checkpoint whose every file loads; the output file is absent or loads. Returns the
    latest epoch (0: none yet)."""
    if output.exists():
        load_pareto_slider(output, "sd3")
    if not (checkpoints / "latest").is_file():
        assert not [p for p in checkpoints.glob("epoch-*") if (p / "state.json").is_file()], "checkpoint without latest"
        return 0
    name = (checkpoints / "latest").read_text().strip()
    assert (checkpoints / name / "state.json").is_file(), f"latest names {name}, which is not complete"
    found = find_checkpoint(checkpoints)
    assert found.path.name == name and found.state["epoch"] == int(name[6:])
    files = {p.stem: p for p in found.path.glob("*.safetensors")}
    assert set(files) == GROUPS, sorted(files)
    for file in files.values():
        load_file(file)
    return found.state["epoch"]


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(a) == sorted(b), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different[:5]}"


def test_kill_9_anywhere_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny_base, tmp_path):  # noqa: F811
    rng = random.Random(SEED)
    plan = rng.sample(STAGES, len(STAGES))
    ahead = [0 if stage == "startup" else rng.choice([1, 2]) for stage in plan]  # target: epochs past the resume
    # epochs enough that every aimed epoch exists and the output-write kill still trains: a kill in rollouts or
    # loss loses its epoch, one in a checkpoint write may keep it
    epochs = 2 + sum(a - 1 if s in ("rollouts", "loss") else a for s, a in zip(plan, ahead))
    base, prompts = tiny_base("sd3"), write_prompts(tmp_path, "sd3")

    def args(output: Path, *extra: str) -> list[str]:
        return tiny_args("sd3", base, prompts, output, "--epochs", str(epochs), "--checkpoint-every", "1", *extra)

    script = Path(sys.executable).with_name("pslider-train")
    assert script.is_file(), f"{script} is missing: install the project with pip install -e ."
    straight = tmp_path / "straight" / "run.safetensors"
    reference_log = tmp_path / "straight.log"
    with reference_log.open("w") as log:  # a file, not a pipe: nobody reads it while the kills run
        reference = subprocess.Popen([str(script), *args(straight)], stdout=log, stderr=subprocess.STDOUT)

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["trainer.cli"])
    output = tmp_path / "killed" / "run.safetensors"
    checkpoints = output.with_name("run.checkpoints")
    started, landings, aimed, resumes = time.monotonic(), [], [], 0
    for i, stage in enumerate([*plan, "output", None]):
        resumed_from = _check_resumable(checkpoints, output)
        resume = ["--resume", str(checkpoints)] if resumed_from else []
        resumes += bool(resume)
        run = Run(context, args(output, *resume), tmp_path / f"run-{i}.log", checkpoints, output)
        if stage is None:  # the last resume runs to the end
            run.process.join(300)
            assert run.process.exitcode == 0, run.text()[-3000:]
            break
        _aim(run, stage, resumed_from + (ahead[i] if stage != "output" else 0), rng)
        killed = run.kill()
        assert killed, f"kill {i} ({stage}) came after the run finished:\n{run.text()[-2000:]}"
        landings.append(_landing(run, resumed_from, epochs))
        aimed.append(f"{stage} {resumed_from}->{_latest_epoch(checkpoints)}: {landings[-1]}")
    chain_s = time.monotonic() - started

    assert reference.wait(timeout=300) == 0, reference_log.read_text()[-3000:]
    _same_tensors(load_file(straight), load_file(output), "output file")
    last = checkpoint_name(epochs)
    for group in GROUPS:
        _same_tensors(load_file(straight.with_name("run.checkpoints") / last / f"{group}.safetensors"),
                      load_file(checkpoints / last / f"{group}.safetensors"), f"checkpoint {group}")
    rewards = [[m.get("loss"), m["reward/brightness"], m["reward/saturation"]] for m in metrics_lines(straight)]
    assert [[m.get("loss"), m["reward/brightness"], m["reward/saturation"]] for m in metrics_lines(output)] == rewards
    assert load_pareto_slider(output).training["epochs"] == epochs

    counts = Counter(landings)
    print(f"\nkill -9: {len(landings)} kills, {resumes} resumes, {epochs} epochs, chain {chain_s:.0f} s; landed: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n  " + "\n  ".join(aimed))
    assert len(landings) >= 10
    assert counts["rollouts"] and counts["loss"] and counts["output write"]
    assert sum(v for k, v in counts.items() if k.startswith("checkpoint write")) >= 2, counts


# ---------------------------------------------------------------------- full disk
def _failing(real: Callable, error: Exception, after: int) -> Callable:
    """`real`, raising `error` from call number `after + 1` on."""
    calls = []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise error
        return real(*args, **kwargs)

    return write


@pytest.mark.parametrize("error", [SafetensorError(f"Error while serializing: {DISK_FULL}"),
                                   OSError(errno.ENOSPC, "No space left on device")], ids=["safetensors", "oserror"])
def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(
    tiny_base, tmp_path, monkeypatch, error,  # noqa: F811
):
    output = tmp_path / "run.safetensors"
    checkpoints = output.with_name("run.checkpoints")
    args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--epochs", "3")
    # checkpoint 1 is written (4 files), checkpoint 2 fails on its second file
    monkeypatch.setattr(trainer.checkpoint, "save_file", _failing(trainer.checkpoint.save_file, error, after=5))
    text = run_cli(args, exit_code=1).output
    for needle in (f"Could not write checkpoint epoch-000002 in {checkpoints}: the disk is full",
                   "free space there or pass --checkpoint-dir on another disk",
                   f"{checkpoints / 'epoch-000001'} (epoch 1) is intact", f"--resume {checkpoints} continues"):
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert _check_resumable(checkpoints, output) == 1
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".")] and not output.exists()

    monkeypatch.undo()  # space freed
    run_cli([*args, "--resume", str(checkpoints)])
    assert load_pareto_slider(output).training["epochs"] == 3


def test_a_full_disk_during_the_output_write_keeps_the_final_checkpoint(tiny_base, tmp_path, monkeypatch):  # noqa: F811
    output = tmp_path / "run.safetensors"
    checkpoints = output.with_name("run.checkpoints")
    args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--epochs", "2")
    error = SafetensorError(f"Error while serializing: {DISK_FULL}")
    monkeypatch.setattr(pslider_core.file_format, "save_file",
                        _failing(pslider_core.file_format.save_file, error, after=0))
    text = run_cli(args, exit_code=1).output
    for needle in (f"Could not write the output file {output}: the disk is full",
                   "free space there or pass --output on another disk", "(epoch 2) is intact",
                   f"--resume {checkpoints} writes the output file without training again"):
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert _check_resumable(checkpoints, output) == 2
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")] and not output.exists()

    monkeypatch.undo()
    run_cli([*args, "--resume", str(checkpoints)])
    assert load_pareto_slider(output).training["epochs"] == 2
    assert len(metrics_lines(output)) == 2


def test_a_real_full_disk_tmpfs(tiny_base, tmp_path, monkeypatch):  # noqa: F811
    """The same on a real tmpfs filled up after a checkpoint (needs permission to mount, e.g. root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                                                   capture_output=True, check=False).returncode:
        pytest.skip("mounting a tmpfs needs privileges this machine does not give")
    try:
        filler = tmp_path / "disk" / "filler"

        def fill_after(*args, **kwargs):  # the next write finds the disk full
            path = real(*args, **kwargs)
            with filler.open("wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(disk).free - 16 * 1024)
            return path

        real = trainer.trainer.save_checkpoint
        monkeypatch.setattr(trainer.trainer, "save_checkpoint", fill_after)
        output, checkpoints = disk / "run.safetensors", disk / "run.checkpoints"
        args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--epochs", "2",
                         "--log-dir", str(tmp_path / "logs"))
        text = run_cli(args, exit_code=1).output
        assert f"Could not write checkpoint epoch-000002 in {checkpoints}: the disk is full" in text, text
        assert "(epoch 1) is intact" in text
        assert _check_resumable(checkpoints, output) == 1
        filler.unlink()

        text = run_cli([*args, "--resume", str(checkpoints)], exit_code=1).output  # checkpoint 2 fits, the output not
        assert f"Could not write the output file {output}: the disk is full" in text, text
        assert "writes the output file without training again" in text
        assert _check_resumable(checkpoints, output) == 2
        assert not [n for n in os.listdir(disk) if n.startswith(".")] and not output.exists()
        filler.unlink()

        run_cli([*args, "--resume", str(checkpoints)])
        assert load_pareto_slider(output).training["epochs"] == 2
    finally:  # lazily: the failed runs' tracebacks may still hold checkpoint files open
        subprocess.run(["umount", "--lazy", str(disk)], check=True)
