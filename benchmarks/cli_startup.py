"""How fast the command lines answer before any work: --help, --version and an option error, per CLI.

Each command runs as a fresh process (the installed console script), several times; the table gives the median wall
seconds, and the last column the same for the interpreter alone (`python -c pass`), the floor no CLI goes below.
The CLIs parse their options with click and plain data only; torch and the training stack are imported once a
run is certain (target: under 1 s on an idle machine).

    python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

import click

COMMANDS = {
    "pslider-train": ["--backbone", "nope", "--rewards", "a,b", "--prompts", "x.txt", "--output", "x.safetensors"],
    "pslider-sample": ["--backbone", "sd3", "--checkpoint", "x", "--prompt", "a", "--out", "o", "--steps", "x"],
    "pslider-eval": ["--backbone", "sd3", "--prompts", "x.txt", "--out", "o", "--grid", "x"],
    "pslider-reward-server": ["--rewards", "brightness", "--port", "99999"],
}


def _seconds(argv: list[str], runs: int, expect_error: bool) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if (result.returncode != 0) != expect_error:
            raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr[-500:]}")
    return statistics.median(times)


@click.command()
@click.option("--runs", default=5, show_default=True, help="Runs per measurement (the median is printed).")
def main(runs: int) -> None:
    """Print median seconds of --help, --version and an option error for every CLI."""
    floor = _seconds([sys.executable, "-c", "pass"], runs, expect_error=False)
    print(f"median of {runs} runs, seconds; interpreter alone: {floor:.2f}")
    print(f"{'command':<24} {'--help':>8} {'--version':>10} {'bad option':>11}")
    for command, bad in COMMANDS.items():
        path = shutil.which(command)
        if path is None:
            raise click.ClickException(f"{command} is not installed: pip install -e . first.")
        cells = [_seconds([path, "--help"], runs, False), _seconds([path, "--version"], runs, False),
                 _seconds([path, *bad], runs, True)]
        print(f"{command:<24} " + " ".join(f"{c:>{w}.2f}" for c, w in zip(cells, (8, 10, 11))))


if __name__ == "__main__":
    main()
