"""benchmarks/gpu_step.py's code on the tiny pipelines (the CPU smoke test it offers): every configuration runs a
ParetoSlider and a fixed-weights epoch and prints its row, so the script is ready for a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gpu_step import CONFIGS, main  # noqa: E402


def test_every_configuration_runs_an_epoch_of_both_methods_and_prints_its_row():
    result = CliRunner().invoke(main, ["--tiny", "--device", "cpu", "--steps", "2", "--timesteps", "1"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.split()[:1]
            and line.split()[0] in CONFIGS}
    assert sorted(rows) == sorted(CONFIGS)
    for name, cells in rows.items():
        rollout, reward, train, epoch, _peak, ratio, tflops, syncs = cells
        assert float(epoch) > 0 and float(train) > 0 and float(ratio) > 0, name
        assert float(tflops) > 0 and int(syncs) == 0, name  # FLOPs were counted; CPU reports no CUDA sync


def test_a_gpu_run_without_a_gpu_is_a_clear_error():
    result = CliRunner().invoke(main, ["--device", "cuda"])
    assert result.exit_code != 0 and "No CUDA GPU here" in result.output
