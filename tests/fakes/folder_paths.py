"""Fake of ComfyUI's folder_paths.py: named model folders, file lists and path lookup.

`models_dir` points at a temporary directory (PARETO_FAKE_COMFY_MODELS, else a fresh one per process), so tests
write real files where the pack looks for them. No list caching (the real one invalidates by folder mtime).
"""

from __future__ import annotations

import os
import tempfile

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

models_dir = os.environ.get("PARETO_FAKE_COMFY_MODELS") or tempfile.mkdtemp(prefix="fake_comfy_models_")

folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    "loras": ([os.path.join(models_dir, "loras")], supported_pt_extensions),
    "diffusion_models": ([os.path.join(models_dir, "diffusion_models")], supported_pt_extensions),
}


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths, _exts = folder_names_and_paths[folder_name]
        if full_folder_path not in paths:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name: str) -> list[str]:
    paths, extensions = folder_names_and_paths[folder_name]
    found: set[str] = set()
    for base in paths:
        for root, _dirs, names in os.walk(base, followlinks=True):
            for name in names:
                if not extensions or os.path.splitext(name)[-1].lower() in extensions:
                    found.add(os.path.relpath(os.path.join(root, name), base))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for base in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(base, filename)
        if os.path.isfile(full_path):
            return full_path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path
