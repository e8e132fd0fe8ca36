"""Capture what every block of an anchor outputs, with forward hooks.

Hooks (rather than ``output_hidden_states``) give the raw residual stream after *every* block: transformers'
last hidden state is already after the final norm, which would silently skew a logit lens or a stitch fit.
Index convention used across hf_klas: ``outputs[0]`` = embedding output, ``outputs[k]`` = output of block
``k-1`` (so ``outputs[k]`` is what block ``k`` receives).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .anatomy import find_blocks, get_base
from .families import family_of


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@contextlib.contextmanager
def capture_block_outputs(model: nn.Module, upto: int | None = None, stop_early: bool = True):
    """Yield a list filled, on each forward, with ``[embed_out, block_0_out, ..., block_{upto-1}_out]``.

    With ``stop_early`` the forward is aborted after block ``upto-1`` (nothing later is computed), which is
    how stitch fitting runs only the prefix of an anchor.
    """
    fam = family_of(model.config)
    base = get_base(model)
    blocks = find_blocks(model)
    n = len(blocks) if upto is None else upto
    outputs: list[torch.Tensor] = []
    handles = []

    def keep(_module, _inp, out):
        outputs.append(_first(out))
        if stop_early and upto is not None and len(outputs) == n + 1:
            raise _StopForward

    handles.append(getattr(base, fam.embed).register_forward_hook(keep))
    for block in list(blocks)[:n]:
        handles.append(block.register_forward_hook(keep))
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


class _StopForward(Exception):
    pass


def _forward(model: nn.Module, batch: dict):
    batch = on_input_device(model, batch)
    return model(**batch, use_cache=False) if "input_ids" in batch else model(**batch)


def on_input_device(model: nn.Module, batch: dict) -> dict:
    """``batch`` with its tensors on the device of the model's input embeddings, where the forward starts.

    An offloaded embedding (accelerate ``device_map`` with offload) has its weight on the meta device; its hook
    moves the inputs itself, so the batch is left as it is."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model
    weight = next(embeddings.parameters(), None)
    device = weight.device if weight is not None else None
    if device is None or device.type == "meta":
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def output_of(model: nn.Module, module: nn.Module, batch: dict) -> torch.Tensor:
    """What ``module`` (a submodule of ``model``) outputs on ``batch``; the forward stops right there."""
    box = {}

    def hook(_m, _i, out):
        box["x"] = _first(out)
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        _forward(model, batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return box["x"]


def run_prefix(model: nn.Module, batch: dict, upto: int | None = None) -> list[torch.Tensor]:
    """Run ``model`` on ``batch`` and return the block outputs up to ``upto`` (all blocks when None)."""
    with capture_block_outputs(model, upto=upto) as outs:
        try:
            _forward(model, batch)
        except _StopForward:
            pass
    return list(outs)
