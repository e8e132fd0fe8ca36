"""Top-1 accuracy for image classifiers (anchors and stitched models alike: anything returning ``.logits``)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ._util import model_device

__all__ = ["top1_accuracy", "top1_correct"]


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
        return torch.stack(x)
    return torch.as_tensor(np.asarray(x))


def _batches(data, batch_size: int, pixel_key: str, label_key: str):
    """Yield (pixels, labels) from a DataLoader, a datasets.Dataset, or a map-style torch Dataset."""
    try:
        import datasets
        is_hf = isinstance(data, datasets.Dataset)
    except ImportError:  # pragma: no cover - datasets is a dependency
        is_hf = False
    if is_hf:
        missing = {pixel_key, label_key} - set(data.column_names)
        if missing:
            raise DataError(f"Dataset lacks column(s) {sorted(missing)}; it has {data.column_names}.",
                            "Pass pixel_key=/label_key= naming the image and label columns.")
        for s in range(0, len(data), batch_size):
            chunk = data[s:s + batch_size]
            yield _as_tensor(chunk[pixel_key]), _as_tensor(chunk[label_key])
        return
    if not isinstance(data, torch.utils.data.DataLoader):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in data:
        if isinstance(batch, dict):
            if pixel_key not in batch or label_key not in batch:
                raise DataError(f"Batch has keys {sorted(batch)}; expected {pixel_key!r} and {label_key!r}.",
                                "Pass pixel_key=/label_key= naming the image and label fields.")
            yield _as_tensor(batch[pixel_key]), _as_tensor(batch[label_key])
        elif isinstance(batch, (list, tuple)) and len(batch) == 2:
            yield _as_tensor(batch[0]), _as_tensor(batch[1])
        else:
            raise DataError("Batches must be dicts or (pixels, labels) pairs.",
                            "Yield {pixel_key: ..., label_key: ...} or (x, y) from the loader.")


def _num_batches(data, batch_size: int):
    try:
        n = len(data)
    except TypeError:
        return None
    return n if isinstance(data, torch.utils.data.DataLoader) else -(-n // batch_size)


def top1_accuracy(model, dataset_or_loader, batch_size: int = 64, pixel_key: str = "pixel_values",
                  label_key: str = "labels", progress: bool = True) -> float:
    """Fraction of examples whose argmax logit equals the label.

    Why a single entry point: anchors, stitched models and finetuned stitches are all compared with the same
    loop, so differences in the Pareto front come from the models, not from evaluation code. The model is
    called as ``model(**{pixel_key: pixels})`` and must return an object with ``.logits`` of shape
    (batch, classes). Accepts a ``DataLoader`` (dict or (x, y) batches), a ``datasets.Dataset`` (columns
    ``pixel_key``/``label_key``), or a map-style torch ``Dataset`` (batched here with ``batch_size``).
    """
    return float(top1_correct(model, dataset_or_loader, batch_size, pixel_key, label_key, progress).double().mean())


def top1_correct(model, dataset_or_loader, batch_size: int = 64, pixel_key: str = "pixel_values",
                 label_key: str = "labels", progress: bool = True) -> torch.BoolTensor:
    """Per example (in data order), whether the argmax logit equals the label: what paired intervals and
    bootstraps over the test set need (:mod:`hf_klas.evaluation.intervals`). Same inputs as :func:`top1_accuracy`."""
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be >= 1.", "Pass a positive batch_size.")
    device = model_device(model)
    was_training = model.training
    model.eval()
    hits = []
    try:
        for pixels, labels in tqdm(_batches(dataset_or_loader, batch_size, pixel_key, label_key),
                                   total=_num_batches(dataset_or_loader, batch_size), desc="accuracy",
                                   unit="batch", disable=not progress):
            with torch.inference_mode():
                logits = model(**{pixel_key: pixels.to(device)}).logits
            if logits.dim() != 2:
                raise DataError(f"Model logits have shape {tuple(logits.shape)}; expected (batch, classes).",
                                "Use an image-classification model (or one whose head pools to one vector).")
            labels = labels.to(logits.device).long().reshape(-1)
            if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[-1]:
                raise DataError(f"Labels span [{int(labels.min())}, {int(labels.max())}] but the model has "
                                f"{logits.shape[-1]} classes.", "Check label_key and the model's num_labels.")
            hits.append((logits.argmax(-1) == labels).cpu())
    finally:
        model.train(was_training)
    if not hits or sum(h.numel() for h in hits) == 0:
        raise DataError("The evaluation data is empty.", "Pass a dataset or loader with at least one example.")
    return torch.cat(hits)
