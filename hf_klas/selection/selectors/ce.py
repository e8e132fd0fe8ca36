"""CE baseline: mean cross-entropy H(P_i^f, P_j^g) = -Σ p_f log q_g between the same probe distributions KLAS
uses (= Θ + the front's entropy: it does not discount how uncertain the front block already is). Computed in
the same single pass as Θ (the cross term of the KL decomposition)."""

from __future__ import annotations

from dataclasses import dataclass

from .klas import KlasConfig, KlasSelector


@dataclass
class CEConfig(KlasConfig):
    """Same options as KLAS (probe, kernel, chunking); the score is the cross-entropy instead of Γ."""


class CESelector(KlasSelector):
    name = "ce"
    config_class = CEConfig
    score_kind = "ce"
