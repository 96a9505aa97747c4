"""Against a real ComfyUI checkout (COMFYUI_PATH; skipped without it).

A real server on CPU loads the pack from a temporary custom_nodes folder (the repository symlinked in); API graphs
run a tiny SD3 model through KSampler. Parity runs in a subprocess (tests/comfyui_parity.py) because the pytest
process uses the fakes of tests/fakes: for the same file and w, the ComfyUI-patched model's prediction must equal
the trainer-side conditioned diffusers transformer (tiny SD3 and tiny Flux/Kontext). The browser tests drive
ComfyUI's real frontend in headless Chromium through Playwright (the system's chromium; skipped without it).

Run: COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python python -m pytest -m comfyui
tests/test_comfyui_integration.py. COMFYUI_PYTHON (default: this Python) runs the server and the parity script: it
needs torch, ComfyUI's requirements.txt less torchvision and torchaudio, requests, and diffusers and peft for the
parity script's trainer side; not pytest. torchvision is replaced by a stub written to a temporary folder.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
PACK_FOLDER = "pareto-slider"  # the registry id: what `comfy node install` and a plain clone create

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_PATH, reason="set COMFYUI_PATH to a ComfyUI checkout to run integration tests"),
]

TORCHVISION_STUB = '''"""Test-only stand-in for torchvision: names resolve at import time, nothing works at run time."""

__version__ = "0.0.0+stub"


class _Placeholder:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self._name}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stub: {self._name} is not available")

    def __hash__(self):
        return hash(self._name)

    def __eq__(self, other):
        return isinstance(other, _Placeholder) and other._name == self._name


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Placeholder(f"{__name__}.{name}")
'''

TEST_NODES = '''"""Test-only nodes: fixed random text conditioning for the tiny SD3 model (it has no text encoder), and which
training packages were imported after ComfyUI's own start-up (this pack loads before the ParetoSlider pack)."""
import sys

import torch

STARTUP_MODULES = set(sys.modules)
TRAINING_STACK = ("diffusers", "transformers", "peft", "accelerate", "click", "kornia", "matplotlib", "tensorboard")


class PSliderTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 64})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, tokens):
        gen = torch.Generator().manual_seed(seed)
        context = torch.randn(1, tokens, 32, generator=gen)
        return ([[context, {"pooled_output": torch.randn(1, 32, generator=gen)}]],)


class PSliderTestModules:
    """Runs after a sampler (it takes its LATENT): the training packages in sys.modules that ComfyUI had not
    imported when custom nodes started loading."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def report(self, samples):
        added = sorted(m for m in TRAINING_STACK if m in sys.modules and m not in STARTUP_MODULES)
        return {"ui": {"imported": added}}


NODE_CLASS_MAPPINGS = {"PSliderTestConditioning": PSliderTestConditioning, "PSliderTestModules": PSliderTestModules}
'''


def write_torchvision_stub(root: Path) -> Path:
    """An importable torchvision (no CPU wheel matches the pinned torch): ComfyUI core imports it at start-up."""
    for package in ("", "transforms", "transforms/v2", "models", "ops", "io", "datasets", "utils"):
        folder = root / "torchvision" / package
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(TORCHVISION_STUB)
    for module in ("transforms/functional.py", "transforms/v2/functional.py"):
        (root / "torchvision" / module).write_text(TORCHVISION_STUB)
    return root


def subprocess_env(stub: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub), env.get("PYTHONPATH", "")]))
    return env


# ---------------------------------------------------------------------------------------------- tiny SD3 files
def write_tiny_sd3(models: Path, extra_sliders: Path) -> dict[str, str]:
    """Tiny SD3 transformer (diffusers format, as UNETLoader reads it) and trained-looking ParetoSlider files for it:
    2 rewards ("slider") and 3 rewards ("slider3", for the simplex widget)."""
    import torch
    from safetensors.torch import save_file

    from pslider_core import LoraSpec, ParetoSlider, get_backbone

    torch.manual_seed(0)
    adapter = get_backbone("sd3")
    transformer = adapter.tiny_pipeline(seed=0).transformer
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()},
              str(models / "diffusion_models" / "tiny_sd3.safetensors"))
    extra_sliders.mkdir(parents=True, exist_ok=True)
    files = {"slider": ("tiny_sd3_photo_sketch.safetensors", ["photo", "sketch"]),
             "slider3": ("tiny_sd3_photo_sketch_anime.safetensors", ["photo", "sketch", "anime"])}
    for seed, (file, rewards) in enumerate(files.values(), start=1):
        transformer = adapter.tiny_pipeline(seed=0).transformer  # bare: attach adds a LoRA adapter to it
        slider = ParetoSlider.attach(transformer, "sd3", rewards,
                                     lora=LoraSpec(4, 8, adapter.lora_target_modules), base_model="tiny-sd3")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in slider.trainable_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        slider.save(extra_sliders / file)
    return {"unet": "tiny_sd3.safetensors", **{key: file for key, (file, _) in files.items()}}


class Server:
    def __init__(self, url: str, output: Path, names: dict[str, str], log: Path) -> None:
        self.url, self.output, self.names, self._log = url, output, names, log

    def log(self) -> str:
        return self._log.read_text()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, path: str):
        status, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def run(self, graph: dict, timeout: float = 300) -> dict:
        """POST /prompt, wait for /history; returns the history entry."""
        body = json.dumps({"prompt": graph, "client_id": uuid.uuid4().hex}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                prompt_id = json.loads(response.read())["prompt_id"]
        except urllib.error.HTTPError as err:
            return {"rejected": json.loads(err.read())}
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.json(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def latents(self, entry: dict, node_id: str):
        """The latents a SaveLatent node wrote."""
        from safetensors.torch import load_file

        files = entry["outputs"][node_id]["latents"]
        return [load_file(str(self.output / f["subfolder"] / f["filename"]))["latent_tensor"] for f in files]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Path:
    return write_torchvision_stub(tmp_path_factory.mktemp("stub"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, stub):
    base = tmp_path_factory.mktemp("comfy")
    extra_sliders = base / "extra_sliders"
    names = write_tiny_sd3(base / "models", extra_sliders)
    # the test nodes load first (base custom_nodes), the pack after them (a custom_nodes folder of the yaml)
    (base / "custom_nodes" / "pslider_test_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "pslider_test_nodes" / "__init__.py").write_text(TEST_NODES)
    (base / "packs").mkdir()
    (base / "packs" / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
    config = base / "extra_model_paths.yaml"
    config.write_text(f"pslider_test:\n  base_path: {base}\n  pareto_slider: {extra_sliders}\n"
                      f"  custom_nodes: {base / 'packs'}\n")
    port = _free_port()
    with open(base / "server.log", "w") as log:
        process = subprocess.Popen(
            [PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
             "--base-directory", str(base), "--extra-model-paths-config", str(config)],
            cwd=COMFYUI_PATH, env=subprocess_env(stub), stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            handle = Server(f"http://127.0.0.1:{port}", base / "output", names, base / "server.log")
            yield _wait_until_serving(handle, process, base)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_serving(handle: Server, process: subprocess.Popen, base: Path) -> Server:
    deadline = time.time() + 240
    while time.time() < deadline:
        assert process.poll() is None, (base / "server.log").read_text()[-3000:]
        try:
            if handle.get("/object_info/ParetoSliderApply")[0] == 200:
                return handle
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("ComfyUI did not start: " + (base / "server.log").read_text()[-3000:])


# ---------------------------------------------------------------------------------------------- graphs
def graph(server: Server, node: dict | None, batch: int = 1, prefix: str = "plain", seed: int = 7) -> dict:
    """UNETLoader -> [pack node] -> KSampler (CFG 3) -> SaveLatent, on the tiny SD3 model."""
    model_src = ["1", 0]
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": server.names["unet"], "weight_dtype": "default"}},
        "2": {"class_type": "PSliderTestConditioning", "inputs": {"seed": 1, "tokens": 8}},
        "3": {"class_type": "PSliderTestConditioning", "inputs": {"seed": 2, "tokens": 8}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": batch}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{prefix}"}},
    }
    if node is not None:
        g["10"] = {**node, "inputs": {"model": ["1", 0], "file": server.names["slider"], "strength": 1.0,
                                      **node["inputs"]}}
        model_src = ["10", 0]
    g["5"] = {"class_type": "KSampler", "inputs": {
        "model": model_src, "seed": seed, "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    return g


def apply_node(*w: float) -> dict:
    return {"class_type": "ParetoSliderApply", "inputs": {f"w{i + 1}": (w[i] if i < len(w) else 0.0) for i in range(8)}}


def completed(entry: dict) -> bool:
    return entry.get("status", {}).get("status_str") == "success"


def error_message(entry: dict) -> str:
    return " ".join(str(m[1].get("exception_message", "")) for m in entry["status"]["messages"]
                    if m[0] == "execution_error")


def test_object_info_serves_the_pack_nodes_exactly_as_the_tests_see_them(server):
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import fakes

    pack = fakes.load_pack()
    listed = server.json("/object_info")
    for node_id, cls in pack.nodes.items():
        real, fake = listed[node_id], json.loads(json.dumps(cls.GET_NODE_INFO_V1()))
        options = real["input"]["required"]["file"][1]["options"]
        assert options == sorted([server.names["slider"], server.names["slider3"]])
        real["input"]["required"]["file"][1]["options"] = fake["input"]["required"]["file"][1]["options"] = []
        for key in ("input", "input_order", "output", "output_name", "output_is_list", "name", "display_name",
                    "description", "category", "output_node"):
            assert real[key] == fake[key], (node_id, key)
        assert real["python_module"] == f"custom_nodes.{PACK_FOLDER}"


def test_core_node_schemas_the_workflows_use_match_the_recorded_ones(server):
    recorded = json.loads((REPO_ROOT / "tests" / "fakes" / "core_object_info.json").read_text())
    listed = server.json("/object_info")
    present = [n for n in recorded if n in listed]
    assert len(present) >= 20, "most core nodes of the workflows exist in any recent ComfyUI"
    for name in present:
        real, fake = listed[name], recorded[name]
        assert real["input_order"] == fake["input_order"], name
        assert (real["output"], real["output_name"]) == (fake["output"], fake["output_name"]), name
        kinds = {sec: {k: v[0] if isinstance(v[0], str) else "COMBO" for k, v in real["input"][sec].items()}
                 for sec in real["input_order"]}
        recorded_kinds = {sec: {k: v[0] if isinstance(v[0], str) else "COMBO" for k, v in fake["input"][sec].items()}
                          for sec in fake["input_order"]}
        assert kinds == recorded_kinds, name


def test_route_templates_and_web_extension_are_served(server):
    info = server.json(f"/pareto_slider/rewards?file={server.names['slider']}")
    assert info["reward_names"] == ["photo", "sketch"] and info["backbone"] == "sd3"
    assert server.get("/pareto_slider/rewards?file=missing.safetensors")[0] == 404
    templates = server.json("/workflow_templates")[PACK_FOLDER]
    assert sorted(templates) == sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
    status, body = server.get(f"/api/workflow_templates/{PACK_FOLDER}/sd35_t2i_sliders.json")
    assert status == 200 and json.loads(body) == json.loads((REPO_ROOT / "workflows" / "sd35_t2i_sliders.json").read_text())
    extensions = server.json("/extensions")
    assert extensions.count(f"/extensions/{PACK_FOLDER}/js/pareto_slider.js") == 1


def test_weights_change_the_render_and_a_plain_graph_afterwards_is_unchanged(server):
    runs = {}
    for label, node in (("plain", None), ("photo", apply_node(1.0, 0.0)), ("sketch", apply_node(0.0, 1.0)),
                        ("plain_again", None)):
        entry = server.run(graph(server, node, prefix=label))
        assert completed(entry), entry["status"]
        runs[label] = server.latents(entry, "6")[0]
        if node is not None:
            assert entry["outputs"]["10"]["weights"] == [[1.0, 0.0] if label == "photo" else [0.0, 1.0]]
    assert (runs["photo"] - runs["sketch"]).abs().max() > 1e-3
    assert (runs["photo"] - runs["plain"]).abs().max() > 1e-3
    assert (runs["plain_again"] == runs["plain"]).all(), "no leak into the unpatched model"


def test_the_pack_imports_no_training_package_and_loads_fast(server):
    """Loading the pack and running each of its nodes in the real server imports none of the training stack (what
    ComfyUI itself imported before custom nodes load is not the pack's doing); ComfyUI's own import timing of the
    pack is reported."""
    nodes = [apply_node(0.3, 0.7), {"class_type": "ParetoSliderSweep", "inputs": {"points": 2}},
             {"class_type": "ParetoSliderSchedule", "inputs": {
                 **{f"start_w{i + 1}": float(i == 0) for i in range(8)},
                 **{f"end_w{i + 1}": float(i == 1) for i in range(8)}}}]
    for i, node in enumerate(nodes):
        g = graph(server, node, prefix=f"imports{i}")
        if node["class_type"] == "ParetoSliderSweep":
            g["4"]["inputs"]["batch_size"] = ["10", 1]  # one batch element per point
        g["20"] = {"class_type": "PSliderTestModules", "inputs": {"samples": ["5", 0]}}
        entry = server.run(g)
        assert completed(entry), error_message(entry)
        assert entry["outputs"]["20"]["imported"] == [], node["class_type"]
    timing = re.search(rf"^\s*([\d.]+) seconds: .*{re.escape(PACK_FOLDER)}$", server.log(), re.MULTILINE)
    assert timing is not None, "ComfyUI logged no import time for the pack"
    print(f"ComfyUI import time of the pack: {timing.group(1)} s")
    assert float(timing.group(1)) < 5.0  # 8.7-13.4 s when the pack imported the training stack


def test_a_sweep_renders_one_point_per_batch_element(server):
    sweep = {"class_type": "ParetoSliderSweep", "inputs": {"points": 3}}
    g = graph(server, sweep, prefix="sweep")
    g["4"]["inputs"]["batch_size"] = ["10", 1]
    entry = server.run(g)
    assert completed(entry), entry["status"]
    batch = server.latents(entry, "6")[0]
    assert batch.shape[0] == 3
    assert min((batch[i] - batch[j]).abs().max() for i in range(3) for j in range(i)) > 1e-3
    single = server.latents(server.run(graph(server, apply_node(1.0, 0.0), prefix="first")), "6")[0]
    # element 0 gets the same noise as a batch of one (ComfyUI draws the batch from one seeded generator)
    assert (batch[0] - single[0]).abs().max() < 1e-4
    mismatch = graph(server, sweep, batch=2, prefix="mismatch")
    entry = server.run(mismatch)
    assert not completed(entry) and "sweep has 3 points" in error_message(entry)


def test_a_schedule_runs_between_its_two_ends(server):
    ends = {}
    for label, w in (("start", (1.0, 0.0)), ("end", (0.0, 1.0))):
        ends[label] = server.latents(server.run(graph(server, apply_node(*w), prefix=label)), "6")[0]
    schedule = {"class_type": "ParetoSliderSchedule", "inputs": {
        **{f"start_w{i + 1}": float(i == 0) for i in range(8)}, **{f"end_w{i + 1}": float(i == 1) for i in range(8)}}}
    entry = server.run(graph(server, schedule, prefix="schedule"))
    assert completed(entry), entry["status"]
    assert entry["outputs"]["10"]["text"] == ["start: photo 1 · sketch 0", "end: photo 0 · sketch 1"]
    moving = server.latents(entry, "6")[0]
    assert min((moving - ends["start"]).abs().max(), (moving - ends["end"]).abs().max()) > 1e-4


# ---------------------------------------------------------------------------------------------- controls
# One Euler step from sigma_max lands on the CFG-combined denoised latent, which is affine in the model's output, and
# SD3's process_latent_out is affine too: a 1-step render of a combination is the combination of 1-step renders.
def one_step(server: Server, node: dict | None, prefix: str, mask: bool = False):
    g = graph(server, node, prefix=prefix)
    g["5"]["inputs"]["steps"] = 1
    if mask:  # the left half of the 32 x 32 image: SolidMask 0 everywhere, plus 1 on a 16 px wide strip
        g["20"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 32, "height": 32}}
        g["21"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 32}}
        g["22"] = {"class_type": "MaskComposite", "inputs": {"destination": ["20", 0], "source": ["21", 0], "x": 0,
                                                             "y": 0, "operation": "add"}}
    entry = server.run(g)
    assert completed(entry), error_message(entry) if "status" in entry else entry
    return server.latents(entry, "6")[0]


def guided_node(*w: float, scale: float, source: str) -> dict:
    node = apply_node(*w)
    node["inputs"].update({"preference_guidance": scale, "guidance_from": source})
    return node


def regional_node(inside: tuple, outside: tuple, **extra) -> dict:
    return {"class_type": "ParetoSliderRegional", "inputs": {
        "mask": ["22", 0], **{f"inside_w{i + 1}": (inside[i] if i < 2 else 0.0) for i in range(8)},
        **{f"outside_w{i + 1}": (outside[i] if i < 2 else 0.0) for i in range(8)}, **extra}}


def test_preference_guidance_through_the_real_sampler_is_the_stated_combination(server):
    at = {w: one_step(server, apply_node(*w), f"g{w[0]:g}") for w in ((0.0, 1.0), (1.0, 0.0), (0.5, 0.5))}
    for source, w_from in (("opposite", (1.0, 0.0)), ("uniform", (0.5, 0.5))):
        guided = one_step(server, guided_node(0.0, 1.0, scale=2.0, source=source), f"guided_{source}")
        expected = at[w_from] + 2.0 * (at[(0.0, 1.0)] - at[w_from])
        assert (guided - expected).abs().max() < 1e-4, source
        assert (guided - at[(0.0, 1.0)]).abs().max() > 1e-3
    off = one_step(server, guided_node(0.0, 1.0, scale=1.0, source="opposite"), "guided_off")
    assert (off == at[(0.0, 1.0)]).all(), "guidance 1 is the plain node"
    entry = server.run(graph(server, guided_node(0.0, 1.0, scale=3.0, source="opposite"), prefix="guided3"))
    assert completed(entry) and entry["outputs"]["10"]["text"] == ["photo 0 · sketch 1",
                                                                    "preference guidance 3 from opposite"]
    rejected = server.run(graph(server, guided_node(0.0, 1.0, scale=0.0, source="uniform"), prefix="zero"))["rejected"]
    assert "value_smaller_than_min" in json.dumps(rejected)
    bad = graph(server, guided_node(0.0, 1.0, scale=2.0, source="uniform"), prefix="nan_guidance")
    bad["10"]["inputs"]["preference_guidance"] = float("nan")
    entry = server.run(bad)
    assert not completed(entry) and "preference_guidance = nan" in error_message(entry)


def test_regional_weights_follow_a_real_mask_and_compose_with_guidance(server):
    inside, outside = one_step(server, apply_node(0.0, 1.0), "r_in"), one_step(server, apply_node(1.0, 0.0), "r_out")
    got = one_step(server, regional_node((0.0, 1.0), (1.0, 0.0)), "regional", mask=True)
    assert got.shape == inside.shape and got.shape[-1] == 4  # the 32 px mask resized to the 4 x 4 latent
    assert (got[..., :2] - inside[..., :2]).abs().max() < 1e-4, "left half: the inside weights"
    assert (got[..., 2:] - outside[..., 2:]).abs().max() < 1e-4, "right half: the outside weights"
    uniform = one_step(server, apply_node(0.5, 0.5), "r_uniform")
    guided = one_step(server, regional_node((0.0, 1.0), (1.0, 0.0), preference_guidance=2.0,
                                            guidance_from="uniform"), "regional_guided", mask=True)
    assert (guided[..., :2] - (uniform + 2 * (inside - uniform))[..., :2]).abs().max() < 1e-4
    assert (guided[..., 2:] - (uniform + 2 * (outside - uniform))[..., 2:]).abs().max() < 1e-4
    g = graph(server, regional_node((0.0, 1.0), (1.0, 0.0)), prefix="regional3")
    g["20"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 64, "height": 64}}
    g["22"] = {"class_type": "MaskComposite", "inputs": {"destination": ["20", 0], "source": ["20", 0], "x": 0,
                                                         "y": 0, "operation": "multiply"}}
    g["30"] = {"class_type": "PSliderTestModules", "inputs": {"samples": ["5", 0]}}
    entry = server.run(g)  # a 3-step render with a soft mask of another size runs, importing no training package
    assert completed(entry), error_message(entry)
    assert entry["outputs"]["30"]["imported"] == []
    assert entry["outputs"]["10"]["text"] == ["inside: photo 0 · sketch 1", "outside: photo 1 · sketch 0"]


def test_schedule_over_frames_is_refused_on_an_image_model(server):
    schedule = {"class_type": "ParetoSliderSchedule", "inputs": {
        **{f"start_w{i + 1}": float(i == 0) for i in range(8)}, **{f"end_w{i + 1}": float(i == 1) for i in range(8)},
        "over": "frames"}}
    entry = server.run(graph(server, schedule, prefix="frames"))
    assert not completed(entry) and "over = frames moves the weights over a video's frames" in error_message(entry)
    schedule["inputs"]["over"] = "sampling"
    assert completed(server.run(graph(server, schedule, prefix="sampling")))


def test_bad_input_is_a_node_error_and_the_server_keeps_serving(server):
    entry = server.run(graph(server, apply_node(0.0, 0.0), prefix="zero"))
    assert not completed(entry) and "must not all be zero" in error_message(entry)
    entry = server.run(graph(server, apply_node(0.5, 0.5, 0.3), prefix="extra"))
    assert not completed(entry) and "w3 = 0.3" in error_message(entry)
    rejected = server.run(graph(server, apply_node(1.5, 0.5), prefix="range"))["rejected"]
    assert "value_bigger_than_max" in json.dumps(rejected)
    not_a_number = graph(server, apply_node(0.5, 0.5), prefix="nan")
    not_a_number["10"]["inputs"]["strength"] = float("nan")  # passes the server's range check (NaN < 0 is false)
    entry = server.run(not_a_number)
    assert not completed(entry) and "strength = nan" in error_message(entry)
    assert completed(server.run(graph(server, apply_node(0.4, 0.6), prefix="after")))


# ---------------------------------------------------------------------------------------------- browser
# Debian's chromium, never a browser Playwright downloads; Playwright gives each launch a fresh profile.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium():
    """Playwright's sync API and the system's chromium executable; skips (before any server starts) without them."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium executable (Debian: apt-get install chromium)")
    return sync_api, executable


@pytest.fixture(scope="module")
def page(chromium, server):
    """ComfyUI's real frontend in headless Chromium (Playwright), one page for the module's browser tests."""
    sync_api, executable = chromium
    # no dialog over the canvas, where the mouse events must land: the template browser of a new user's first visit,
    # the missing-models list of a shared workflow whose models this server lacks
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False}
    request = urllib.request.Request(server.url + "/settings", data=json.dumps(settings).encode(), method="POST")
    urllib.request.urlopen(request, timeout=30).close()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url, wait_until="networkidle")
            page.wait_for_function("() => window.app && window.app.graph", timeout=60_000)
            yield page
        finally:
            browser.close()


def _choose_file(page, workflow: str, node_type: str, file: str, widget: str, label: str) -> None:
    """Load a shared workflow, pick `file` in its `node_type` node, wait until `widget` is relabelled `label`."""
    graph = json.loads((REPO_ROOT / "workflows" / workflow).read_text())
    page.evaluate("async (w) => { await window.app.loadGraphData(w); }", graph)
    page.evaluate(
        """([type, file]) => {
            const node = window.app.graph._nodes.find((n) => n.type === type);
            const widget = node.widgets.find((w) => w.name === "file");
            widget.value = file;
            widget.callback(file);
        }""",
        [node_type, file],
    )
    page.wait_for_function(
        """([type, name, label]) => {
            const node = window.app.graph._nodes.find((n) => n.type === type);
            return node.widgets.find((w) => w.name === name).label === label;
        }""",
        arg=[node_type, widget, label],
        timeout=30_000,
    )


def test_frontend_names_the_sliders_after_the_chosen_files_rewards(page, server):
    """Load a shared workflow, choose a file, read the sliders."""
    _choose_file(page, "sd35_t2i_sliders.json", "ParetoSliderApply", server.names["slider"], "w1", "photo")
    sliders = page.evaluate(
        """() => window.app.graph._nodes.find((n) => n.type === "ParetoSliderApply").widgets
            .filter((w) => /^w\\d$/.test(w.name))
            .map((w) => ({name: w.name, label: w.label, hidden: !!w.hidden, value: w.value}))"""
    )
    # what the node shows after a run, and that this display never enters the saved or sent graph
    shown, saved, sent, widget_names = page.evaluate(
        """async () => {
            const node = window.app.graph._nodes.find((n) => n.type === "ParetoSliderApply");
            node.onExecuted({text: ["photo 0.3 · sketch 0.7"], weights: [[0.3, 0.7]]});
            const prompt = await window.app.graphToPrompt();
            return [node.widgets.find((w) => w.name === "applied_weights").value,
                    node.serialize().widgets_values, prompt.output[String(node.id)].inputs,
                    node.widgets.map((w) => w.name)];
        }"""
    )
    assert [(s["label"], s["hidden"]) for s in sliders[:2]] == [("photo", False), ("sketch", False)]
    assert all(s["hidden"] and s["value"] == 0 for s in sliders[2:]) and len(sliders) == 8
    assert shown == "photo 0.3 · sketch 0.7"
    assert saved == [server.names["slider"], 1, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 1, "uniform"]
    assert set(sent) == {"model", "file", "strength", *(f"w{i}" for i in range(1, 9)), "preference_guidance",
                         "guidance_from"}
    assert not any(name.startswith("simplex") for name in widget_names), "2 rewards: no triangle"


def test_frontend_names_the_regional_nodes_inside_and_outside_sliders(page, server):
    """The shared regional workflow: both slider groups carry the reward names, the unused ones hide."""
    _choose_file(page, "sd35_t2i_regional.json", "ParetoSliderRegional", server.names["slider"], "outside_w2",
                 "outside: sketch")
    sliders = page.evaluate(
        """() => window.app.graph._nodes.find((n) => n.type === "ParetoSliderRegional").widgets
            .filter((w) => /^(inside|outside)_w\\d$/.test(w.name))
            .map((w) => ({name: w.name, label: w.label, hidden: !!w.hidden}))"""
    )
    shown = {s["name"]: s["label"] for s in sliders if not s["hidden"]}
    assert shown == {"inside_w1": "inside: photo", "inside_w2": "inside: sketch", "outside_w1": "outside: photo",
                     "outside_w2": "outside: sketch"}
    assert len(sliders) == 16


SIMPLEX_MODULE = f"/extensions/{PACK_FOLDER}/js/simplex.js"
NODE = "(id) => window.app.graph.getNodeById(id)"


def _show_node(page, node_id: int, scale: float) -> None:
    """Put the node near the top left of the viewport at `scale` and let the DOM widgets follow (two frames)."""
    page.evaluate(
        """([id, scale]) => {
            const node = window.app.graph.getNodeById(id);
            const ds = window.app.canvas.ds;
            ds.scale = scale;
            ds.offset = [120 / scale - node.pos[0], 80 / scale - node.pos[1]];
            window.app.canvas.setDirty(true, true);
            return new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
        }""",
        [node_id, scale],
    )


def _triangle(page, node_id: int, prefix: str):
    """(the widget's canvas element, its page box, its corners in page coordinates), from the widget's own geometry."""
    element = page.evaluate_handle(f"([id, name]) => ({NODE})(id).widgets.find((w) => w.name === name).element",
                                   [node_id, f"simplex_{prefix}"]).as_element()
    box = element.bounding_box()
    width, local = page.evaluate(
        f"""async (element) => [element.clientWidth,
            (await import("{SIMPLEX_MODULE}")).corners(element.clientWidth, element.clientHeight)]""",
        element,
    )
    scale = box["width"] / width  # the canvas zoom scales the element
    return element, box, [(box["x"] + x * scale, box["y"] + y * scale) for x, y in local]


def _at(corners, weights) -> tuple[float, float]:
    return tuple(sum(w * c[k] for w, c in zip(weights, corners)) for k in (0, 1))


def _past(corners, weights) -> tuple[float, float]:
    """A point outside the triangle, straight out from the centroid through the point of the edge at `weights`."""
    (x, y), (gx, gy) = _at(corners, weights), _at(corners, (1 / 3, 1 / 3, 1 / 3))
    return x + (x - gx) * 0.6, y + (y - gy) * 0.6


def _drag(page, start, end) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=4)
    page.mouse.up()


def _values(page, node_id: int, names: list[str]) -> list[float]:
    return page.evaluate(f"([id, names]) => names.map((n) => ({NODE})(id).widgets.find((w) => w.name === n).value)",
                         [node_id, names])


def _pixels(page, element, points, box) -> list[list[int]]:
    """RGBA of the widget's canvas at page points."""
    return page.evaluate(
        """([element, points]) => {
            const scale = element.width / element.getBoundingClientRect().width;
            const ctx = element.getContext("2d");
            return points.map(([x, y]) => Array.from(ctx.getImageData(Math.round(x * scale), Math.round(y * scale),
                                                                      1, 1).data));
        }""",
        [element, [[x - box["x"], y - box["y"]] for x, y in points]],
    )


def test_frontend_simplex_widget_for_three_rewards(page, server):
    """A 3-reward file: a triangle under the sliders. Dragging writes barycentric weights into w1..w3 (dragging past an
    edge clamps to the triangle), moving the sliders moves the handle, the queued prompt carries the dragged weights
    and the node applies them, a saved workflow loads with the same widget values; a Schedule node gets a start and an
    end triangle, and a 2-reward file hides them."""
    api_graph = graph(server, apply_node(0.5, 0.5), prefix="simplex")
    api_graph["10"]["inputs"]["file"] = server.names["slider3"]
    page.evaluate("(g) => window.app.loadApiJson(g, 'simplex')", api_graph)
    page.wait_for_function(f"() => ({NODE})(10).widgets.some((w) => w.name === 'simplex_w')", timeout=30_000)
    _show_node(page, 10, 1.0)
    # the hidden sliders w4..w8 take no room above the triangle
    assert page.evaluate(f"() => ({NODE})(10).widgets.filter((w) => w.hidden).map((w) => w.computedHeight)") == [0] * 5
    element, box, corners = _triangle(page, 10, "w")
    centroid = _at(corners, (1 / 3, 1 / 3, 1 / 3))
    w = ["w1", "w2", "w3"]
    for end, expected in ((_past(corners, (1, 0, 0)), (1, 0, 0)),  # past a corner: clamped to it
                          (_past(corners, (0, 0, 1)), (0, 0, 1)),
                          (_at(corners, (0, 0.5, 0.5)), (0, 0.5, 0.5)),  # an edge's midpoint
                          (_past(corners, (0.5, 0.5, 0)), (0.5, 0.5, 0)),  # past one: clamped to the edge
                          (centroid, (1 / 3, 1 / 3, 1 / 3)),
                          (_at(corners, (0.6, 0.1, 0.3)), (0.6, 0.1, 0.3))):
        _drag(page, centroid, end)
        got = _values(page, 10, w)
        assert max(abs(g - e) for g, e in zip(got, expected)) < 0.02 and abs(sum(got) - 1) < 1e-9, (end, got, expected)
    dragged = _values(page, 10, w)

    # queue from the browser: the prompt carries the sliders only, and the node applies what was dragged
    page.evaluate("() => window.app.queuePrompt(0)")
    page.wait_for_function(
        f"() => ({NODE})(10).widgets.find((w) => w.name === 'applied_weights')?.value", timeout=120_000)
    deadline = time.time() + 120
    while (queue := server.json("/queue"))["queue_running"] or queue["queue_pending"]:
        assert time.time() < deadline, queue
        time.sleep(0.5)
    entry = next(iter(server.json("/history?max_items=1").values()))
    assert completed(entry), error_message(entry)
    sent = entry["prompt"][2]["10"]["inputs"]
    assert [sent[n] for n in w] == dragged and not any(name.startswith("simplex") for name in sent)
    [applied] = entry["outputs"]["10"]["weights"]
    assert len(applied) == 3 and max(abs(x - y) for x, y in zip(applied, (0.6, 0.1, 0.3))) < 0.02

    # a slider moved (as its drag does: setValue) moves the handle from where it was to the centroid
    q = _at(corners, dragged)
    before = _pixels(page, element, [q, centroid], box)
    page.evaluate(
        f"""(id) => {{
            const node = ({NODE})(id);
            for (const [name, v] of [["w1", 0.33], ["w2", 0.33], ["w3", 0.34]])
                node.widgets.find((w) => w.name === name).setValue(v, {{node, canvas: window.app.canvas}});
            node.setDirtyCanvas(true, true);
            return new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
        }}""",
        10,
    )
    after = _pixels(page, element, [q, centroid], box)
    assert before[0] != before[1] and after == before[::-1], (before, after)  # handle and triangle swapped places

    # the triangle is no input: the saved workflow holds the same positional values and loads them back
    saved = page.evaluate(
        """async () => {
            const saved = window.app.graph.serialize();
            await window.app.loadGraphData(saved);
            return saved.nodes.find((n) => n.id === 10).widgets_values;
        }"""
    )
    page.wait_for_function(f"() => ({NODE})(10).widgets.some((w) => w.name === 'simplex_w')", timeout=30_000)
    reloaded = page.evaluate(f"() => ({NODE})(10).serialize().widgets_values")
    assert saved == reloaded and saved[:10] == [server.names["slider3"], 1, 0.33, 0.33, 0.34, 0, 0, 0, 0, 0]
    assert None not in saved  # a non-serialized widget before a serialized one would leave a hole

    # Schedule: a start and an end triangle; dragging the end one moves only the end sliders
    schedule = {"1": api_graph["1"], "11": {"class_type": "ParetoSliderSchedule", "inputs": {
        "model": ["1", 0], "file": server.names["slider3"], "strength": 1.0,
        **{f"{p}w{i + 1}": [0.5, 0.5][i] if i < 2 else 0.0 for p in ("start_", "end_") for i in range(8)}}}}
    page.evaluate("(g) => window.app.loadApiJson(g, 'simplex_schedule')", schedule)
    page.wait_for_function(f"() => ({NODE})(11).widgets.some((w) => w.name === 'simplex_end_w')", timeout=30_000)
    _show_node(page, 11, 0.75)
    end_element, _, corners = _triangle(page, 11, "end_w")
    _drag(page, _at(corners, (1 / 3, 1 / 3, 1 / 3)), _past(corners, (0, 1, 0)))
    names = [f"{p}_w{i}" for p in ("start", "end") for i in (1, 2, 3)]
    assert _values(page, 11, names) == [0.5, 0.5, 0, 0, 1, 0]
    start_element = _triangle(page, 11, "start_w")[0]
    assert start_element.is_visible() and end_element.is_visible()

    # a 2-reward file: no triangle, and no room kept for one
    height = page.evaluate(
        f"""(file) => {{
            const node = ({NODE})(11);
            const widget = node.widgets.find((w) => w.name === "file");
            const height = node.size[1];
            widget.value = file;
            widget.callback(file);
            return height;
        }}""",
        server.names["slider"],
    )
    page.wait_for_function(f"() => ({NODE})(11).widgets.find((w) => w.name === 'simplex_end_w').hidden",
                           timeout=30_000)
    _show_node(page, 11, 0.75)
    assert not start_element.is_visible() and not end_element.is_visible()
    assert page.evaluate(f"() => ({NODE})(11).size[1]") < height - 300


# ---------------------------------------------------------------------------------------------- parity
# Float32 rounding bound for predicting twice with bit-identical weights and inputs: the kernels may sum in another
# order from call to call (how a multithreaded or alignment-dispatched sgemm splits its work), each order exact to
# half an ulp per operation; through the tiny models that stays within a few ulps of the largest output. 8 ulps
# (8 * 2**-23 * max|v|, about 2e-6 here) passes that noise and fails any real leak, which moves the prediction by
# the file's effect (> 1e-2).
ROUNDING_ULPS = 8 * 2.0**-23


def test_comfyui_prediction_equals_the_trainer_side_conditioned_transformer(tmp_path, stub):
    """tests/comfyui_parity.py in ComfyUI's Python, which needs no pytest."""
    out = tmp_path / "parity.json"
    result = subprocess.run([PYTHON, str(REPO_ROOT / "tests" / "comfyui_parity.py"), str(out)], cwd=tmp_path,
                            env=subprocess_env(stub), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    print(json.dumps(report, indent=1))
    for case in ("sd3", "fluxkontext", "sd3_reward_ranks", "fluxkontext_reward_ranks"):
        r = report[case]
        assert r["base_comfy_vs_diffusers"] < 1e-4, r  # the same base model on both sides
        assert r["effect"] > 1e-2, r  # the file really changes the prediction
        assert r["patched_comfy_vs_conditioned_diffusers"] < 1e-4, r
        # no leak: the unpatched model's weights are restored bit for bit and carry no wrapper of ours, so its
        # prediction differs from before at most by float32 rounding
        assert r["weights_changed"] == 0.0 and r["wrappers_left"] == 0, r
        assert r["leak"] <= ROUNDING_ULPS * r["output_max"], r


def test_fakes_mirror_the_real_comfyui_names_and_signatures():
    """Every class, method and function the fakes define exists in the real module with the same parameters."""
    fakes_dir = REPO_ROOT / "tests" / "fakes"
    mirrored = ["comfy/model_patcher.py", "comfy/patcher_extension.py", "comfy/sd.py", "comfy/lora.py",
                "comfy/utils.py", "comfy/sampler_helpers.py", "comfy/samplers.py", "folder_paths.py",
                "comfy_api/latest/_io.py"]
    mirrored.append("comfy/model_base.py")  # its BaseModel; the tiny diffusion models there are the tests' own
    for rel in mirrored:
        real = _signatures(Path(COMFYUI_PATH) / rel)
        fake = _signatures(fakes_dir / rel)
        if rel == "comfy/model_base.py":
            fake = {k: v for k, v in fake.items() if k.split(".")[0] == "BaseModel"}
            assert fake["BaseModel.apply_model"] == real["BaseModel.apply_model"]
        for name, params in fake.items():
            assert name in real, f"{rel}: {name} does not exist in ComfyUI"
            assert params == real[name][: len(params)], f"{rel}: {name}{params} vs real {real[name]}"


def _signatures(path: Path) -> dict[str, list[str]]:
    """{name: parameter names} for public module-level functions and for the methods of top-level classes,
    methods inherited from classes of the same module included."""
    tree = ast.parse(path.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
        return [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]

    def methods(cls: ast.ClassDef) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                found.update(methods(classes[base.id]))
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                not item.name.startswith("_") or item.name in ("__init__", "__call__")
            ):
                found[item.name] = params(item)
        return found

    out: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            out[node.name] = params(node)
    for name, cls in classes.items():
        out[name] = []
        out.update({f"{name}.{method}": p for method, p in methods(cls).items()})
    return out
