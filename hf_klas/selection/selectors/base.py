"""The selector interface: every method scores all stitch configurations and returns a :class:`StitchPlan`.

``Selector.select(front_anchor, back_anchor, batches, flops, params, ...)`` is the same for KLAS and every
baseline; only :meth:`Selector.score` differs (a lower-is-better ``[m, n]`` matrix in the convention of
:mod:`hf_klas.selection.scoring`). The shared part builds the valid-configuration mask, the FLOPs-bucketed
candidate set (``num_buckets``, ``tau``) and the plan, so downstream code (``best_for_budget``, plots,
finetuning the candidate set, Pareto fronts) never depends on the method.

Valid configurations ``(front_blocks=i, back_start=j)``: ``1 <= i <= m`` and ``0 <= j <= n-1`` (at least one
back block runs). For self-stitching (front and back are the same anchor) also ``j >= i``: the stitched model
runs blocks ``0..i-1`` then ``j..n-1``, so ``j < i`` would run blocks ``j..i-1`` twice -- a deeper, dearer model
than the anchor, not depth pruning; ``j == i`` is the anchor itself with a stitch layer (skips nothing).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import torch

from ...anatomy import check_compatible, ties_embeddings
from ...errors import CalibrationError, HfKlasError, IncompatibleAnchorsError
from ...families import CAUSAL_LM, task_of
from ...flops import DEFAULT_SEQ_LEN, anchor_flops, stitch_grid_flops, stitch_grid_params
from ...loading import Anchor, resolve_anchor, same_anchor  # noqa: F401 (re-exported)
from ..distributed import process_state
from ..plan import StitchPlan
from ..scoring import bucket_edges, candidate_set

#: ``SelectorConfig.dtype`` -> what ``from_pretrained(dtype=...)`` takes
LOAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class SelectorConfig:
    """Options every selector has (the candidate set)."""

    num_buckets: int = field(default=20, metadata={"help": "Equal-width FLOPs buckets between the anchors."})
    tau: float = field(default=0.05, metadata={
        "help": "Keep every configuration within (1+tau) x the bucket's best score (KLAS: 0.05)."})
    cover_back_blocks: bool = field(default=True, metadata={
        "help": "Add each back start's best configuration if no bucket picked it (every back block appears)."})
    seed: int = field(default=0, metadata={"help": "Seed (random selector, trained probes' minibatches)."})
    dtype: str = field(default="float32", metadata={
        "help": "Dtype anchors on disk are loaded in for scoring: float32 | bfloat16 | float16 | auto (the "
                "checkpoint's). The blocks run in it; KLAS forms every distribution and KL in float32 either way. "
                "In-memory anchors are used as they are."})

    def __post_init__(self):
        """Checked here, once, where the values enter (API and CLI alike)."""
        if self.dtype not in LOAD_DTYPES:
            raise HfKlasError(f"Unknown anchor dtype {self.dtype!r}.", f"Use one of {sorted(LOAD_DTYPES)}.")


@dataclass
class ScoreResult:
    """A selector's raw output before the shared plan building."""

    score: torch.Tensor  # [m, n] float64, lower is better; NaN = not computed
    theta: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)  # JSON-able, deterministic (goes into the plan)
    stats: dict = field(default_factory=dict)  # timing etc. (not in the plan, so plans compare equal)


@dataclass
class SelectionContext:
    front: Anchor
    back: Anchor
    front_model: Any
    back_model: Any
    same: bool
    m: int
    n: int
    batches: list
    valid: torch.Tensor
    progress: bool = True


def valid_mask(m: int, n: int, same: bool) -> torch.Tensor:
    """``[m, n]`` bool: ``1 <= i <= m``, ``0 <= j <= n-1`` and, for self-stitching, ``j >= i`` (module docstring)."""
    mask = torch.ones(m, n, dtype=torch.bool)
    if same:
        i = torch.arange(1, m + 1)[:, None]
        j = torch.arange(n)[None, :]
        mask &= j >= i
    return mask


def load_model(anchor: Anchor, dtype: str = "float32", device_map=None, offload_folder: str | None = None):
    """The whole anchor for probing; in-memory models as they are.

    Checkpoints on disk are loaded in ``dtype`` (a :data:`LOAD_DTYPES` name) and placed with ``device_map``
    (transformers' ``from_pretrained``: "auto", a device, or a module -> device dict; "disk" entries offload to
    ``offload_folder``). Without a device map, a data-parallel rank with an accelerator loads onto its own device."""
    if anchor.model is not None:
        return anchor.model
    kwargs = {"dtype": LOAD_DTYPES[dtype]}
    state = process_state()
    if device_map is None and state is not None and state.device.type != "cpu":
        device_map = {"": state.device}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = offload_folder
    model = anchor.load_full(**kwargs)
    model.eval()
    return model


def grids(front_config, back_config, seq_len: int | None = None, image_size=None, same: bool = False):
    """``(flops [m, n], params [m, n], (front anchor FLOPs, back anchor FLOPs))`` at the plan's token count;
    ``same`` (self-stitching): a tied anchor's stitches keep head and embedding tied (as the built model)."""
    lm = task_of(front_config) == CAUSAL_LM
    sl = (seq_len or DEFAULT_SEQ_LEN) if lm else None
    flops = torch.as_tensor(stitch_grid_flops(front_config, back_config, seq_len=sl, image_size=image_size),
                            dtype=torch.float64)
    params = torch.as_tensor(stitch_grid_params(front_config, back_config,
                                                tied_head=same and ties_embeddings(front_config)),
                             dtype=torch.float64)
    af = float(anchor_flops(front_config, seq_len=sl, image_size=image_size).total)
    ab = float(anchor_flops(back_config, seq_len=sl, image_size=image_size).total)
    return flops, params, (af, ab)


def flops_range(flops: torch.Tensor, valid: torch.Tensor, anchor_flops: tuple[float, float], same: bool):
    """The FLOPs span the buckets cover: between the two anchors (cross-model), or from the cheapest valid
    configuration to the anchor itself (self-stitching, where both anchors cost the same)."""
    lo, hi = min(anchor_flops), max(anchor_flops)
    if same or hi <= lo:
        lo = float(flops[valid].min())
    return lo, hi


#: Every selector by name. A subclass that sets its own ``name`` registers itself by being defined (as probes do),
#: so a new selector is one module: define the class, import the module.
SELECTORS: dict[str, type[Selector]] = {}


class Selector:
    """Base class; subclasses set ``name`` and ``config_class`` and implement :meth:`score`."""

    name: ClassVar[str] = "base"
    config_class: ClassVar[type] = SelectorConfig
    self_stitch_only: ClassVar[bool] = False
    needs_data: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            SELECTORS[cls.name] = cls

    def __init__(self, config: SelectorConfig | None = None, **options):
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise HfKlasError(f"Selector {self.name!r} takes a {self.config_class.__name__}, got "
                              f"{type(config).__name__}.", f"Pass {self.config_class.__name__}(...) or keywords.")
        known = {f.name for f in fields(self.config_class)}
        bad = sorted(set(options) - known)
        if bad:
            what = f"no {bad[0]!r} option" if len(bad) == 1 else f"no options {bad}"
            raise HfKlasError(f"Method {self.name!r} has {what}.",
                              f"Drop it: there is no option of that name for {self.name!r}; its options are "
                              f"{sorted(known)}.")
        self.config = replace(config, **options) if options else config
        if self.config.num_buckets < 1:
            raise HfKlasError(f"num_buckets must be >= 1, got {self.config.num_buckets}.", "Use e.g. 20.")
        if not (self.config.tau >= 0 and math.isfinite(self.config.tau)):
            raise HfKlasError(f"tau must be a finite number >= 0, got {self.config.tau}.", "Use e.g. 0.05 (5%).")
        self.last_stats: dict = {}

    def method_params(self) -> dict:
        """What identifies this selector's result besides anchors and calibration (plan + cache key)."""
        return asdict(self.config)

    def score(self, ctx: SelectionContext) -> ScoreResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_pair(self, same: bool) -> None:
        if self.self_stitch_only and not same:
            raise IncompatibleAnchorsError(
                f"The {self.name!r} selector is a self-stitching (depth-pruning) baseline: it scores skipping "
                "blocks of ONE model and has no meaning for two different anchors.",
                "Pass one anchor (back=None) for depth pruning, or use method='klas' / 'cka' / 'mse' / 'ce' / "
                "'snnet' / 'random' for two anchors.")

    def select(self, front_anchor, back_anchor=None, batches: list[dict] | None = None, flops=None, params=None,
               *, seq_len: int | None = None, image_size=None, progress: bool = True,
               calibration_info: dict | None = None, device_map=None, offload_folder: str | None = None) -> StitchPlan:
        """Score every configuration of ``front_anchor -> back_anchor`` (``None``: self-stitching) on the
        calibration ``batches`` and return the plan. ``flops`` / ``params`` (``[m, n]``) default to
        :mod:`hf_klas.flops` at ``seq_len`` tokens (LLMs; default 128) or one image. ``device_map`` /
        ``offload_folder``: where anchors loaded from disk are placed (:func:`load_model`)."""
        t0 = time.perf_counter()
        front = resolve_anchor(front_anchor)
        back = front if back_anchor is None else resolve_anchor(back_anchor)
        same = same_anchor(front, back)
        if same:
            back = front
        self.check_pair(same)
        check_compatible(front.config, back.config)
        m, n = int(front.config.num_hidden_layers), int(back.config.num_hidden_layers)
        g_flops, g_params, a_flops = grids(front.config, back.config, seq_len, image_size, same=same)
        flops = g_flops if flops is None else torch.as_tensor(flops, dtype=torch.float64)
        params = g_params if params is None else torch.as_tensor(params, dtype=torch.float64)
        if tuple(flops.shape) != (m, n) or tuple(params.shape) != (m, n):
            raise HfKlasError(f"flops/params must be [{m}, {n}] (front blocks x back starts), got "
                              f"{tuple(flops.shape)} / {tuple(params.shape)}.",
                              "Pass hf_klas.flops.stitch_grid_flops(front_config, back_config) or leave them out.")
        valid = valid_mask(m, n, same)
        if self.needs_data and not batches:
            raise CalibrationError(f"The {self.name!r} selector needs calibration batches and none were given.",
                                   "Pass calibration data (or None for the documented offline default via "
                                   "hf_klas.selection.api).")
        models = []
        if self.needs_data:
            place = {"dtype": self.config.dtype, "device_map": device_map, "offload_folder": offload_folder}
            fm = load_model(front, **place)
            bm = fm if same else load_model(back, **place)
            models = [(mdl, mdl.training) for mdl in {id(fm): fm, id(bm): bm}.values()]
            for mdl, _ in models:
                mdl.eval()
        else:
            fm = bm = None
        try:
            ctx = SelectionContext(front, back, fm, bm, same, m, n, batches or [], valid, progress)
            result = self.score(ctx)
        finally:
            for mdl, was_training in models:
                mdl.train(was_training)
        score = torch.as_tensor(result.score, dtype=torch.float64)
        lo, hi = flops_range(flops, valid, a_flops, same)
        cands = candidate_set(score, flops, (lo, hi), self.config.num_buckets, self.config.tau, valid,
                              self.config.cover_back_blocks)
        lm = task_of(front.config) == CAUSAL_LM
        plan = StitchPlan(
            method=self.name, front=front.descriptor(), back=back.descriptor(), score=score, flops=flops,
            valid_mask=valid, anchor_flops=a_flops, params=params, theta=result.theta,
            method_params=self.method_params(), seq_len=(seq_len or DEFAULT_SEQ_LEN) if lm else None,
            image_size=None if lm else _image_size(front.config, image_size), candidates=cands,
            bucket_edges=bucket_edges(lo, hi, self.config.num_buckets), calibration=dict(calibration_info or {}),
            extra=dict(result.extra, self_stitching=same),
        )
        self.last_stats = dict(result.stats, seconds=time.perf_counter() - t0)
        return plan


def _image_size(config, image_size):
    if image_size is not None:
        return int(image_size if not isinstance(image_size, (list, tuple)) else image_size[0])
    size = getattr(config, "image_size", None)
    return int(size if not isinstance(size, (list, tuple)) else size[0]) if size is not None else None
