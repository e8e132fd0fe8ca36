"""Feature-similarity scores for the baseline selectors, in the same [m, n] convention as Θ (see scoring.py).

Inputs are token features: front block outputs X_i ([T, d_f] per block, stacked [m, T, d_f]) and back
resume-point inputs Y_j ([n, T, d_g]: embedding output, block 0 output, …, block n-2 output). Every score is
oriented so that LOWER IS BETTER, like Γ:

* linear CKA → score = 1 − CKA (Kornblith et al. 2019, feature-space form, tokens centred);
* least-squares MSE → relative residual ‖Y − ŷ‖² / ‖Y − Ȳ‖² of the ridge fit [X 1]·M ≈ Y (1 = no better than
  predicting the mean; comparable across widths);
* CE → −Σ p_f log q_g per token (:func:`cross_entropy_scores`, from the KL accumulator's cross term);
* ShortGPT block influence → 1 − cos(block input, block output), token-averaged, per block;
* least-squares replacement (self-stitching) → relative MSE of predicting resume point j from block i's output.

Why one statistics object for CKA and MSE: both are functions of the same centred second moments
(XᵀX, YᵀY, XᵀY and the sums), streamed in float64. The cross moments cost m·n·d_f·d_g·8 bytes — fine for
ViTs, not for big LLMs: restrict the pairs (``pair_mask``) or use :class:`SubsampledCKA` (``max_tokens``).
"""

from __future__ import annotations

import math

import torch

from ..errors import CalibrationError, HfKlasError, NumericalError

__all__ = [
    "BlockInfluence",
    "CrossFeatureStats",
    "SelfStitchLS",
    "SubsampledCKA",
    "block_influence_matrix",
    "cross_entropy_scores",
    "linear_cka",
    "ls_relative_mse",
    "ls_replacement_stats",
    "random_scores",
    "self_stitch_mask",
]

DEFAULT_MAX_BYTES = 4 << 30


def _feats(x: torch.Tensor, blocks: int, dim: int | None, role: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.shape[0] != blocks:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{role}: expected [{blocks}, tokens..., d], got {shape}")
    x = x.reshape(blocks, -1, x.shape[-1])
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(f"{role}: expected feature width {dim}, got {x.shape[-1]}")
    return x


def _select_tokens(mask, num_tokens: int, device):
    if mask is None:
        return None
    keep = torch.as_tensor(mask, device=device).reshape(-1).bool()
    if keep.numel() != num_tokens:
        raise ValueError(f"mask: expected {num_tokens} entries, got {keep.numel()}")
    return keep.nonzero().flatten()


def _check_finite(x: torch.Tensor, role: str) -> None:
    if not torch.isfinite(x).all():
        blocks = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise NumericalError(
            f"NaN/inf in the {role} features at block rows {blocks}.",
            "run the anchor in float32 and exclude padding positions with mask=attention_mask.",
        )


# ----------------------------------------------------------------------------------------------------------
# direct (non-streamed) references
# ----------------------------------------------------------------------------------------------------------
def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA of X [T, d_x] and Y [T, d_y]: ‖YᶜᵀXᶜ‖_F² / (‖XᶜᵀXᶜ‖_F ‖YᶜᵀYᶜ‖_F) (0 if either is constant)."""
    X = X.reshape(-1, X.shape[-1]).double()
    Y = Y.reshape(-1, Y.shape[-1]).double()
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    den = torch.linalg.matrix_norm(X.T @ X) * torch.linalg.matrix_norm(Y.T @ Y)
    return 0.0 if float(den) == 0 else float(torch.linalg.matrix_norm(Y.T @ X) ** 2 / den)


def ls_relative_mse(X: torch.Tensor, Y: torch.Tensor, ridge: float = 1e-6) -> float:
    """Relative residual of the ridge fit [X 1]·M ≈ Y (bias not shrunk), in-sample, float64."""
    X = X.reshape(-1, X.shape[-1]).double()
    Y = Y.reshape(-1, Y.shape[-1]).double()
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    A = Xc.T @ Xc
    lam = ridge * float(torch.diagonal(A).mean().clamp_min(1e-300))
    W = torch.linalg.solve(A + lam * torch.eye(A.shape[0], dtype=A.dtype), Xc.T @ Yc)
    den = float((Yc**2).sum())
    return 0.0 if den == 0 else float(((Yc - Xc @ W) ** 2).sum() / den)


# ----------------------------------------------------------------------------------------------------------
# streamed second moments: CKA and LS-MSE for all (or selected) pairs
# ----------------------------------------------------------------------------------------------------------
class CrossFeatureStats:
    """Streamed float64 moments Σx, Σy, ΣxxᵀΣ, Σyyᵀ, Σxyᵀ per block / pair → :meth:`cka`, :meth:`ls_mse`.

    ``update(X [m, T, d_f], Y [n, T, d_g], mask=None [T])``. ``pair_mask`` [m, n] (bool) restricts the
    pairs whose cross moments are kept (memory ∝ number of pairs); scores of other pairs are NaN.
    Construction refuses more than ``max_bytes`` of statistics (cause + fix) instead of exhausting memory.
    """

    def __init__(self, m: int, n: int, d_f: int, d_g: int, pair_mask=None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.m, self.n, self.d_f, self.d_g = int(m), int(n), int(d_f), int(d_g)
        pm = torch.ones(m, n, dtype=torch.bool) if pair_mask is None else torch.as_tensor(pair_mask).bool().cpu()
        if tuple(pm.shape) != (m, n):
            raise ValueError(f"pair_mask must be [{m}, {n}], got {tuple(pm.shape)}")
        self.pair_mask = pm
        self.pairs = pm.nonzero()  # [P, 2]
        self._pair_index = torch.full((m, n), -1, dtype=torch.long)
        self._pair_index[pm] = torch.arange(len(self.pairs))
        need = 8 * (len(self.pairs) * d_f * d_g + m * d_f * d_f + n * d_g * d_g)
        if need > max_bytes:
            raise HfKlasError(
                f"feature statistics for {len(self.pairs)} block pairs of widths {d_f}×{d_g} need "
                f"{need / 2**30:.1f} GiB (limit {max_bytes / 2**30:.1f} GiB).",
                "restrict the pairs with pair_mask (e.g. the valid or nearest configurations), use "
                "SubsampledCKA(max_tokens=...) for CKA, or raise max_bytes if the memory is there.",
            )
        f64 = torch.float64
        self.sx = torch.zeros(m, d_f, dtype=f64)
        self.sy = torch.zeros(n, d_g, dtype=f64)
        self.sxx = torch.zeros(m, d_f, d_f, dtype=f64)
        self.syy = torch.zeros(n, d_g, d_g, dtype=f64)
        self.sxy = torch.zeros(len(self.pairs), d_f, d_g, dtype=f64)
        self.count = 0

    @torch.no_grad()
    def update(self, X: torch.Tensor, Y: torch.Tensor, mask=None) -> None:
        X = _feats(X, self.m, self.d_f, "X")
        Y = _feats(Y, self.n, self.d_g, "Y")
        if X.shape[1] != Y.shape[1]:
            raise ValueError(f"X has {X.shape[1]} tokens and Y {Y.shape[1]}: they must be the same positions")
        keep = _select_tokens(mask, X.shape[1], X.device)
        if keep is not None:
            X, Y = X[:, keep], Y[:, keep]
        X, Y = X.double(), Y.double()
        _check_finite(X, "front")
        _check_finite(Y, "back")
        self.sx += X.sum(1).cpu()
        self.sy += Y.sum(1).cpu()
        self.sxx += torch.bmm(X.transpose(1, 2), X).cpu()
        self.syy += torch.bmm(Y.transpose(1, 2), Y).cpu()
        for i in range(self.m):
            js = self.pairs[self.pairs[:, 0] == i, 1]
            if len(js):
                idx = self._pair_index[i, js]
                self.sxy[idx] += torch.einsum("td,jte->jde", X[i], Y[js.to(Y.device)]).cpu()
        self.count += X.shape[1]

    def _centred(self):
        if self.count < 2:
            raise CalibrationError(
                f"only {self.count} token(s) accumulated; centred statistics need at least 2.",
                "feed more calibration tokens (update()) before reading scores.",
            )
        N = self.count
        cxx = self.sxx - self.sx[:, :, None] * self.sx[:, None, :] / N
        cyy = self.syy - self.sy[:, :, None] * self.sy[:, None, :] / N
        pi, pj = self.pairs[:, 0], self.pairs[:, 1]
        cxy = self.sxy - self.sx[pi][:, :, None] * self.sy[pj][:, None, :] / N
        return cxx, cyy, cxy

    def cka(self) -> torch.Tensor:
        """Linear CKA [m, n] (float64; NaN for pairs outside pair_mask; 0 where a side is constant)."""
        cxx, cyy, cxy = self._centred()
        nx = torch.linalg.matrix_norm(cxx)
        ny = torch.linalg.matrix_norm(cyy)
        pi, pj = self.pairs[:, 0], self.pairs[:, 1]
        den = nx[pi] * ny[pj]
        val = torch.where(den > 0, torch.linalg.matrix_norm(cxy) ** 2 / den.clamp_min(1e-300), torch.zeros_like(den))
        out = torch.full((self.m, self.n), math.nan, dtype=torch.float64)
        out[pi, pj] = val.clamp(0.0, 1.0)
        return out

    def cka_score(self) -> torch.Tensor:
        """1 − CKA (lower is better)."""
        return 1.0 - self.cka()

    def ls_mse(self, ridge: float = 1e-4) -> torch.Tensor:
        """Relative residual [m, n] of the ridge least-squares fit [X_i 1]·M ≈ Y_j (in-sample).

        Fitted on centred moments, which equals the fit with an unshrunk bias; the ridge is relative
        (``ridge × mean diag(XᶜᵀXᶜ)``), as in the stitch-layer init. In-sample error underestimates with
        few tokens: use tokens ≫ d_f. 1.0 means no better than predicting Y's mean.
        """
        cxx, cyy, cxy = self._centred()
        out = torch.full((self.m, self.n), math.nan, dtype=torch.float64)
        eye = torch.eye(self.d_f, dtype=torch.float64)
        for i in range(self.m):
            sel = (self.pairs[:, 0] == i).nonzero().flatten()
            if not len(sel):
                continue
            A = cxx[i]
            lam = ridge * float(torch.diagonal(A).mean().clamp_min(1e-300))
            B = cxy[sel]  # [J, d_f, d_g]
            rhs = B.permute(1, 0, 2).reshape(self.d_f, -1)
            W = torch.linalg.solve(A + lam * eye, rhs).reshape(self.d_f, len(sel), self.d_g).permute(1, 0, 2)
            js = self.pairs[sel, 1]
            tyy = torch.diagonal(cyy[js], dim1=1, dim2=2).sum(-1)  # ‖Yᶜ‖²
            resid = tyy - 2 * (W * B).sum((1, 2)) + (W * torch.matmul(A, W)).sum((1, 2))
            rel = torch.where(tyy > 0, resid / tyy.clamp_min(1e-300), torch.zeros_like(tyy))
            out[i, js] = rel.clamp_min(0.0)
        return out


class SubsampledCKA:
    """Linear CKA on a uniform random subsample of at most ``max_tokens`` tokens (all blocks, same tokens).

    Why: the feature-space moments need m·n·d_f·d_g memory, infeasible for large LLMs. Keeping the tokens
    with the ``max_tokens`` smallest random priorities (seeded) is an exact uniform sample without
    replacement that can be streamed; CKA is then computed in Gram form ⟨K̂_i, L̂_j⟩ over the sample
    (identical to the feature form on those tokens). Memory: max_tokens·(m·d_f + n·d_g) floats for the
    sample plus n·max_tokens² float64 for the back Gram matrices.
    """

    def __init__(self, m: int, n: int, max_tokens: int = 2048, seed: int = 0, storage_dtype=torch.float32):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        self.m, self.n, self.max_tokens = int(m), int(n), int(max_tokens)
        self.storage_dtype = storage_dtype
        self._gen = torch.Generator().manual_seed(int(seed))
        self._prio = torch.empty(0, dtype=torch.float64)
        self._X: torch.Tensor | None = None
        self._Y: torch.Tensor | None = None
        self.count = 0  # tokens seen (not kept)

    @torch.no_grad()
    def update(self, X: torch.Tensor, Y: torch.Tensor, mask=None) -> None:
        X = _feats(X, self.m, None if self._X is None else self._X.shape[-1], "X")
        Y = _feats(Y, self.n, None if self._Y is None else self._Y.shape[-1], "Y")
        if X.shape[1] != Y.shape[1]:
            raise ValueError(f"X has {X.shape[1]} tokens and Y {Y.shape[1]}: they must be the same positions")
        keep = _select_tokens(mask, X.shape[1], X.device)
        if keep is not None:
            X, Y = X[:, keep], Y[:, keep]
        X, Y = X.detach().to("cpu", self.storage_dtype), Y.detach().to("cpu", self.storage_dtype)
        _check_finite(X, "front")
        _check_finite(Y, "back")
        prio = torch.rand(X.shape[1], generator=self._gen, dtype=torch.float64)
        if self._X is None:
            allp, allX, allY = prio, X, Y
        else:
            allp = torch.cat([self._prio, prio])
            allX, allY = torch.cat([self._X, X], 1), torch.cat([self._Y, Y], 1)
        if allp.numel() > self.max_tokens:
            sel = allp.topk(self.max_tokens, largest=False).indices.sort().values
            allp, allX, allY = allp[sel], allX[:, sel], allY[:, sel]
        self._prio, self._X, self._Y = allp, allX.contiguous(), allY.contiguous()
        self.count += X.shape[1]

    @staticmethod
    def _unit_gram(Z: torch.Tensor) -> torch.Tensor:
        Z = Z.double()
        Z = Z - Z.mean(0)
        K = Z @ Z.T
        nrm = torch.linalg.matrix_norm(K)
        return K / nrm if float(nrm) > 0 else torch.zeros_like(K)

    def cka(self) -> torch.Tensor:
        if self._X is None or self._X.shape[1] < 2:
            raise CalibrationError("fewer than 2 tokens sampled; CKA is undefined.",
                                   "feed more calibration tokens (update()) before reading scores.")
        L = torch.stack([self._unit_gram(self._Y[j]).reshape(-1) for j in range(self.n)])  # [n, K²]
        out = torch.empty(self.m, self.n, dtype=torch.float64)
        for i in range(self.m):
            out[i] = L @ self._unit_gram(self._X[i]).reshape(-1)
        return out.clamp(0.0, 1.0)

    def cka_score(self) -> torch.Tensor:
        return 1.0 - self.cka()

    @property
    def num_sampled(self) -> int:
        return 0 if self._X is None else self._X.shape[1]


# ----------------------------------------------------------------------------------------------------------
# CE, random
# ----------------------------------------------------------------------------------------------------------
def cross_entropy_scores(kl_accumulator) -> torch.Tensor:
    """CE baseline [m, n] = mean per-token −Σ p_f log q_g, read from a filled ``KLMatrixAccumulator``."""
    return kl_accumulator.cross_entropy()


def random_scores(m: int, n: int, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1) scores [m, n] from a seeded generator: the random-selection baseline."""
    return torch.rand(m, n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# self-stitching baselines (f = g: skip back blocks with a bridge)
# ----------------------------------------------------------------------------------------------------------
class BlockInfluence:
    """ShortGPT block influence BI_b = 1 − mean_t cos(h_b(t), h_{b+1}(t)), h_b = input of block b.

    ``update(hidden [L+1, T, d], mask=None)``: embedding output then every block's output (the raw block
    outputs, NOT a final-normed last state as some ``output_hidden_states`` return). Result: [L].
    """

    def __init__(self, num_blocks: int, eps: float = 1e-12):
        self.num_blocks = int(num_blocks)
        self.eps = eps
        self._sum = torch.zeros(self.num_blocks, dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def update(self, hidden: torch.Tensor, mask=None) -> None:
        h = _feats(hidden, self.num_blocks + 1, None, "hidden")
        keep = _select_tokens(mask, h.shape[1], h.device)
        if keep is not None:
            h = h[:, keep]
        h = h.double()
        _check_finite(h, "hidden")
        cos = torch.nn.functional.cosine_similarity(h[:-1], h[1:], dim=-1, eps=self.eps)  # [L, T]
        self._sum += (1.0 - cos).sum(1).cpu()
        self.count += h.shape[1]

    def values(self) -> torch.Tensor:
        if self.count == 0:
            raise CalibrationError("no tokens accumulated for block influence.",
                                   "call update() with at least one chunk of hidden states.")
        return self._sum / self.count


def self_stitch_mask(num_blocks: int, min_skip: int = 1, max_skip: int | None = None) -> torch.Tensor:
    """[L, L] bool: self-stitch configurations (front_blocks=i, back_start=j) skipping j−i ∈ [min_skip, max_skip]
    blocks (python blocks i..j-1)."""
    i = torch.arange(1, num_blocks + 1)[:, None]
    j = torch.arange(num_blocks)[None, :]
    skip = j - i
    ok = skip >= min_skip
    if max_skip is not None:
        ok &= skip <= max_skip
    return ok


def block_influence_matrix(bi) -> torch.Tensor:
    """Self-stitch score [L, L]: Σ BI_b over the skipped blocks b = i..j-1 (row i-1, column j; ShortGPT's
    additive removal criterion); 0 when j = i (nothing skipped), NaN when j < i (not a skip)."""
    bi = torch.as_tensor(bi, dtype=torch.float64).reshape(-1)
    L = bi.numel()
    cs = torch.cat([torch.zeros(1, dtype=torch.float64), bi.cumsum(0)])  # cs[k] = Σ_{b<k} BI_b
    i = torch.arange(1, L + 1)[:, None]
    j = torch.arange(L)[None, :]
    out = cs[j.expand(L, L)] - cs[i.expand(L, L)]
    return torch.where(j >= i, out, torch.full_like(out, math.nan))


def ls_replacement_stats(num_blocks: int, hidden_size: int, min_skip: int = 1, max_skip: int | None = None,
                         max_bytes: int = DEFAULT_MAX_BYTES) -> "SelfStitchLS":
    """Least-squares replacement (ReplaceMe-style) for self-stitching: how well a linear map of block i's
    output predicts resume point j (the input of block j). Returns an accumulator whose ``update(hidden)``
    takes [L+1, T, d] (embedding output + block outputs) and whose ``scores()`` is the relative MSE [L, L]
    (NaN outside the skip range)."""
    return SelfStitchLS(num_blocks, hidden_size, min_skip, max_skip, max_bytes)


class SelfStitchLS:
    """See :func:`ls_replacement_stats`. Front rows = block outputs h[1..L], back columns = h[0..L-1]."""

    def __init__(self, num_blocks, hidden_size, min_skip=1, max_skip=None, max_bytes=DEFAULT_MAX_BYTES):
        self.num_blocks = int(num_blocks)
        mask = self_stitch_mask(num_blocks, min_skip, max_skip)
        self.stats = CrossFeatureStats(num_blocks, num_blocks, hidden_size, hidden_size, mask, max_bytes)

    def update(self, hidden: torch.Tensor, mask=None) -> None:
        h = _feats(hidden, self.num_blocks + 1, None, "hidden")
        self.stats.update(h[1:], h[:-1], mask)

    def scores(self, ridge: float = 1e-4) -> torch.Tensor:
        return self.stats.ls_mse(ridge)
