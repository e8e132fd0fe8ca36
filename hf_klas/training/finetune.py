"""One call from a model and data to a ready Trainer: :func:`build_trainer` (stitched models) and
:func:`train_supernet` (SN-Net supernets over a candidate set)."""

from __future__ import annotations

from transformers import set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..errors import HfKlasError
from .data import default_collator
from .distill import StitchDistillationTrainer
from .supernet import StitchedSupernet
from .trainer import StitchTrainer, prepare_model

__all__ = ["build_trainer", "train_supernet"]


def build_trainer(model, args, train_dataset, eval_dataset=None, *, mode: str = "stitch", lora_config=None,
                  lora_r: int = 8, lora_alpha: int | None = None, lora_dropout: float = 0.0,
                  lora_target_modules=None, anchor_lr_scale: float = 0.1, teacher=None, distill_alpha: float = 0.5,
                  distill_temperature: float = 2.0, data_collator=None, processing_class=None, callbacks=None,
                  prepare: bool = True, quiet: bool = False):
    """Prepare ``model`` for ``mode`` and return a :class:`StitchTrainer` (or ``StitchDistillationTrainer`` when
    a ``teacher`` is given). ``args`` is a ``TrainingArguments``; datasets must already hold model inputs
    (:func:`prepare_causal_lm_dataset` / :func:`prepare_image_dataset`). ``quiet``: no progress bar and no printed
    metrics (for callers that run many short trainings under one progress bar of their own)."""
    if prepare:
        # LoRA's matrices are drawn from the global RNG: seed it with args.seed (as Trainer does for model_init),
        # so a training is a function of its arguments, not of what the process ran before.
        set_seed(args.seed)
        kw = {}
        if mode == "lora" and lora_config is None:
            kw = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target_modules": lora_target_modules}
        model = prepare_model(model, mode, lora_config, **kw)
    if data_collator is None:
        data_collator = default_collator(model, processing_class)
    common = dict(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                  data_collator=data_collator, processing_class=processing_class, callbacks=callbacks,
                  anchor_lr_scale=anchor_lr_scale)
    if teacher is not None:
        trainer = StitchDistillationTrainer(teacher=teacher, alpha=distill_alpha, temperature=distill_temperature,
                                            **common)
    else:
        trainer = StitchTrainer(**common)
    if quiet:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    return trainer


def train_supernet(supernet: StitchedSupernet, args, train_dataset, eval_dataset=None, *, mode: str = "full",
                   anchor_lr_scale: float = 0.1, data_collator=None, processing_class=None, callbacks=None,
                   resume_from_checkpoint=None, teacher=None, distill_alpha: float = 0.5,
                   distill_temperature: float = 2.0):
    """Train ``supernet`` with a :class:`~hf_klas.training.trainer.StitchTrainer` (``mode`` ``"full"``: anchors at
    ``anchor_lr_scale`` x LR, as SN-Net; ``"stitch"``: stitch layers only). Returns ``(trainer, train_output)``."""
    if mode not in ("full", "stitch"):
        raise HfKlasError(f"Supernet training mode {mode!r} is not supported.", "Use 'full' or 'stitch'.")
    trainer = build_trainer(supernet, args, train_dataset, eval_dataset, mode=mode, anchor_lr_scale=anchor_lr_scale,
                            data_collator=data_collator, processing_class=processing_class, callbacks=callbacks,
                            teacher=teacher, distill_alpha=distill_alpha, distill_temperature=distill_temperature)
    out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer, out
