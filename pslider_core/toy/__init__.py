"""The toy world: procedural shapes, a tiny pretrained SD3-architecture base, a held-out judge and toy rewards.

It lets ParetoSlider train and be evaluated on a CPU in minutes. See `dataset.py` for the world, `base_model.py`
for the shipped base (pixel space, no VAE), `judge.py` for the valid-image-rate judge and `rewards.py` for
`toy_color`, `toy_sketch` and `toy_size` (imported by the reward registry). Names load lazily, so the reward
registry's import of `rewards.py` does not pull in diffusers.
"""

from __future__ import annotations

from pathlib import Path

from ..lazy import lazy_getattr

BASE_DIR = Path(__file__).parent / "assets" / "base"  # the shipped pretrained base (no import needed to find it)

_EXPORTS = {
    **dict.fromkeys(("build_toy_base", "load_toy_base", "save_toy_base"), ".base_model"),
    **dict.fromkeys(
        ("COLORS", "HELDOUT", "IMAGE_SIZE", "SHAPES", "ToyShapesDataset", "heldout_prompts", "make_batch",
         "parse_prompt", "prompt_for", "train_prompts"),
        ".dataset",
    ),
    **dict.fromkeys(("ToyJudge", "load_judge", "valid_image_rate", "validity"), ".judge"),
    **dict.fromkeys(("sample", "sigma_grid", "to_images", "to_model_space", "velocity"), ".pipeline"),
    **dict.fromkeys(("ToyTextEncoder", "ToyTokenizer"), ".text_encoder"),
}

__all__ = sorted([*_EXPORTS, "BASE_DIR"])

__getattr__ = lazy_getattr(__name__, _EXPORTS)
