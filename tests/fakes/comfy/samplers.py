"""Fake of comfy/samplers.py: calc_cond_batch, batching cond and uncond chunks into one model call as the real
_calc_cond_batch does (candidates reversed, inputs concatenated chunk by chunk, `cond_or_uncond`, `uuids` and
`sigmas` added to transformer_options). Simplified: each cond is a list of dicts of ready model inputs (the real
ones hold CONDRegular objects, areas, hooks and control), every cond covers the whole latent, and everything fits
into one call."""

from __future__ import annotations

import uuid
from typing import Any

import torch

from . import patcher_extension


def calc_cond_batch(model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict):
    out_conds = [torch.zeros_like(x_in) for _ in conds]
    to_run = [(c, i) for i, cond in enumerate(conds) if cond is not None for c in cond]
    to_batch = list(range(len(to_run)))
    to_batch.reverse()
    inputs, cond_or_uncond, uuids = [], [], []
    for x in to_batch:
        c, i = to_run[x]
        inputs.append(c)
        cond_or_uncond.append(i)
        uuids.append(uuid.uuid4())
    batch_chunks = len(cond_or_uncond)
    input_x = torch.cat([x_in] * batch_chunks)
    c = {k: torch.cat([d[k] for d in inputs]) for k in inputs[0]}
    transformer_options = patcher_extension.merge_nested_dicts(
        {}, model_options.get("transformer_options", {}), copy_dict1=False
    )
    transformer_options["cond_or_uncond"] = cond_or_uncond[:]
    transformer_options["uuids"] = uuids[:]
    transformer_options["sigmas"] = timestep
    c["transformer_options"] = transformer_options
    output = model.apply_model(input_x, torch.cat([timestep] * batch_chunks), **c).chunk(batch_chunks)
    for o in range(batch_chunks):
        out_conds[cond_or_uncond[o]] += output[o]
    return out_conds
