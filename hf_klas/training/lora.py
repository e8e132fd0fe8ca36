"""LoRA on stitched models: default target modules per family, validation, merging back.

A stitched model has its own ``model_type`` (``hf_klas_stitched``), so PEFT has no default ``target_modules``
for it, and ``"all-linear"`` would also put an adapter on the stitch layer. hf_klas's default is the attention and MLP
projections *inside the transformer blocks* of both parts (each family record's ``lora_targets`` in
:mod:`hf_klas.families`, intersected with what the installed transformers actually builds), and the stitch layer
stays fully trainable through ``modules_to_save=["stitch"]`` -- it is a fresh layer, not a pretrained one, so a
low-rank update of it would be an arbitrary restriction. Heads, embeddings and norms stay frozen.

``merge_lora(peft_model)`` folds the adapters into the weights and returns a plain ``StitchedModelFor...``
that saves and loads like any stitched model (no PEFT needed to use it).
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import HfKlasError
from ..families import CAUSAL_LM, family_of

__all__ = ["LoraTargetError", "default_target_modules", "default_lora_config", "apply_lora",
           "merge_lora", "available_target_names"]

class LoraTargetError(HfKlasError):
    """A LoRA configuration that names modules the stitched model does not have."""


def _stitched(model):
    """The stitched model itself (unwrapping a PeftModel)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if not hasattr(model, "front_blocks") or not hasattr(model, "config"):
        raise HfKlasError(f"{type(model).__name__} is not a stitched model.",
                          "Pass a StitchedModelForCausalLM / StitchedModelForImageClassification "
                          "(hf_klas.StitchedModel.from_anchors or from_pretrained).")
    return model


def _block_linear_names(model) -> dict[str, list[str]]:
    """``{leaf name: [full module names]}`` of every nn.Linear inside the front and back blocks."""
    out: dict[str, list[str]] = {}
    for part_name, blocks in (("front", model.front_blocks), ("back", model.back_blocks)):
        for idx, block in enumerate(blocks):
            for name, module in block.named_modules():
                if isinstance(module, nn.Linear) and name:
                    out.setdefault(name.rsplit(".", 1)[-1], []).append(f"{part_name}.{idx}.{name}")
    return out


def available_target_names(model) -> list[str]:
    """Leaf names of every nn.Linear in the model (what ``target_modules`` may name), sorted."""
    model = _stitched(model)
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name})


def default_target_modules(model) -> list[str]:
    """The family's attention + MLP projection names that exist inside the stitched model's blocks."""
    model = _stitched(model)
    present = _block_linear_names(model)
    names: list[str] = []
    for cfg in (model.config.front_config, model.config.back_config):
        for name in family_of(cfg).lora_targets:  # unknown families fail here with the usual message
            if name in present and name not in names:
                names.append(name)
    # A name must not also match a Linear outside the blocks (head, stitch): PEFT matches by suffix.
    outside = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n and not _inside_blocks(model, n)}
    clash = [n for n in names if n in outside]
    if clash:
        raise LoraTargetError(f"LoRA target names {clash} also match layers outside the transformer blocks.",
                              "Pass target_modules explicitly (full module names or a regex).")
    return names


def _inside_blocks(model, module_name: str) -> bool:
    paths = (f"front.{model._front_blocks_path}.", f"back.{model._back_blocks_path}.")
    return module_name.startswith(paths)


def check_target_modules(model, target_modules) -> None:
    """Raise :class:`LoraTargetError` when a requested target matches no module (PEFT's suffix / regex rules)."""
    model = _stitched(model)
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return
        if not any(re.fullmatch(target_modules, n) for n in names):
            raise LoraTargetError(
                f"The LoRA target regex {target_modules!r} matches no module of the stitched model.",
                f"Use names from: {', '.join(available_target_names(model))} (e.g. the default "
                f"{default_target_modules(model)}), or a regex over full module names such as "
                r"'back\.layers\.\d+\.self_attn\.(q|v)_proj'.")
        return
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise LoraTargetError(
            f"LoRA target module(s) {missing} do not exist in this stitched model "
            f"({model.config.front_config.model_type} -> {model.config.back_config.model_type}).",
            f"Choose from the Linear layers it has: {', '.join(available_target_names(model))}; the default for "
            f"this family is {default_target_modules(model)} (hf_klas.training.default_lora_config).")


def default_lora_config(model, r: int = 8, alpha: int | None = None, dropout: float = 0.0,
                        target_modules=None, train_stitch: bool = True, **kwargs):
    """A ``peft.LoraConfig`` for a stitched model.

    Args:
        r, alpha: LoRA rank and scaling numerator (``alpha`` defaults to ``2 * r``).
        target_modules: None for the family default (:func:`default_target_modules`), or names / a regex
            (validated: a name that matches nothing raises :class:`LoraTargetError` listing what exists).
        train_stitch: keep the stitch layer fully trainable (``modules_to_save=["stitch"]``).
        kwargs: passed to ``LoraConfig`` (e.g. ``bias``, ``use_rslora``).
    """
    from peft import LoraConfig

    stitched = _stitched(model)
    if target_modules is None:
        target_modules = default_target_modules(stitched)
    else:
        if not isinstance(target_modules, str):
            target_modules = list(target_modules)
        check_target_modules(stitched, target_modules)
    if r < 1:
        raise HfKlasError(f"LoRA rank r={r} must be >= 1.", "Pass r=8 (or another positive rank).")
    modules_to_save = list(kwargs.pop("modules_to_save", None) or [])
    if train_stitch and "stitch" not in modules_to_save:
        modules_to_save.append("stitch")
    task_type = "CAUSAL_LM" if stitched.config.task == CAUSAL_LM else None
    return LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout,
                      target_modules=target_modules, modules_to_save=modules_to_save or None,
                      task_type=kwargs.pop("task_type", task_type), **kwargs)


def apply_lora(model, lora_config=None, **kwargs):
    """``get_peft_model(model, lora_config or default_lora_config(model, **kwargs))`` with target validation."""
    from peft import get_peft_model

    stitched = _stitched(model)
    if lora_config is None:
        lora_config = default_lora_config(stitched, **kwargs)
    else:
        targets = lora_config.target_modules
        if targets is None:
            raise LoraTargetError("The LoRA config has no target_modules, and PEFT has no default for the "
                                  "stitched model type.",
                                  f"Use hf_klas.training.default_lora_config(model) or target_modules="
                                  f"{default_target_modules(stitched)}.")
        check_target_modules(stitched, targets if isinstance(targets, str) else list(targets))
    if not getattr(stitched, "name_or_path", None):
        stitched.name_or_path = stitched.config.name_or_path  # adapter_config.base_model_name_or_path
    return get_peft_model(stitched, lora_config)


def merge_lora(model):
    """Fold LoRA adapters into the weights; returns the plain stitched model (the trained stitch included)."""
    if not hasattr(model, "merge_and_unload"):
        return _stitched(model)
    merged = model.merge_and_unload()
    return _stitched(merged)
