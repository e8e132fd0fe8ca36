"""Streamed KL matrices against the per-pair reference.

Tolerance: the streamed Θ runs its cross-term matmul in float32 and accumulates in float64; against the
float64 per-pair loop we require agreement within 1e-5 *relative* (plus 1e-7 absolute for near-zero
entries). Random log-softmax inputs have per-token KLs of order 1, so float32 rounding stays ~1e-7.
"""

import math

import pytest
import torch

from hf_klas.errors import HfKlasError, IncompatibleAnchorsError, NumericalError
from hf_klas.selection.divergence import (
    FinalOutputKLAccumulator,
    KLMatrixAccumulator,
    TopKKLMatrixAccumulator,
    WithinAnchorKL,
    final_output_kl,
    naive_kl_matrix,
    topk_kl_error,
)

RTOL, ATOL = 1e-5, 1e-7


def _logp(blocks, T, V, seed, temp=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(blocks, T, V, generator=g) * temp).log_softmax(-1)


def _stream(acc, lf, lg, cuts, w=None):
    edges = [0, *cuts, lf.shape[1]]
    for s, e in zip(edges[:-1], edges[1:]):
        acc.update(lf[:, s:e], lg[:, s:e], None if w is None else w[s:e])
    return acc


@pytest.mark.parametrize("V", [50, 333, 1000])
def test_streamed_matches_naive(V):
    m, n, T = 3, 5, 41
    lf, lg = _logp(m, T, V, 1), _logp(n, T, V, 2)
    acc = _stream(KLMatrixAccumulator(m, n), lf, lg, cuts=[7, 20, 33])
    ref = naive_kl_matrix(lf, lg)
    torch.testing.assert_close(acc.mean(), ref, rtol=RTOL, atol=ATOL)
    assert acc.count == T and acc.num_chunks == 4


def test_chunking_invariance_and_subchunks():
    m, n, T, V = 4, 3, 60, 200
    lf, lg = _logp(m, T, V, 3), _logp(n, T, V, 4)
    one = _stream(KLMatrixAccumulator(m, n), lf, lg, cuts=[])
    many = _stream(KLMatrixAccumulator(m, n), lf, lg, cuts=[1, 2, 17, 50])
    tiny = _stream(KLMatrixAccumulator(m, n, max_elements=V), lf, lg, cuts=[])  # one token per sub-chunk
    torch.testing.assert_close(one.mean(), many.mean(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(one.mean(), tiny.mean(), rtol=RTOL, atol=ATOL)


def test_batch_dims_weights_and_padding_garbage():
    m, n, B, S, V = 2, 3, 3, 8, 64
    lf, lg = _logp(m, B * S, V, 5), _logp(n, B * S, V, 6)
    mask = torch.ones(B, S)
    mask[0, 5:] = 0
    mask[2, 1:] = 0
    lf_bad, lg_bad = lf.clone(), lg.clone()
    lf_bad[:, mask.reshape(-1) == 0] = math.nan  # padding may hold anything
    acc = KLMatrixAccumulator(m, n)
    acc.update(lf_bad.reshape(m, B, S, V), lg_bad.reshape(n, B, S, V), weights=mask)
    keep = mask.reshape(-1) == 1
    torch.testing.assert_close(acc.mean(), naive_kl_matrix(lf[:, keep], lg[:, keep]), rtol=RTOL, atol=ATOL)
    assert acc.count == float(mask.sum())
    # fractional weights = weighted mean
    w = torch.rand(B * S, generator=torch.Generator().manual_seed(0)) + 0.1
    acc2 = _stream(KLMatrixAccumulator(m, n), lf, lg, cuts=[5], w=w)
    torch.testing.assert_close(acc2.mean(), naive_kl_matrix(lf, lg, w), rtol=RTOL, atol=ATOL)


def test_zero_probabilities_are_zero_log_zero():
    m, n, T, V = 2, 3, 10, 30
    lf, lg = _logp(m, T, V, 7), _logp(n, T, V, 8)
    # the same vocabulary entries masked out (probability exactly 0) on both sides
    masked = torch.zeros(V, dtype=torch.bool)
    masked[[0, 3, 29]] = True
    lf = lf.masked_fill(masked, -math.inf).log_softmax(-1)
    lg = lg.masked_fill(masked, -math.inf).log_softmax(-1)
    # and front-only zeros (p = 0, q > 0): contributes 0, finite
    lf[0, :, 5] = -math.inf
    lf = lf.log_softmax(-1)
    acc = KLMatrixAccumulator(m, n)
    acc.update(lf, lg)
    out = acc.mean()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, naive_kl_matrix(lf, lg), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(acc.cross_entropy(), _naive_ce(lf, lg), rtol=RTOL, atol=ATOL)


def _naive_ce(lf, lg):
    out = torch.zeros(lf.shape[0], lg.shape[0], dtype=torch.float64)
    for i in range(lf.shape[0]):
        p = lf[i].double().exp()
        for j in range(lg.shape[0]):
            out[i, j] = -torch.where(p > 0, p * lg[j].double(), torch.zeros_like(p)).sum(-1).mean()
    return out


def test_back_zero_where_front_positive_is_infinite_kl_error():
    lf, lg = _logp(2, 6, 20, 9), _logp(2, 6, 20, 10)
    lg[1, 3, 4] = -math.inf
    lg = lg.log_softmax(-1)
    acc = KLMatrixAccumulator(2, 2, front_name="llama-1b", back_name="llama-3b",
                              back_labels=["embedding output", "block 0 output"])
    with pytest.raises(NumericalError, match="infinite.*block 0 output"):
        acc.update(lf, lg)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_and_inf_raise_numerical_error_naming_blocks(bad):
    lf, lg = _logp(3, 5, 16, 11), _logp(2, 5, 16, 12)
    lf[2, 1, 7] = bad
    acc = KLMatrixAccumulator(3, 2, front_name="smollm2-135m", front_labels=["b1", "b2", "b3"])
    with pytest.raises(NumericalError) as ei:
        acc.update(lf, lg)
    msg = str(ei.value)
    assert "smollm2-135m" in msg and "b3" in msg and "b1" not in msg and "How to fix" in msg
    assert isinstance(ei.value, HfKlasError)


def test_logits_instead_of_logprobs_rejected():
    x = torch.randn(2, 4, 10) + 5.0
    with pytest.raises(NumericalError, match="log_softmax"):
        KLMatrixAccumulator(2, 2).update(x, x)


def test_vocab_mismatch_and_empty():
    with pytest.raises(IncompatibleAnchorsError):
        KLMatrixAccumulator(1, 1).update(_logp(1, 3, 10, 0), _logp(1, 3, 11, 0))
    with pytest.raises(HfKlasError):
        KLMatrixAccumulator(1, 1).mean()


def test_float64_compute_and_self_kl_is_zero():
    lf = _logp(3, 12, 100, 13)
    acc = KLMatrixAccumulator(3, 3, compute_dtype=torch.float64)
    acc.update(lf, lf)
    torch.testing.assert_close(torch.diagonal(acc.mean()), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_within_anchor_kl_matches_naive_consecutive():
    L, T, V = 5, 23, 120
    lp = _logp(L, T, V, 14)
    acc = WithinAnchorKL(L, name="back")
    acc.update(lp[:, :10])
    acc.update(lp[:, 10:])
    ref = naive_kl_matrix(lp, lp)
    torch.testing.assert_close(acc.mean(), torch.stack([ref[j, j + 1] for j in range(L - 1)]), rtol=RTOL, atol=ATOL)
    bad = lp.clone()
    bad[3, 0, 0] = math.nan
    with pytest.raises(NumericalError, match="back"):
        WithinAnchorKL(L, name="back").update(bad)


def test_final_output_kl_accumulator_and_function():
    k, T, V = 3, 15, 40
    lp = _logp(k, T, V, 15)
    acc = FinalOutputKLAccumulator(["a", "b", "c"])
    acc.update([lp[0][:7], lp[1][:7], lp[2][:7]])
    acc.update([lp[0][7:], lp[1][7:], lp[2][7:]])
    ref = naive_kl_matrix(lp, lp)
    ref.fill_diagonal_(0)
    torch.testing.assert_close(acc.mean(), ref, rtol=RTOL, atol=ATOL)
    assert math.isclose(final_output_kl(lp[0], lp[2]), float(ref[0, 2]), rel_tol=RTOL)


def test_topk_error_decreases_with_k_and_is_exact_at_V():
    m, n, T, V = 3, 4, 20, 300
    lf, lg = _logp(m, T, V, 16), _logp(n, T, V, 17)
    errs = []
    for k in (1, 3, 10, 40, 150):
        rep = topk_kl_error(lf, lg, k)
        assert (rep.exact - rep.approx).min() > -1e-5  # lumping never overestimates (data processing)
        errs.append(rep.max_abs_error)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    rep = topk_kl_error(lf, lg, V)
    assert rep.max_rel_error < RTOL and rep.mean_union_size == V


def test_topk_streams_like_exact_with_weights():
    m, n, T, V = 2, 2, 30, 80
    lf, lg = _logp(m, T, V, 18), _logp(n, T, V, 19)
    w = (torch.arange(T) % 4 != 0).float()
    acc = _stream(TopKKLMatrixAccumulator(m, n, k=V, max_elements=500), lf, lg, cuts=[9, 21], w=w)
    torch.testing.assert_close(acc.mean(), naive_kl_matrix(lf, lg, w), rtol=RTOL, atol=ATOL)
