"""Fuzz of the file loader: hundreds of damaged, edited and hostile variants of one valid tiny sd3 file.

Every variant must be loaded (then applied to a tiny SD3 transformer and run once, conditioned, with finite output:
a file that loads must not poison the model) or refused with `ParetoSliderFileError`; `read_header` may also raise
FileNotFoundError; the node pack's file listing, reward-names route and loader must answer for every one. Anything
else (another exception, a crash, a hang, a memory bomb) fails the test naming the variant. The variants run in a
subprocess (this file run as a script) whose address space is capped a little above what the tiny models need, so
a loader that allocates what a hostile config asks for fails there instead of taking the machine down.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import fakes
import pytest
import torch
from helpers import randomize_, transformer_inputs
from safetensors.torch import save

from pslider_core import (
    LoraSpec,
    ParetoSlider,
    ParetoSliderFileError,
    PreferenceModuleConfig,
    PreferenceModules,
    get_backbone,
    read_header,
)
from pslider_core.file_format import module_tensor_shapes, save_pareto_slider

SEED = 14
CAP_MARGIN = 1536 * 2**20  # address space allowed above what the worker holds once the tiny models are built
VARIANT_TIMEOUT_S = 20
WORKER_TIMEOUT_S = 300
NODE_BATCH = 10  # variants in the fake ComfyUI folders at once
REWARDS = ("photo", "sketch")
OUTCOMES = ("ok", "refused")


# ---------------------------------------------------------------------------------------------------- the test
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory cap needs RLIMIT_AS and /proc")
def test_every_hostile_file_is_loaded_or_refused_clearly(tmp_path):
    env = {**os.environ, "PARETO_FAKE_COMFY_MODELS": str(tmp_path / "models"), "OMP_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "2"}
    try:
        proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                              timeout=WORKER_TIMEOUT_S)
        failure = None if proc.returncode == 0 else f"exit status {proc.returncode}: {proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired:
        failure = f"no answer within {WORKER_TIMEOUT_S} s"
    results = tmp_path / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    if failure is not None:
        started = [r for r in records if "start" in r]
        last = f" while running {started[-1]['phase']} variant {started[-1]['desc']!r}" if started else ""
        pytest.fail(f"The fuzz worker died{last}: {failure}")
    summary = records[-1]["summary"]
    assert summary["cap_bytes"] > 0 and summary["cap_refused_8_gib"], "the memory cap was not in force"
    loader = {r["i"]: r for r in records if r.get("phase") == "loader" and "start" not in r}
    nodes = {r["i"]: r for r in records if r.get("phase") == "nodes" and "start" not in r}
    assert len(loader) == len(nodes) == summary["variants"] >= 300

    problems = []
    for i, run in loader.items():
        node = nodes[i]
        for key in ("read_header", "load"):
            if run[key] not in OUTCOMES:
                problems.append(f"{run['desc']}: {key}: {run[key]}")
        if node["node_load"] not in OUTCOMES or isinstance(node["route"], str) or isinstance(node["listed"], str):
            problems.append(f"{run['desc']}: node pack: {node}")
            continue
        if run["load"] == "ok" and (run["read_header"] != "ok" or node["node_load"] != "ok"):
            problems.append(f"{run['desc']}: loads, yet read_header / the nodes refuse it: {run} {node}")
        header_ok = run["read_header"] == "ok"
        if node["listed"] != [True, header_ok]:
            problems.append(f"{run['desc']}: listed (pack folder, loras) = {node['listed']}, header ok = {header_ok}")
        if node["route"] != [200 if header_ok else 400, 200 if header_ok else 404]:
            problems.append(f"{run['desc']}: reward route statuses {node['route']}, header ok = {header_ok}")
        for message in run["messages"] + node["messages"]:
            if not 20 <= len(message) <= 1500:
                problems.append(f"{run['desc']}: refusal message of {len(message)} characters: {message[:200]!r}")
    assert not problems, f"{len(problems)} variants misbehave:\n" + "\n".join(problems[:30])

    counts = Counter(r["load"] for r in loader.values())
    print(f"\nfuzz: {len(loader)} variants, {counts['ok']} loaded and run, {counts['refused']} refused with "
          f"ParetoSliderFileError, 0 unclear; memory cap {summary['cap_bytes'] / 2**30:.2f} GiB")
    assert loader[0]["desc"] == "unchanged" and loader[0]["load"] == "ok"
    assert counts["ok"] >= 20 and counts["refused"] >= 250, counts


# ---------------------------------------------------------------------------------------------------- variants
def _assemble(header: dict[str, Any] | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


_DELETE = object()


def _set(meta: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `meta` with one (nested) field set, or deleted for `_DELETE`."""
    meta = copy.deepcopy(meta)
    target = meta
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return meta


META_FIELDS = [
    ("format_version",), ("backbone",), ("base_model",), ("reward_names",), ("reward_descriptions",),
    ("module_config",), ("lora",), ("training",), ("module_config", "num_rewards"), ("module_config", "inner_dim"),
    ("module_config", "mode"), ("module_config", "num_freqs"), ("module_config", "block_pe_dim"),
    ("module_config", "block_layers"), ("lora", "rank"), ("lora", "alpha"), ("lora", "target_modules"),
    ("lora", "exclude_modules"),
]
META_VALUES = [
    _DELETE, None, True, 0, -1, 1, 2, 2.0, 2.5, 1e9, 10**9, 10**30, math.nan, math.inf, -math.inf, "", "x",
    "global", [], ["a", "b"], [1, 2], {}, {"rank": 2}, "x" * 5000,
]


class Variants:
    """Seeded mutations of one valid file: (description, file bytes) pairs, the unchanged file first."""

    def __init__(self, base: bytes, tensors: dict[str, torch.Tensor], seed: int) -> None:
        self.base, self.tensors, self.rng = base, tensors, random.Random(seed)
        self.header_len = struct.unpack("<Q", base[:8])[0]
        self.header = json.loads(base[8 : 8 + self.header_len])
        self.data = base[8 + self.header_len :]
        self.meta = json.loads(self.header["__metadata__"]["pareto_slider"])
        self.keys = sorted(k for k in self.header if k != "__metadata__")
        self.lora_keys = [k for k in self.keys if not k.startswith("pareto_slider.")]
        self.items: list[tuple[str, bytes]] = [("unchanged", base)]

    def add(self, desc: str, blob: bytes) -> None:
        self.items.append((desc, blob))

    def with_meta(self, meta: Any, raw: bool = False) -> bytes:
        header = copy.deepcopy(self.header)
        header["__metadata__"]["pareto_slider"] = meta if raw else json.dumps(meta)
        return _assemble(header, self.data)

    def with_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> bytes:
        return save(tensors, metadata={"pareto_slider": json.dumps(meta or self.meta)})

    def with_entry(self, key: str, field: str | None, value: Any) -> bytes:
        """The header with one tensor entry's field (or, for None, the whole entry) replaced."""
        header = copy.deepcopy(self.header)
        header[key] = value if field is None else {**header[key], field: value}
        return _assemble(header, self.data)

    def build(self) -> list[tuple[str, bytes]]:
        torch.manual_seed(self.rng.randrange(2**32))  # the random tensors some variants add
        for step in (self.valid, self.truncations, self.header_lengths, self.byte_flips, self.metadata_fields,
                     self.consistency, self.tensor_changes, self.header_entries, self.raw_text):
            step()
        return self.items

    def valid(self) -> None:
        meta = self.meta
        self.add("reward_descriptions, training, base_model absent", self.with_meta(
            {k: v for k, v in meta.items() if k not in ("reward_descriptions", "training", "base_model")}))
        self.add("unknown extra metadata keys", self.with_meta({**meta, "future": {"x": 1}, "note": "hi"}))
        self.add("target_modules as one regex", self.with_meta(_set(meta, ("lora", "target_modules"), r".*attn.*")))
        self.add("renamed rewards", self.with_meta({**meta, "reward_names": ["a b", "ünïcode ✓"]}))
        deep = json.loads("[" * 200 + "]" * 200)
        self.add("deeply nested training summary", self.with_meta({**meta, "training": {"deep": deep}}))
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            self.add(f"every tensor in {dtype}", self.with_tensors({k: v.to(dtype) for k, v in self.tensors.items()}))
        no_lora = {k: v for k, v in self.tensors.items() if k.startswith("pareto_slider.")}
        self.add("no LoRA (lora null, no LoRA tensors)", self.with_tensors(no_lora, {**meta, "lora": None}))
        global_only = {k: v for k, v in self.tensors.items() if "block_projector" not in k}
        self.add("global mode without block tensors", self.with_tensors(
            global_only, _set(meta, ("module_config", "mode"), "global")))
        header = copy.deepcopy(self.header)
        header["__metadata__"]["other_tool"] = "kept"
        self.add("other __metadata__ keys", _assemble(header, self.data))
        self.add("header padded with spaces", _assemble(json.dumps(self.header).encode() + b"        ", self.data))
        key = self.rng.choice(self.keys)
        self.add(f"large values in {key}", self.with_tensors({**self.tensors, key: self.tensors[key] * 1e3}))
        self.add(f"zeros in {key}", self.with_tensors({**self.tensors, key: torch.zeros_like(self.tensors[key])}))

    def truncations(self) -> None:
        size, end = len(self.base), 8 + self.header_len
        cuts = {0, 1, 4, 7, 8, 9, 16, end - 1, end, end + 1, size - 1, size - 4}
        while len(cuts) < 30:
            cuts.add(self.rng.randrange(size))
        for cut in sorted(cuts):
            self.add(f"truncated to {cut} of {size} bytes", self.base[:cut])

    def header_lengths(self) -> None:
        n, size = self.header_len, len(self.base)
        for value in (0, 1, 2, n - 1, n + 1, n + 8, size - 8, size - 7, 100_000_001, 2**63, 2**64 - 1):
            self.add(f"header length {value} (really {n})", struct.pack("<Q", value) + self.base[8:])
        for _ in range(24):
            bit = self.rng.randrange(64)
            self.add(f"header length bit {bit} flipped", struct.pack("<Q", n ^ (1 << bit)) + self.base[8:])

    def byte_flips(self) -> None:
        start, end = 8, 8 + self.header_len
        digits = [i for i in range(start, end) if chr(self.base[i]).isdigit()]
        for count in range(90):
            blob = bytearray(self.base)
            spots = [self.rng.randrange(start, end) for _ in range(1 + count % 4)]
            for spot in spots:
                blob[spot] = self.rng.randrange(256)
            self.add(f"header bytes {spots} replaced", bytes(blob))
        for _ in range(30):
            blob = bytearray(self.base)
            spot = self.rng.choice(digits)
            blob[spot] = ord(self.rng.choice([d for d in "0123456789" if ord(d) != blob[spot]]))
            self.add(f"header digit at {spot} changed", bytes(blob))
        text = self.base[8:end]
        for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00"):
            spot = self.rng.randrange(len(text))
            self.add(f"non-UTF-8 {bad!r} inserted in the header", _assemble(text[:spot] + bad + text[spot:], self.data))
        spot = text.index(b"photo")
        self.add("non-UTF-8 byte in a reward name", _assemble(text[:spot] + b"\xfe" + text[spot + 1 :], self.data))

    def metadata_fields(self) -> None:
        for path in META_FIELDS:
            for value in META_VALUES:
                shown = "deleted" if value is _DELETE else repr(value)[:30]
                self.add(f"metadata {'.'.join(path)} = {shown}", self.with_meta(_set(self.meta, path, value)))

    def consistency(self) -> None:
        meta = self.meta
        for key, value in [("num_rewards", 3), ("num_rewards", 64), ("inner_dim", 64), ("inner_dim", 65536),
                           ("inner_dim", 65537), ("num_freqs", 1), ("num_freqs", 64), ("num_freqs", 10**9),
                           ("block_pe_dim", 8), ("block_pe_dim", 65536), ("block_pe_dim", 10**9),
                           ("block_layers", 2), ("block_layers", 64), ("block_layers", 10**9), ("mode", "global")]:
            self.add(f"module_config.{key} = {value} (tensors unchanged)",
                     self.with_meta(_set(meta, ("module_config", key), value)))
        self.add("3 reward names for 2-reward modules", self.with_meta({**meta, "reward_names": ["a", "b", "c"],
                                                                        "reward_descriptions": []}))
        names = [f"r{i}" for i in range(64)]
        self.add("64 rewards, names and config agreeing, tensors not", self.with_meta(
            _set({**meta, "reward_names": names, "reward_descriptions": []}, ("module_config", "num_rewards"), 64)))
        self.add("65 reward names", self.with_meta({**meta, "reward_names": names + ["x"], "reward_descriptions": []}))
        self.add("duplicate reward names", self.with_meta({**meta, "reward_names": ["a", "a"]}))
        self.add("blank reward name", self.with_meta({**meta, "reward_names": ["a", "  "]}))
        self.add("lone surrogate in a reward name", self.with_meta({**meta, "reward_names": ["a", "\ud800"]}))
        self.add("3 descriptions for 2 rewards", self.with_meta({**meta, "reward_descriptions": ["", "", ""]}))
        self.add("lora.rank 3 for rank-2 tensors", self.with_meta(_set(meta, ("lora", "rank"), 3)))
        self.add("lora null with LoRA tensors", self.with_meta({**meta, "lora": None}))
        no_lora = {k: v for k, v in self.tensors.items() if k.startswith("pareto_slider.")}
        self.add("lora described, no LoRA tensors", self.with_tensors(no_lora))
        for backbone in ("fluxkontext", "ltx2", "toy"):
            self.add(f"backbone {backbone}", self.with_meta({**meta, "backbone": backbone}))
        self.add("format_version 2", self.with_meta({**meta, "format_version": 2}))
        # a header that agrees with a huge config: its tensor entries ask for GB the file does not hold
        config = PreferenceModuleConfig.from_dict({**meta["module_config"], "inner_dim": 65536})
        header, offset = copy.deepcopy(self.header), 0
        header["__metadata__"]["pareto_slider"] = json.dumps(_set(meta, ("module_config", "inner_dim"), 65536))
        for key, shape in module_tensor_shapes(config).items():
            size = math.prod(shape) * 4
            header["pareto_slider." + key] = {"dtype": "F32", "shape": list(shape),
                                              "data_offsets": [offset, offset + size]}
            offset += size
        for key in self.lora_keys:
            entry = header[key]
            size = entry["data_offsets"][1] - entry["data_offsets"][0]
            entry["data_offsets"] = [offset, offset + size]
            offset += size
        self.add("inner_dim 65536 with matching tensor entries, data missing", _assemble(header, self.data))
        # a real file for a wider model: loads, but does not fit the tiny transformer
        config = PreferenceModuleConfig.from_dict({**meta["module_config"], "inner_dim": 1024})
        wide = {"pareto_slider." + k: v for k, v in PreferenceModules(config).state_dict().items()}
        self.add("modules for inner_dim 1024 (another base model)", self.with_tensors(
            {**wide, **{k: self.tensors[k] for k in self.lora_keys}}, _set(meta, ("module_config", "inner_dim"), 1024)))

    def tensor_changes(self) -> None:
        t = self.tensors
        for _ in range(6):
            key = self.rng.choice(self.keys)
            v = t[key]
            for desc, new in [("flattened", v.flatten()), ("unsqueezed", v.unsqueeze(0)), ("last row dropped", v[:-1]),
                              ("row added", torch.cat([v, v[:1]])), ("0-d", v.flatten()[:1].reshape(()))]:
                self.add(f"{key} {desc}", self.with_tensors({**t, key: new.clone()}))
            dtype = self.rng.choice([torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float16])
            self.add(f"{key} as {dtype}", self.with_tensors({**t, key: v.to(dtype)}))
            for bad in (math.nan, math.inf, -math.inf):
                new = v.clone()
                new.view(-1)[self.rng.randrange(new.numel())] = bad
                self.add(f"{bad} in {key}", self.with_tensors({**t, key: new}))
            self.add(f"{key} missing", self.with_tensors({k: x for k, x in t.items() if k != key}))
        a_key = self.rng.choice([k for k in self.lora_keys if "lora_A" in k])
        b_key = a_key.replace("lora_A", "lora_B")
        a, b = t[a_key].clone(), t[b_key].clone()
        module = a_key[len("transformer.") : -len(".lora_A.weight")]
        lora_pairs = [
            ("rank 3 pair", {a_key: torch.randn(3, a.shape[1]), b_key: torch.randn(b.shape[0], 3)}),
            ("A and B swapped", {a_key: b, b_key: a}),
            ("pair on proj_out (a Linear, not a target)", {"transformer.proj_out.lora_A.weight": torch.randn(2, 128),
                                                          "transformer.proj_out.lora_B.weight": torch.randn(64, 2)}),
            ("pair on norm_out.norm (not a Linear)", {"transformer.norm_out.norm.lora_A.weight": torch.randn(2, 128),
                                                     "transformer.norm_out.norm.lora_B.weight": torch.randn(128, 2)}),
            ("pair on a missing module", {"transformer.transformer_blocks.9.attn.to_q.lora_A.weight": a.clone(),
                                          "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": b.clone()}),
            ("pair on a config attribute", {"transformer.config.lora_A.weight": a.clone(),
                                            "transformer.config.lora_B.weight": b.clone()}),
            ("pair with wrong in-features", {f"transformer.{module}.lora_A.weight": torch.randn(2, 7)}),
            ("lone lora_A", {"transformer.proj_out.lora_A.weight": torch.randn(2, 128)}),
            ("alpha tensor", {a_key.replace("lora_A.weight", "alpha"): torch.tensor(4.0)}),
            ("extra module tensor", {"pareto_slider.global_mlp.4.weight": torch.randn(4, 4)}),
            ("plain model tensor", {"transformer.proj_out.weight": torch.randn(64, 128)}),
            ("LoRA key without prefix", {"proj_out.lora_A.weight": a.clone(), "proj_out.lora_B.weight": b.clone()}),
            ("a 5000-character key", {"transformer." + "x" * 5000 + ".lora_A.weight": a.clone()}),
            ("empty tensor", {"pareto_slider.extra": torch.zeros(0)}),
            ("key 'pareto_slider.'", {"pareto_slider.": torch.zeros(2)}),
        ]
        for desc, extra in lora_pairs:
            self.add(f"tensors: {desc}", self.with_tensors({**t, **extra}))

    def header_entries(self) -> None:
        size = len(self.data)
        for _ in range(3):
            key = self.rng.choice(self.keys)
            begin, end = self.header[key]["data_offsets"]
            for field, value in [
                ("dtype", "F33"), ("dtype", "I32"), ("dtype", "F16"), ("dtype", "F64"), ("dtype", "BOOL"), ("dtype", 5),
                ("dtype", None), ("shape", [10**9, 10**9]), ("shape", [-1, 2]), ("shape", [2.5]), ("shape", "12"),
                ("shape", [[2]]), ("shape", [1] * 9), ("shape", []), ("shape", [2**62] * 4),
                ("data_offsets", [end, begin]), ("data_offsets", [-4, end]), ("data_offsets", [begin, size + 4]),
                ("data_offsets", [0, 0]), ("data_offsets", [begin, 2**64]), ("data_offsets", [begin]),
                ("data_offsets", None), ("data_offsets", [begin + 0.5, end]), (None, []), (None, "x"), (None, None),
                (None, {}),
            ]:
                desc = f"header entry {key}: {field or 'entry'} = {str(value)[:30]}"
                self.add(desc, self.with_entry(key, field, value))
            header = copy.deepcopy(self.header)
            header[key + ".renamed"] = header.pop(key)
            self.add(f"header entry {key} renamed", _assemble(header, self.data))
            header = copy.deepcopy(self.header)
            del header[key]
            self.add(f"header entry {key} removed (its bytes stay)", _assemble(header, self.data))
        header = copy.deepcopy(self.header)
        header["pareto_slider.zero"] = {"dtype": "F32", "shape": [0], "data_offsets": [size, size]}
        self.add("zero-size extra entry", _assemble(header, self.data))
        for value in ([], "x", None, {"pareto_slider": 5}, {"other": "x"}, {"pareto_slider": None}):
            header = {**self.header, "__metadata__": value}
            self.add(f"__metadata__ = {str(value)[:30]}", _assemble(header, self.data))

    def raw_text(self) -> None:
        meta_text = json.dumps(self.meta)
        for desc, raw in [
            ("not JSON", meta_text[:-1]), ("empty", ""), ("null", "null"), ("a list", "[]"), ("a number", "1"),
            ("nested 100000 deep", "[" * 100000 + "]" * 100000),
            ("a 5000-digit inner_dim", meta_text.replace('"inner_dim": 128', '"inner_dim": ' + "9" * 5000)),
            ("NaN alpha", meta_text.replace('"alpha": 4.0', '"alpha": NaN')),
            ("duplicate format_version 2", meta_text[:-1] + ', "format_version": 2}'),
            ("escaped lone surrogate", meta_text.replace('"photo"', '"\\udc80"')),
        ]:
            self.add(f"pareto_slider metadata {desc}", self.with_meta(raw, raw=True))
        text = json.dumps(self.header).encode()
        for desc, raw in [
            ("a list", b"[" + text + b"]"), ("with a leading space", b" " + text),
            ("with trailing garbage", text + b"x"),
            ("with a UTF-8 BOM", b"\xef\xbb\xbf" + text), ("in UTF-16", json.dumps(self.header).encode("utf-16")),
            ("nested 100000 deep", b"[" * 100000 + b"]" * 100000), ("empty object", b"{}"), ("NUL bytes", b"\0" * 64),
            ("of 70000 zero-size entries", json.dumps({**self.header, **{
                f"pareto_slider.x{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(70000)
            }}).encode()),
        ]:
            self.add(f"header {desc}", _assemble(raw, self.data))


# ---------------------------------------------------------------------------------------------------- worker
def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError(f"variant took over {VARIANT_TIMEOUT_S} s")


def _outcome(call: Callable[[Any], Any], arg: Any, messages: list[str], allowed: tuple[type[Exception], ...]) -> str:
    """'ok', 'refused' (an allowed error, its message kept) or 'error: ...' (anything else: a finding)."""
    signal.alarm(VARIANT_TIMEOUT_S)
    try:
        call(arg)
    except allowed as err:
        messages.append(str(err))
        return "refused"
    except Exception as err:  # noqa: BLE001  (the point of the fuzz: anything else is reported)
        return f"error: {type(err).__name__}: {str(err)[:300]}"
    finally:
        signal.alarm(0)
    return "ok"


def _worker(workdir: Path) -> None:
    """Build the base file and its variants, run each through the loader and the node pack, one JSON line each."""
    import resource  # Unix only

    torch.set_num_threads(1)
    pack = fakes.load_pack()
    files, routes = pack.module.nodes.files, pack.module.nodes.routes
    pack_error = pack.module.pslider_core.ParetoSliderFileError  # the pack imports its own copy of pslider_core
    adapter = get_backbone("sd3")
    pipe = adapter.tiny_pipeline(seed=0)
    clean = copy.deepcopy(pipe.transformer)
    slider = ParetoSlider.attach(pipe.transformer, "sd3", REWARDS, reward_descriptions=["looks real", "pencil"],
                                 lora=LoraSpec(2, 4.0, ("attn.to_q", "attn.add_k_proj")), base_model="tiny-sd3")
    randomize_(slider.trainable_parameters(), seed=SEED)
    data = slider.to_file({"epochs": 1})
    data.module_config = PreferenceModuleConfig(num_rewards=2, inner_dim=128, num_freqs=2, block_pe_dim=16,
                                                block_layers=1)
    modules = PreferenceModules(data.module_config)
    randomize_(modules.parameters(), seed=SEED + 1, std=0.5)
    data.module_state = modules.state_dict()
    base_path = workdir / "base.safetensors"
    save_pareto_slider(base_path, data)
    with torch.no_grad():
        x, sigma, cond = transformer_inputs("sd3", pipe, ["a red circle"])
    tensors = {**{"pareto_slider." + k: v for k, v in data.module_state.items()}, **data.lora_state}
    variants = Variants(base_path.read_bytes(), tensors, SEED).build()

    n_modules = len(list(clean.modules()))
    spare = [copy.deepcopy(clean)]

    def use(path: Path) -> None:
        """Load onto a fresh transformer and run it once, conditioned (a new copy only once one was touched)."""
        try:
            loaded = ParetoSlider.from_file(path, spare[0], backbone="sd3")
            with torch.no_grad(), loaded.condition([1.0] * len(loaded.spec.reward_names)):
                out = adapter.predict_velocity(pipe, loaded.transformer, x, sigma, cond)
            finite = bool(torch.isfinite(out).all())
            assert out.shape == x.shape and finite, f"forward gave shape {tuple(out.shape)}, finite: {finite}"
        finally:
            if len(list(spare[0].modules())) != n_modules:  # a LoRA adapter was added
                spare[0] = copy.deepcopy(clean)

    cap = _vm_size() + CAP_MARGIN
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        torch.empty(2**31, dtype=torch.float32).fill_(0)
        cap_refused = False
    except RuntimeError:
        cap_refused = True
    signal.signal(signal.SIGALRM, _timeout)
    kept = workdir / "variants"
    own, loras = workdir / "models" / "pareto_slider" / "fuzz", workdir / "models" / "loras" / "fuzz_loras"
    for folder in (kept, own, loras):
        folder.mkdir(parents=True)
    with open(workdir / "results.jsonl", "w") as out:

        def record(**fields: Any) -> None:
            out.write(json.dumps(fields) + "\n")
            out.flush()

        for i, (desc, blob) in enumerate(variants):
            record(start=i, phase="loader", desc=desc)
            path = kept / f"{i:04d}.safetensors"
            path.write_bytes(blob)
            messages: list[str] = []
            header = _outcome(read_header, path, messages, (ParetoSliderFileError, FileNotFoundError))
            loaded = _outcome(use, path, messages, (ParetoSliderFileError,))
            record(i=i, phase="loader", desc=desc, read_header=header, load=loaded, messages=messages)
        # the node pack sees the variants a batch at a time: every route call lists the folders again
        for first in range(0, len(variants), NODE_BATCH):
            batch = range(first, min(first + NODE_BATCH, len(variants)))
            for i in batch:
                os.link(kept / f"{i:04d}.safetensors", own / f"{i:04d}.safetensors")
                os.link(kept / f"{i:04d}.safetensors", loras / f"{i:04d}.safetensors")
            try:
                listed: set[str] | str = set(files.list_files())
            except Exception as err:  # noqa: BLE001
                listed = f"error: {type(err).__name__}: {err}"
            for i in batch:
                record(start=i, phase="nodes", desc=variants[i][0])
                names = (f"fuzz/{i:04d}.safetensors", f"fuzz_loras/{i:04d}.safetensors")
                messages = []
                try:
                    answers = [routes.rewards_response(name) for name in names]
                    json.dumps([body for _, body in answers])  # what the server sends back
                    route: list[int] | str = [status for status, _ in answers]
                except Exception as err:  # noqa: BLE001
                    route = f"error: {type(err).__name__}: {err}"
                node_load = _outcome(files.load, names[0], messages, (pack_error,))
                shown = listed if isinstance(listed, str) else [name in listed for name in names]
                record(i=i, phase="nodes", desc=variants[i][0], listed=shown, route=route, node_load=node_load,
                       messages=messages)
            for i in batch:
                (own / f"{i:04d}.safetensors").unlink()
                (loras / f"{i:04d}.safetensors").unlink()
        record(summary={"variants": len(variants), "cap_bytes": cap, "cap_refused_8_gib": cap_refused})


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
