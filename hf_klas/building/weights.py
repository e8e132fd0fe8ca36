"""Anchor tensors into a model being built: one routine reads each ``{anchor tensor name: destination}`` lazily,
one tensor at a time, checking its shape, for stitched models (blocks renumbered from ``back_start``), stitchable
ones (blocks keep their index) and the anchor prefixes the least-squares fits run."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.initialization import no_init_weights
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..anatomy import find_block_path
from ..errors import HfKlasError, IncompatibleAnchorsError
from ..families import family_of
from ..loading import Anchor


@torch.no_grad()
def copy_tensors(anchor: Anchor, targets: dict, fallbacks: dict | None = None) -> list[str]:
    """Read each ``{anchor tensor name: destination}`` straight into the destination; ``fallbacks`` names a stored
    tensor to use for a missing one (the tied input embedding for a missing ``lm_head``). Returns the names read."""
    reader = anchor.state_dict_source()
    try:
        for name, target in targets.items():
            stored = name if name in reader else (fallbacks or {}).get(name)
            if stored is None or stored not in reader:
                raise HfKlasError(f"Tensor {name!r} was not found in anchor {anchor.name_or_path}.",
                                  "Check that the anchor is a complete checkpoint of a supported family (a layout "
                                  "this family's record in hf_klas/families.py does not map?).")
            tensor = reader.get(stored, out=target)
            if tensor is target:
                continue
            if tensor.shape != target.shape:
                raise IncompatibleAnchorsError(f"Tensor {stored} of {anchor.name_or_path} has shape "
                                               f"{tuple(tensor.shape)}, the model expects {tuple(target.shape)}.",
                                               "The anchor config and weights disagree; re-save the anchor or pass "
                                               "the right config.")
            target.copy_(tensor.to(target.dtype))
        return list(getattr(reader, "names_read", []))
    finally:
        reader.close()


@dataclass
class WeightSource:
    anchor: str  # "front" | "back"
    name: str  # tensor name in the anchor's checkpoint / state dict
    fallback: str | None = None  # e.g. the tied input embedding for a missing lm_head


def plan_weight_sources(model: nn.Module, config) -> dict[str, WeightSource | None]:
    """For each tensor of a stitched model, which anchor tensor it is (None: owned by the stitch, computed here)."""
    fam_f, fam_b = family_of(config.front_config), family_of(config.back_config)
    out: dict[str, WeightSource | None] = {}
    for role, part, fam, offset in (("front", model.front, fam_f, 0), ("back", model.back, fam_b, config.back_start)):
        block_path = find_block_path(part)
        pattern = re.compile(rf"^{re.escape(block_path)}\.(\d+)\.")
        for key in part.state_dict():
            renamed = pattern.sub(lambda m: f"{block_path}.{int(m.group(1)) + offset}.", key)
            out[f"{role}.{key}"] = WeightSource(role, f"{fam.base}.{renamed}")
    for key in model.state_dict():
        if key.startswith("stitch."):
            out[key] = None
        elif key == "lm_head.weight":
            # tied (self-stitch of a tied anchor): the same Parameter as the front embedding, already read
            out[key] = None if config.tie_word_embeddings else \
                WeightSource("back", "lm_head.weight", fallback=f"{fam_b.base}.{fam_b.embed}.weight")
        elif key.startswith("classifier."):
            out[key] = WeightSource("back", key)
    return out


def load_anchor_weights(model: nn.Module, config, front: Anchor, back: Anchor) -> dict:
    """Copy every anchor-owned tensor into a stitched ``model``; returns ``{"front": names_read, "back": ...}``."""
    state = model.state_dict()
    targets: dict[str, dict] = {"front": {}, "back": {}}
    fallbacks: dict[str, dict] = {"front": {}, "back": {}}
    for key, src in plan_weight_sources(model, config).items():
        if src is not None:
            targets[src.anchor][src.name] = state[key]
            if src.fallback is not None:
                fallbacks[src.anchor][src.name] = src.fallback
    anchors = {"front": front, "back": back}
    return {role: copy_tensors(anchors[role], targets[role], fallbacks[role]) for role in ("front", "back")}


def load_anchor_parts(model, front: Anchor, back: Anchor) -> None:
    """Every anchor tensor of a stitchable model. Its parts are whole anchors (blocks keep their own index), so part
    tensor ``front.<name>`` is the front anchor's ``<base>.<name>``; the head / classifier is the back anchor's (a
    missing ``lm_head`` is the tied input embedding). The stitches are the model's own."""
    cfg = model.config
    parts = [(front, model.front)] + ([] if cfg.self_stitch else [(back, model.back)])
    for anchor, part in parts:
        base = family_of(anchor.config).base
        copy_tensors(anchor, {f"{base}.{key}": t for key, t in part.state_dict().items()})
    fam = family_of(back.config)
    own = {k: t for k, t in model.state_dict().items()
           if k.startswith("classifier.") or (k == "lm_head.weight" and not cfg.tie_word_embeddings)}
    copy_tensors(back, own, {"lm_head.weight": f"{fam.base}.{fam.embed}.weight"})


def anchor_prefix(anchor: Anchor, upto: int) -> nn.Module:
    """The anchor's embeddings + first ``upto`` blocks (what produces the input of block ``upto``); an in-memory
    anchor is used whole."""
    if anchor.model is not None:
        return anchor.model
    cfg = copy.deepcopy(anchor.config)
    keep = max(upto, 1)
    cfg.num_hidden_layers = keep
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[:keep]
    fam = family_of(cfg)
    with no_init_weights():
        prefix = MODEL_MAPPING[type(cfg)](cfg, **dict(fam.base_kwargs))
    copy_tensors(anchor, {f"{fam.base}.{key}": target for key, target in prefix.state_dict().items()})
    return prefix.eval()


def copy_generation_config(model, back: Anchor) -> None:
    """The back anchor's generation settings (EOS, sampling defaults) on the built model."""
    if not hasattr(model, "generation_config") or model.generation_config is None:
        return
    src = getattr(back.model, "generation_config", None)
    if src is None and back.directory is not None and (back.directory / "generation_config.json").is_file():
        src = GenerationConfig.from_pretrained(back.directory)
    if src is not None:
        model.generation_config = src
