"""Resuming stitched training runs: refuse a checkpoint of a different stitch before the Trainer loads it.

The Trainer resumes from ``checkpoint-<step>/`` (weights, optimizer, scheduler, RNG states, data position), so a
run killed mid-way continues as if it had never stopped. What the Trainer does *not* check is that the
checkpoint belongs to the same model: a stitched checkpoint of another configuration has different block
counts, and loading it fails late with a shape error -- or, for a stitch of equal widths, silently loads the
wrong blocks. Every checkpoint written through :class:`StitchCheckpointCallback` carries
``hf_klas_training.json`` (the stitch configuration, or the supernet's configuration list), and
:func:`check_checkpoint_matches` compares it -- or the checkpoint's ``config.json`` when that file is absent --
with the model about to be trained, raising :class:`~hf_klas.errors.CheckpointError` with cause and fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import CheckpointError
from .supernet import StitchedSupernet
from .unwrap import is_peft, unwrap_ddp, unwrap_model

logger = logging.getLogger(__name__)
TRAINER_STATE_NAME = "trainer_state.json"

__all__ = ["TRAINING_INFO_FILE", "StitchCheckpointCallback", "describe_for_checkpoint", "check_checkpoint_matches",
           "resolve_checkpoint"]

#: Written into every checkpoint directory (and the final output directory) by the hf_klas trainers.
TRAINING_INFO_FILE = "hf_klas_training.json"


def _part_summary(cfg) -> dict:
    return {"model_type": getattr(cfg, "model_type", None), "hidden_size": getattr(cfg, "hidden_size", None),
            "num_hidden_layers": getattr(cfg, "num_hidden_layers", None)}


def describe_for_checkpoint(model) -> dict:
    """What a checkpoint of ``model`` must match: stitch point and anchor shapes (or a supernet's configs)."""
    base = unwrap_model(model)
    if isinstance(base, StitchedSupernet):
        return {"kind": "supernet", "configs": [list(c) for c in base.configs],
                "front": _part_summary(base.front_config), "back": _part_summary(base.back_config)}
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "front_blocks", None) is None:
        return {"kind": "other", "model_type": getattr(cfg, "model_type", None)}
    return {"kind": "stitched", "front_blocks": cfg.front_blocks, "back_start": cfg.back_start,
            "front": _part_summary(cfg.front_config), "back": _part_summary(cfg.back_config),
            "peft": is_peft(unwrap_ddp(model))}


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or cut short (a process killed while writing)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_checkpoint_info(checkpoint: Path) -> dict | None:
    info = _read_json(checkpoint / TRAINING_INFO_FILE)
    if info is not None:
        return info
    if (checkpoint / TRAINING_INFO_FILE).exists():
        logger.warning("%s in %s is unreadable (the run was probably killed while writing it); checking the "
                       "checkpoint's config.json instead.", TRAINING_INFO_FILE, checkpoint)
    cfg = _read_json(checkpoint / "config.json")
    if cfg is not None:
        if cfg.get("front_blocks") is not None:
            return {"kind": "stitched", "front_blocks": cfg["front_blocks"], "back_start": cfg["back_start"],
                    "front": _part_summary_dict(cfg.get("front_config") or {}),
                    "back": _part_summary_dict(cfg.get("back_config") or {})}
        return {"kind": "other", "model_type": cfg.get("model_type")}
    return None


def _part_summary_dict(d: dict) -> dict:
    return {"model_type": d.get("model_type"), "hidden_size": d.get("hidden_size"),
            "num_hidden_layers": d.get("num_hidden_layers")}


def _fmt(info: dict) -> str:
    if info.get("kind") == "stitched":
        lora = "LoRA-adapted " if info.get("peft") else ""
        return lora + (f"stitch front_blocks={info['front_blocks']}, back_start={info['back_start']} of "
                f"{info['front'].get('model_type')}(hidden {info['front'].get('hidden_size')}, "
                f"{info['front'].get('num_hidden_layers')} blocks) -> {info['back'].get('model_type')}(hidden "
                f"{info['back'].get('hidden_size')}, {info['back'].get('num_hidden_layers')} blocks)")
    if info.get("kind") == "supernet":
        return f"supernet over configurations {[tuple(c) for c in info['configs']]}"
    return f"a {info.get('model_type')!r} model (not a stitched model)"


def check_checkpoint_matches(checkpoint_dir, model) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint_dir`` was written for the same stitch as ``model``.

    Compared: kind (stitched / supernet), ``front_blocks``/``back_start`` (or the supernet's configuration list)
    and both anchors' model type, width and depth. A checkpoint with neither ``hf_klas_training.json`` nor
    ``config.json`` (written by some other tool) is accepted as is.
    """
    checkpoint = Path(checkpoint_dir)
    if not checkpoint.is_dir():
        raise CheckpointError(f"The checkpoint {checkpoint} does not exist or is not a directory.",
                              "Pass a checkpoint-<step> directory of this run's output_dir, or "
                              "resume_from_checkpoint=True for the latest one.")
    saved = _read_checkpoint_info(checkpoint)
    if saved is None:
        return
    mine = describe_for_checkpoint(model)
    if mine.get("kind") == "other":
        return
    keys = ("kind", "front_blocks", "back_start", "configs", "front", "back", "peft")
    differs = [k for k in keys if k in mine and k in saved and _norm(mine[k]) != _norm(saved[k])]
    if saved.get("kind") != mine.get("kind") and "kind" not in differs:
        differs.insert(0, "kind")
    if differs:
        raise CheckpointError(
            f"The checkpoint {checkpoint} was written for {_fmt(saved)}, but the model being trained is "
            f"{_fmt(mine)} (differs in: {', '.join(differs)}). Loading it would put blocks of one configuration "
            "into another.",
            "Resume with the model the checkpoint was trained from (build it with the same front_blocks/back_start "
            "and anchors), or start this configuration in a fresh output_dir (or pass "
            "resume_from_checkpoint=None).",
        )


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _complete_checkpoints(output_dir) -> list[Path]:
    """``checkpoint-<step>`` directories, newest first, that were fully written (the Trainer writes
    ``trainer_state.json`` last, so a process killed while saving leaves a directory without it, or with that
    file cut short)."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        m = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
        if m and path.is_dir():
            found.append((int(m.group(1)), path))
    found.sort(reverse=True)
    complete = []
    for step, path in found:
        if _read_json(path / TRAINER_STATE_NAME) is not None:
            complete.append(path)
        else:
            logger.warning("Skipping %s: it was not completely written (no readable %s; the run was probably "
                           "killed while saving).", path, TRAINER_STATE_NAME)
    return complete


def resolve_checkpoint(resume_from_checkpoint, output_dir) -> str | None:
    """``True`` / ``"last"`` -> the newest *complete* ``checkpoint-*`` in ``output_dir`` (a checkpoint cut short
    by a kill is skipped, unlike ``transformers.trainer_utils.get_last_checkpoint``); a path is checked to exist."""
    if resume_from_checkpoint in (None, False, "", "none", "None", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "last", "latest", "true", "True"):
        complete = _complete_checkpoints(output_dir) if output_dir and os.path.isdir(output_dir) else []
        if not complete:
            raise CheckpointError(f"No complete {PREFIX_CHECKPOINT_DIR}-<step> directory was found in {output_dir}.",
                                  "Train with save_strategy='steps' (save_steps=...) first, point "
                                  "resume_from_checkpoint at a checkpoint directory, or start without resuming.")
        return str(complete[0])
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"The checkpoint {path} does not exist.",
                              "Pass an existing checkpoint-<step> directory, or resume_from_checkpoint=True for "
                              "the latest checkpoint in output_dir.")
    if _read_json(path / TRAINER_STATE_NAME) is None:
        raise CheckpointError(f"The checkpoint {path} is incomplete (no readable {TRAINER_STATE_NAME}): the run was "
                              "probably killed while saving it.",
                              "Resume from the previous checkpoint, or pass resume_from_checkpoint=True to pick "
                              "the newest complete one.")
    return str(path)


class StitchCheckpointCallback(TrainerCallback):
    """Writes :data:`TRAINING_INFO_FILE` into every checkpoint the Trainer saves (main process only)."""

    def __init__(self, info: dict):
        self.info = info

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if ckpt.is_dir():  # write-then-rename: a kill mid-write never leaves a cut-short file behind
                tmp = ckpt / (TRAINING_INFO_FILE + ".tmp")
                tmp.write_text(json.dumps(self.info, indent=1) + "\n")
                os.replace(tmp, ckpt / TRAINING_INFO_FILE)
        return control
