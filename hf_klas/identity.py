"""What identifies an anchor, in one place: the shape fingerprint of its config, a digest of its weights, the
identity record probes and plans keep, and the descriptor a plan stores. :class:`~hf_klas.loading.Anchor` answers
from these (``fingerprint()``, ``cache_key()``, ``descriptor()``); probes and selection ask the anchor, so a change
to what "the same anchor" means is made here once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

__all__ = ["AnchorDescriptor", "fingerprint_config", "weights_digest", "offloaded_tensor", "model_identity"]


def fingerprint_config(config: PretrainedConfig, name: str | None = None) -> str:
    """A short stable hash of what defines an anchor's shapes and identity (probes are tied to it)."""
    d = config.to_dict()
    keep = {k: d.get(k) for k in sorted(d) if k in {
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "vocab_size", "head_dim", "image_size", "patch_size", "num_labels"}}
    keep["name"] = str(name) if name is not None else None
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(model: nn.Module, sample: int = 1024) -> str:
    """A cheap digest of a model's weights: per tensor its name, shape, dtype, float64 sum and a strided
    sample of ``sample`` values. Two anchors with one config but different weights (another seed, a
    finetune) get different digests; reading it costs one pass over the weights, no hashing of gigabytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel() == 0 or not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):
            continue
        if t.device.type == "meta":  # offloaded by accelerate: read it through its module's hook, as a forward does
            t = offloaded_tensor(model, name)
        flat = t.detach().reshape(-1)
        h.update(repr(float(flat.double().sum())).encode())
        step = max(1, flat.numel() // sample)
        h.update(flat[::step][:sample].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def offloaded_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The value of the offloaded tensor ``name`` (a ``state_dict`` key), loaded for a moment by its module's
    accelerate hook; the module is offloaded again afterwards."""
    from accelerate.utils import align_module_device  # only offloaded models need accelerate here

    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    with align_module_device(module):
        return getattr(module, attr).detach().cpu().clone()


def model_identity(model: nn.Module, name: str | None = None) -> dict:
    """What a probe / cached plan records about a loaded anchor: the shape fingerprint (config numbers, no name --
    so re-loading the same checkpoint from another path still matches) and the weights digest."""
    return {
        "shape": fingerprint_config(model.config, None),
        "weights": weights_digest(model),
        "name_or_path": name or getattr(model, "name_or_path", None) or type(model).__name__,
        "model_type": model.config.model_type,
        "num_hidden_layers": int(model.config.num_hidden_layers),
    }


@dataclass
class AnchorDescriptor:
    """Which checkpoint an anchor was (enough to refuse a plan used with a different model)."""

    name_or_path: str
    revision: str | None = None
    fingerprint: str = ""
    num_blocks: int = 0
    hidden_size: int = 0
    model_type: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> AnchorDescriptor:
        return cls(**{k: d[k] for k in ("name_or_path", "revision", "fingerprint", "num_blocks", "hidden_size",
                                        "model_type") if k in d})
