"""`pslider-train`: read options and TOML, validate before loading anything, train.

    pslider-train --backbone sd3 --rewards pickscore_photorealism,clip_style --prompts prompts.txt \\
        --output slider.safetensors [--config run.toml] [--preset tiny|paper]
    accelerate launch --num_processes 4 -m trainer.cli ...   (several GPUs)

Every option below is also a key of the TOML file (underscores); the command line wins over the file.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import typing
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Callable

import click

from .config import TrainConfig, read_toml, resolve_config, to_toml

if TYPE_CHECKING:
    from .trainer import ParetoSliderTrainer

# Only click and the config (no torch) are imported before the options are parsed: --help, --version and option
# errors answer at once; the trainer's stack is imported once a run is certain.


def _option(f) -> Callable[[Callable], Callable]:
    """A click option for one TrainConfig field, defaulting to None so that only given options override."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default_factory() if callable(f.default_factory) else f.default
    help_text = f"{f.metadata['help']} [default: {_show(default)}]"
    kind = typing.get_type_hints(TrainConfig)[f.name]
    if kind is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    if f.metadata.get("choices"):
        return click.option(flag, f.name, type=click.Choice(f.metadata["choices"]), default=None, help=help_text)
    click_type = {int: click.INT, float: click.FLOAT}.get(kind, click.STRING)
    return click.option(flag, f.name, type=click_type, default=None, help=help_text)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return repr(value) if value == "" else str(value)


def _with_config_options(command: Callable) -> Callable:
    for f in reversed(fields(TrainConfig)):
        command = _option(f)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="pareto-slider")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of options (flat keys).")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration as TOML and exit.")
@click.option("--estimate-memory", is_flag=True,
              help="Print the per-GPU memory of this configuration (each model, trained tensors and their copies, "
                   "activations, the peak of every stage, FSDP) and exit; reads only config files, no weights.")
@_with_config_options
def main(config_file: str | None, print_config: bool, estimate_memory: bool, **options: Any) -> None:
    """Train a ParetoSlider: one LoRA + preference modules covering the trade-offs between several rewards."""
    given = {k: v for k, v in options.items() if v is not None}
    try:
        config = resolve_config(read_toml(config_file) if config_file else {}, given)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if print_config:
        click.echo(to_toml(config), nl=False)
        return
    if estimate_memory:
        _print_memory_estimate(config)
        return
    _setup_logging()
    from .data import InputError, validate_inputs
    from .trainer import ParetoSliderTrainer, TrainingAborted

    try:
        inputs = validate_inputs(config)
    except (ValueError, OSError) as err:
        raise click.UsageError(str(err)) from None
    trainer: ParetoSliderTrainer | None = None
    try:
        trainer = ParetoSliderTrainer(config, inputs)
        trainer.train()
    except (InputError, TrainingAborted, OSError) as err:  # unfit setup, persistent NaN, a base that did not load
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:  # Ctrl-C: click alone would print only "Aborted!"
        if int(os.environ.get("RANK", "0")) == 0:
            done = trainer.epoch if trainer is not None else None
            click.echo(interrupted_message(config, sys.argv[1:], done), err=True)
        raise click.exceptions.Exit(130) from None
    if trainer.accelerator.is_main_process:
        click.echo(trainer.summary())


def interrupted_message(config: TrainConfig, argv: list[str], epochs_done: int | None) -> str:
    """For a run stopped by Ctrl-C: its last checkpoint and the exact command that resumes from it (this run's
    arguments, its --resume replaced), or that there is nothing to resume yet."""
    from .checkpoint import CheckpointError, find_checkpoint

    head = f"Interrupted with {epochs_done} of {config.epochs} epochs done" if epochs_done is not None else (
        "Interrupted before training started")
    for root in filter(None, (str(config.checkpoint_path()), config.resume)):
        try:
            last = find_checkpoint(root)
        except CheckpointError:
            continue
        command = shlex.join(["pslider-train", *_without_resume(argv), "--resume", root])
        return f"{head}; last checkpoint: {last.path} (epoch {last.state['epoch']}). Resume with:\n  {command}"
    schedule = (f"every {config.checkpoint_every} epochs and at the end" if config.checkpoint_every
                else "only at the end with --checkpoint-every 0")
    return (f"{head}; no checkpoint was written yet (they are written {schedule}), so there is nothing to resume: "
            "run the same command again to start over; --checkpoint-every 1 keeps every finished epoch.")


def _without_resume(argv: list[str]) -> list[str]:
    """The command line without its --resume option (the resume command adds its own)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--resume="):
            skip = False
        elif arg == "--resume":
            skip = True
        else:
            kept.append(arg)
    return kept


def _print_memory_estimate(config: TrainConfig) -> None:
    """`--estimate-memory`: the memory model of `config` (pslider_core.memory), built on the meta device."""
    from pslider_core.memory import estimate_memory

    try:
        report = estimate_memory(config)
    except (ValueError, TypeError, FileNotFoundError) as err:  # configs missing, a reward of unknown models
        raise click.UsageError(str(err)) from None
    click.echo(report.table(), nl=False)


def _setup_logging() -> None:
    """Training messages from the main process only (accelerate sets RANK on every process)."""
    import diffusers
    import transformers

    rank = int(os.environ.get("RANK", "0"))
    diffusers.utils.logging.disable_progress_bar()  # per-component loading bars; the trainer has its own
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pslider.train").setLevel(logging.INFO if rank == 0 else logging.ERROR)


if __name__ == "__main__":
    main()
