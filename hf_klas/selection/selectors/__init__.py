"""Selectors behind one interface (:class:`~hf_klas.selection.selectors.base.Selector`); each returns a
:class:`~hf_klas.selection.plan.StitchPlan`.

=================  ===============================================================  ==================
name               score (lower is better)                                          anchors
=================  ===============================================================  ==================
klas               Γ = Θ(P_i^f ‖ P_j^g) / KL(P_j^g ‖ P_{j+1}^g) (probe: logit lens)  two, or one (self)
theta              Θ(P_i^f ‖ P_j^g): KLAS without the capacity denominator           two, or one
snnet              0 on SN-Net's nearest-stitching window, +inf elsewhere            two, or one
cka                1 − linear CKA                                                    two, or one
mse                relative residual of the LS stitch fit                            two, or one
ce                 cross-entropy −Σ p_f log q_g of the probe distributions          two, or one
random             seeded uniform                                                    two, or one
block_influence    Σ ShortGPT block influence of the skipped blocks                  one (self)
ls_replacement     relative residual of a linear bridge over the skipped blocks      one (self)
=================  ===============================================================  ==================
"""

from __future__ import annotations

from ...errors import HfKlasError
from ...families import CAUSAL_LM
from .base import DEFAULT_SEQ_LEN, Selector, SelectorConfig, valid_mask
from .block_influence import BlockInfluenceSelector
from .ce import CESelector
from .cka import CKASelector
from .klas import KlasSelector
from .ls_replacement import LSReplacementSelector
from .mse import MSESelector
from .random import RandomSelector
from .snnet import SNNetSelector, nearest_window
from .theta import ThetaSelector

SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls for cls in (KlasSelector, ThetaSelector, SNNetSelector, CKASelector, MSESelector, CESelector,
                              RandomSelector, BlockInfluenceSelector, LSReplacementSelector)
}


#: The selector ``from_anchors(..., budget_flops=...)``, ``hf-klas select`` and the demo use when none is named
#: (chosen by the selection-quality study: it wins both ViT pairs; for self-stitching an LLM the study favours
#: ``"theta"``, see README; ``"klas"`` is always the paper's Γ exactly).
DEFAULT_METHOD = "klas"

#: The task-aware default rule, (task, self-stitching) -> selector; every other case takes DEFAULT_METHOD.
#: Causal LMs stitched to themselves (depth pruning): "theta", from the selection study on SmolLM2-135M
#: self-stitching (LoRA oracle: top-1 0.67 vs Γ's 0.00, regret 0.4 vs 16.1 perplexity; training-free: 0.83 vs
#: 0.00), where Γ's capacity denominator sends every pick to resume at the last block. One 135M model, one task:
#: README says where this evidence is thin.
TASK_DEFAULTS: dict[tuple[str, bool], str] = {(CAUSAL_LM, True): "theta"}


def default_method(task: str, self_stitch: bool) -> str:
    """The selector to use when none is named, by :data:`TASK_DEFAULTS` (else :data:`DEFAULT_METHOD`)."""
    return TASK_DEFAULTS.get((task, bool(self_stitch)), DEFAULT_METHOD)


def selector_class(name: str) -> type[Selector]:
    """The selector class called ``name`` (an unknown name fails with the list of known ones)."""
    if name not in SELECTORS:
        raise HfKlasError(f"Unknown selection method {name!r}.", f"Use one of: {', '.join(SELECTORS)}.")
    return SELECTORS[name]


def get_selector(name: str, config: SelectorConfig | None = None, **options) -> Selector:
    """A selector by name, from its config and/or options (unknown options fail with the known ones)."""
    return selector_class(name)(config, **options)


__all__ = ["SELECTORS", "DEFAULT_METHOD", "TASK_DEFAULTS", "default_method", "DEFAULT_SEQ_LEN", "Selector",
           "SelectorConfig", "get_selector", "selector_class", "nearest_window",
           "valid_mask", "KlasSelector", "SNNetSelector", "CKASelector", "MSESelector", "CESelector",
           "RandomSelector", "BlockInfluenceSelector", "LSReplacementSelector", "ThetaSelector"]
