"""Γ, FLOPs buckets, τ candidate sets and anchor selection on hand-built matrices with known answers."""

import math

import pytest
import torch

from hf_klas.errors import BudgetError, HfKlasError, NumericalError, StitchPointError
from hf_klas.selection.scoring import (
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

# ---------------------------------------------------------------------------------------------------------
# The 3×4 worked example (m = 3 front blocks, n = 4 back blocks).
# Rows: front_blocks i = 1..3; columns: back_start j = 0..3.
# FLOPs: each front block costs 10, each back block 15, so flops(i, j) = 10·i + 15·(4 − j):
#            j=0  j=1  j=2  j=3
#     i=1    70   55   40   25
#     i=2    80   65   50   35
#     i=3    90   75   60   45
# Anchors: front = 3 blocks = 30, back = 4 blocks = 60 → flops_range (30, 60); 2 buckets → edges 30, 45, 60:
#     bucket 0 = [30, 45): (1,2)=40, (2,3)=35
#     bucket 1 = [45, 60]: (3,3)=45, (2,2)=50, (1,1)=55, (3,2)=60 (= hi, closed last bucket)
#     out of range: all j=0 (70, 80, 90), (2,1)=65, (3,1)=75, and (1,3)=25 (cheaper than the front anchor)
# Γ:
#            j=0   j=1   j=2   j=3
#     i=1   9.0   2.0   1.0   0.1     ← (1,3) has the best Γ overall but is out of range: never a candidate
#     i=2   9.0   9.0   1.04  0.8
#     i=3   9.0   9.0   1.2   1.0
# τ = 0.05:
#     bucket 0: Γ {(1,2): 1.0, (2,3): 0.8} → min 0.8, threshold 0.84 → {(2,3)}
#     bucket 1: Γ {(3,3): 1.0, (2,2): 1.04, (1,1): 2.0, (3,2): 1.2} → min 1.0, threshold 1.05 → {(3,3), (2,2)}
# τ = 0.01: bucket 1 threshold 1.01 → {(3,3)} only.
# cover_back_blocks: the set covers back_start {3, 2}; j = 1 has one in-range config, (1,1) Γ=2.0 → added
#     ("cover", bucket 1); j = 0 has no in-range config → nothing to add.
# ---------------------------------------------------------------------------------------------------------
FLOPS = torch.tensor([[70.0, 55, 40, 25], [80, 65, 50, 35], [90, 75, 60, 45]])
GAMMA = torch.tensor([[9.0, 2.0, 1.0, 0.1], [9.0, 9.0, 1.04, 0.8], [9.0, 9.0, 1.2, 1.0]], dtype=torch.float64)
RANGE = (30.0, 60.0)


def _keys(cands):
    return [(c.front_blocks, c.back_start) for c in cands]


def test_buckets_equal_width_and_closed_last():
    assert bucket_edges(30, 60, 2) == [30.0, 45.0, 60.0]
    b = assign_buckets(FLOPS, bucket_edges(30, 60, 2))
    assert b.tolist() == [[-1, 1, 0, -1], [-1, -1, 1, 0], [-1, -1, 1, 1]]


def test_candidate_set_hand_example_tau():
    c = candidate_set(GAMMA, FLOPS, RANGE, num_buckets=2, tau=0.05, cover_back_blocks=False)
    assert _keys(c) == [(2, 3), (3, 3), (2, 2)]  # sorted by FLOPs 35, 45, 50
    assert [x.bucket for x in c] == [0, 1, 1]
    assert c[0] == Candidate(2, 3, 35.0, 0.8, 0, "bucket")
    c = candidate_set(GAMMA, FLOPS, RANGE, num_buckets=2, tau=0.01, cover_back_blocks=False)
    assert _keys(c) == [(2, 3), (3, 3)]


def test_cover_back_blocks():
    c = candidate_set(GAMMA, FLOPS, RANGE, num_buckets=2, tau=0.05)  # default cover_back_blocks=True
    assert _keys(c) == [(2, 3), (3, 3), (2, 2), (1, 1)]
    added = c[-1]
    assert added.source == "cover" and added.bucket == 1 and added.score == 2.0
    assert 0 not in {x.back_start for x in c}  # no in-range configuration starts at j = 0


def test_valid_mask_and_nonfinite_scores_excluded():
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, 3] = False  # (2,3) invalid → bucket 0's best becomes (1,2)
    c = candidate_set(GAMMA, FLOPS, RANGE, num_buckets=2, tau=0.05, valid_mask=valid, cover_back_blocks=False)
    assert _keys(c) == [(1, 2), (3, 3), (2, 2)]
    g = GAMMA.clone()
    g[2, 3] = math.nan  # NaN = not computed → treated as invalid
    c = candidate_set(g, FLOPS, RANGE, num_buckets=2, tau=0.05, cover_back_blocks=False)
    assert _keys(c) == [(2, 3), (2, 2)]


def test_widening_range_admits_cheaper_than_front_anchor():
    c = candidate_set(GAMMA, FLOPS, (25.0, 60.0), num_buckets=1, tau=0.0, cover_back_blocks=False)
    assert _keys(c) == [(1, 3)]


def test_best_under_budget():
    cands = candidate_set(GAMMA, FLOPS, RANGE, num_buckets=2, tau=0.05)
    assert _keys([best_under_budget(cands, 50)]) == [(2, 3)]  # lowest Γ among flops ≤ 50
    assert _keys([best_under_budget(all_configs(GAMMA, FLOPS), 30)]) == [(1, 3)]
    with pytest.raises(BudgetError, match="35 FLOPs"):
        best_under_budget(cands, 20)


def test_gamma_with_floor():
    theta = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 6.0]])
    within = torch.tensor([0.5, 1.0, 0.0])  # last back block changes nothing
    # floor = max(1e-6, 1e-3 × median(0.5, 1.0, 0.0) = 1e-3 × 0.5) = 5e-4
    assert denominator_floor(within) == pytest.approx(5e-4)
    g = gamma_matrix(theta, within)
    torch.testing.assert_close(g, torch.tensor([[2.0, 2.0, 6000.0], [8.0, 0.0, 12000.0]], dtype=torch.float64))
    g = gamma_matrix(theta, within, eps=0.1)
    assert g[0, 2] == pytest.approx(30.0)
    assert denominator_floor(torch.zeros(4)) == 1e-6  # all-zero denominators: absolute floor
    with pytest.raises(ValueError, match="one KL per back"):
        gamma_matrix(theta, within[:2])
    with pytest.raises(NumericalError):
        gamma_matrix(theta * math.nan, within)


def test_select_anchor_pair_hand_example():
    # costs: anchor 0 cheapest (1), anchor 2 middle (2), anchor 1 dearest (3)
    kl = torch.tensor([[0.0, 0.5, 0.9],
                       [0.2, 0.0, 0.7],
                       [0.8, 0.4, 0.0]])
    costs = [1.0, 3.0, 2.0]
    # directed (cheaper → dearer): (0→2) 0.9, (0→1) 0.5, (2→1) 0.4 → (2, 1); KL[1,0]=0.2 is the wrong direction
    assert select_anchor_pair(kl, costs) == (2, 1)
    # symmetric: (0,1) 0.35, (0,2) 0.85, (2,1) 0.55 → (0, 1)
    assert select_anchor_pair(kl, costs, symmetric=True) == (0, 1)
    with pytest.raises(StitchPointError, match="at least two anchors"):
        select_anchor_pair(torch.zeros(1, 1), [1.0])
    with pytest.raises(HfKlasError):
        select_anchor_pair(torch.tensor([[0.0, math.nan], [0.1, 0.0]]), [1.0, 2.0])
