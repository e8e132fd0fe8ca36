"""Random baseline: uniform scores from a seeded generator (same seed -> same plan)."""

from __future__ import annotations

from dataclasses import dataclass

from ..similarity import random_scores
from .base import ScoreResult, SelectionContext, Selector, SelectorConfig


@dataclass
class RandomConfig(SelectorConfig):
    """Only the shared options; ``seed`` picks the scores."""


class RandomSelector(Selector):
    name = "random"
    config_class = RandomConfig
    needs_data = False

    def score(self, ctx: SelectionContext) -> ScoreResult:
        return ScoreResult(score=random_scores(ctx.m, ctx.n, self.config.seed),
                           stats={"forward_calls": {"front": 0, "back": 0}})
