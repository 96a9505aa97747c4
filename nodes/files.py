"""Where ParetoSlider files live in ComfyUI, and the module-level cache of loaded ones.

Files are listed from the pack's own `models/pareto_slider` folder and from `loras` (only valid ParetoSlider files
there, so plain LoRAs and damaged files do not clutter the list; a damaged file in the pack's folder stays listed and
the reward-names route answers with its error). V3 nodes have no instance state, so loaded files are cached here,
keyed by (path, mtime, size): a retrained file under the same name is reloaded, and an entry is released as soon as
no patched MODEL uses it any more (weak values).
"""

from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass
from typing import Any

import folder_paths

from ..pslider_core import ParetoSliderFile, ParetoSliderFileError, PreferenceModules, load_pareto_slider, read_header

FOLDER = "pareto_slider"
SEARCHED = (FOLDER, "loras")


def register_folder() -> None:
    """Add `models/pareto_slider` (extra_model_paths.yaml may name more folders under the same key)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
    folder_paths.folder_names_and_paths[FOLDER][1].add(".safetensors")


def _stat_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, st.st_mtime_ns, st.st_size


def _is_pareto_slider(path: str) -> bool:
    """Whether `path` is a valid ParetoSlider file; False for one removed while the folder is listed."""
    try:
        return _valid_header(_stat_key(path))
    except OSError:
        return False


@functools.lru_cache(maxsize=4096)
def _valid_header(key: tuple[str, int, int]) -> bool:
    """Cached by (path, mtime, size): ComfyUI lists the folders on every node-definition request."""
    try:
        read_header(key[0])
    except (ParetoSliderFileError, FileNotFoundError):  # all it raises, whatever the file holds (test_file_fuzz.py)
        return False
    return True


def list_files() -> list[str]:
    """Names for the file combo: every .safetensors in pareto_slider folders, ParetoSlider files among loras."""
    names = [n for n in folder_paths.get_filename_list(FOLDER) if n.endswith(".safetensors")]
    for name in folder_paths.get_filename_list("loras"):
        path = folder_paths.get_full_path("loras", name)
        if name.endswith(".safetensors") and name not in names and path and _is_pareto_slider(path):
            names.append(name)
    return names


def resolve(name: str) -> str:
    """Full path of a listed file; the pareto_slider folders win over loras for equal names."""
    for folder in SEARCHED:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    places = [p for folder in SEARCHED for p in folder_paths.get_folder_paths(folder)]
    raise FileNotFoundError(f"No ParetoSlider file named {name!r} in {places}; put the .safetensors file there.")


def reward_info(name: str) -> dict[str, Any]:
    """What the web extension needs to label the sliders (cheap: reads the header only)."""
    meta = read_header(resolve(name))
    return {
        "file": name,
        "backbone": meta["backbone"],
        "base_model": meta.get("base_model", ""),
        "reward_names": list(meta["reward_names"]),
        "reward_descriptions": list(meta.get("reward_descriptions") or []),
    }


def fingerprint(name: str) -> tuple[int, int] | None:
    """Changes when the file on disk changes, so ComfyUI re-runs the node for a retrained file."""
    try:
        _, mtime, size = _stat_key(resolve(name))
    except (FileNotFoundError, OSError):
        return None
    return mtime, size


@dataclass(eq=False)
class LoadedSlider:
    """A file as the nodes use it: validated contents and its preference modules, built once."""

    name: str
    data: ParetoSliderFile
    modules: PreferenceModules

    @property
    def reward_names(self) -> tuple[str, ...]:
        return self.data.reward_names


_CACHE: weakref.WeakValueDictionary[tuple[str, int, int], LoadedSlider] = weakref.WeakValueDictionary()


def load(name: str) -> LoadedSlider:
    """The loaded file, shared by every node that uses it while any patched MODEL keeps it alive."""
    key = _stat_key(resolve(name))
    loaded = _CACHE.get(key)
    if loaded is None:
        data = load_pareto_slider(key[0])
        loaded = LoadedSlider(name, data, data.build_modules().requires_grad_(False))
        _CACHE[key] = loaded
    return loaded
