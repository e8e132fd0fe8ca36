"""Build stitchable models from anchors: ``StitchableModelFor....from_anchors`` (:func:`build_stitchable`).

The anchors' tensors are read once, lazily, into the model's parts (blocks keep their index: no renumbering), and
every stitch is fitted by streamed least squares (SN-Net's initialisation) in one pass over the calibration data
(:func:`fit_stitches`).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.initialization import no_init_weights

from ..activations import run_prefix
from ..anatomy import ties_embeddings
from ..calibration import calibration_batches
from ..configuration_stitchable import StitchableConfig, config_key, equal_width_buckets
from ..errors import HfKlasError, IncompatibleAnchorsError
from ..families import CAUSAL_LM, IMAGE_CLASSIFICATION, family_of
from ..flops import DEFAULT_SEQ_LEN
from ..loading import Anchor, resolve_anchor, same_anchor
from ..modeling_stitchable import StitchableModelForCausalLM, StitchableModelForImageClassification
from ..selection.api import check_plan_matches
from ..selection.plan import StitchPlan
from ..stitch_init import LeastSquaresAccumulator
from .stitched import build_back_prefix, copy_generation_config

STITCH_INITS = ("least_squares", "identity")
STITCHABLE_CLASSES = {CAUSAL_LM: StitchableModelForCausalLM,
                      IMAGE_CLASSIFICATION: StitchableModelForImageClassification}


def _copy_tensors(anchor: Anchor, targets: dict, fallbacks: dict | None = None) -> None:
    """Read each ``{anchor tensor name: destination}`` straight into the destination (lazily, one at a time)."""
    reader = anchor.state_dict_source()
    for name, target in targets.items():
        stored = name if name in reader else (fallbacks or {}).get(name)
        if stored is None or stored not in reader:
            raise HfKlasError(f"Tensor {name!r} was not found in anchor {anchor.name_or_path}.",
                              "Check that the anchor is a complete checkpoint of a supported family.")
        tensor = reader.get(stored, out=target)
        if tensor is not target:
            if tensor.shape != target.shape:
                raise IncompatibleAnchorsError(f"Tensor {stored} of {anchor.name_or_path} has shape "
                                               f"{tuple(tensor.shape)}, the model expects {tuple(target.shape)}.",
                                               "The anchor config and weights disagree; re-save the anchor.")
            target.copy_(tensor.to(target.dtype))
    reader.close()


@torch.no_grad()
def load_anchor_parts(model, front: Anchor, back: Anchor) -> None:
    """Every anchor tensor of a stitchable model. Its parts are whole anchors (blocks keep their own index), so part
    tensor ``front.<name>`` is the front anchor's ``<base>.<name>``; the head / classifier is the back anchor's (a
    missing ``lm_head`` is the tied input embedding). The stitches are the model's own."""
    cfg = model.config
    parts = [(front, model.front)] + ([] if cfg.self_stitch else [(back, model.back)])
    for anchor, part in parts:
        base = family_of(anchor.config).base
        _copy_tensors(anchor, {f"{base}.{key}": t for key, t in part.state_dict().items()})
    fam = family_of(back.config)
    own = {k: t for k, t in model.state_dict().items()
           if k.startswith("classifier.") or (k == "lm_head.weight" and not cfg.tie_word_embeddings)}
    _copy_tensors(back, own, {"lm_head.weight": f"{fam.base}.{fam.embed}.weight"})


@torch.no_grad()
def init_stitches_identity(model) -> None:
    """Identity on the shared dimensions, zero bias (a stitched model's own default)."""
    for lin in model.stitches.values():
        nn.init.eye_(lin.weight)
        if lin.bias is not None:
            lin.bias.zero_()


@torch.no_grad()
def fit_stitches(model, batches: list[dict], front, back, ridge: float = 1e-4, progress: bool = True) -> dict:
    """Least-squares fit of every stitch (SN-Net's init), one pass over ``batches`` for all of them.

    Per batch the front anchor runs once up to the deepest ``i`` and the back anchor once up to the deepest ``j``;
    ``X^T X`` is accumulated once per distinct ``i`` and ``X^T Y`` per configuration."""
    front, back = resolve_anchor(front), resolve_anchor(back)
    configs = model.config.stitches
    max_i, max_j = max(i for i, _ in configs), max(j for _, j in configs)
    front_prefix, back_prefix = build_back_prefix(front, max_i), build_back_prefix(back, max_j)
    d_in, d_out = model.config.front_config.hidden_size, model.config.back_config.hidden_size
    accs = {c: LeastSquaresAccumulator(d_in, d_out, ridge=ridge) for c in configs}
    for batch in tqdm(batches, desc="fit supernet stitches (least squares)", disable=not progress):
        xs = run_prefix(front_prefix, batch, upto=max_i)
        ys = run_prefix(back_prefix, batch, upto=max_j)
        mask = batch.get("attention_mask")
        for (i, j), acc in accs.items():
            acc.update(xs[i], ys[j], mask)
    for (i, j), acc in accs.items():
        weight, bias = acc.solve()
        lin = model.stitches[config_key(i, j)]
        lin.weight.copy_(weight.to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_(bias.to(lin.bias.dtype))
    return {"tokens": next(iter(accs.values())).count, "ridge": ridge, "configs": len(accs)}


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
    if stitch_init not in STITCH_INITS:
        raise HfKlasError(f"Unknown stitch_init {stitch_init!r}.", f"Use one of {', '.join(STITCH_INITS)}.")
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
    model._hf_klas_preprocessor = back_anchor.load_preprocessor() or front_anchor.load_preprocessor()
    copy_generation_config(model, back_anchor)
    model.config.name_or_path = f"stitchable({front_anchor.name_or_path} -> {back_anchor.name_or_path})"
    if stitch_init == "least_squares":
        preprocessor = front_anchor.load_preprocessor() or back_anchor.load_preprocessor()
        batches = calibration_batches(calibration, front_anchor.config, preprocessor,
                                      max_samples=max_calibration_samples, max_length=max_length)
        recipe["stitch_fit"] = fit_stitches(model, batches, front_anchor, back_anchor, ridge=ridge, progress=progress)
        recipe["calibration"] = "default (hf_klas.calibration)" if calibration is None else "user"
    if stitch is not None and budget_flops is not None:
        raise HfKlasError("Both stitch= and budget_flops= were given.", "Pass one of them (or neither: the dearest).")
    if stitch is not None:
        model.set_stitch(stitch)
    elif budget_flops is not None:
        model.set_budget(budget_flops)
    return model.eval()
