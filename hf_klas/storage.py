"""Where hf_klas keeps what it derives (dequantised GGUF checkpoints, cached stitch plans): one directory,
``~/.cache/hf_klas`` unless ``HF_KLAS_CACHE`` says otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The hf_klas cache directory (``HF_KLAS_CACHE`` overrides ``~/.cache/hf_klas``)."""
    return Path(os.environ.get("HF_KLAS_CACHE", Path.home() / ".cache" / "hf_klas"))
