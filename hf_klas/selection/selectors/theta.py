"""Θ-only: KL similarity without KLAS's capacity denominator, score Θ(P_i^f ‖ P_j^g) (lower is better).

KLAS divides Θ by Θ(P_j^g ‖ P_{j+1}^g), the change the back's next block makes, on the idea that a block that
changes a lot can absorb a mismatch during finetuning. With probes that saturate after a few blocks that
denominator spans orders of magnitude across ``j`` and can decide the ranking by itself; this selector is the
numerator alone, from the same single pass and the same probes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .klas import KlasConfig, KlasSelector


@dataclass
class ThetaConfig(KlasConfig):
    """Same options as KLAS (probe, kernel, chunking); the score is Θ itself (Γ's floor options are unused)."""


class ThetaSelector(KlasSelector):
    name = "theta"
    config_class = ThetaConfig
    score_kind = "theta"
