"""ShortGPT block influence (self-stitching only): BI_b = 1 - mean cos(input of block b, output of block b);
skipping blocks i..j-1 scores Σ BI_b over them (ShortGPT's additive removal criterion), lower is better."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import stream_hidden
from ..similarity import BlockInfluence, block_influence_matrix
from .base import ScoreResult, SelectionContext, Selector, SelectorConfig


@dataclass
class BlockInfluenceConfig(SelectorConfig):
    """Only the shared options."""


class BlockInfluenceSelector(Selector):
    name = "block_influence"
    config_class = BlockInfluenceConfig
    self_stitch_only = True

    def score(self, ctx: SelectionContext) -> ScoreResult:
        acc = BlockInfluence(ctx.m)
        calls = {}
        for h, _, calls in stream_hidden(ctx.front_model, ctx.back_model, ctx.batches, same=True,
                                         progress=ctx.progress, desc="block influence: hidden states"):
            acc.update(h)
        bi = acc.values()
        return ScoreResult(score=block_influence_matrix(bi), extra={"block_influence": [float(x) for x in bi]},
                           stats={"forward_calls": dict(calls)})
