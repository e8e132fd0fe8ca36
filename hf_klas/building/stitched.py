"""Build stitched models from anchors: ``StitchedModel.from_anchors(front, back, ...)``.

The planner maps every tensor of the stitched model to one tensor of one anchor (front blocks keep their
index, back blocks are renumbered from ``back_start``), then reads only those tensors. The stitch layer is
fitted by streamed least squares on calibration activations (front block-``i`` output -> what back block
``j`` receives) -- computed here, outside ``__init__``, and copied in like any other weight.
"""

from __future__ import annotations

import torch
from transformers.initialization import no_init_weights

from ..activations import output_of, run_prefix
from ..anatomy import ties_embeddings
from ..configuration_stitched import StitchedConfig
from ..errors import HfKlasError, IncompatibleAnchorsError
from ..families import CAUSAL_LM, IMAGE_CLASSIFICATION
from ..flops import DEFAULT_SEQ_LEN, stitch_flops, stitch_params
from ..loading import Anchor, resolve_anchor, same_anchor
from ..modeling_stitched import StitchedModelForCausalLM, StitchedModelForImageClassification
from ..selection.api import select_for_budget
from .fit import calibration_for, check_stitch_init, fit_least_squares, init_identity
from .weights import anchor_prefix, copy_generation_config, load_anchor_weights

TASK_CLASSES = {CAUSAL_LM: StitchedModelForCausalLM, IMAGE_CLASSIFICATION: StitchedModelForImageClassification}


def fit_stitch(model, back: Anchor, batches: list[dict], ridge: float = 1e-4, progress: bool = True) -> dict:
    """Least-squares fit of ``model.stitch`` on calibration batches (the front part's last block output -> the back
    anchor's block-``back_start`` input); returns fit statistics."""
    i, j = model.config.front_blocks, model.config.back_start
    prefix = anchor_prefix(back, j)
    was_training = model.training
    model.eval()
    stats, errors = fit_least_squares({(i, j): model.stitch}, batches,
                                      lambda batch: {i: output_of(model, model.front_blocks[-1], batch)},
                                      lambda batch: run_prefix(prefix, batch, upto=j), ridge=ridge, progress=progress,
                                      desc="fit stitch (least squares)", held_out=True)
    model.train(was_training)
    if errors:
        stats["relative_error_last_batch"] = errors[(i, j)]
    return stats


class StitchedModel:
    """Entry point: build a stitched model from two anchors (the task class is picked from the anchors)."""

    @classmethod
    def from_anchors(
        cls,
        front,
        back=None,
        front_blocks: int | None = None,
        back_start: int | None = None,
        *,
        budget_flops: float | None = None,
        calibration=None,
        method: str | None = None,
        plan=None,
        stitch_init: str = "least_squares",
        ridge: float = 1e-4,
        max_calibration_samples: int = 64,
        max_length: int = 128,
        dtype: torch.dtype = torch.float32,
        revision: str | None = None,
        progress: bool = True,
        **selector_kwargs,
    ):
        """Build ``g_{>j} . T . f_{<=i}``.

        Args:
            front, back: alias (``"llama-1b"``), Hub id, local directory, ``.gguf`` file or a loaded model.
                ``back=None`` stitches ``front`` to itself (depth pruning: ``back_start > front_blocks`` skips
                blocks).
            front_blocks, back_start: an explicit stitch point. Leave both out and give ``budget_flops`` to let
                the selector (``method``) choose the best configuration whose FLOPs fit the budget.
            method: the selector's name; None (default) takes the task's default
                (``hf_klas.selection.selectors.TASK_DEFAULTS``: ``"theta"`` for a causal LM stitched to itself,
                ``"snnet"`` for an image classifier stitched to another, ``"klas"`` otherwise). ``"klas"`` is the
                paper's Γ exactly.
            budget_flops: FLOPs per sequence/image, or a fraction in (0, 1] of the back anchor's cost.
            calibration: strings, a ``datasets.Dataset``, or tensors (see ``hf_klas.calibration``); None uses
                the documented offline default.
            stitch_init: ``"least_squares"`` (SN-Net's fit, streamed) or ``"identity"``.
        """
        check_stitch_init(stitch_init)
        front_anchor = resolve_anchor(front, revision=revision)
        back_anchor = front_anchor if back is None else resolve_anchor(back, revision=revision)
        recipe = {"stitch_init": stitch_init, "ridge": ridge}
        explicit = front_blocks is not None or back_start is not None
        if explicit and (budget_flops is not None or plan is not None):
            raise HfKlasError(
                f"Both an explicit stitch point (front_blocks={front_blocks}, back_start={back_start}) and "
                f"{'budget_flops' if budget_flops is not None else 'plan'} were given; it is unclear which decides.",
                "Pass front_blocks and back_start to build that stitch, or budget_flops (with an optional plan) to "
                "let the selector choose -- not both.")
        if explicit and (front_blocks is None or back_start is None):
            raise HfKlasError(f"Only one of front_blocks / back_start was given ({front_blocks}, {back_start}).",
                              "Pass both front_blocks=i and back_start=j, or neither (with budget_flops=...).")
        if not explicit:
            if budget_flops is None and plan is None:
                raise HfKlasError(
                    "Neither a stitch point (front_blocks, back_start) nor a budget was given.",
                    "Pass front_blocks=i and back_start=j, or budget_flops=<FLOPs or fraction of the back anchor>.",
                )
            chosen, plan = select_for_budget(front_anchor, back_anchor, budget_flops=budget_flops,
                                             calibration=calibration, method=method, plan=plan,
                                             progress=progress, **selector_kwargs)
            front_blocks, back_start = chosen.front_blocks, chosen.back_start
            recipe.update({"selection_method": plan.method, "budget_flops": budget_flops,
                           "selection_score": chosen.score})
        model = build_stitched(front_anchor, back_anchor, front_blocks, back_start, dtype=dtype)
        model.config.recipe = recipe
        if stitch_init == "least_squares":
            batches, source = calibration_for(front_anchor, back_anchor, calibration, max_calibration_samples,
                                              max_length)
            model.config.recipe["stitch_fit"] = fit_stitch(model, back_anchor, batches, ridge=ridge,
                                                           progress=progress)
            model.config.recipe["calibration"] = source
        if plan is not None:
            model.stitch_plan = plan
        return model

    @classmethod
    def for_causal_lm(cls, front, back=None, front_blocks=None, back_start=None, **kwargs) -> StitchedModelForCausalLM:
        model = cls.from_anchors(front, back, front_blocks, back_start, **kwargs)
        if not isinstance(model, StitchedModelForCausalLM):
            raise IncompatibleAnchorsError("These anchors are not causal language models.",
                                           "Use StitchedModel.for_image_classification or from_anchors.")
        return model

    @classmethod
    def for_image_classification(cls, front, back=None, front_blocks=None, back_start=None, **kwargs):
        model = cls.from_anchors(front, back, front_blocks, back_start, **kwargs)
        if not isinstance(model, StitchedModelForImageClassification):
            raise IncompatibleAnchorsError("These anchors are not image classifiers.",
                                           "Use StitchedModel.for_causal_lm or from_anchors.")
        return model


def build_stitched(front: Anchor, back: Anchor, front_blocks: int, back_start: int,
                   dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """Allocate the stitched model once (no random init) and fill it from the anchors' tensors."""
    tie = same_anchor(front, back) and ties_embeddings(front.config)
    config = StitchedConfig(front_config=front.config, back_config=back.config, front_blocks=front_blocks,
                            back_start=back_start, anchors={"front": front.provenance, "back": back.provenance},
                            dtype=dtype, tie_word_embeddings=tie)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model_cls = TASK_CLASSES[config.task]
    with no_init_weights():
        model = model_cls(config)
    model.to(dtype)
    load_anchor_weights(model, config, front, back)
    init_identity([model.stitch])
    model.config.stitch_info = stitch_info(config)
    copy_generation_config(model, back)
    model.preprocessor = back.load_preprocessor() or front.load_preprocessor()
    model.config.name_or_path = f"stitched({front.name_or_path}[:{front_blocks}] -> {back.name_or_path}[{back_start}:])"
    model.eval()
    return model


def stitch_info(config: StitchedConfig, seq_len: int = DEFAULT_SEQ_LEN) -> dict:
    """FLOPs and params of this configuration (recorded in the config and the model card)."""
    f, b, i, j = config.front_config, config.back_config, config.front_blocks, config.back_start
    is_lm = config.task == CAUSAL_LM
    flops = stitch_flops(f, b, i, j, seq_len=seq_len if is_lm else None)
    params = stitch_params(f, b, i, j, tied_head=bool(config.tie_word_embeddings))
    return {"flops": int(flops.total), "params": int(params.total),
            "flops_unit": f"per sequence of {seq_len} tokens" if is_lm else "per image"}
