"""The Trainer for stitched models: what trains in each mode, the anchor-vs-stitch learning rates, and
stitch-aware checkpoints.

Modes (``mode=``):

* ``"stitch"`` -- only the stitch layer trains (every anchor weight frozen): the cheapest repair of a stitch.
* ``"lora"`` -- the stitch layer trains fully, plus LoRA adapters on the blocks' attention and MLP projections
  (:mod:`hf_klas.training.lora`); merge them back with :func:`hf_klas.training.merge_lora`.
* ``"full"`` -- everything trains; the anchors' weights (embeddings, blocks, norm, head) at ``anchor_lr_scale``
  x the learning rate (default 0.1, as SN-Net finetunes its anchors), the stitch layer(s) and any adapters at the
  full rate. Done with optimizer parameter groups in :class:`StitchTrainer` (the LR scheduler scales every
  group's own base rate, so the ratio holds throughout).

:class:`StitchTrainer` is a ``transformers.Trainer`` that also writes the stitch configuration into every
checkpoint and refuses to resume from a checkpoint of a different configuration
(:mod:`hf_klas.training.resume`). Works unchanged under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

from transformers import Trainer

from ..errors import HfKlasError
from ..families import CAUSAL_LM
from .lora import apply_lora
from .resume import StitchCheckpointCallback, check_checkpoint_matches, describe_for_checkpoint, resolve_checkpoint
from .unwrap import model_task

__all__ = ["MODES", "StitchTrainer", "prepare_model", "is_stitch_parameter", "parameter_groups"]

MODES = ("stitch", "lora", "full")


def is_stitch_parameter(name: str) -> bool:
    """Parameters trained at the full learning rate: stitch layer(s) (also inside PEFT's modules_to_save
    wrapper and a supernet's ``stitches``) and LoRA adapters. Everything else belongs to an anchor."""
    parts = name.split(".")
    return any(p in ("stitch", "stitches") or p.startswith("lora_") for p in parts)


def prepare_model(model, mode: str = "stitch", lora_config=None, **lora_kwargs):
    """Set what trains for ``mode`` (see the module docstring); returns the model (a PeftModel for ``lora``)."""
    if mode not in MODES:
        raise HfKlasError(f"Unknown finetuning mode {mode!r}.", f"Use one of {', '.join(MODES)}.")
    if mode == "lora":
        if hasattr(model, "stitches"):
            raise HfKlasError("LoRA on a StitchedSupernet is not supported.",
                              "Train the supernet with mode='stitch' or 'full', then LoRA-finetune extracted models.")
        return apply_lora(model, lora_config, **lora_kwargs)
    for name, p in model.named_parameters():
        p.requires_grad_(mode == "full" or is_stitch_parameter(name))
    return model


def parameter_groups(model, learning_rate: float, anchor_lr_scale: float = 0.1, weight_decay: float = 0.0,
                     decay_names: set[str] | None = None) -> list[dict]:
    """Optimizer groups: stitch/adapter parameters at ``learning_rate``, anchor parameters at
    ``anchor_lr_scale * learning_rate``; each split by weight decay (``decay_names``: names that decay)."""
    groups: dict[tuple[bool, bool], list] = {}
    names: dict[tuple[bool, bool], list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (is_stitch_parameter(name), decay_names is None or name in decay_names)
        groups.setdefault(key, []).append(p)
        names.setdefault(key, []).append(name)
    out = []
    for (stitch, decay), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], not kv[0][1])):
        out.append({"params": params, "lr": learning_rate * (1.0 if stitch else anchor_lr_scale),
                    "weight_decay": weight_decay if decay else 0.0,
                    "hf_klas_group": ("stitch" if stitch else "anchor") + ("" if decay else "_no_decay")})
    if not out:
        raise HfKlasError("The model has no trainable parameter.",
                          "Use mode='stitch', 'lora' or 'full' (hf_klas.training.prepare_model) before training.")
    return out


class StitchTrainer(Trainer):
    """``Trainer`` for stitched models and supernets.

    Adds: ``anchor_lr_scale`` (anchor parameters' LR as a fraction of ``learning_rate``; stitch and adapters
    train at the full rate), the stitch configuration written into every checkpoint, and a
    :class:`~hf_klas.errors.CheckpointError` when ``train(resume_from_checkpoint=...)`` names a checkpoint of a
    different stitch configuration (checked before the Trainer loads anything).
    """

    def __init__(self, *args, anchor_lr_scale: float = 0.1, **kwargs):
        if not anchor_lr_scale >= 0:
            raise HfKlasError(f"anchor_lr_scale={anchor_lr_scale} must be >= 0.",
                              "Use 0.1 (SN-Net's anchor learning rate), 1.0 (same as the stitch) or 0 (frozen).")
        self.anchor_lr_scale = anchor_lr_scale
        super().__init__(*args, **kwargs)
        self.add_callback(StitchCheckpointCallback(describe_for_checkpoint(self.model)))
        try:
            task = model_task(self.model)
        except HfKlasError:  # not a stitched model: plain Trainer behaviour
            task = None
        if task is not None and task != CAUSAL_LM:
            # Image classifiers return a per-batch *mean* loss; they take **kwargs only to ignore
            # num_items_in_batch. Telling the Trainer so keeps gradient accumulation and multi-process
            # averaging right (otherwise it would skip the 1/GA scaling and multiply by the world size).
            self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            decay = set(self.get_decay_parameter_names(opt_model))
            groups = parameter_groups(opt_model, self.args.learning_rate, self.anchor_lr_scale,
                                      self.args.weight_decay, decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            for key in ("params", "model", "optimizer_dict"):
                if key in optimizer_kwargs:
                    raise HfKlasError(f"The optimizer {self.args.optim!r} manages its own parameter groups, so "
                                      "anchor_lr_scale cannot be applied.",
                                      "Use an ordinary optimizer (optim='adamw_torch') with StitchTrainer.")
            for g in groups:
                g.pop("hf_klas_group")
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer
        # transformers 5.0's create_optimizer takes no model (later versions accept one): pass it only when given
        return super().create_optimizer() if model is None else super().create_optimizer(model)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:
            check_checkpoint_matches(checkpoint, self.model)
        return super().train(resume_from_checkpoint=checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

