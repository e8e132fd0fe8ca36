"""hf_klas: model stitching for Hugging Face transformers, with KLAS stitch selection.

``import hf_klas`` registers the stitched and stitchable classes with the Auto classes, so ``AutoConfig`` /
``AutoModelForCausalLM`` / ``AutoModelForImageClassification`` resolve stitched and stitchable checkpoints.
Everything else (building, selection, training, evaluation) loads when first used.
"""

import importlib
import logging

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification

from .configuration_stitchable import StitchableConfig
from .configuration_stitched import StitchedConfig
from .errors import HfKlasError
from .modeling_stitchable import (
    StitchableModelForCausalLM,
    StitchableModelForImageClassification,
)
from .modeling_stitched import StitchedModelForCausalLM, StitchedModelForImageClassification
from .version import TRANSFORMERS_RANGE, __version__, transformers_is_tested

if not transformers_is_tested(transformers.__version__):
    logging.getLogger(__name__).warning(
        "hf_klas %s is tested with transformers %s; transformers %s is installed. Stitched models refuse interfaces "
        "they do not know, but check your results (bash scripts/test.sh latest runs the suite on it).",
        __version__, TRANSFORMERS_RANGE, transformers.__version__)

# Saving copies the defining files and writes `auto_map`, so trust_remote_code works without hf_klas.
for _config, _lm, _vision in ((StitchedConfig, StitchedModelForCausalLM, StitchedModelForImageClassification),
                              (StitchableConfig, StitchableModelForCausalLM, StitchableModelForImageClassification)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)
    AutoModelForImageClassification.register(_config, _vision, exist_ok=True)
    _config.register_for_auto_class()
    _lm.register_for_auto_class("AutoModelForCausalLM")
    _vision.register_for_auto_class("AutoModelForImageClassification")

#: Loaded on first use, so ``import hf_klas`` stays the cost of registering the classes above: building pulls
#: in anchor loading, calibration data (datasets) and the selection engine (accelerate).
_LAZY = {"StitchedModel": "building", "build_stitchable": "building"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "HfKlasError",
    "StitchableConfig",
    "StitchableModelForCausalLM",
    "StitchableModelForImageClassification",
    "StitchedConfig",
    "StitchedModel",
    "StitchedModelForCausalLM",
    "StitchedModelForImageClassification",
    "build_stitchable",
    "__version__",
]
