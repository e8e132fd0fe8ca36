"""Least-squares replacement (self-stitching only, ReplaceMe-style, training-free): how well ONE linear map of
block i's output predicts resume point j (the input of block j) -- the bridge that replaces blocks i..j-1.
Score = relative residual of that fit (0 = the skipped blocks are linear, 1 = no better than the mean)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine import stream_hidden
from ..similarity import DEFAULT_MAX_BYTES, SelfStitchLS
from .base import ScoreResult, SelectionContext, Selector, SelectorConfig


@dataclass
class LSReplacementConfig(SelectorConfig):
    ridge: float = field(default=1e-4, metadata={"help": "Relative ridge of the least-squares bridge."})
    max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata={"help": "Memory cap of the moments."})


class LSReplacementSelector(Selector):
    name = "ls_replacement"
    config_class = LSReplacementConfig
    self_stitch_only = True

    def score(self, ctx: SelectionContext) -> ScoreResult:
        cfg = self.config
        acc = SelfStitchLS(ctx.m, ctx.front_model.config.hidden_size, min_skip=0, max_bytes=cfg.max_bytes)
        calls = {}
        for h, _, calls in stream_hidden(ctx.front_model, ctx.back_model, ctx.batches, same=True,
                                         progress=ctx.progress, desc="LS replacement: hidden states"):
            acc.update(h)
        return ScoreResult(score=acc.scores(cfg.ridge), stats={"forward_calls": dict(calls)})
