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
from ...families import CAUSAL_LM, IMAGE_CLASSIFICATION
from .base import DEFAULT_SEQ_LEN, SELECTORS, Selector, SelectorConfig, valid_mask
from .block_influence import BlockInfluenceSelector
from .ce import CESelector
from .cka import CKASelector
from .klas import KlasSelector
from .ls_replacement import LSReplacementSelector
from .mse import MSESelector
from .random import RandomSelector
from .snnet import SNNetSelector, nearest_window
from .theta import ThetaSelector

# Importing each selector's module registered it in SELECTORS (Selector.__init_subclass__); the names are kept
# importable from here.


#: The selector for every case :data:`TASK_DEFAULTS` has no evidence for (cross-model causal LMs: no pair of two
#: different LLMs could be studied offline) -- the paper's Γ. ``"klas"`` is always Γ exactly.
DEFAULT_METHOD = "klas"

#: The task-aware default rule, (task, self-stitching) -> selector, each from the selection-quality study
#: (benchmarks/results/selection_quality_v3.md and selection_quality_v3_lm.md; README "Which selector"):
#: - causal LM stitched to itself (depth pruning): "theta". SmolLM2-135M, study v3 (validation data): the best
#:   training-free selector on task perplexity (top-1 0.83, regret 0.3 vs >= 0.8), tied with CE/CKA/MSE/ShortGPT
#:   after LoRA; Γ's capacity denominator sends every pick to resume at the last block (regret 24.6). The
#:   depth-pruning benchmark (benchmarks/results/depth_pruning.md) agrees on the task (ROUGE-L above ShortGPT
#:   training-free at every budget) but not on general English, where ShortGPT's run without a bridge is 1.10-1.41x
#:   lower in perplexity: the README says so and recommends block_influence + identity for that use. One 135M
#:   model, one task, 16 evaluation texts.
#: - cross-model vision: "snnet". Study v3, oracle = the demo's recipe, 3 zoo pairs, 16 buckets, 2 seeds: Γ mean
#:   regret 0.07 points of accuracy, SN-Net's window 0.22, random 0.29 (Γ lower on 2 pairs, SN-Net on 1); every
#:   per-pair gap is at most 0.5 points, inside the sampling error of accuracy on 5,000 validation images (±1.4
#:   points, 95%), so the evidence does not separate them and the cheaper one is the default: SN-Net's rule
#:   runs no anchor on calibration data.
TASK_DEFAULTS: dict[tuple[str, bool], str] = {(CAUSAL_LM, True): "theta", (IMAGE_CLASSIFICATION, False): "snnet"}


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
