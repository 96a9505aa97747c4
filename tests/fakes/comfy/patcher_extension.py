"""Fake of comfy/patcher_extension.py: wrapper types, the wrapper executor and the nested-dict helpers."""

from __future__ import annotations

from typing import Callable


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"


def get_all_wrappers(wrapper_type: str, transformer_options: dict, is_model_options=False) -> list[Callable]:
    if is_model_options:
        transformer_options = transformer_options.get("transformer_options", {})
    w_list = []
    for w in transformer_options.get("wrappers", {}).get(wrapper_type, {}).values():
        w_list.extend(w)
    return w_list


class WrapperExecutor:
    """Calls the wrappers in order, each receiving the executor of the rest; the last one calls `original`."""

    def __init__(self, original: Callable, class_obj: object, wrappers: list[Callable], idx: int):
        self.original = original
        self.class_obj = class_obj
        self.wrappers = wrappers.copy()
        self.idx = idx
        self.is_last = idx == len(wrappers)

    def __call__(self, *args, **kwargs):
        return self._create_next_executor().execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        args = list(args)
        kwargs = dict(kwargs)
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    def _create_next_executor(self) -> "WrapperExecutor":
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1)

    @classmethod
    def new_executor(cls, original: Callable, wrappers: list[Callable], idx=0) -> "WrapperExecutor":
        return cls(original, class_obj=None, wrappers=wrappers, idx=idx)

    @classmethod
    def new_class_executor(cls, original: Callable, class_obj: object, wrappers: list[Callable], idx=0):
        return cls(original, class_obj, wrappers, idx=idx)


def copy_nested_dicts(input_dict: dict) -> dict:
    new_dict = input_dict.copy()
    for key, value in input_dict.items():
        if isinstance(value, dict):
            new_dict[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            new_dict[key] = value.copy()
    return new_dict


def merge_nested_dicts(dict1: dict, dict2: dict, copy_dict1=True) -> dict:
    merged_dict = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            curr_value = merged_dict.setdefault(key, {})
            merged_dict[key] = merge_nested_dicts(value, curr_value)
        elif isinstance(value, list):
            merged_dict.setdefault(key, []).extend(value)
        else:
            merged_dict[key] = value
    return merged_dict
