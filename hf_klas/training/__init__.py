"""Training stitched models: finetune modes (stitch / LoRA / full), distillation, SN-Net supernets, resume.

* :func:`build_trainer` / :class:`StitchTrainer` -- the ordinary Trainer with anchor-vs-stitch learning rates,
  stitch-aware checkpoints and resume checks; :class:`StitchDistillationTrainer` adds KL to the back anchor.
* :func:`default_lora_config`, :func:`apply_lora`, :func:`merge_lora` -- PEFT LoRA with per-family targets.
* :class:`StitchedSupernet`, :func:`train_supernet` -- all candidate stitches trained jointly, then extracted.
* :class:`FinetuneOptions` / :func:`run_finetune` -- ``hf-klas finetune`` (one options dataclass, API and CLI).
"""

from .api import FinetuneOptions, run_finetune, save_finetuned
from .data import CausalLMCollator, ImageCollator, prepare_causal_lm_dataset, prepare_image_dataset
from .distill import StitchDistillationTrainer, distillation_loss
from .finetune import build_trainer, train_supernet
from .lora import LoraTargetError, apply_lora, default_lora_config, default_target_modules, merge_lora
from .resume import TRAINING_INFO_FILE, StitchCheckpointCallback, check_checkpoint_matches, resolve_checkpoint
from .supernet import StitchedSupernet
from .trainer import MODES, StitchTrainer, is_stitch_parameter, parameter_groups, prepare_model

__all__ = [
    "MODES",
    "TRAINING_INFO_FILE",
    "CausalLMCollator",
    "FinetuneOptions",
    "ImageCollator",
    "LoraTargetError",
    "StitchCheckpointCallback",
    "StitchDistillationTrainer",
    "StitchTrainer",
    "StitchedSupernet",
    "apply_lora",
    "build_trainer",
    "check_checkpoint_matches",
    "default_lora_config",
    "default_target_modules",
    "distillation_loss",
    "is_stitch_parameter",
    "merge_lora",
    "parameter_groups",
    "prepare_causal_lm_dataset",
    "prepare_image_dataset",
    "prepare_model",
    "resolve_checkpoint",
    "run_finetune",
    "save_finetuned",
    "train_supernet",
]

