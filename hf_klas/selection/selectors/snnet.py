"""SN-Net "nearest stitching": pair blocks by relative depth, stitch only within a sliding window of 2.

SN-Net (Pan et al., CVPR 2023) pairs the anchors' blocks and allows a stitch from front block a to back block
b only when a and b lie in one window of 2 consecutive paired blocks, i.e. |a - b| <= 1 in paired units
(DeiT, 12/12 blocks: 34 configurations). In hf_klas's indexing (front runs i blocks, back resumes at j) that is
``j in {i-1, i, i+1}`` (``j >= 1``) for equal depths. For different depths the pairing is by relative depth,
``j*(x) = round(x * n / m)``, and the window is ``j*(i-1) <= j <= j*(i+1)`` (identical for m = n; covers every
back block when n > m). SN-Net's back part always resumes after one of its blocks (``j >= 1``: front blocks
``0..a`` then back blocks ``b+1..``, i.e. ``(i, j) = (a+1, b+1)``), and the configurations that would run no back
block (``b = n-1``) are invalid here (``j <= n-1``): DeiT 12/12 gives SN-Net's 34 minus those 2 = 32.

Score: 0 on the window, +inf elsewhere -- SN-Net has no similarity score. Every window configuration inside
the FLOPs range is therefore a candidate (what SN-Net trains), and a budget picks, among equal scores, the
dearest configuration that fits (:meth:`StitchPlan.best_for_budget` breaks ties by most FLOPs): the
FLOPs-based ordering. No calibration data is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .base import ScoreResult, SelectionContext, Selector, SelectorConfig


@dataclass
class SNNetConfig(SelectorConfig):
    window: int = field(default=2, metadata={"help": "Sliding window over paired blocks (SN-Net: 2)."})


def nearest_window(m: int, n: int, window: int = 2) -> torch.Tensor:
    """``[m, n]`` bool: configurations on SN-Net's sliding window (module docstring)."""
    reach = max(1, int(window) - 1)

    def jstar(x: float) -> int:
        return int(math.floor(x * n / m + 0.5))

    mask = torch.zeros(m, n, dtype=torch.bool)
    for i in range(1, m + 1):
        lo, hi = jstar(i - reach), jstar(i + reach)
        for j in range(max(1, lo), min(n - 1, hi) + 1):
            mask[i - 1, j] = True
    return mask


class SNNetSelector(Selector):
    name = "snnet"
    config_class = SNNetConfig
    needs_data = False

    def score(self, ctx: SelectionContext) -> ScoreResult:
        win = nearest_window(ctx.m, ctx.n, self.config.window) & ctx.valid
        score = torch.where(win, torch.zeros(ctx.m, ctx.n, dtype=torch.float64),
                            torch.full((ctx.m, ctx.n), math.inf, dtype=torch.float64))
        return ScoreResult(score=score, extra={"window_configs": int(win.sum())},
                           stats={"forward_calls": {"front": 0, "back": 0}})
