"""Calibration data in any form users have it, turned into model-ready batches.

Accepted: a list of strings (tokenised with the anchor's tokenizer), a ``datasets.Dataset`` with a text or
image/pixel column, a list of tensors (``input_ids`` rows or ``pixel_values``), or a list of batch dicts.

Default when none is given (offline, documented):
- LLMs: English prose from the docstrings of a fixed list of Python standard-library modules
  (``DEFAULT_TEXT_MODULES``), split into paragraphs of at least 200 characters. Always present, no download.
- Vision: the first images of the Fashion-MNIST *train* split (Debian ``dataset-fashion-mnist``; never the
  validation or test split, on which choices and final numbers are made), run through the anchor's image
  processor. Other vision anchors should pass their own calibration images.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import datasets
import torch

from .data.fashion_mnist import load_fashion_mnist
from .errors import CalibrationError
from .families import CAUSAL_LM, family_of
from .flops import DEFAULT_SEQ_LEN

DEFAULT_TEXT_MODULES = (
    "json", "csv", "argparse", "collections", "functools", "itertools", "pathlib", "logging", "unittest",
    "datetime", "decimal", "fractions", "statistics", "random", "string", "textwrap", "difflib", "heapq",
    "bisect", "shutil", "tempfile", "zipfile", "tarfile", "gzip", "hashlib", "secrets", "uuid", "socket",
    "threading", "queue", "subprocess", "contextlib", "abc", "dataclasses", "enum", "typing", "inspect",
    "copy", "pprint", "sqlite3", "email", "http.client", "urllib.parse", "html", "xml.dom", "calendar",
)


def default_calibration_texts(limit: int = 64, min_chars: int = 200) -> list[str]:
    """Deterministic English paragraphs from standard-library docstrings (see module docstring)."""
    texts: list[str] = []
    for name in DEFAULT_TEXT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - stdlib modules missing on exotic builds
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(dir(module)):
            if not attr.startswith("_"):
                docs.append(inspect.getdoc(getattr(module, attr, None)) or "")
        for doc in docs:
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= min_chars and para not in texts:
                    texts.append(para)
                    if len(texts) >= limit:
                        return texts
    return texts


#: The split the default vision calibration reads: the least-squares stitch is *fitted* on it and selection
#: *chooses* with it, so it must be training data.
DEFAULT_CALIBRATION_SPLIT = "train"


def default_calibration_images(processor, limit: int = 256) -> list[torch.Tensor]:
    ds = load_fashion_mnist(DEFAULT_CALIBRATION_SPLIT, limit=limit)
    return [_images_to_pixels(processor, ds["image"])]


def _images_to_pixels(processor, images) -> torch.Tensor:
    if processor is None:
        raise CalibrationError("Images were given for calibration but the anchor has no image processor.",
                               "Pass pixel_values tensors instead, or save the image processor with the anchor.")
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def _batched(rows: list[torch.Tensor], batch_size: int):
    for k in range(0, len(rows), batch_size):
        yield rows[k:k + batch_size]


def calibration_batches(calibration, config, preprocessor=None, batch_size: int = 8,
                        max_length: int = DEFAULT_SEQ_LEN, max_samples: int | None = None) -> list[dict]:
    """Batches of model inputs for ``config``'s task; raises :class:`CalibrationError` for empty/odd data and
    token ids the anchor's vocabulary does not have."""
    batches = _batches(calibration, config, preprocessor, batch_size, max_length, max_samples)
    if family_of(config).task == CAUSAL_LM:
        vocab = int(config.vocab_size)
        for batch in batches:
            ids = batch.get("input_ids")
            if ids is None or ids.numel() == 0:
                continue
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= vocab:
                bad = hi if hi >= vocab else lo
                name = getattr(config, "_name_or_path", None) or config.model_type
                raise CalibrationError(
                    f"Calibration token id {bad} is outside the vocabulary of anchor {name!r} ({vocab} tokens, "
                    f"ids 0..{vocab - 1}).",
                    "Tokenise the calibration text with the anchor's own tokenizer, or pass strings (hf_klas "
                    "tokenises them with it).")
    return batches


def _batches(calibration, config, preprocessor, batch_size, max_length, max_samples) -> list[dict]:
    task = family_of(config).task
    if calibration is None:
        if task == CAUSAL_LM:
            calibration = default_calibration_texts()
        else:
            calibration = default_calibration_images(preprocessor)
    if isinstance(calibration, datasets.Dataset):
        calibration = _from_dataset(calibration, task, preprocessor)
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    if not isinstance(calibration, (list, tuple)) or len(calibration) == 0:
        raise CalibrationError(
            f"Calibration data is empty or of an unsupported type ({type(calibration).__name__}).",
            "Pass a non-empty list of strings, a datasets.Dataset with a text/image column, or tensors.",
        )
    if max_samples is not None:
        calibration = list(calibration)[:max_samples]
    first = calibration[0]
    if isinstance(first, dict):
        return list(calibration)
    if task == CAUSAL_LM:
        return _text_batches(calibration, preprocessor, batch_size, max_length)
    return _image_batches(calibration, preprocessor, batch_size)


def _from_dataset(ds, task, preprocessor):
    cols = ds.column_names
    if task == CAUSAL_LM:
        for key in ("text", "content", "prompt", "input_ids"):
            if key in cols:
                return list(ds[key]) if key != "input_ids" else [torch.tensor(r) for r in ds[key]]
        raise CalibrationError(f"The calibration dataset has no text column (columns: {cols}).",
                               "Rename your text column to 'text' (ds.rename_column(old, 'text')).")
    for key in ("pixel_values", "image", "img"):
        if key in cols:
            if key == "pixel_values":
                return [torch.as_tensor(x) for x in ds[key]]
            return [_images_to_pixels(preprocessor, ds[key])]
    raise CalibrationError(f"The calibration dataset has no image column (columns: {cols}).",
                           "Provide an 'image' or 'pixel_values' column.")


def _text_batches(items, tokenizer, batch_size, max_length):
    if isinstance(items[0], str):
        if tokenizer is None:
            raise CalibrationError("Text calibration data needs a tokenizer, and the anchor has none.",
                                   "Pass tokenized input_ids tensors, or an anchor saved with its tokenizer.")
        rows = [torch.tensor(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in items]
    else:
        rows = [torch.as_tensor(t).reshape(-1)[:max_length] for t in items]
    rows = [r.long() for r in rows if r.numel() > 1]
    if not rows:
        raise CalibrationError("The calibration data tokenised to nothing (every text gave fewer than 2 tokens).",
                               "Pass longer texts (a few sentences each), or omit calibration for the default.")
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    pad = 0 if pad is None else pad
    batches = []
    for chunk in _batched(rows, batch_size):
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, r in enumerate(chunk):  # right padding: positions stay 0..L-1 for every row
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def _image_batches(items, processor, batch_size):
    tensors = []
    for item in items:
        t = item if isinstance(item, torch.Tensor) else _images_to_pixels(processor, [item])
        tensors.append(t if t.dim() == 4 else t.unsqueeze(0))
    pixels = torch.cat(tensors)
    if len(pixels) == 0:
        raise CalibrationError("The calibration images are empty.", "Pass at least one image.")
    return [{"pixel_values": pixels[k:k + batch_size]} for k in range(0, len(pixels), batch_size)]


def calibration_from_path(value):
    """A ``--calibration PATH`` (a .txt file, one sample per line; .json/.jsonl; a ``save_to_disk``
    directory) as data :func:`calibration_batches` accepts; None -> the offline default."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, Path)):
        return value
    path = Path(value)
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    if not path.is_file():
        raise CalibrationError(f"Calibration path {path} does not exist.",
                               "Pass a .txt/.json/.jsonl file or a datasets directory, or omit it for the default.")
    if path.suffix in (".json", ".jsonl"):
        return datasets.load_dataset("json", data_files=str(path), split="train")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise CalibrationError(f"Calibration file {path} is empty.", "Put one calibration text per line.")
    return lines
