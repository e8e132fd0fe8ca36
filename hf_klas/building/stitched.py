"""Build stitched models from anchors: ``StitchedModel.from_anchors(front, back, ...)``.

The planner maps every tensor of the stitched model to one tensor of one anchor (front blocks keep their
index, back blocks are renumbered from ``back_start``), then reads only those tensors. The stitch layer is
fitted by streamed least squares on calibration activations (front block-``i`` output -> what back block
``j`` receives) -- computed here, outside ``__init__``, and copied in like any other weight.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig
from transformers.initialization import no_init_weights
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..activations import output_of, run_prefix
from ..anatomy import find_block_path, ties_embeddings
from ..calibration import calibration_batches
from ..configuration_stitched import StitchedConfig
from ..errors import HfKlasError, IncompatibleAnchorsError
from ..families import CAUSAL_LM, IMAGE_CLASSIFICATION, family_of
from ..flops import DEFAULT_SEQ_LEN, stitch_flops, stitch_params
from ..loading import Anchor, resolve_anchor, same_anchor
from ..modeling_stitched import StitchedModelForCausalLM, StitchedModelForImageClassification
from ..selection.api import select_for_budget
from ..selection.selectors import DEFAULT_METHOD
from ..stitch_init import LeastSquaresAccumulator

TASK_CLASSES = {CAUSAL_LM: StitchedModelForCausalLM, IMAGE_CLASSIFICATION: StitchedModelForImageClassification}


@dataclass
class WeightSource:
    anchor: str  # "front" | "back"
    name: str  # tensor name in the anchor's checkpoint / state dict
    fallback: str | None = None  # e.g. the tied input embedding for a missing lm_head


def plan_weight_sources(model: nn.Module, config: StitchedConfig) -> dict[str, WeightSource | None]:
    """For each stitched tensor, which anchor tensor it is (None: owned by the stitch, computed here)."""
    fam_f, fam_b = family_of(config.front_config), family_of(config.back_config)
    out: dict[str, WeightSource | None] = {}
    for role, part, fam, offset in (("front", model.front, fam_f, 0), ("back", model.back, fam_b, config.back_start)):
        block_path = find_block_path(part)
        pattern = re.compile(rf"^{re.escape(block_path)}\.(\d+)\.")
        for key in part.state_dict():
            renamed = pattern.sub(lambda m: f"{block_path}.{int(m.group(1)) + offset}.", key)
            out[f"{role}.{key}"] = WeightSource(role, f"{fam.base}.{renamed}")
    for key in model.state_dict():
        if key.startswith("stitch."):
            out[key] = None
        elif key == "lm_head.weight":
            # tied (self-stitch of a tied anchor): the same Parameter as the front embedding, already read
            out[key] = None if config.tie_word_embeddings else \
                WeightSource("back", "lm_head.weight", fallback=f"{fam_b.base}.{fam_b.embed}.weight")
        elif key.startswith("classifier."):
            out[key] = WeightSource("back", key)
    return out


@torch.no_grad()
def load_anchor_weights(model: nn.Module, config: StitchedConfig, front: Anchor, back: Anchor) -> dict:
    """Copy every anchor-owned tensor into ``model``, one tensor at a time; returns
    ``{"front": names_read, "back": names_read}``."""
    readers = {"front": front.state_dict_source(), "back": back.state_dict_source()}
    anchors = {"front": front, "back": back}
    state = model.state_dict()
    for key, src in plan_weight_sources(model, config).items():
        if src is None:
            continue
        reader = readers[src.anchor]
        name = src.name
        if name not in reader and src.fallback is not None and src.fallback in reader:
            name = src.fallback
        if name not in reader:
            raise HfKlasError(f"Tensor {name!r} was not found in anchor {anchors[src.anchor].name_or_path}.",
                              "Check that the anchor is a complete checkpoint of a supported family (a layout "
                              "this family's record in hf_klas/families.py does not map?).")
        target = state[key]
        tensor = reader.get(name, out=target)
        if tensor is target:
            continue
        if tensor.shape != target.shape:
            raise IncompatibleAnchorsError(
                f"Tensor {name} of the {src.anchor} anchor has shape {tuple(tensor.shape)}, expected "
                f"{tuple(target.shape)} for {key}.",
                "The anchor config and weights disagree; re-save the anchor or pass the right config.",
            )
        target.copy_(tensor.to(target.dtype))
    names = {k: list(getattr(r, "names_read", [])) for k, r in readers.items()}
    for r in readers.values():
        r.close()
    return names


def build_back_prefix(back: Anchor, upto: int) -> nn.Module:
    """The back anchor's embeddings + first ``upto`` blocks (what produces the input of block ``upto``)."""
    if back.model is not None:
        return back.model


    cfg = copy.deepcopy(back.config)
    keep = max(upto, 1)
    cfg.num_hidden_layers = keep
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[:keep]
    fam = family_of(cfg)
    with no_init_weights():
        prefix = MODEL_MAPPING[type(cfg)](cfg, **dict(fam.base_kwargs))
    reader = back.state_dict_source()
    state = prefix.state_dict()
    with torch.no_grad():
        for key, target in state.items():
            name = f"{fam.base}.{key}"
            if name not in reader:
                raise HfKlasError(f"Tensor {name!r} was not found in anchor {back.name_or_path}.",
                                  "Check that the anchor is a complete checkpoint of a supported family.")
            tensor = reader.get(name, out=target)
            if tensor is not target:
                target.copy_(tensor.to(target.dtype))
    reader.close()
    prefix.eval()
    return prefix


@torch.no_grad()
def fit_stitch(model, back: Anchor, batches: list[dict], ridge: float = 1e-4, progress: bool = True) -> dict:
    """Least-squares fit of ``model.stitch`` on calibration batches; returns fit statistics."""
    cfg = model.config
    j = cfg.back_start
    prefix = build_back_prefix(back, j)
    acc = LeastSquaresAccumulator(cfg.front_config.hidden_size, cfg.back_config.hidden_size, ridge=ridge)
    was_training = model.training
    model.eval()
    held_out = None
    for k, batch in enumerate(tqdm(batches, desc="fit stitch (least squares)", disable=not progress)):
        x = output_of(model, model.front_blocks[-1], batch)
        y = run_prefix(prefix, batch, upto=j)[j]
        mask = batch.get("attention_mask")
        if k == len(batches) - 1 and len(batches) > 1:
            held_out = (x, y, mask)
        acc.update(x, y, mask)
    weight, bias = acc.solve()
    model.stitch.weight.copy_(weight.to(model.stitch.weight.dtype))
    if model.stitch.bias is not None:
        model.stitch.bias.copy_(bias.to(model.stitch.bias.dtype))
    model.train(was_training)
    stats = {"tokens": acc.count, "ridge": ridge}
    if held_out is not None:
        x, y, mask = held_out
        if mask is not None:
            keep = mask.bool()
            x, y = x[keep], y[keep]
        stats["relative_error_last_batch"] = acc.relative_error(weight, bias, x, y)
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
        method: str = DEFAULT_METHOD,
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
            budget_flops: FLOPs per sequence/image, or a fraction in (0, 1] of the back anchor's cost.
            calibration: strings, a ``datasets.Dataset``, or tensors (see ``hf_klas.calibration``); None uses
                the documented offline default.
            stitch_init: ``"least_squares"`` (SN-Net's fit, streamed) or ``"identity"``.
        """
        if stitch_init not in ("least_squares", "identity"):
            raise HfKlasError(f"Unknown stitch_init {stitch_init!r}.", "Use 'least_squares' or 'identity'.")
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
            preprocessor = front_anchor.load_preprocessor() or back_anchor.load_preprocessor()
            batches = calibration_batches(calibration, front_anchor.config, preprocessor,
                                          max_samples=max_calibration_samples, max_length=max_length)
            model.config.recipe["stitch_fit"] = fit_stitch(model, back_anchor, batches, ridge=ridge,
                                                           progress=progress)
            model.config.recipe["calibration"] = "default (hf_klas.calibration)" if calibration is None else "user"
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
    _init_owned(model)
    model.config.stitch_info = stitch_info(config)
    copy_generation_config(model, back)
    model._hf_klas_preprocessor = back.load_preprocessor() or front.load_preprocessor()
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


@torch.no_grad()
def _init_owned(model):
    """Identity-like stitch init (before any least-squares fit)."""
    nn.init.eye_(model.stitch.weight)
    if model.stitch.bias is not None:
        model.stitch.bias.zero_()


def copy_generation_config(model, back: Anchor) -> None:
    """The back anchor's generation settings (EOS, sampling defaults) on the stitched model."""
    if not hasattr(model, "generation_config") or model.generation_config is None:
        return
    src = getattr(back.model, "generation_config", None)
    if src is None and back.directory is not None and (back.directory / "generation_config.json").is_file():
        src = GenerationConfig.from_pretrained(back.directory)
    if src is not None:
        model.generation_config = src
