"""Build stitchable models from anchors: ``StitchableModelFor....from_anchors`` (:func:`build_stitchable`).

The anchors' tensors are read once, lazily, into the model's parts (blocks keep their index: no renumbering), and
every stitch is fitted by streamed least squares (SN-Net's initialisation) in one pass over the calibration data
(:func:`fit_stitches`).
"""

from __future__ import annotations

import torch
from transformers.initialization import no_init_weights

from ..activations import run_prefix
from ..anatomy import ties_embeddings
from ..configuration_stitchable import StitchableConfig, config_key, equal_width_buckets
from ..errors import HfKlasError
from ..families import CAUSAL_LM, IMAGE_CLASSIFICATION
from ..flops import DEFAULT_SEQ_LEN
from ..loading import Anchor, resolve_anchor, same_anchor
from ..modeling_stitchable import StitchableModelForCausalLM, StitchableModelForImageClassification
from ..selection.api import check_plan_matches
from ..selection.plan import StitchPlan
from .fit import STITCH_INITS, calibration_for, check_stitch_init, fit_least_squares, init_identity
from .weights import anchor_prefix, copy_generation_config, load_anchor_parts

__all__ = ["STITCH_INITS", "STITCHABLE_CLASSES", "build_stitchable", "fit_stitches", "init_stitches_identity",
           "load_anchor_parts"]

STITCHABLE_CLASSES = {CAUSAL_LM: StitchableModelForCausalLM,
                      IMAGE_CLASSIFICATION: StitchableModelForImageClassification}


def init_stitches_identity(model) -> None:
    """Identity on the shared dimensions, zero bias (a stitched model's own default)."""
    init_identity(model.stitches.values())


def fit_stitches(model, batches: list[dict], front, back, ridge: float = 1e-4, progress: bool = True) -> dict:
    """Least-squares fit of every stitch (SN-Net's init), one pass over ``batches`` for all of them.

    Per batch the front anchor runs once up to the deepest ``i`` and the back anchor once up to the deepest ``j``;
    ``X^T X`` is accumulated once per distinct ``i`` and ``X^T Y`` per configuration."""
    front, back = resolve_anchor(front), resolve_anchor(back)
    configs = model.config.stitches
    max_i, max_j = max(i for i, _ in configs), max(j for _, j in configs)
    front_prefix, back_prefix = anchor_prefix(front, max_i), anchor_prefix(back, max_j)
    stitches = {(i, j): model.stitches[config_key(i, j)] for i, j in configs}
    stats, _ = fit_least_squares(stitches, batches, lambda batch: run_prefix(front_prefix, batch, upto=max_i),
                                 lambda batch: run_prefix(back_prefix, batch, upto=max_j), ridge=ridge,
                                 progress=progress, desc="fit supernet stitches (least squares)")
    return {**stats, "configs": len(stitches)}


def _plan_configs(plan, front: Anchor, back: Anchor):
    plan = plan if isinstance(plan, StitchPlan) else StitchPlan.load(plan)
    check_plan_matches(plan, front, back)  # a plan of another anchor pair is refused
    if not plan.candidates:
        raise HfKlasError("The plan has no candidates.", "Re-run the selection (hf-klas select).")
    return plan


def build_stitchable(front, back=None, configs=None, *, plan=None, calibration=None,
                     stitch_init: str = "least_squares", stitch=None, budget_flops=None,
                     sampling: str | None = "uniform",
                     seed: int = 0, num_buckets: int | None = None, seq_len: int | None = None, ridge: float = 1e-4,
                     max_calibration_samples: int = 64, max_length: int = 128, dtype: torch.dtype = torch.float32,
                     tie_word_embeddings: bool | None = None, revision: str | None = None, progress: bool = True):
    """A stitchable model of ``front -> back`` (``back=None``: self-stitching, the anchor's blocks held once).

    Args:
        front, back: alias, Hub id, directory, ``.gguf`` or a loaded model (as ``StitchedModel.from_anchors``).
        configs: ``[(front_blocks, back_start), ...]`` or plan candidates; or ``plan`` (a StitchPlan or plan
            directory of these anchors: its candidates with their scores and FLOPs buckets).
        calibration, stitch_init, ridge, max_calibration_samples, max_length: the least-squares fit of every stitch
            (``calibration=None``: the offline default data); ``stitch_init="identity"`` skips it.
        stitch / budget_flops: the active configuration (default: the one with the most FLOPs).
        sampling, seed, num_buckets: supernet training's sampler (``"uniform"``, ``"flops"``, None).
        seq_len: tokens per sequence at which LLM FLOPs are counted (default: the plan's, else 128).
        tie_word_embeddings: keep head and input embedding one matrix; default: for a self-stitch of a tied anchor.
    """
    check_stitch_init(stitch_init)
    front_anchor = resolve_anchor(front, revision=revision)
    back_anchor = front_anchor if back is None else resolve_anchor(back, revision=revision)
    same = same_anchor(front_anchor, back_anchor)
    back_anchor = front_anchor if same else back_anchor
    recipe = {"stitch_init": stitch_init, "ridge": ridge}
    if configs is None:
        if plan is None:
            raise HfKlasError("Neither configs nor a plan was given.",
                              "Pass configs=[(front_blocks, back_start), ...] or plan=<StitchPlan or plan dir>.")
        plan = _plan_configs(plan, front_anchor, back_anchor)
        configs, seq_len = plan.candidates, seq_len or plan.seq_len
        recipe["selection_method"] = plan.method
    tie = same and ties_embeddings(front_anchor.config) if tie_word_embeddings is None else bool(tie_word_embeddings)
    config = StitchableConfig(front_config=front_anchor.config, back_config=back_anchor.config,
                              stitch_configs=list(configs), self_stitch=same, sampling=sampling, sampling_seed=seed,
                              flops_seq_len=seq_len or DEFAULT_SEQ_LEN, tie_word_embeddings=tie, dtype=dtype,
                              anchors={"front": front_anchor.provenance, "back": back_anchor.provenance}, recipe=recipe)
    if num_buckets is not None and not all(getattr(c, "bucket", -1) >= 0 for c in configs):
        for entry, bucket in zip(config.stitch_configs, equal_width_buckets(
                [e["flops"] for e in config.stitch_configs], num_buckets)):
            entry["bucket"] = bucket
    with no_init_weights():
        model = STITCHABLE_CLASSES[config.task](config)
    model.to(dtype)
    load_anchor_parts(model, front_anchor, back_anchor)
    init_stitches_identity(model)
    model.preprocessor = back_anchor.load_preprocessor() or front_anchor.load_preprocessor()
    copy_generation_config(model, back_anchor)
    model.config.name_or_path = f"stitchable({front_anchor.name_or_path} -> {back_anchor.name_or_path})"
    if stitch_init == "least_squares":
        batches, source = calibration_for(front_anchor, back_anchor, calibration, max_calibration_samples, max_length)
        recipe["stitch_fit"] = fit_stitches(model, batches, front_anchor, back_anchor, ridge=ridge, progress=progress)
        recipe["calibration"] = source
    if stitch is not None and budget_flops is not None:
        raise HfKlasError("Both stitch= and budget_flops= were given.", "Pass one of them (or neither: the dearest).")
    if stitch is not None:
        model.set_stitch(stitch)
    elif budget_flops is not None:
        model.set_budget(budget_flops)
    return model.eval()
