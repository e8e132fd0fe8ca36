"""Finetuning stitched models with the ordinary Trainer: modes, optimizer groups, data checks and collators.

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

import logging
from dataclasses import dataclass

import torch
from transformers import Trainer

from ..anatomy import CAUSAL_LM
from ..errors import DataError, HfKlasError
from .resume import StitchCheckpointCallback, check_checkpoint_matches, describe_for_checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["MODES", "StitchTrainer", "prepare_model", "is_stitch_parameter", "parameter_groups",
           "prepare_causal_lm_dataset", "prepare_image_dataset", "CausalLMCollator", "ImageCollator",
           "build_trainer", "model_task"]

MODES = ("stitch", "lora", "full")


def _unwrap_all(model):
    from .resume import _unwrap

    return _unwrap(model)


def model_task(model) -> str:
    """``"causal-lm"`` or ``"image-classification"`` for a stitched model, PEFT model or supernet."""
    base = _unwrap_all(model)
    task = getattr(getattr(base, "config", None), "task", None) or getattr(base, "task", None)
    if task is None:
        raise HfKlasError(f"Cannot tell the task of {type(base).__name__}.",
                          "Pass a stitched model (hf_klas.StitchedModel.from_anchors) or a StitchedSupernet.")
    return task


# ---- modes and parameter groups ------------------------------------------------------------------------------


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
        from .lora import apply_lora

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
        return super().create_optimizer(model)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:
            check_checkpoint_matches(checkpoint, self.model)
        return super().train(resume_from_checkpoint=checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)


# ---- data ----------------------------------------------------------------------------------------------------


def _columns(ds) -> list[str]:
    cols = getattr(ds, "column_names", None)
    if cols is None:
        raise DataError(f"Expected a datasets.Dataset, got {type(ds).__name__}.",
                        "Wrap your data with datasets.Dataset.from_dict({...}) or load it with datasets.load_dataset.")
    return list(cols)


def prepare_causal_lm_dataset(ds, tokenizer=None, text_column: str = "text", prompt_column: str | None = None,
                              target_column: str | None = None, max_length: int = 128,
                              vocab_size: int | None = None, train_on_prompt: bool = False):
    """Tokenised ``input_ids`` / ``attention_mask`` / ``labels`` for causal-LM finetuning.

    Sources, in order: a pre-tokenised ``input_ids`` column (used as is, truncated to ``max_length``);
    ``prompt_column`` + ``target_column`` (``prompt + " " + target + eos``; prompt tokens get label -100
    unless ``train_on_prompt``); or ``text_column``. Raises :class:`DataError` for missing columns, a missing
    tokenizer, empty data, and token ids outside the model's vocabulary.
    """
    cols = _columns(ds)
    if len(ds) == 0:
        raise DataError("The training dataset is empty.", "Pass a dataset with at least one example.")
    if "input_ids" in cols:
        def pre(batch):
            ids = [list(r)[:max_length] for r in batch["input_ids"]]
            if "labels" in batch:
                labels = [list(r)[:max_length] for r in batch["labels"]]
            else:
                labels = [list(r) for r in ids]
            return {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": labels}

        out = ds.map(pre, batched=True, remove_columns=cols, desc="truncate input_ids")
    else:
        if prompt_column or target_column:
            wanted = [c for c in (prompt_column, target_column) if c]
            if not (prompt_column and target_column):
                raise DataError("Only one of prompt_column / target_column was given.",
                                "Pass both (e.g. prompt_column='prompt', target_column='target'), or a text_column.")
        else:
            wanted = [text_column]
        missing = [c for c in wanted if c not in cols]
        if missing:
            raise DataError(f"The dataset has no column {missing[0]!r} (columns: {cols}).",
                            f"Rename the text column (dataset.rename_column(old, {missing[0]!r})), or pass "
                            "text_column= / prompt_column= and target_column= naming your columns.")
        if tokenizer is None:
            raise DataError("The dataset holds text but no tokenizer was given.",
                            "Pass tokenizer= (AutoTokenizer.from_pretrained(<anchor or stitched model dir>)), or a "
                            "pre-tokenised 'input_ids' column.")
        eos = tokenizer.eos_token or ""

        def tok(batch):
            if prompt_column:
                ids, labels, masks = [], [], []
                for prompt, target in zip(batch[prompt_column], batch[target_column]):
                    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
                    t = tokenizer(" " + target + eos, add_special_tokens=False)["input_ids"]
                    seq = (p + t)[:max_length]
                    lab = ((p if train_on_prompt else [-100] * len(p)) + t)[:max_length]
                    ids.append(seq)
                    labels.append(lab)
                    masks.append([1] * len(seq))
                return {"input_ids": ids, "attention_mask": masks, "labels": labels}
            enc = tokenizer(list(batch[text_column]), truncation=True, max_length=max_length)
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                    "labels": [list(r) for r in enc["input_ids"]]}

        out = ds.map(tok, batched=True, remove_columns=cols, desc="tokenize")
    out = out.filter(lambda r: len(r["input_ids"]) >= 2 and any(x != -100 for x in r["labels"][1:]),
                     desc="drop examples with nothing to predict")
    if len(out) == 0:
        raise DataError("No example has a token to predict (all are shorter than 2 tokens or fully masked).",
                        "Pass longer texts, a larger max_length, or shorter prompts.")
    if vocab_size is not None:
        top = max(max(r) for r in out["input_ids"])
        low = min(min(r) for r in out["input_ids"])
        if top >= vocab_size or low < 0:
            raise DataError(f"Token ids span [{low}, {top}] but the model's vocabulary has {vocab_size} entries.",
                            "Tokenise with the tokenizer of the stitched model's anchors (same vocabulary).")
    return out


def prepare_image_dataset(ds, num_labels: int, image_processor=None, image_column: str | None = None,
                          label_column: str | None = None):
    """``pixel_values`` / ``labels`` for image classification, with label checks.

    ``image_column``: ``pixel_values`` (used as is) or an image column run through ``image_processor``
    (default: the first of ``pixel_values``, ``image``, ``img`` present). ``label_column``: default the first
    of ``labels``, ``label``. Raises :class:`DataError` for missing columns and labels outside
    ``[0, num_labels)`` (the model's classes).
    """
    cols = _columns(ds)
    if len(ds) == 0:
        raise DataError("The training dataset is empty.", "Pass a dataset with at least one example.")
    image_column = image_column or next((c for c in ("pixel_values", "image", "img") if c in cols), None)
    label_column = label_column or next((c for c in ("labels", "label") if c in cols), None)
    if image_column is None or image_column not in cols:
        raise DataError(f"The dataset has no image column {image_column or '(pixel_values/image)'} "
                        f"(columns: {cols}).",
                        "Pass image_column= naming the images, or provide 'pixel_values' / 'image'.")
    if label_column is None or label_column not in cols:
        raise DataError(f"The dataset has no label column {label_column or '(labels/label)'} (columns: {cols}).",
                        "Pass label_column= naming the class ids, or provide a 'label' column.")
    labels = [int(x) for x in ds[label_column]]
    bad = sorted({x for x in labels if not 0 <= x < num_labels})
    if bad:
        raise DataError(f"Labels {bad[:10]} are outside the model's {num_labels} classes (0..{num_labels - 1}).",
                        "Map your labels to the model's classes (model.config.label2id), or build the stitch from "
                        "anchors whose classifier has as many classes as your data.")
    if image_column != "pixel_values" and image_processor is None:
        raise DataError(f"The image column {image_column!r} needs an image processor to become pixel_values.",
                        "Pass image_processor= (AutoImageProcessor.from_pretrained(<model dir>)), or a "
                        "'pixel_values' column.")

    def convert(batch):
        if image_column == "pixel_values":
            pixels = [torch.as_tensor(x, dtype=torch.float32) for x in batch[image_column]]
        else:
            pixels = list(image_processor(images=list(batch[image_column]), return_tensors="pt")["pixel_values"])
        return {"pixel_values": [p.numpy() for p in pixels], "labels": [int(x) for x in batch[label_column]]}

    out = ds.map(convert, batched=True, remove_columns=cols, desc="pixel_values")
    return out.with_format("torch")


@dataclass
class CausalLMCollator:
    """Right-pads ``input_ids`` (``pad_token_id``), ``attention_mask`` (0) and ``labels`` (-100)."""

    pad_token_id: int = 0

    def __call__(self, features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for k, f in enumerate(features):
            n = len(f["input_ids"])
            ids[k, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[k, :n] = torch.as_tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
            lab = f.get("labels", f["input_ids"])
            labels[k, :len(lab)] = torch.as_tensor(lab, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ImageCollator:
    """Stacks ``pixel_values`` and ``labels``."""

    def __call__(self, features):
        pixels = torch.stack([torch.as_tensor(f["pixel_values"], dtype=torch.float32) for f in features])
        labels = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return {"pixel_values": pixels, "labels": labels}


def default_collator(model, tokenizer=None):
    if model_task(model) == CAUSAL_LM:
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            cfg = getattr(_unwrap_all(model), "config", None)
            pad = getattr(cfg, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None) or 0
        return CausalLMCollator(int(pad))
    return ImageCollator()


# ---- one call ------------------------------------------------------------------------------------------------


def build_trainer(model, args, train_dataset, eval_dataset=None, *, mode: str = "stitch", lora_config=None,
                  lora_r: int = 8, lora_alpha: int | None = None, lora_dropout: float = 0.0,
                  lora_target_modules=None, anchor_lr_scale: float = 0.1, teacher=None, distill_alpha: float = 0.5,
                  distill_temperature: float = 2.0, data_collator=None, processing_class=None, callbacks=None,
                  prepare: bool = True):
    """Prepare ``model`` for ``mode`` and return a :class:`StitchTrainer` (or ``StitchDistillationTrainer`` when
    a ``teacher`` is given). ``args`` is a ``TrainingArguments``; datasets must already hold model inputs
    (:func:`prepare_causal_lm_dataset` / :func:`prepare_image_dataset`)."""
    if prepare:
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
        from .distill import StitchDistillationTrainer

        return StitchDistillationTrainer(teacher=teacher, alpha=distill_alpha, temperature=distill_temperature,
                                         **common)
    return StitchTrainer(**common)
