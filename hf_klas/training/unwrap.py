"""What a model handed to the trainers really is: the stitched model or supernet under DDP, PEFT and
torch.compile wrappers, and its task."""

from __future__ import annotations

import torch
from peft import PeftModel

from ..errors import HfKlasError, UnknownFamilyError
from ..families import task_of

__all__ = ["is_peft", "unwrap_model", "unwrap_ddp", "model_task"]


def is_peft(model) -> bool:
    return isinstance(model, PeftModel)


def unwrap_model(model):
    """The stitched model / supernet under DDP, PEFT and torch.compile wrappers."""
    for _ in range(8):
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif is_peft(model):
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    return model


def unwrap_ddp(model):
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def model_task(model) -> str:
    """The task of a stitched model or supernet under its training wrappers (PEFT, DDP, compile)."""
    base = unwrap_model(model)
    try:
        return task_of(base)
    except UnknownFamilyError as err:
        raise HfKlasError(f"Cannot tell the task of {type(base).__name__}.",
                          "Pass a stitched model (hf_klas.StitchedModel.from_anchors) or a StitchedSupernet.") from err
