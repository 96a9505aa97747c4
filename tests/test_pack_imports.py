"""The node pack is a guest in someone else's ComfyUI: loading it and running every node imports torch, safetensors
and ComfyUI (here its fakes) only, never the training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TRAINING_STACK = ("diffusers", "transformers", "peft", "accelerate", "click", "kornia", "matplotlib", "tensorboard")

# A fresh interpreter: ComfyUI loads the pack, every node runs on every family's tiny model and samples a CFG step,
# the reward-name route answers; then it prints which training-stack modules got imported.
SCRIPT = f"""
import json, sys, uuid
from pathlib import Path
import torch
import test_nodes_patching as t  # loads the pack the way ComfyUI does (fakes.load_pack)
import folder_paths
from fakes.tiny import Library, tiny_model

library = Library(Path(folder_paths.models_dir), "imports-" + uuid.uuid4().hex[:8])
try:
    for family in t.BACKBONES:
        name = library.add("f.safetensors", family)
        x, sigma, conds = t.cfg_conds(family, 2)
        model = tiny_model(family)
        for patched in (t.apply(model, name, 0.3, 0.7)[0],
                        t.Sweep.execute(model=model, file=name, strength=1.0, points=2)[0],
                        t.Schedule.execute(model=model, file=name, strength=1.0, **t.sliders(1, 0, prefix="start_w"),
                                           **t.sliders(0, 1, prefix="end_w"))[0]):
            assert torch.isfinite(t.flat(t.step(patched, family, x, sigma, conds))).all()
        status, _ = t.PACK.module.nodes.routes.rewards_response(name)
        assert status == 200, status
finally:
    library.remove()
print(json.dumps(sorted(m for m in {list(TRAINING_STACK)!r} if m in sys.modules)))
"""


def test_loading_the_pack_and_running_every_node_imports_no_training_package():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=TESTS, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
