"""Small helpers shared by the evaluation modules."""

from __future__ import annotations

import contextlib

import torch


def model_device(model) -> torch.device:
    """Where to put inputs: ``model.device`` for transformers models, else the first parameter's device."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def tokenizer_padding(tokenizer, side: str):
    """Temporarily set ``padding_side`` (and a pad token if missing: eos, else unk), restoring both after.

    Why: generation needs left padding and loss computation wants right padding, but the caller's tokenizer
    must come back unchanged.
    """
    old_side = tokenizer.padding_side
    old_pad = tokenizer.pad_token
    try:
        tokenizer.padding_side = side
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        yield tokenizer
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None
