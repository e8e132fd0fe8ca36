"""Linear CKA baseline: score = 1 - CKA(front block-i output, back resume point j), lower is better.

Samples are token features: every non-padding token (LLMs) or every token of every image (ViTs -- the stitch
maps every token). Exact streamed second moments (:class:`~hf_klas.selection.similarity.CrossFeatureStats`)
when they fit in ``max_bytes``; otherwise (or with ``max_tokens`` set) CKA on a seeded uniform subsample of
tokens (:class:`~hf_klas.selection.similarity.SubsampledCKA`), because the exact cross moments cost
m*n*d_f*d_g*8 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine import stream_hidden
from ..similarity import DEFAULT_MAX_BYTES, CrossFeatureStats, SubsampledCKA
from .base import ScoreResult, SelectionContext, Selector, SelectorConfig


@dataclass
class CKAConfig(SelectorConfig):
    max_tokens: int | None = field(default=None, metadata={
        "help": "Subsample this many tokens (Gram-form CKA). None: exact moments if they fit in max_bytes, "
                "else 2048 tokens."})
    max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata={"help": "Memory cap of the exact moments."})


def feature_pairs(ctx: SelectionContext, hf, hg):
    """Front rows = block outputs 1..m; back columns = resume points 0..n-1."""
    back = hf if hg is None else hg
    return hf[1:ctx.m + 1], back[:ctx.n]


class CKASelector(Selector):
    name = "cka"
    config_class = CKAConfig

    def score(self, ctx: SelectionContext) -> ScoreResult:
        cfg = self.config
        d_f, d_g = ctx.front_model.config.hidden_size, ctx.back_model.config.hidden_size
        pairs = int(ctx.valid.sum())
        need = 8 * (pairs * d_f * d_g + ctx.m * d_f * d_f + ctx.n * d_g * d_g)
        exact = cfg.max_tokens is None and need <= cfg.max_bytes
        acc = (CrossFeatureStats(ctx.m, ctx.n, d_f, d_g, pair_mask=ctx.valid, max_bytes=cfg.max_bytes) if exact
               else SubsampledCKA(ctx.m, ctx.n, max_tokens=cfg.max_tokens or 2048, seed=cfg.seed))
        calls = {}
        for hf, hg, calls in stream_hidden(ctx.front_model, ctx.back_model, ctx.batches, same=ctx.same,
                                           progress=ctx.progress, desc="CKA: hidden states"):
            acc.update(*feature_pairs(ctx, hf, hg))
        score = acc.cka_score()
        return ScoreResult(score=score, extra={"cka_mode": "exact" if exact else "subsampled",
                                               "max_tokens": None if exact else (cfg.max_tokens or 2048)},
                           stats={"forward_calls": dict(calls)})
