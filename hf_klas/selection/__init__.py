"""Stitch selection: the math (tensors in, matrices / candidate sets / plans out), the selectors, and the API.

- :mod:`.divergence` — streamed KL matrices Θ (exact and top-k), within-anchor KL, final-output KL.
- :mod:`.scoring` — Γ, FLOPs buckets and the τ candidate set, budget picks, anchor-pair selection.
- :mod:`.similarity` — the baselines' scores (1−CKA, LS-MSE, CE, block influence, LS replacement, random).
- :mod:`.plan` — :class:`StitchPlan` (JSON round trip, budget choice, heatmap / FLOPs plots).
- :mod:`.selectors` — one module per selector (KLAS's Γ, Θ, SN-Net, CKA, MSE, CE, block influence, ...), the
  task-aware default; :mod:`.api` — :func:`~.api.compute_plan`, budgets, the plan cache, ``hf-klas select``.

Every [m, n] matrix uses one convention: row i-1 ↔ front_blocks=i, column j ↔ back_start=j (see
:mod:`.scoring`), and every score is lower-is-better.
"""

from .divergence import (
    FinalOutputKLAccumulator,
    KLMatrixAccumulator,
    TopKErrorReport,
    TopKKLMatrixAccumulator,
    WithinAnchorKL,
    final_output_kl,
    naive_kl_matrix,
    topk_kl_error,
)
from .plan import AnchorDescriptor, PlanExistsError, StitchPlan
from .scoring import (
    Candidate,
    all_configs,
    assign_buckets,
    best_under_budget,
    bucket_edges,
    candidate_set,
    denominator_floor,
    gamma_matrix,
    select_anchor_pair,
)
from .similarity import (
    BlockInfluence,
    CrossFeatureStats,
    SelfStitchLS,
    SubsampledCKA,
    block_influence_matrix,
    cross_entropy_scores,
    linear_cka,
    ls_relative_mse,
    ls_replacement_stats,
    random_scores,
    self_stitch_mask,
)

__all__ = [
    "AnchorDescriptor", "BlockInfluence", "Candidate", "CrossFeatureStats", "FinalOutputKLAccumulator",
    "KLMatrixAccumulator", "PlanExistsError", "SelfStitchLS", "StitchPlan", "SubsampledCKA", "TopKErrorReport",
    "TopKKLMatrixAccumulator", "WithinAnchorKL", "all_configs", "assign_buckets", "best_under_budget",
    "block_influence_matrix", "bucket_edges", "candidate_set", "cross_entropy_scores", "denominator_floor",
    "final_output_kl", "gamma_matrix", "linear_cka", "ls_relative_mse", "ls_replacement_stats",
    "naive_kl_matrix", "random_scores", "select_anchor_pair", "self_stitch_mask", "topk_kl_error",
]
