"""Training data for stitched models: tokenised causal-LM examples, image-classification examples, collators.

Every check runs before training starts (missing columns, a missing tokenizer or image processor, token ids
outside the vocabulary, labels outside the classes) and names the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError
from ..families import CAUSAL_LM
from .unwrap import model_task, unwrap_model

__all__ = ["prepare_causal_lm_dataset", "prepare_image_dataset", "CausalLMCollator", "ImageCollator",
           "default_collator"]


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
            cfg = getattr(unwrap_model(model), "config", None)
            pad = getattr(cfg, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None) or 0
        return CausalLMCollator(int(pad))
    return ImageCollator()
