"""The nodes' public contract: ids, input ids and their order, ranges, outputs (saved workflows depend on them)."""

from __future__ import annotations

import ast
from pathlib import Path

import fakes
import pytest

PACK = fakes.load_pack()
SLIDERS = [f"w{i}" for i in range(1, 9)]
SCHEDULE = [f"start_w{i}" for i in range(1, 9)] + [f"end_w{i}" for i in range(1, 9)]
REGIONAL = [f"inside_w{i}" for i in range(1, 9)] + [f"outside_w{i}" for i in range(1, 9)]
GUIDANCE = ["preference_guidance", "guidance_from"]
EXPECTED_INPUTS = {
    "ParetoSliderApply": ["model", "file", "strength", *SLIDERS],
    "ParetoSliderSweep": ["model", "file", "strength", "points"],
    "ParetoSliderSchedule": ["model", "file", "strength", *SCHEDULE],
    "ParetoSliderRegional": ["model", "file", "strength", "mask", *REGIONAL],
}
# added after release: optional, after every required input (saved widget values stay where they were)
EXPECTED_OPTIONAL = {"ParetoSliderApply": GUIDANCE, "ParetoSliderSchedule": ["over"], "ParetoSliderRegional": GUIDANCE}
EXPECTED_OUTPUTS = {
    "ParetoSliderApply": (["MODEL"], ["MODEL"]),
    "ParetoSliderSweep": (["MODEL", "INT"], ["MODEL", "batch_size"]),
    "ParetoSliderSchedule": (["MODEL"], ["MODEL"]),
    "ParetoSliderRegional": (["MODEL"], ["MODEL"]),
}


def _info(node_id: str) -> dict:
    return PACK.nodes[node_id].GET_NODE_INFO_V1()


def test_the_extension_lists_exactly_the_four_nodes_in_the_pack_category():
    assert sorted(PACK.nodes) == sorted(EXPECTED_INPUTS)
    for node_id in PACK.nodes:
        info = _info(node_id)
        assert info["category"] == "ParetoSlider"
        assert info["display_name"].startswith("ParetoSlider: ")
        assert info["description"]


@pytest.mark.parametrize("node_id", sorted(EXPECTED_INPUTS))
def test_input_ids_and_order_are_the_published_ones(node_id):
    info = _info(node_id)
    expected = {"required": EXPECTED_INPUTS[node_id]}
    if node_id in EXPECTED_OPTIONAL:
        expected["optional"] = EXPECTED_OPTIONAL[node_id]
    assert info["input_order"] == expected
    assert (info["output"], info["output_name"]) == EXPECTED_OUTPUTS[node_id]
    required = info["input"]["required"]
    assert required["model"][0] == "MODEL"
    assert required["file"][0] == "COMBO"
    every = {**required, **info["input"].get("optional", {})}
    assert all(spec[1].get("tooltip") for name, spec in every.items()), "every input explains itself"


@pytest.mark.parametrize("node_id", ["ParetoSliderApply", "ParetoSliderSchedule", "ParetoSliderRegional"])
def test_weight_sliders_are_0_to_1_sliders_with_defaults_summing_to_one(node_id):
    required = _info(node_id)["input"]["required"]
    groups = {"ParetoSliderApply": [SLIDERS], "ParetoSliderSchedule": [SCHEDULE[:8], SCHEDULE[8:]],
              "ParetoSliderRegional": [REGIONAL[:8], REGIONAL[8:]]}[node_id]
    for group in groups:
        specs = [required[name] for name in group]
        assert all(kind == "FLOAT" for kind, _ in specs)
        assert all((o["min"], o["max"], o["step"], o["display"]) == (0.0, 1.0, 0.01, "slider") for _, o in specs)
        assert [o["default"] for _, o in specs] == [0.5, 0.5, 0, 0, 0, 0, 0, 0]


def test_strength_and_points_ranges():
    for node_id in PACK.nodes:
        kind, options = _info(node_id)["input"]["required"]["strength"]
        assert (kind, options["min"], options["max"], options["default"]) == ("FLOAT", 0.0, 2.0, 1.0)
    kind, options = _info("ParetoSliderSweep")["input"]["required"]["points"]
    assert (kind, options["min"], options["max"], options["default"]) == ("INT", 2, 64, 5)
    assert "batch size" in _info("ParetoSliderSweep")["description"]


@pytest.mark.parametrize("node_id", ["ParetoSliderApply", "ParetoSliderRegional"])
def test_guidance_inputs_default_to_off_and_refuse_zero_at_the_server(node_id):
    optional = _info(node_id)["input"]["optional"]
    kind, options = optional["preference_guidance"]
    assert (kind, options["default"], options["min"], options["max"]) == ("FLOAT", 1.0, 0.05, 10.0)
    kind, options = optional["guidance_from"]
    assert (kind, options["options"], options["default"]) == ("COMBO", ["uniform", "opposite"], "uniform")


def test_regional_takes_a_mask_and_schedule_can_run_over_frames():
    assert _info("ParetoSliderRegional")["input"]["required"]["mask"][0] == "MASK"
    kind, options = _info("ParetoSliderSchedule")["input"]["optional"]["over"]
    assert (kind, options["options"], options["default"]) == ("COMBO", ["sampling", "frames"], "sampling")


def test_pack_modules_import_the_core_relatively_only():
    """ComfyUI imports the repository folder as a package: an absolute `pslider_core` import would not resolve."""
    for path in sorted((fakes.REPO_ROOT / "nodes").glob("*.py")) + [fakes.REPO_ROOT / "__init__.py"]:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith(("pslider_core", "nodes", "trainer")), (path, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(("pslider_core", "nodes", "trainer")) for a in node.names), path
