"""The shared workflows: every node and input they name exists, widget values fit the inputs, and comfy-cli's
converter turns each UI workflow into its API twin. Core node schemas: tests/fakes/core_object_info.json (exported
from a real ComfyUI's /object_info; the LTX-2 audio/video nodes written from their upstream schemas; the
integration tests compare it with a running server)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import fakes
import pytest
from comfy_cli.workflow_to_api import convert_ui_to_api

PACK = fakes.load_pack()
WORKFLOWS = fakes.REPO_ROOT / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
OBJECT_INFO = {
    **json.loads((fakes.FAKES_DIR / "core_object_info.json").read_text()),
    **{node_id: cls.GET_NODE_INFO_V1() for node_id, cls in PACK.nodes.items()},
}
PROJECT = metadata.metadata("pareto-slider")  # the installed project: its name and version
UI_ONLY = {"MarkdownNote", "Note"}
SOCKET_TYPES = {"MODEL", "CLIP", "VAE", "LATENT", "IMAGE", "CONDITIONING", "NOISE", "GUIDER", "SAMPLER", "SIGMAS",
                "AUDIO", "VIDEO", "MASK"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _inputs(node_type: str) -> dict:
    spec = OBJECT_INFO[node_type]["input"]
    return {**spec.get("required", {}), **spec.get("optional", {})}


def _widget_names(node_type: str) -> list[str]:
    order = OBJECT_INFO[node_type]["input_order"]
    names = [n for section in ("required", "optional") for n in order.get(section, [])]
    return [n for n in names if _inputs(node_type)[n][0] not in SOCKET_TYPES]


def test_there_is_a_sliders_and_a_sweep_workflow_for_each_backbone_each_with_an_api_twin():
    names = {p.stem for p in UI_FILES}
    assert names == {f"{base}_{variant}" for base in ("sd35_t2i", "flux_kontext_edit", "ltx2_t2v")
                     for variant in ("sliders", "sweep")} | {"sd35_t2i_guidance", "sd35_t2i_regional"}
    assert {p.stem for p in (WORKFLOWS / "api").glob("*.json")} == names


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_names_only_known_nodes_and_inputs_and_its_links_are_consistent(path):
    ui = _load(path)
    nodes = {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        if node["type"] in UI_ONLY:
            continue
        assert node["type"] in OBJECT_INFO, node["type"]
        known = _inputs(node["type"])
        for entry in node["inputs"]:
            assert entry["name"] in known, (node["type"], entry["name"])
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert OBJECT_INFO[nodes[src]["type"]]["output"][src_slot] == kind
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert ui["last_node_id"] == max(nodes)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_pack_nodes_widget_values_match_their_inputs_positionally(path):
    pack_nodes = [n for n in _load(path)["nodes"] if n["type"] in PACK.nodes]
    assert len(pack_nodes) == 1
    node = pack_nodes[0]
    names = _widget_names(node["type"])
    assert len(node["widgets_values"]) == len(names)
    for name, value in zip(names, node["widgets_values"]):
        kind, options = _inputs(node["type"])[name]
        if kind in ("FLOAT", "INT"):
            assert options["min"] <= value <= options["max"], (name, value)
        elif name == "file":
            assert kind == "COMBO" and value.endswith(".safetensors")
        else:
            assert kind == "COMBO" and value in options["options"], (name, value)
    assert node["properties"]["cnr_id"] == PROJECT["Name"] and node["properties"]["ver"] == PROJECT["Version"]
    assert ("sweep" in path.stem) == (node["type"] == "ParetoSliderSweep")


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_workflow_explains_itself_and_names_where_to_download_the_base_model(path):
    ui = _load(path)
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert notes and "slider" in notes[0]["widgets_values"][0].lower()
    assert "models/pareto_slider" in notes[0]["widgets_values"][0]
    models = [m for n in ui["nodes"] for m in n["properties"].get("models", [])]
    loaders = {n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("CheckpointLoaderSimple", "UNETLoader")}
    assert loaders and loaders <= {m["name"] for m in models}
    assert all(m["url"].startswith("https://huggingface.co/") and m["url"].endswith(m["name"]) for m in models)
    assert all(m["directory"] in ("checkpoints", "diffusion_models", "text_encoders", "vae") for m in models)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_comfy_cli_converts_the_ui_workflow_into_its_api_twin(path):
    twin = _load(WORKFLOWS / "api" / path.name)
    assert convert_ui_to_api(_load(path), OBJECT_INFO) == twin
    for node_id, node in twin.items():
        known = _inputs(node["class_type"])
        assert set(node["inputs"]) <= set(known), node_id
        assert set(OBJECT_INFO[node["class_type"]]["input_order"]["required"]) <= set(node["inputs"]), node_id
