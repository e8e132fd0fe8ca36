"""MSE baseline: relative residual of the least-squares stitch fit [X_i 1]·M ≈ Y_j (what SN-Net's LS init
minimises), lower is better; 1.0 = no better than predicting Y_j's mean.

Streamed float64 moments for the valid pairs (:class:`~hf_klas.selection.similarity.CrossFeatureStats`); the
cross moments cost (#pairs)*d_f*d_g*8 bytes, refused above ``max_bytes`` with the fix. Samples as for CKA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine import stream_hidden
from ..similarity import DEFAULT_MAX_BYTES, CrossFeatureStats
from .base import ScoreResult, SelectionContext, Selector, SelectorConfig
from .cka import feature_pairs


@dataclass
class MSEConfig(SelectorConfig):
    ridge: float = field(default=1e-4, metadata={"help": "Relative ridge of the least-squares fit."})
    max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata={"help": "Memory cap of the moments."})


class MSESelector(Selector):
    name = "mse"
    config_class = MSEConfig

    def score(self, ctx: SelectionContext) -> ScoreResult:
        cfg = self.config
        d_f, d_g = ctx.front_model.config.hidden_size, ctx.back_model.config.hidden_size
        acc = CrossFeatureStats(ctx.m, ctx.n, d_f, d_g, pair_mask=ctx.valid, max_bytes=cfg.max_bytes)
        calls = {}
        for hf, hg, calls in stream_hidden(ctx.front_model, ctx.back_model, ctx.batches, same=ctx.same,
                                           progress=ctx.progress, desc="MSE: hidden states"):
            acc.update(*feature_pairs(ctx, hf, hg))
        return ScoreResult(score=acc.ls_mse(cfg.ridge), stats={"forward_calls": dict(calls)})
