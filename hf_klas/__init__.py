"""hf_klas: model stitching for Hugging Face transformers, with KLAS stitch selection.

``import hf_klas`` registers the stitched classes with the Auto classes, so ``AutoConfig`` /
``AutoModelForCausalLM`` / ``AutoModelForImageClassification`` resolve stitched checkpoints.
"""

import logging

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification

from .configuration_stitched import StitchedConfig
from .errors import HfKlasError
from .modeling_stitched import StitchedModelForCausalLM, StitchedModelForImageClassification
from .version import TRANSFORMERS_RANGE, __version__, transformers_is_tested

if not transformers_is_tested(transformers.__version__):
    logging.getLogger(__name__).warning(
        "hf_klas %s is tested with transformers %s; transformers %s is installed. Stitched models refuse interfaces "
        "they do not know, but check your results (bash scripts/test.sh latest runs the suite on it).",
        __version__, TRANSFORMERS_RANGE, transformers.__version__)

AutoConfig.register(StitchedConfig.model_type, StitchedConfig, exist_ok=True)
AutoModelForCausalLM.register(StitchedConfig, StitchedModelForCausalLM, exist_ok=True)
AutoModelForImageClassification.register(StitchedConfig, StitchedModelForImageClassification, exist_ok=True)
# Saving copies the defining files and writes `auto_map`, so trust_remote_code works without hf_klas.
StitchedConfig.register_for_auto_class()
StitchedModelForCausalLM.register_for_auto_class("AutoModelForCausalLM")
StitchedModelForImageClassification.register_for_auto_class("AutoModelForImageClassification")

from .building import StitchedModel  # noqa: E402

__all__ = [
    "HfKlasError",
    "StitchedConfig",
    "StitchedModel",
    "StitchedModelForCausalLM",
    "StitchedModelForImageClassification",
    "__version__",
]
