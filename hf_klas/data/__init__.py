"""Offline datasets (Fashion-MNIST from Debian's IDX files, the frozen Debian synopsis task, frozen WordNet glosses) and
:func:`get_dataset`, which turns any dataset name a command accepts into a ``datasets.Dataset``."""

from __future__ import annotations

from pathlib import Path

import datasets

from ..errors import DataError
from .debian_descriptions import load_debian_descriptions
from .fashion_mnist import load_fashion_mnist, with_pixel_values
from .wordnet_glosses import load_wordnet_glosses

__all__ = ["BUILTIN_DATASETS", "get_dataset"]

BUILTIN_DATASETS = ("debian_descriptions", "fashion_mnist", "wordnet_glosses")


def get_dataset(name: str, split: str = "train", config: str | None = None, limit: int | None = None):
    """A ``datasets.Dataset`` from a builtin name, a local file or ``save_to_disk`` directory, or the Hub."""
    if name == "debian_descriptions":
        ds = load_debian_descriptions(split=split)
    elif name == "fashion_mnist":
        ds = load_fashion_mnist(split, limit=limit)  # train / validation / test / train+validation
        ds = with_pixel_values(ds)
    elif name == "wordnet_glosses":
        ds = load_wordnet_glosses(split)
    else:
        path = Path(name)
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path} has splits {list(ds)}, not {split!r}.", "Pass an existing split.")
                ds = ds[split]
        elif path.is_file():
            kind = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(
                path.suffix.lower())
            if kind is None:
                raise DataError(f"Unsupported data file {path} (suffix {path.suffix!r}).",
                                "Use .json/.jsonl/.csv/.parquet/.txt, or a save_to_disk directory.")
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif path.exists() or name.startswith((".", "/")):
            raise DataError(f"{path} is neither a data file nor a save_to_disk directory.",
                            "Pass a .json/.jsonl/.csv/.parquet/.txt file or a directory written by save_to_disk.")
        else:
            try:
                ds = datasets.load_dataset(name, config, split=split)
            except Exception as err:  # offline, missing, gated
                raise DataError(f"Could not load dataset {name!r} ({type(err).__name__}: {err}).",
                                f"Use an offline builtin ({', '.join(BUILTIN_DATASETS)}), a local file or "
                                "save_to_disk directory, or check the Hub name and your connection.") from err
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds
