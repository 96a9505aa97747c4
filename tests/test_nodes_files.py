"""Where the nodes find files, the module-level cache of loaded files, and the reward-names HTTP route."""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path

import fakes
import pytest
import torch
from fakes.tiny import Library, tiny_model
from safetensors.torch import save_file

PACK = fakes.load_pack()
files = PACK.module.nodes.files
routes = PACK.module.nodes.routes

import folder_paths  # noqa: E402  (the fake, installed by load_pack)
import server  # noqa: E402


@pytest.fixture
def library():
    lib = Library(Path(folder_paths.models_dir), f"t{uuid.uuid4().hex[:8]}")
    yield lib
    lib.remove()


def _plain_lora(path: Path) -> None:
    save_file({"transformer.x.lora_A.weight": torch.zeros(2, 4), "transformer.x.lora_B.weight": torch.zeros(4, 2)},
              str(path))


def test_pack_registers_its_model_folder_for_safetensors():
    paths, extensions = folder_paths.folder_names_and_paths["pareto_slider"]
    assert os.path.join(folder_paths.models_dir, "pareto_slider") in paths
    assert ".safetensors" in extensions


def test_file_combo_lists_the_pack_folder_and_only_pareto_slider_files_among_loras(library):
    own = library.add("a.safetensors", "sd3", lora=False)
    in_loras = library.add("b.safetensors", "ltx2", folder="loras")
    _plain_lora(library.path("plain.safetensors", "loras"))
    library.path("notes.ckpt").write_bytes(b"not a safetensors file")
    options = PACK.nodes["ParetoSliderApply"].GET_NODE_INFO_V1()["input"]["required"]["file"][1]["options"]
    mine = [o for o in options if o.startswith(library.tag)]
    assert mine == [own, in_loras]


def test_pack_folder_wins_over_loras_for_the_same_name(library):
    name = library.add("same.safetensors", "sd3", lora=False)
    library.add("same.safetensors", "ltx2", folder="loras")
    assert files.resolve(name) == str(library.path("same.safetensors"))
    assert files.load(name).data.backbone == "sd3"


def test_loaded_files_are_shared_reloaded_when_changed_and_released_when_unused(library):
    name = library.add("c.safetensors", "ltx2")
    first = files.load(name)
    assert files.load(name) is first
    fingerprint = files.fingerprint(name)
    key = next(k for k, v in files._CACHE.items() if v is first)
    patched = PACK.nodes["ParetoSliderApply"].execute(
        model=tiny_model("ltx2"), file=name, strength=1.0, **{f"w{i}": 0.0 for i in range(3, 9)}, w1=1.0, w2=0.0
    )[0]
    del first
    gc.collect()
    assert key in files._CACHE, "a patched MODEL still uses the file"
    library.add("c.safetensors", "ltx2", seed=7, reward_names=("photo", "sketch", "anime"))
    assert files.fingerprint(name) != fingerprint
    reloaded = files.load(name)
    assert reloaded.reward_names == ("photo", "sketch", "anime")
    del patched, reloaded
    gc.collect()
    assert key not in files._CACHE and not any(v.name == name for v in files._CACHE.values())


def test_reward_route_is_registered_on_the_server_and_answers_for_listed_files_only(library):
    assert [(m, p) for m, p, _ in server.PromptServer.instance.routes.routes] == [("GET", routes.ROUTE)]
    name = library.add("d.safetensors", "fluxkontext", reward_names=("keep", "edit", "style"), lora=False)
    status, body = routes.rewards_response(name)
    assert status == 200
    assert body["reward_names"] == ["keep", "edit", "style"] and body["backbone"] == "fluxkontext"
    status, body = routes.rewards_response("../../etc/passwd")
    assert status == 404 and "No ParetoSlider file" in body["error"]
    _plain_lora(library.path("plain.safetensors"))
    status, body = routes.rewards_response(f"{library.tag}/plain.safetensors")
    assert status == 400 and "without ParetoSlider metadata" in body["error"]


def test_a_missing_file_is_a_clear_error_naming_the_folders(library):
    with pytest.raises(FileNotFoundError, match="pareto_slider"):
        files.load(f"{library.tag}/gone.safetensors")
    assert files.fingerprint(f"{library.tag}/gone.safetensors") is None
