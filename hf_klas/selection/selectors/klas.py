"""KLAS: Γ(i, j) = Θ(P_i^f ‖ P_j^g) / KL(P_j^g ‖ P_{j+1}^g) from probe distributions (lower is better).

Θ comes from one streamed pass (:mod:`hf_klas.selection.engine`); Γ's denominator is floored as documented in
:func:`hf_klas.selection.scoring.denominator_floor`. Probes: ``"logit_lens"`` (default; no training, no labels),
``"tuned_lens"`` or ``"probenet"`` (vision), trained on the same calibration batches (``probe_options``
override the probe config, e.g. ``{"max_steps": 20}``). Pre-built probes (e.g. loaded with
``Probe.load``) can be passed as ``KlasSelector(front_probe=..., back_probe=...)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace

from ...errors import HfKlasError
from ...probes import build_probe, probe_class
from ..distributed import broadcast_parameters
from ..engine import DEFAULT_CHUNK_TOKENS, DEFAULT_MAX_CHUNK_BYTES, KLEngine
from ..scoring import DEFAULT_EPS_ABS, DEFAULT_EPS_REL, denominator_floor, gamma_matrix
from .base import ScoreResult, SelectionContext, Selector, SelectorConfig


@dataclass
class KlasConfig(SelectorConfig):
    probe: str = field(default="logit_lens", metadata={
        "help": "Probe giving a distribution after every block: logit_lens | tuned_lens | probenet (vision)."})
    probe_options: str | None = field(default=None, metadata={
        "help": "Overrides of the probe's config: a dict, or its JSON on the command line "
                "(e.g. '{\"max_steps\": 20}' for the tuned lens)."})
    kernel: str = field(default="fused", metadata={
        "help": "'fused' (one GEMM per chunk) or 'reference' (element-validated accumulator)."})
    topk: int | None = field(default=None, metadata={
        "help": "Approximate Θ on the union of every block's top-k outputs (None: exact)."})
    max_chunk_mb: int = field(default=DEFAULT_MAX_CHUNK_BYTES // 2**20, metadata={
        "help": "Bound (MB) on one float32 [points, tokens, classes] buffer of the streamed pass."})
    chunk_tokens: int = field(default=DEFAULT_CHUNK_TOKENS, metadata={
        "help": "Tokens per chunk of the streamed pass: 16 keeps a CPU core's tiles in cache; on a GPU use a few "
                "hundred (bigger matmuls). Θ does not depend on it beyond float rounding."})
    eps_abs: float = field(default=DEFAULT_EPS_ABS, metadata={"help": "Absolute floor of Γ's denominator."})
    eps_rel: float = field(default=DEFAULT_EPS_REL, metadata={
        "help": "Relative floor of Γ's denominator (x median within-back KL)."})
    last_denominator: str = field(default="own", metadata={
        "help": "Γ's denominator at the last back block: own (the paper: that block's own change) or median "
                "(the median block's change; an ablation)."})
    score_embedding_resume: bool = field(default=False, metadata={
        "help": "Score back_start=0 (stitching into the back's embedding output). Off by default: there the back's "
                "probe sees no block output (for ViTs an image-independent CLS token), so its probe distribution "
                "is degenerate and its score meaningless; those configurations are left unscored (NaN)."})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.chunk_tokens, bool) or not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1:
            raise HfKlasError(f"chunk_tokens must be a positive integer, got {self.chunk_tokens!r}.",
                              "Use e.g. 16 (CPU) or 256 (GPU).")


def make_probes(ctx: SelectionContext, probe: str, options: dict, seed: int, front_probe=None, back_probe=None):
    """Build (and train, for trained probes) the front and back probes; one probe for self-stitching."""
    opts = dict(options)
    cls = probe_class(probe)
    if "seed" in {f.name for f in fields(cls.config_class)}:
        opts.setdefault("seed", seed)
    fp = front_probe or build_probe(probe, ctx.front_model, ctx.batches, progress=ctx.progress, **opts)
    bp = None if ctx.same else back_probe or build_probe(probe, ctx.back_model, ctx.batches, progress=ctx.progress,
                                                         **opts)
    for p in (fp, bp):  # data-parallel: every rank fitted the same probe on all batches; make them bitwise equal
        if p is not None and p.trainable:
            broadcast_parameters(p)
    return fp, bp


class KlasSelector(Selector):
    name = "klas"
    config_class = KlasConfig
    #: which matrix of the pass becomes the score (the Θ-only and CE selectors reuse this class)
    score_kind = "gamma"

    def __init__(self, config=None, *, front_probe=None, back_probe=None, **options):
        super().__init__(config, **options)
        raw = self.config.probe_options
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        except (TypeError, ValueError) as err:
            raise HfKlasError(f"probe_options {raw!r} is not a JSON object / dict ({err}).",
                              "Pass e.g. probe_options={'max_steps': 20} (or '{\"max_steps\": 20}').") from err
        self.config = replace(self.config, probe_options=parsed)  # one form for the plan and its cache key
        self.front_probe, self.back_probe = front_probe, back_probe

    def method_params(self) -> dict:
        params = super().method_params()
        for side, probe in (("front_probe", self.front_probe), ("back_probe", self.back_probe)):
            if probe is not None:  # a pre-built probe decides the result: it must key the plan cache
                params[side] = {"type": probe.probe_type, "fingerprint": probe.fingerprint}
        return params

    def score(self, ctx: SelectionContext) -> ScoreResult:
        cfg = self.config
        fp, bp = make_probes(ctx, cfg.probe, cfg.probe_options, cfg.seed, self.front_probe, self.back_probe)
        engine = KLEngine(fp, bp, max_chunk_bytes=cfg.max_chunk_mb * 2**20, kernel=cfg.kernel, topk=cfg.topk,
                          chunk_tokens=cfg.chunk_tokens,
                          progress=ctx.progress, front_name=str(ctx.front.name_or_path),
                          back_name=str(ctx.back.name_or_path))
        r = engine.run(ctx.batches)
        if self.score_kind == "ce":
            score = r.cross_entropy.clone()
        elif self.score_kind == "theta":
            score = r.theta.clone()
        else:
            score = gamma_matrix(r.theta, r.within_back, eps_abs=cfg.eps_abs, eps_rel=cfg.eps_rel,
                                 last_denominator=cfg.last_denominator)
        if not cfg.score_embedding_resume and not ctx.same:
            score[:, 0] = float("nan")  # resume point 0 = the back's embedding output: see the option's help
        extra = {
            "probe": cfg.probe,
            "probe_fingerprints": [fp.fingerprint] + ([] if bp is None else [bp.fingerprint]),
            "within_back_kl": [float(x) for x in r.within_back],
            "final_output_kl": float(r.final_kl),
            "front_entropy": [float(x) for x in r.front_entropy],
            "denominator_floor": denominator_floor(r.within_back, cfg.eps_abs, cfg.eps_rel),
            "tokens": int(r.tokens),
            "kernel": r.kernel,
            "unscored": "back_start=0 (embedding output)" if not cfg.score_embedding_resume and not ctx.same else None,
            "memory": r.memory,
        }
        for name, p in (("front_probe_fit", fp), ("back_probe_fit", bp)):
            stats = getattr(p, "fit_stats", None) if p is not None else None
            if stats:
                extra[name] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, list))}
        stats = {"forward_calls": r.forward_calls, "tokens": r.tokens, "engine_seconds": r.seconds,
                 "chunk_tokens": r.chunk_tokens}
        return ScoreResult(score=score, theta=r.theta, extra=extra, stats=stats)
