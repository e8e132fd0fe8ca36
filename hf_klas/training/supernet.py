"""SN-Net supernets: a stitchable model built from two anchors, and :class:`StitchedSupernet`, its training view.

The supernet *is* a stitchable model (:mod:`hf_klas.modeling_stitchable`): the anchors' blocks held once, one stitch
``nn.Linear`` per candidate configuration, trained by the ordinary ``Trainer`` (each training forward draws one
configuration) and saved, loaded, switched, pushed and served as one transformers model.

* :func:`build_stitchable` -- ``StitchableModelFor....from_anchors``: the anchors' tensors read once, lazily, into
  the model's parts (blocks keep their index: no renumbering), every stitch fitted by streamed least squares
  (SN-Net's initialisation) in one pass over the calibration data (:func:`fit_stitches`).
* :class:`StitchedSupernet` -- the training view kept for its API: it runs the *dearest* configuration in eval mode
  (a stitchable model runs its active one), ``stitch_config=`` / :meth:`~StitchedSupernet.use_config` pin one, and
  :meth:`~StitchedSupernet.save_pretrained` writes ``supernet_config.json`` + ``model.safetensors``.
  :meth:`~StitchedSupernet.to_stitchable` hands over the model it trains.

Sampling (``sampling=``): ``"uniform"`` (SN-Net: every configuration equally likely) or ``"flops"`` (SN-Netv2: a
FLOPs bucket uniformly, then a configuration in it; buckets come from a plan's candidates or ``num_buckets``
equal-width FLOPs bins). The draw for forward ``k`` is a pure function of ``(seed, k)`` and ``k`` is the model's
saved ``sample_step`` buffer: every process of a distributed run trains the same configuration at a step, and a
resumed run continues the exact sequence. Train with :func:`hf_klas.training.train_supernet` (a
:class:`StitchTrainer`: the anchors at ``anchor_lr_scale`` x the stitch learning rate).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig
from transformers.initialization import no_init_weights

from ..activations import run_prefix
from ..anatomy import ties_embeddings
from ..building import build_back_prefix, copy_generation_config
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

__all__ = ["StitchedSupernet", "build_stitchable", "fit_stitches", "load_anchor_parts", "config_key",
           "SUPERNET_CONFIG_FILE", "SAMPLING", "STITCHABLE_CLASSES"]

SUPERNET_CONFIG_FILE = "supernet_config.json"
SAMPLING = ("uniform", "flops")
STITCH_INITS = ("least_squares", "identity")
STITCHABLE_CLASSES = {CAUSAL_LM: StitchableModelForCausalLM,
                      IMAGE_CLASSIFICATION: StitchableModelForImageClassification}


# ---- building from anchors -----------------------------------------------------------------------------------------
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


# ---- the training view ---------------------------------------------------------------------------------------------
def _allocate(front_config, back_config, configs, sampling, num_buckets, seed, seq_len, buckets, anchors, dtype,
              attn_implementation, initialise: bool, self_stitch: bool = False, tie: bool = False):
    """A stitchable model of two anchor configs with random (or uninitialised) weights."""
    configs = list(configs)
    config = StitchableConfig(front_config=front_config, back_config=back_config, stitch_configs=configs,
                              sampling=sampling, sampling_seed=seed, flops_seq_len=seq_len, anchors=anchors or {},
                              dtype=dtype, self_stitch=self_stitch, tie_word_embeddings=tie)
    given = buckets is None and all(getattr(c, "bucket", -1) >= 0 for c in configs)
    if buckets is not None or (num_buckets is not None and not given):
        values = list(buckets) if buckets is not None else equal_width_buckets(
            [e["flops"] for e in config.stitch_configs], num_buckets)
        for entry, bucket in zip(config.stitch_configs, values):
            entry["bucket"] = int(bucket)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with contextlib.nullcontext() if initialise else no_init_weights():
        model = STITCHABLE_CLASSES[config.task](config)
    return model.to(dtype)


class StitchedSupernet(nn.Module):
    """The training view of a stitchable model (see the module docstring).

    Build with :meth:`from_anchors` (the anchors' weights, least-squares stitches when ``calibration`` is given) or
    :meth:`from_pretrained` (a directory of :meth:`save_pretrained`, or a saved stitchable model); ``model=`` wraps
    an existing stitchable model. The constructor alone allocates random weights.

    Args:
        front_config, back_config: the anchors' configs.
        configs: ``[(front_blocks, back_start), ...]`` or plan ``Candidate`` s (their ``bucket`` is kept).
        sampling: ``"uniform"`` or ``"flops"``.
        num_buckets: FLOPs buckets for ``sampling="flops"`` when configs carry none (default: 10).
        seed: seed of the configuration sampler.
        seq_len: tokens per sequence at which LLM FLOPs are counted (for buckets and reports).
    """

    def __init__(self, front_config=None, back_config=None, configs=None, sampling: str = "uniform",
                 num_buckets: int | None = None, seed: int = 0, seq_len: int = DEFAULT_SEQ_LEN,
                 buckets: list[int] | None = None, anchors: dict | None = None, dtype: torch.dtype = torch.float32,
                 attn_implementation: str | None = None, _init: bool = True, *, model=None):
        super().__init__()
        if sampling not in SAMPLING:
            raise HfKlasError(f"Unknown supernet sampling {sampling!r}.", f"Use one of {SAMPLING}.")
        if model is None:
            if not configs:
                raise HfKlasError("A supernet needs at least one stitch configuration.",
                                  "Pass configs=[(front_blocks, back_start), ...] or a plan with candidates.")
            model = _allocate(front_config, back_config, configs, sampling, num_buckets, seed, seq_len, buckets,
                              anchors, dtype, attn_implementation, _init)
        self.model = model
        self.task = model.config.task
        self.accepts_loss_kwargs = self.task == CAUSAL_LM  # vision losses are per-batch means
        self.main_input_name = "input_ids" if self.task == CAUSAL_LM else "pixel_values"
        self._pinned: tuple[int, int] | None = None

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_anchors(cls, front, back=None, configs=None, *, plan=None, calibration=None, sampling: str = "uniform",
                     num_buckets: int | None = None, seed: int = 0, seq_len: int | None = None, ridge: float = 1e-4,
                     max_calibration_samples: int = 64, max_length: int = 128, dtype: torch.dtype = torch.float32,
                     progress: bool = True) -> "StitchedSupernet":
        """A supernet over ``configs`` (or ``plan.candidates``) with the anchors' weights.

        ``calibration`` (anything :func:`hf_klas.calibration.calibration_batches` accepts) fits every stitch layer by
        least squares; ``calibration=None`` keeps identity-like stitches (``calibration="default"``: the documented
        offline default data). Head and input embedding of a tied self-stitch are trained apart (a full finetune
        may move them differently); :meth:`extract` ties them again where they are still equal."""
        if sampling not in SAMPLING:
            raise HfKlasError(f"Unknown supernet sampling {sampling!r}.", f"Use one of {SAMPLING}.")
        default = isinstance(calibration, str) and calibration == "default"
        model = build_stitchable(front, back, configs, plan=plan, calibration=None if default else calibration,
                                 stitch_init="identity" if calibration is None else "least_squares",
                                 sampling=sampling, seed=seed, num_buckets=num_buckets, seq_len=seq_len, ridge=ridge,
                                 max_calibration_samples=max_calibration_samples, max_length=max_length, dtype=dtype,
                                 tie_word_embeddings=False, progress=progress)
        model.config.name_or_path = model.config.name_or_path.replace("stitchable(", "supernet(", 1)
        return cls(model=model).eval()

    @torch.no_grad()
    def init_stitches_identity(self) -> None:
        init_stitches_identity(self.model)

    def fit_stitches(self, batches: list[dict], front, back, ridge: float = 1e-4, progress: bool = True) -> dict:
        """Least-squares fit of every stitch (see :func:`fit_stitches`)."""
        stats = fit_stitches(self.model, batches, front, back, ridge=ridge, progress=progress)
        self.model.config.recipe.update({"stitch_init": "least_squares", "ridge": ridge, "stitch_fit": stats})
        return stats

    # ---- what the supernet is -----------------------------------------------------------------------------------
    @property
    def core(self):
        """The stitchable model this view trains (anchors' blocks, norm, head, every stitch)."""
        return self.model

    @property
    def stitches(self) -> nn.ModuleDict:
        return self.model.stitches

    @property
    def sample_step(self) -> torch.Tensor:
        return self.model.sample_step

    # the supernet's settings are its stitchable model's config, under the names this class always had
    front_config = property(lambda self: self.model.config.front_config)
    back_config = property(lambda self: self.model.config.back_config)
    configs = property(lambda self: self.model.config.stitches, doc="[(front_blocks, back_start), ...]")
    flops = property(lambda self: [float(e["flops"]) for e in self.model.config.stitch_configs])
    buckets = property(lambda self: [int(e["bucket"]) for e in self.model.config.stitch_configs])
    sampling = property(lambda self: self.model.config.sampling)
    seed = property(lambda self: self.model.config.sampling_seed)
    seq_len = property(lambda self: self.model.config.flops_seq_len)
    anchors = property(lambda self: self.model.config.anchors)
    dearest_config = property(lambda self: self.model.config.dearest_stitch, doc="The configuration with most FLOPs.")

    @property
    def stitch_init(self) -> str:
        return self.model.config.recipe.get("stitch_init", "identity")

    def sample_index(self, step: int) -> int:
        """Index into :attr:`configs` drawn for forward call ``step`` (a pure function of seed and step)."""
        return self.model.config.sample_index(step)

    @contextlib.contextmanager
    def use_config(self, front_blocks: int, back_start: int):
        """Run one configuration (training or eval) inside the ``with`` block."""
        key = self.model.config.check_stitch(front_blocks, back_start)
        old, self._pinned = self._pinned, key
        try:
            yield self
        finally:
            self._pinned = old

    def _choose(self, stitch_config) -> tuple[int, int]:
        if stitch_config is not None:
            return self.model.config.check_stitch(stitch_config)
        if self._pinned is not None:
            return self._pinned
        if not self.training:
            return self.dearest_config
        return self.model.sample_stitch()

    # ---- forward -------------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None, position_ids=None,
                stitch_config=None, **kwargs):
        """Run one configuration: sampled (training), ``stitch_config=(i, j)``, pinned, or the dearest (eval)."""
        key = self._choose(stitch_config)
        if self.task == CAUSAL_LM:
            if input_ids is None:
                raise HfKlasError("The causal-LM supernet needs input_ids.", "Pass input_ids (and attention_mask).")
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              labels=labels, use_cache=False, stitch=key,
                              num_items_in_batch=kwargs.get("num_items_in_batch"))
        if pixel_values is None:
            raise HfKlasError("The image-classification supernet needs pixel_values.", "Pass pixel_values.")
        return self.model(pixel_values=pixel_values, labels=labels, stitch=key)

    # ---- extraction and persistence ------------------------------------------------------------------------------
    def extract(self, front_blocks: int, back_start: int):
        """Configuration ``(i, j)`` as a standalone stitched model (weights copied, not shared)."""
        model = self.model.extract(front_blocks, back_start)
        model.config.recipe["training"] = "supernet"
        return model

    def to_stitchable(self):
        """The stitchable model this supernet trains (the same weights, not a copy), its recipe saying so: save,
        push, switch or serve it like any transformers model."""
        if int(self.sample_step):
            self.model.config.recipe["training"] = "supernet"
        return self.model

    def supernet_config(self) -> dict:
        cfg = self.model.config
        return {"format": "hf_klas.supernet", "front_config": cfg.front_config.to_dict(),
                "back_config": cfg.back_config.to_dict(), "configs": [list(c) for c in self.configs],
                "buckets": self.buckets, "sampling": self.sampling, "seed": self.seed, "seq_len": self.seq_len,
                "anchors": self.anchors, "stitch_init": self.stitch_init, "self_stitch": cfg.self_stitch,
                "tie_word_embeddings": bool(cfg.tie_word_embeddings),
                "dtype": str(self.model.dtype).replace("torch.", ""), "flops": self.flops}

    def save_pretrained(self, directory) -> Path:
        """``supernet_config.json`` + ``model.safetensors`` (+ the anchors' tokenizer / image processor). For the one
        transformers directory (Auto classes, model card, ``trust_remote_code``) save :meth:`to_stitchable`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        if self.model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # the input embedding, stored once
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / SUPERNET_CONFIG_FILE).write_text(json.dumps(self.supernet_config(), indent=1) + "\n")
        pre = getattr(self.model, "_hf_klas_preprocessor", None)
        if pre is not None:
            pre.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory) -> "StitchedSupernet":
        """A directory of :meth:`save_pretrained`, or a saved stitchable model (``hf-klas finetune --plan`` output)."""
        directory = Path(directory)
        cfg_file = directory / SUPERNET_CONFIG_FILE
        if (directory / "config.json").is_file() and not cfg_file.is_file():
            config = AutoConfig.from_pretrained(directory)
            if not isinstance(config, StitchableConfig):
                raise HfKlasError(f"{directory} holds a {config.model_type!r} model, not a supernet.",
                                  "Point at a stitchable model directory or a StitchedSupernet.save_pretrained one.")
            return cls(model=STITCHABLE_CLASSES[config.task].from_pretrained(directory))
        if not cfg_file.is_file():
            raise HfKlasError(f"{directory} has no {SUPERNET_CONFIG_FILE} and no config.json.",
                              "Point at a directory written by StitchedSupernet.save_pretrained or save_pretrained "
                              "of a stitchable model.")
        d = json.loads(cfg_file.read_text())
        configs = [tuple(c) for c in d["configs"]]
        model = _allocate(d["front_config"], d["back_config"], configs, d["sampling"], None, d["seed"], d["seq_len"],
                          d["buckets"], d.get("anchors"), getattr(torch, d.get("dtype", "float32")), None, False,
                          self_stitch=bool(d.get("self_stitch")), tie=bool(d.get("tie_word_embeddings")))
        # files written before the supernet was a stitchable model name the same tensors "core.<name>"
        state = {k[len("core."):] if k.startswith("core.") else k: v
                 for k, v in load_file(str(directory / "model.safetensors")).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set()):
            raise HfKlasError(f"{directory}/model.safetensors does not match its {SUPERNET_CONFIG_FILE} (missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}).",
                              "Save the supernet again with StitchedSupernet.save_pretrained.")
        model.config.recipe["stitch_init"] = d.get("stitch_init", "identity")
        return cls(model=model).eval()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count (the ``PreTrainedModel.num_parameters`` signature; the Trainer's FLOs log uses it)."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

    def extra_repr(self) -> str:
        return f"configs={self.configs}, sampling={self.sampling!r}, seed={self.seed}"

