"""Fake of the `comfy` package (see tests/fakes/__init__.py)."""
