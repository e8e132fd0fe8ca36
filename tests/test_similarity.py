"""Baseline scores: streamed CKA / LS-MSE vs direct formulas, invariances, self-stitching scores."""

import math

import pytest
import torch

from hf_klas.errors import HfKlasError, NumericalError
from hf_klas.selection.divergence import KLMatrixAccumulator
from hf_klas.selection.similarity import (
    BlockInfluence,
    CrossFeatureStats,
    SubsampledCKA,
    block_influence_matrix,
    cross_entropy_scores,
    linear_cka,
    ls_relative_mse,
    ls_replacement_stats,
    random_scores,
    self_stitch_mask,
)


def _feats(blocks, T, d, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(T, 4, generator=g, dtype=torch.float64)  # shared latent → non-trivial similarity
    mix = torch.randn(blocks, 4, d, generator=g, dtype=torch.float64)
    return base @ mix + 0.5 * torch.randn(blocks, T, d, generator=g, dtype=torch.float64) + 3.0


def _stream(acc, X, Y, cuts):
    edges = [0, *cuts, X.shape[1]]
    for s, e in zip(edges[:-1], edges[1:]):
        acc.update(X[:, s:e], Y[:, s:e])
    return acc


def test_streamed_cka_equals_direct():
    m, n, T, df, dg = 3, 4, 90, 6, 9
    X, Y = _feats(m, T, df, 0), _feats(n, T, dg, 1)
    st = _stream(CrossFeatureStats(m, n, df, dg), X, Y, cuts=[10, 47])
    ref = torch.tensor([[linear_cka(X[i], Y[j]) for j in range(n)] for i in range(m)], dtype=torch.float64)
    torch.testing.assert_close(st.cka(), ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(st.cka_score(), 1 - ref, rtol=1e-9, atol=1e-12)


def test_cka_identity_orthogonal_and_scaling_invariance():
    T, d = 200, 8
    X = _feats(1, T, d, 2)[0]
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, 7.5 * X @ Q + 2.0) == pytest.approx(1.0, abs=1e-12)  # rotation, scale, shift
    Z = _feats(1, T, 5, 4)[0]
    assert linear_cka(X @ Q * 0.1, Z) == pytest.approx(linear_cka(X, Z), rel=1e-10)
    # streamed, identical features on both sides → score 0
    st = CrossFeatureStats(1, 1, d, d)
    st.update(X[None], (3 * X @ Q)[None])
    assert float(st.cka_score()[0, 0]) == pytest.approx(0.0, abs=1e-10)


def test_subsampled_cka_exact_when_all_tokens_kept_and_close_otherwise():
    m, n, T, d = 2, 3, 120, 5
    X, Y = _feats(m, T, d, 5), _feats(n, T, d, 6)
    full = _stream(SubsampledCKA(m, n, max_tokens=1000), X, Y, cuts=[30, 70])
    ref = torch.tensor([[linear_cka(X[i], Y[j]) for j in range(n)] for i in range(m)], dtype=torch.float64)
    torch.testing.assert_close(full.cka(), ref, rtol=1e-5, atol=1e-6)  # float32 storage
    sub = _stream(SubsampledCKA(m, n, max_tokens=60, seed=1), X, Y, cuts=[30, 70])
    assert sub.num_sampled == 60 and sub.count == T
    assert (sub.cka() - ref).abs().max() < 0.2  # a sample estimate, not exact


def test_ls_mse_zero_for_linear_and_matches_direct():
    T, df, dg = 150, 5, 7
    X = _feats(2, T, df, 7)
    W = torch.randn(df, dg, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    noise = torch.randn(T, dg, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    Y = torch.stack([X[0] @ W + 1.5, noise])
    st = _stream(CrossFeatureStats(2, 2, df, dg), X, Y, cuts=[50])
    mse = st.ls_mse(ridge=1e-10)
    assert float(mse[0, 0]) < 1e-8  # exactly linear (with bias) → ~0
    assert 0.5 < float(mse[1, 1]) <= 1.0  # noise is not predictable
    ref = torch.tensor([[ls_relative_mse(X[i], Y[j], ridge=1e-4) for j in range(2)] for i in range(2)],
                       dtype=torch.float64)
    torch.testing.assert_close(st.ls_mse(ridge=1e-4), ref.double(), rtol=1e-8, atol=1e-10)


def test_pair_mask_and_memory_guard():
    X, Y = _feats(3, 40, 4, 10), _feats(3, 40, 4, 11)
    pm = torch.tensor([[True, False, False], [False, True, True], [False, False, True]])
    st = CrossFeatureStats(3, 3, 4, 4, pair_mask=pm)
    st.update(X, Y)
    full = CrossFeatureStats(3, 3, 4, 4)
    full.update(X, Y)
    assert torch.isnan(st.cka()[~pm]).all()
    torch.testing.assert_close(st.cka()[pm], full.cka()[pm])
    torch.testing.assert_close(st.ls_mse()[pm], full.ls_mse()[pm])
    with pytest.raises(HfKlasError, match="pair_mask"):
        CrossFeatureStats(16, 28, 2048, 3072)
    bad = X.clone()
    bad[1, 0, 0] = math.nan
    with pytest.raises(NumericalError):
        CrossFeatureStats(3, 3, 4, 4).update(bad, Y)


def test_mask_drops_tokens():
    X, Y = _feats(1, 30, 3, 12), _feats(1, 30, 3, 13)
    mask = torch.arange(30) < 20
    st = CrossFeatureStats(1, 1, 3, 3)
    st.update(X, Y, mask=mask)
    assert st.count == 20
    assert float(st.cka()[0, 0]) == pytest.approx(linear_cka(X[0, :20], Y[0, :20]), rel=1e-10)


def test_cross_entropy_scores_from_kl_accumulator():
    g = torch.Generator().manual_seed(14)
    lf = torch.randn(2, 9, 30, generator=g).log_softmax(-1)
    lg = torch.randn(3, 9, 30, generator=g).log_softmax(-1)
    acc = KLMatrixAccumulator(2, 3)
    acc.update(lf, lg)
    ce = cross_entropy_scores(acc)
    ref = torch.stack([torch.stack([-(lf[i].double().exp() * lg[j].double()).sum(-1).mean() for j in range(3)])
                       for i in range(2)])
    torch.testing.assert_close(ce, ref, rtol=1e-5, atol=1e-7)
    # CE = KL + front entropy
    torch.testing.assert_close(ce, acc.mean() + acc.front_entropy()[:, None], rtol=1e-5, atol=1e-7)


def test_block_influence_and_matrix():
    L, T, d = 4, 25, 6
    h = _feats(L + 1, T, d, 15)
    bi = BlockInfluence(L)
    bi.update(h[:, :10])
    bi.update(h[:, 10:])
    ref = torch.stack([(1 - torch.nn.functional.cosine_similarity(h[b], h[b + 1], dim=-1)).mean() for b in range(L)])
    torch.testing.assert_close(bi.values(), ref)
    M = block_influence_matrix(ref)
    # row i-1 = front_blocks i, column j = back_start j: skipped blocks i..j-1
    assert float(M[0, 3]) == pytest.approx(float(ref[1] + ref[2]))  # i=1, j=3 skips blocks 1, 2
    assert float(M[1, 2]) == 0.0  # i=2, j=2 skips nothing
    assert math.isnan(float(M[2, 1]))  # j < i: not a skip
    assert self_stitch_mask(4).tolist() == [[False, False, True, True], [False, False, False, True],
                                            [False] * 4, [False] * 4]


def test_ls_replacement_for_self_stitching():
    L, T, d = 3, 80, 4
    g = torch.Generator().manual_seed(16)
    h0 = torch.randn(T, d, generator=g, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    h1 = h0 @ A + 0.3
    h2 = torch.tanh(h1) * 3 + 0.5 * torch.randn(T, d, generator=g, dtype=torch.float64)
    h3 = h2 @ A  # linear in h2
    acc = ls_replacement_stats(L, d)
    acc.update(torch.stack([h0, h1, h2, h3]))
    s = acc.scores(ridge=1e-10)
    # row i-1 = block i output h[i]; column j = resume point h[j]; valid when j ≥ i + 1
    assert torch.isnan(s[0, 0]) and not torch.isnan(s[0, 2])
    assert float(s[0, 2]) == pytest.approx(ls_relative_mse(h1, h2, ridge=1e-10), rel=1e-8)


def test_random_scores_seeded():
    a, b = random_scores(3, 4, seed=5), random_scores(3, 4, seed=5)
    assert torch.equal(a, b) and a.shape == (3, 4) and ((a >= 0) & (a < 1)).all()
