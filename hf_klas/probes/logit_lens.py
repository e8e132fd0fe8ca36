"""Logit lens: the anchor's own final norm + unembedding (or ViT final LayerNorm + classifier) on every point.

No training and no labels -- the default probe for LLMs. The captured block outputs are the *raw* residual
stream (hooks, not ``output_hidden_states``), so the last point gets norm + head too and reproduces the
anchor's own logits exactly. Gemma's final logit soft-capping is applied as the anchor applies it. For
vision anchors the classifier reads the CLS token (``pooling="cls"``), as ViT/DeiT classification does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .base import Probe, ProbeConfig


@dataclass
class LogitLensConfig(ProbeConfig):
    """The logit lens has no options beyond pooling (vision)."""


class LogitLens(Probe):
    probe_type = "logit_lens"
    config_class = LogitLensConfig

    def logits(self, feats: torch.Tensor, points: Sequence[int]) -> torch.Tensor:
        return self._norm_head(feats)

    @torch.no_grad()
    def tile_state(self, feats, points):
        return self._norm_head_state(feats)

    @torch.no_grad()
    def logits_tile(self, state, start, stop, out) -> None:
        self._norm_head_tile(state, start, stop, out)
