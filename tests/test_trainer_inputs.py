"""Bad input fails before any model loads, with a message that names the problem and the fix."""

from __future__ import annotations

import json

import pytest
from test_trainer import run_cli, tiny_args, tiny_base, write_prompts  # noqa: F401  (tiny_base is a fixture)


def _fails(args: list[str], *needles: str, output=None) -> str:
    text = run_cli(args, exit_code=2).output
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    if output is not None:  # nothing was started: no logs, no checkpoints, no tiny base, no file
        assert not output.exists()
        assert not list(output.parent.glob(output.stem + ".*"))
    return text


@pytest.fixture
def sd3_run(tiny_base, tmp_path):  # noqa: F811  (the imported fixture)
    """(args builder, output) for a valid sd3 run that each test breaks in one way."""
    prompts, output = write_prompts(tmp_path, "sd3"), tmp_path / "out" / "x.safetensors"

    def args(*extra: str, backbone: str = "sd3", base=None, prompts_file=None) -> list[str]:
        return tiny_args(backbone, base or tiny_base("sd3"), prompts_file or prompts, output, *extra)

    return args, output


def test_missing_and_empty_prompts_files(sd3_run, tmp_path):
    args, output = sd3_run
    _fails(args(prompts_file=tmp_path / "nope.txt"), "does not exist", "pass --prompts", output=output)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    _fails(args(prompts_file=empty), "holds no prompt", "one prompt per line", output=output)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a red circle"}\n{"prompt": \n')
    _fails(args(prompts_file=broken), "broken.jsonl line 2 is not valid JSON", output=output)


def test_unknown_backbone_and_reward(sd3_run):
    args, output = sd3_run
    _fails(args("--backbone", "sdxl"), "Unknown backbone 'sdxl'", "sd3", output=output)
    bad = args()
    bad[bad.index("--rewards") + 1] = "brightness,brightnes"
    _fails(bad, "unknown reward 'brightnes'", "Available:", "saturation", output=output)
    single = args()
    single[single.index("--rewards") + 1] = "brightness"
    _fails(single, "needs at least 2", "--fixed-weights 1", output=output)
    source_reward = args()
    source_reward[source_reward.index("--rewards") + 1] = "brightness,ssim"
    _fails(source_reward, "compares samples with a source image", "fluxkontext", output=output)


def test_bad_fixed_weights(sd3_run):
    args, output = sd3_run
    _fails(args("--fixed-weights", "0.2,0.3,0.5"), "has 3 values", "2 (brightness, saturation)", output=output)
    _fails(args("--fixed-weights", "0,0"), "positive sum", output=output)
    _fails(args("--fixed-weights", "x"), "numbers separated by commas", output=output)


def test_editing_backbone_needs_existing_source_images(tiny_base, tmp_path):  # noqa: F811
    output = tmp_path / "out" / "edit.safetensors"
    base = tiny_base("fluxkontext")
    txt = write_prompts(tmp_path / "t2i", "sd3")
    _fails(tiny_args("fluxkontext", base, txt, output), "must be a .jsonl", '"image"', output=output)
    edits = write_prompts(tmp_path / "edit", "fluxkontext")
    lines = edits.read_text().splitlines()
    edits.write_text("\n".join([lines[0], json.dumps({"image": "sources/missing.png", "prompt": "x"})]) + "\n")
    _fails(tiny_args("fluxkontext", base, edits, output), "line 2", "'sources/missing.png' not found",
           "relative to the prompts file", output=output)
    edits.write_text(json.dumps({"prompt": "make it night"}) + "\n")
    _fails(tiny_args("fluxkontext", base, edits, output), 'needs an "image" path', output=output)
    (tmp_path / "edit" / "sources" / "0.png").write_text("not an image")
    edits.write_text(lines[0] + "\n")
    _fails(tiny_args("fluxkontext", base, edits, output), "is not a readable image", output=output)


def test_text_to_image_prompts_must_not_carry_images(sd3_run, tmp_path):
    args, output = sd3_run
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a red circle", "image": "a.png"}) + "\n")
    _fails(args(prompts_file=jsonl), "does not take source images", output=output)


def test_base_of_another_backbone_or_not_a_folder(sd3_run, tmp_path):
    args, output = sd3_run
    _fails(args(backbone="ltx2"), "holds a StableDiffusion3Pipeline", "--backbone ltx2 needs a LTX2Pipeline",
           output=output)
    _fails(args(base=tmp_path / "no-such-model"), "is not a folder", output=output)


def test_output_must_be_a_safetensors_file(sd3_run):
    args, _ = sd3_run
    bad = args()
    bad[bad.index("--output") + 1] = "slider.ckpt"
    _fails(bad, "--output must end in .safetensors")


def test_resume_mismatches_and_existing_runs(sd3_run):
    args, output = sd3_run
    run_cli(args())
    checkpoints = output.with_name("x.checkpoints")
    _fails(args("--epochs", "2"), "already holds checkpoints", f"--resume {checkpoints}")
    _fails(args(), "holds the checkpoints of a finished run (1 epochs, --epochs is 1)",  # the same command again
           f"pass --resume {checkpoints} with --epochs above 1", f"remove {checkpoints} or pick another --output")
    _fails(args("--epochs", "2", "--resume", str(checkpoints), "--lr", "0.5"),
           "Cannot resume", "lr: checkpoint 0.01, now 0.5", "Pass the same settings")
    _fails(args("--epochs", "2", "--resume", str(checkpoints.with_name("elsewhere"))), "does not exist")
