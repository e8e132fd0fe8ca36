"""Fashion-MNIST read straight from the Debian ``dataset-fashion-mnist`` IDX files: no download, no cache.

Files (``/usr/share/datasets/fashion-mnist`` by default; override with ``root=`` or the environment variable
``HF_KLAS_FASHION_MNIST_DIR``)::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   (60,000 images)
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz    (10,000 images)

**Three frozen splits** (:data:`SPLITS`), so that nothing is fitted, selected, tuned or stopped on test images:

    "train"             rows 0..54,999 of the training file        (55,000 images)
    "validation"        rows 55,000..59,999 of the training file   (5,000 images; 450-527 per class)
    "test"              the whole t10k file                        (10,000 images: final numbers only)
    "train+validation"  all 60,000 rows of the training file (a refit after every choice is made)

The validation rows are the last 5,000 of the training file, as in the classic MNIST 55,000/5,000 split: a fixed,
documented index range, not a random draw. No image occurs twice across the three splits (SHA-1 of the pixels;
``tests/test_fashion_mnist_zoo.py`` checks it).

:func:`load_fashion_mnist` returns a ``datasets.Dataset`` with an ``image`` column (``datasets.Image()``:
28x28 grayscale PIL images, mode ``"L"``, which transformers image processors accept as they are) and a
``label`` column (``datasets.ClassLabel`` over :data:`FASHION_MNIST_LABELS`). Rows keep the files' order, so
``limit=n`` is always the first ``n`` images of the split.

Pixels for a model: either the image processor saved with the shipped ViTs (``ViTImageProcessor``, no resize,
rescale by 1/255, normalise with :data:`FASHION_MNIST_MEAN` / :data:`FASHION_MNIST_STD`), or
:func:`preprocess`, the same arithmetic on uint8 arrays without PIL (used for fast training).
:func:`make_image_processor` builds that processor; :func:`to_pixel_values` turns a batch (dict with
``image``) into ``pixel_values``; :func:`with_pixel_values` maps a dataset to torch-formatted columns
``pixel_values`` (``FloatTensor[3, 28, 28]`` per row) and ``label`` (what ``hf_klas.evaluation.top1_accuracy``
reads).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

__all__ = [
    "DEFAULT_ROOT", "ENV_VAR", "FASHION_MNIST_LABELS", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "IMAGE_SIZE",
    "NUM_CHANNELS", "SPLITS", "VALIDATION_START",
    "fashion_mnist_root", "read_idx", "load_fashion_mnist_arrays", "load_fashion_mnist", "preprocess",
    "make_image_processor", "to_pixel_values", "with_pixel_values",
]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "HF_KLAS_FASHION_MNIST_DIR"
IMAGE_SIZE = 28
NUM_CHANNELS = 3  # the zoo ViTs take RGB like every Hub ViT; Fashion-MNIST's gray is repeated

#: Class names in label order (Zalando's Fashion-MNIST README).
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

#: Pixel mean / std of the 60,000 training images after scaling to [0, 1] (0.286041, 0.353024).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

#: The split names :func:`load_fashion_mnist` takes -> (file set, first row, end row or None).
VALIDATION_START = 55_000
SPLITS = {
    "train": ("train", 0, VALIDATION_START),
    "validation": ("train", VALIDATION_START, None),
    "test": ("test", 0, None),
    "train+validation": ("train", 0, None),
}

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
_FIX = ("Install the Debian package: `sudo apt-get install dataset-fashion-mnist` (files land in "
        f"{DEFAULT_ROOT}), or point root= / ${ENV_VAR} at a directory holding the four *-ubyte.gz files.")


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The directory to read: ``root`` if given, else ``$HF_KLAS_FASHION_MNIST_DIR``, else the Debian path."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root)


def _split_rows(split: str) -> tuple[str, int, int | None]:
    if split not in SPLITS:
        raise DataError(f"Unknown Fashion-MNIST split {split!r}.",
                        f"Use one of {', '.join(repr(s) for s in SPLITS)} (choices are made on 'validation'; "
                        "'test' is for final numbers only).")
    return SPLITS[split]


def _split_files(key: str, root) -> tuple[Path, Path]:
    base = fashion_mnist_root(root)
    paths = tuple(base / name for name in _FILES[key])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST {key} files not found: {', '.join(missing)}.", _FIX)
    return paths  # type: ignore[return-value]


def read_idx(path: str | os.PathLike, expected_magic: int, limit: int | None = None) -> np.ndarray:
    """Read a (gzip) IDX file into a uint8 array, validating the magic number and the declared sizes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"Could not read IDX file {path}: {err}.",
                        "The file is truncated or not gzip; reinstall it: "
                        "`sudo apt-get install --reinstall dataset-fashion-mnist`.") from err
    if len(data) < 8:
        raise DataError(f"IDX file {path} is only {len(data)} bytes long.",
                        "Reinstall it: `sudo apt-get install --reinstall dataset-fashion-mnist`.")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(f"IDX file {path} has magic number {magic:#010x}; expected {expected_magic:#010x} "
                        f"({'images' if expected_magic == _IMAGES_MAGIC else 'labels'}).",
                        "Check that images and labels files are not swapped or corrupted; reinstall with "
                        "`sudo apt-get install --reinstall dataset-fashion-mnist`.")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"IDX file {path} declares shape {dims} ({expected} bytes) but holds {len(data)} bytes.",
                        "Reinstall it: `sudo apt-get install --reinstall dataset-fashion-mnist`.")
    n = dims[0] if limit is None else min(dims[0], limit)
    per_item = int(np.prod(dims[1:])) if ndim > 1 else 1
    arr = np.frombuffer(data, dtype=np.uint8, count=n * per_item, offset=header)
    return arr.reshape([n, *dims[1:]]).copy()


def _check_limit(limit):
    if limit is not None and (not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 1):
        raise DataError(f"limit={limit!r} is not a positive integer.", "Pass limit=None (all rows) or an int >= 1.")


def load_fashion_mnist_arrays(split: str = "train", root=None, limit: int | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of a split (:data:`SPLITS`), in file order (first
    ``limit`` rows of the split)."""
    _check_limit(limit)
    key, start, end = _split_rows(split)
    img_path, lbl_path = _split_files(key, root)
    stop = end if limit is None else (start + limit if end is None else min(end, start + limit))
    images = read_idx(img_path, _IMAGES_MAGIC, stop)
    labels = read_idx(lbl_path, _LABELS_MAGIC, stop).astype(np.int64)
    if len(images) <= start:
        raise DataError(f"{img_path} holds {len(images)} images; the {split!r} split starts at row {start}.",
                        "Point root= at the full Fashion-MNIST files (60,000 training images), or reinstall: "
                        "`sudo apt-get install --reinstall dataset-fashion-mnist`.")
    images, labels = images[start:], labels[start:]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{img_path} holds images of shape {images.shape[1:]}; expected (28, 28).",
                        "Point root= at the Fashion-MNIST files, not another IDX dataset.")
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels.",
                        "Reinstall: `sudo apt-get install --reinstall dataset-fashion-mnist`.")
    if labels.size and labels.max() >= len(FASHION_MNIST_LABELS):
        raise DataError(f"{lbl_path} has label {int(labels.max())}; Fashion-MNIST has 10 classes.",
                        "Point root= at the Fashion-MNIST files, not another IDX dataset.")
    return images, labels


def load_fashion_mnist(split: str = "train", root=None, limit: int | None = None):
    """Fashion-MNIST ``split`` (:data:`SPLITS`: "train", "validation", "test", "train+validation") as a
    ``datasets.Dataset`` (columns ``image``, ``label``).

    ``image`` is a ``datasets.Image()`` feature (decodes to a 28x28 PIL image, mode ``"L"``); ``label`` is a
    ``datasets.ClassLabel`` named by :data:`FASHION_MNIST_LABELS`. Raises :class:`~hf_klas.errors.DataError`
    (with the ``apt-get install dataset-fashion-mnist`` fix) when the files are missing or malformed.
    """
    import datasets

    images, labels = load_fashion_mnist_arrays(split, root=root, limit=limit)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=FASHION_MNIST_LABELS)})
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features,
                                      split=split)


def preprocess(images, channels: int = NUM_CHANNELS) -> torch.FloatTensor:
    """uint8 images ``[B, 28, 28]`` (array, tensor, or list of arrays / PIL images) -> ``FloatTensor[B, C, 28, 28]``.

    Same arithmetic as the shipped ``ViTImageProcessor`` (``(x / 255 - mean) / std``), without PIL; the gray
    value is repeated on ``channels`` channels (3: what the zoo ViTs and the processor's RGB conversion give).
    """
    if isinstance(images, torch.Tensor):
        arr = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im) for im in images]) if len(images) else np.zeros((0, 28, 28), np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"preprocess expects 28x28 grayscale images; got an array of shape {arr.shape}.",
                        "Pass uint8 arrays of shape [B, 28, 28] (or a list of 28x28 images).")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).unsqueeze(1)
    x = (x / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x if channels == 1 else x.expand(-1, channels, -1, -1).contiguous()


def make_image_processor():
    """The ``ViTImageProcessor`` saved with the shipped Fashion-MNIST ViTs: any PIL image converted to RGB (a
    grayscale one becomes three equal channels, as ``pipeline`` does too), no resize, the training statistics."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(do_resize=False, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                             do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                             image_mean=[FASHION_MNIST_MEAN] * NUM_CHANNELS,
                             image_std=[FASHION_MNIST_STD] * NUM_CHANNELS)


def to_pixel_values(batch, processor=None) -> torch.FloatTensor:
    """``batch["image"]`` (a dict batch) or a list of images -> ``pixel_values`` ``FloatTensor[B, 3, 28, 28]``.

    With ``processor`` (e.g. ``AutoImageProcessor.from_pretrained(path)``) the images go through it; without,
    :func:`preprocess` is used (identical numbers for the shipped models).
    """
    images = batch["image"] if isinstance(batch, Mapping) else batch
    if processor is None:
        return preprocess(images)
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def with_pixel_values(ds, processor=None, batch_size: int = 1000):
    """``ds`` with the ``image`` column replaced by ``pixel_values`` (float32 ``[3, 28, 28]`` per row).

    Materialised with ``Dataset.map`` (about 9 MB per 1,000 rows) and formatted as torch, so it plugs into
    ``hf_klas.evaluation.top1_accuracy(model, ds)`` and ``DataLoader`` alike.
    """
    import datasets

    features = datasets.Features({"pixel_values": datasets.Array3D((NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE), "float32"),
                                  "label": ds.features["label"]})
    out = ds.map(lambda batch: {"pixel_values": to_pixel_values(batch, processor).numpy()}, batched=True,
                 batch_size=batch_size, remove_columns=["image"], features=features,
                 desc="Fashion-MNIST -> pixel_values", load_from_cache_file=False)
    return out.with_format("torch")
