"""Streamed KL matrices (KLAS's Θ) from per-block log-probabilities.

Θ(P_i^f, P_j^g) = mean over tokens of KL(P_i^f(t) ‖ P_j^g(t)) for *all* pairs (i, j). Holding every block's
distribution over every calibration token is impossible for LLMs (blocks × tokens × vocabulary), so the
accumulators here take one chunk of tokens at a time and keep only O(m·n) float64 sums.

Why the decomposition: KL(p‖q) = Σ_v p log p − Σ_v p log q. The first term depends on the front block only
(m numbers per token); the cross term for all m·n pairs of a chunk is ONE matrix product
``P_f.reshape(m, T*V) @ logp_g.reshape(n, T*V).T``. The chunk is cut further along tokens
(``max_elements``) so that ``exp`` materialises at most one bounded copy of the front's probabilities.

Zero probabilities (``-inf`` log-probs, e.g. vocabulary entries masked to ``-inf`` logits): we use the
convention 0·log 0 = 0 in both terms, so a token that both distributions exclude contributes nothing.
If the *back* distribution gives exact zero to a token the *front* gives mass to, the KL is genuinely
infinite: that raises :class:`~hf_klas.errors.NumericalError` naming the pair rather than propagating ``inf``.
NaN and ``+inf`` inputs also raise, naming the anchor and blocks.

Precision: the cross-term product runs in ``compute_dtype`` (float32 by default: it is the expensive part),
every per-chunk result is accumulated in float64. KL = self − cross is a difference of two terms of size
~entropy, so tiny negative values from rounding are clamped to 0 in :meth:`KLMatrixAccumulator.mean`. Use
``compute_dtype=torch.float64`` when the KLs of interest are far below the entropies (e.g. f = g).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import CalibrationError, IncompatibleAnchorsError, NumericalError

__all__ = [
    "KLMatrixAccumulator",
    "TopKKLMatrixAccumulator",
    "WithinAnchorKL",
    "FinalOutputKLAccumulator",
    "TopKErrorReport",
    "final_output_kl",
    "naive_kl_matrix",
    "topk_kl_error",
]

_DEFAULT_MAX_ELEMENTS = 1 << 24  # ~64 MB of float32 per exp'd sub-chunk


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _labels(labels: Sequence[str] | None, count: int, what: str) -> list[str]:
    if labels is None:
        return [f"{what} #{k}" for k in range(count)]
    labels = [str(x) for x in labels]
    if len(labels) != count:
        raise ValueError(f"expected {count} labels for {what}, got {len(labels)}")
    return labels


def _as_blocks(logp: torch.Tensor, blocks: int | None, role: str) -> torch.Tensor:
    """[blocks, *tokens, V] -> contiguous [blocks, T, V] (batch/sequence dims flattened)."""
    if not isinstance(logp, torch.Tensor):
        raise TypeError(f"{role}: expected a torch.Tensor of log-probabilities, got {type(logp).__name__}")
    if logp.dim() < 3:
        raise ValueError(f"{role}: expected shape [blocks, tokens..., V], got {tuple(logp.shape)}")
    if blocks is not None and logp.shape[0] != blocks:
        raise ValueError(f"{role}: expected {blocks} blocks on dim 0, got {logp.shape[0]}")
    logp = logp.reshape(logp.shape[0], -1, logp.shape[-1])
    if not logp.is_floating_point():
        raise TypeError(f"{role}: log-probabilities must be floating point, got {logp.dtype}")
    return logp.contiguous()


def _token_weights(weights, num_tokens: int, device) -> torch.Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, device=device).reshape(-1).to(torch.float64)
    if w.numel() != num_tokens:
        raise ValueError(f"weights: expected {num_tokens} token weights, got {w.numel()}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise NumericalError(
            "token weights contain negative, NaN or inf values",
            "pass non-negative finite weights (e.g. the attention mask as 0/1).",
        )
    return w


def _check_logp(logp: torch.Tensor, anchor: str, labels: list[str], chunk: int) -> None:
    """NaN / +inf / clearly-positive log-probs -> NumericalError naming the anchor and the blocks."""
    bad = torch.isnan(logp) | torch.isposinf(logp)
    if bad.any():
        blocks = bad.flatten(1).any(1).nonzero().flatten().tolist()
        raise NumericalError(
            f"NaN or +inf log-probabilities from anchor '{anchor}' at {', '.join(labels[b] for b in blocks)} "
            f"(calibration chunk {chunk}).",
            "run the anchor in float32 (fp16 overflows in late blocks), make sure the probe applies "
            "log_softmax, and drop padding positions (pass weights=attention_mask) before the update.",
        )
    mx = logp.amax() if logp.numel() else torch.tensor(0.0)
    if float(mx) > 1e-3:
        blocks = (logp.flatten(1).amax(1) > 1e-3).nonzero().flatten().tolist()
        raise NumericalError(
            f"values > 0 (max {float(mx):.4g}) in the log-probabilities from anchor '{anchor}' at "
            f"{', '.join(labels[b] for b in blocks)}: these are logits, not log-probabilities.",
            "apply torch.log_softmax(logits.float(), dim=-1) to the probe outputs before the update.",
        )


def _infinite_kl_error(pairs, front: str, back: str, flabels, blabels, chunk) -> NumericalError:
    shown = ", ".join(f"({flabels[i]} ‖ {blabels[j]})" for i, j in pairs[:8])
    more = f" and {len(pairs) - 8} more" if len(pairs) > 8 else ""
    return NumericalError(
        f"KL is infinite for {shown}{more}: anchor '{back}' gives probability exactly 0 (log-prob -inf) to "
        f"outputs that anchor '{front}' gives positive probability (calibration chunk {chunk}).",
        "mask the same vocabulary entries in both anchors, or smooth the target distribution "
        "(log((1-a)·q + a/V) with a small a) before computing log-probabilities.",
    )


def _sub_chunks(num_tokens: int, rows: int, vocab: int, max_elements: int):
    step = max(1, int(max_elements) // max(1, rows * vocab))
    for s in range(0, num_tokens, step):
        yield s, min(num_tokens, s + step)


# ----------------------------------------------------------------------------------------------------------
# exact all-pairs KL
# ----------------------------------------------------------------------------------------------------------
class KLMatrixAccumulator:
    """Θ[i, j] = mean_t KL(P_i^f(t) ‖ P_j^g(t)) for all pairs, streamed over token chunks.

    ``update(logp_f [m, T, V], logp_g [n, T, V], weights=None [T])`` — same T token positions on both sides
    (extra leading token dims such as [batch, seq] are flattened). ``weights`` are per-token (e.g. the
    attention mask): zero-weight tokens are dropped before any check, so padding may hold garbage.

    Also exposes the two terms it accumulates: :meth:`cross_entropy` (−Σ p_f log q_g, the CE baseline)
    and :meth:`front_entropy`.
    """

    def __init__(
        self,
        m: int,
        n: int,
        *,
        front_name: str = "front",
        back_name: str = "back",
        front_labels: Sequence[str] | None = None,
        back_labels: Sequence[str] | None = None,
        compute_dtype: torch.dtype = torch.float32,
        max_elements: int = _DEFAULT_MAX_ELEMENTS,
        validate: bool = True,
    ):
        if m < 1 or n < 1:
            raise ValueError(f"need at least one block on each side, got m={m}, n={n}")
        self.m, self.n = int(m), int(n)
        self.front_name, self.back_name = str(front_name), str(back_name)
        self.front_labels = _labels(front_labels, self.m, "block")
        self.back_labels = _labels(back_labels, self.n, "block")
        self.compute_dtype = compute_dtype
        self.max_elements = int(max_elements)
        self.validate = bool(validate)
        self._self = torch.zeros(self.m, dtype=torch.float64)  # Σ_t w_t Σ_v p log p
        self._cross = torch.zeros(self.m, self.n, dtype=torch.float64)  # Σ_t w_t Σ_v p log q
        self.count = 0.0  # total token weight (= number of tokens when unweighted)
        self.num_tokens = 0
        self.num_chunks = 0

    @torch.no_grad()
    def update(self, logp_f: torch.Tensor, logp_g: torch.Tensor, weights=None) -> None:
        """Add one chunk of tokens (see class docstring for shapes)."""
        logp_f = _as_blocks(logp_f, self.m, "logp_f")
        logp_g = _as_blocks(logp_g, self.n, "logp_g")
        if logp_f.shape[1:] != logp_g.shape[1:]:
            if logp_f.shape[2] != logp_g.shape[2]:
                raise IncompatibleAnchorsError(
                    f"front distributions have {logp_f.shape[2]} outputs, back ones {logp_g.shape[2]}: KL "
                    "needs both over the same vocabulary/classes.",
                    "stitch anchors that share a tokenizer (or label set), or map both onto a common "
                    "vocabulary before computing log-probabilities.",
                )
            raise ValueError(
                f"logp_f covers {logp_f.shape[1]} tokens but logp_g covers {logp_g.shape[1]}: both must "
                "be the same token positions."
            )
        w = _token_weights(weights, logp_f.shape[1], logp_f.device)
        if w is not None and not bool((w > 0).all()):
            keep = (w > 0).nonzero().flatten()
            logp_f, logp_g, w = logp_f[:, keep], logp_g[:, keep], w[keep]
        chunk = self.num_chunks
        if self.validate:
            _check_logp(logp_f, self.front_name, self.front_labels, chunk)
            _check_logp(logp_g, self.back_name, self.back_labels, chunk)
        T, V = logp_f.shape[1], logp_f.shape[2]
        for s, e in _sub_chunks(T, max(self.m, self.n), V, self.max_elements):
            self._accumulate(logp_f[:, s:e], logp_g[:, s:e], None if w is None else w[s:e], chunk)
        self.count += float(T if w is None else w.sum())
        self.num_tokens += T
        self.num_chunks += 1

    def _accumulate(self, lf, lg, w, chunk) -> None:
        cd = self.compute_dtype
        lf, lg = lf.to(cd), lg.to(cd)
        tc = lf.shape[1]
        pf = lf.exp()  # the one bounded extra copy
        plogp = (pf * lf).nan_to_num_(nan=0.0).sum(-1)  # 0 * -inf = nan -> 0 (0 log 0 = 0)
        if w is None:
            self._self += plogp.sum(1).to("cpu", torch.float64)
        else:
            wc = w.to(cd)
            self._self += (plogp.to(torch.float64) @ w).cpu()
            pf.mul_(wc.view(1, tc, 1))  # weights fold into the cross term; zero weights were dropped
        neg = torch.isneginf(lg)
        if neg.any():
            hits = (pf > 0).to(cd).reshape(self.m, -1) @ neg.to(cd).reshape(self.n, -1).T
            if (hits > 0).any():
                pairs = (hits > 0).nonzero().tolist()
                raise _infinite_kl_error(pairs, self.front_name, self.back_name, self.front_labels,
                                         self.back_labels, chunk)
            lg = lg.masked_fill(neg, 0.0)  # every front p is 0 there: contributes 0
        cross = pf.reshape(self.m, -1) @ lg.reshape(self.n, -1).T
        self._cross += cross.to("cpu", torch.float64)

    # data-parallel processes add these up (hf_klas.selection.distributed) --------------------------------
    def state(self) -> list[torch.Tensor]:
        """The raw float64 sums and counts: ``[Σ p log p, Σ p log q, (count, tokens, chunks)]``."""
        counts = torch.tensor([self.count, self.num_tokens, self.num_chunks], dtype=torch.float64)
        return [self._self, self._cross, counts]

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        """Replace the sums by ``tensors`` (e.g. every process's :meth:`state` added up)."""
        self._self, self._cross = tensors[0].clone(), tensors[1].clone()
        self.count = float(tensors[2][0])
        self.num_tokens, self.num_chunks = int(round(float(tensors[2][1]))), int(round(float(tensors[2][2])))

    # results --------------------------------------------------------------------------------------------
    def _need_tokens(self) -> None:
        if self.count <= 0:
            raise CalibrationError(
                "no calibration tokens were accumulated (count is 0), so Θ is undefined.",
                "call update() with at least one chunk whose token weights are not all zero.",
            )

    def sum(self) -> torch.Tensor:
        """Σ_t w_t KL(P_i^f(t) ‖ P_j^g(t)) as float64 [m, n] (not clamped)."""
        return self._self[:, None] - self._cross

    def mean(self) -> torch.Tensor:
        """Θ as float64 [m, n]: weighted mean KL per token; rounding negatives clamped to 0 (KL ≥ 0)."""
        self._need_tokens()
        return (self.sum() / self.count).clamp_min(0.0)

    def cross_entropy(self) -> torch.Tensor:
        """Mean per-token CE(P_i^f, P_j^g) = −Σ_v p_f log q_g, float64 [m, n] (the CE baseline's score)."""
        self._need_tokens()
        return -self._cross / self.count

    def front_entropy(self) -> torch.Tensor:
        """Mean per-token entropy of each front block's distribution, float64 [m]."""
        self._need_tokens()
        return -self._self / self.count


# ----------------------------------------------------------------------------------------------------------
# KL between consecutive blocks of one anchor (Γ's denominator)
# ----------------------------------------------------------------------------------------------------------
class WithinAnchorKL:
    """mean_t KL(P_j(t) ‖ P_{j+1}(t)) for consecutive points j of ONE anchor: a vector of length L-1.

    ``update(logp [L, T, V], weights=None)``. Computed elementwise as Σ p (log p − log q) rather than by the
    two-term decomposition: consecutive blocks are close, and this form has no cancellation.
    For Γ's denominator feed the back anchor's n+1 points (embedding output, block 0 … block n-1 outputs):
    ``mean()`` then has the n entries :func:`~hf_klas.selection.scoring.gamma_matrix` expects.
    """

    def __init__(
        self,
        num_points: int,
        *,
        name: str = "anchor",
        labels: Sequence[str] | None = None,
        max_elements: int = _DEFAULT_MAX_ELEMENTS,
        validate: bool = True,
    ):
        if num_points < 2:
            raise ValueError(f"need at least two points to compare consecutive blocks, got {num_points}")
        self.num_points = int(num_points)
        self.name = str(name)
        self.labels = _labels(labels, self.num_points, "point")
        self.max_elements = int(max_elements)
        self.validate = bool(validate)
        self._sum = torch.zeros(self.num_points - 1, dtype=torch.float64)
        self.count = 0.0
        self.num_tokens = 0
        self.num_chunks = 0

    @torch.no_grad()
    def update(self, logp: torch.Tensor, weights=None) -> None:
        logp = _as_blocks(logp, self.num_points, "logp")
        w = _token_weights(weights, logp.shape[1], logp.device)
        if w is not None and not bool((w > 0).all()):
            keep = (w > 0).nonzero().flatten()
            logp, w = logp[:, keep], w[keep]
        if self.validate:
            _check_logp(logp, self.name, self.labels, self.num_chunks)
        T, V = logp.shape[1], logp.shape[2]
        for s, e in _sub_chunks(T, self.num_points, V, self.max_elements):
            lp = logp[:-1, s:e].float()
            lq = logp[1:, s:e].float()
            term = lp.exp() * (lp - lq)  # p=0 rows give nan (-inf - x or 0 * inf) -> 0 below
            inf = torch.isposinf(term)
            if inf.any():
                js = inf.flatten(1).any(1).nonzero().flatten().tolist()
                raise _infinite_kl_error([(j, j + 1) for j in js], self.name, self.name, self.labels,
                                         self.labels, self.num_chunks)
            per_tok = term.nan_to_num_(nan=0.0).sum(-1).to(torch.float64)  # [L-1, tc]
            self._sum += (per_tok.sum(1) if w is None else per_tok @ w[s:e]).cpu()
        self.count += float(T if w is None else w.sum())
        self.num_tokens += T
        self.num_chunks += 1

    def mean(self) -> torch.Tensor:
        """float64 [L-1]: entry j = mean KL(P_j ‖ P_{j+1}) (clamped ≥ 0)."""
        if self.count <= 0:
            raise CalibrationError(
                f"no calibration tokens were accumulated for anchor '{self.name}'.",
                "call update() with at least one chunk whose token weights are not all zero.",
            )
        return (self._sum / self.count).clamp_min(0.0)


# ----------------------------------------------------------------------------------------------------------
# final-output KL between anchors (anchor selection)
# ----------------------------------------------------------------------------------------------------------
class FinalOutputKLAccumulator:
    """[k, k] matrix of mean KL(final output of anchor a ‖ final output of anchor b), for anchor selection.

    ``update([logp_anchor0 [T, V], logp_anchor1 [T, V], ...], weights=None)``: the anchors' final
    distributions on the same tokens.
    """

    def __init__(self, names: Sequence[str], **kwargs):
        names = [str(x) for x in names]
        if len(names) < 1:
            raise ValueError("need at least one anchor name")
        self.names = names
        self._acc = KLMatrixAccumulator(
            len(names), len(names), front_name="anchors", back_name="anchors",
            front_labels=names, back_labels=names, **kwargs,
        )

    def update(self, logps: Sequence[torch.Tensor], weights=None) -> None:
        if len(logps) != len(self.names):
            raise ValueError(f"expected {len(self.names)} anchors' log-probs, got {len(logps)}")
        shapes = {tuple(x.shape[-1:]) for x in logps}
        if len(shapes) != 1:
            raise IncompatibleAnchorsError(
                f"anchors' final distributions have different sizes {sorted(s[0] for s in shapes)}.",
                "compare only anchors that share a tokenizer / label set.",
            )
        stacked = torch.stack([x.reshape(-1, x.shape[-1]) for x in logps])
        self._acc.update(stacked, stacked, weights)

    def mean(self) -> torch.Tensor:
        """float64 [k, k]; entry [a, b] = KL(anchor a ‖ anchor b), zero diagonal."""
        out = self._acc.mean()
        out.fill_diagonal_(0.0)
        return out

    @property
    def count(self) -> float:
        return self._acc.count


def final_output_kl(logp_a_last: torch.Tensor, logp_b_last: torch.Tensor, weights=None, **kwargs) -> float:
    """Mean KL(P_a ‖ P_b) between two anchors' final output distributions on one chunk ([T, V] each)."""
    acc = FinalOutputKLAccumulator(["a", "b"], **kwargs)
    acc.update([logp_a_last, logp_b_last], weights)
    return float(acc.mean()[0, 1])


# ----------------------------------------------------------------------------------------------------------
# top-k approximation for huge vocabularies
# ----------------------------------------------------------------------------------------------------------
class TopKKLMatrixAccumulator:
    """Θ approximated on a coarse-grained vocabulary: per token, the union U_t of every block's top-k outputs
    plus ONE "other" bucket holding the remaining mass.

    Why lumping (not renormalising): the lumped distributions stay proper distributions of the *same*
    probability mass, so this is the exact KL of a coarser partition. By the data-processing inequality it
    never exceeds the exact KL, it grows monotonically as k grows (the partition refines), and it is exact
    when the union covers the vocabulary (k = V). Cost per chunk drops from O(m·n·T·V) to O(m·n·T·|U|)
    plus O((m+n)·T·V) for top-k and the "other" mass. Use :func:`topk_kl_error` on a sample chunk to see
    the error for your anchors before relying on it.
    """

    def __init__(self, m: int, n: int, k: int, **kwargs):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.m, self.n = int(m), int(n)
        self._acc = KLMatrixAccumulator(m, n, **kwargs)
        self.max_elements = self._acc.max_elements
        self._union_sum = 0.0  # Σ_t |U_t|, to report the mean union size

    @torch.no_grad()
    def update(self, logp_f: torch.Tensor, logp_g: torch.Tensor, weights=None) -> None:
        acc = self._acc
        logp_f = _as_blocks(logp_f, self.m, "logp_f")
        logp_g = _as_blocks(logp_g, self.n, "logp_g")
        if logp_f.shape[1:] != logp_g.shape[1:]:
            raise ValueError(f"logp_f {tuple(logp_f.shape)} and logp_g {tuple(logp_g.shape)} must share T and V")
        w = _token_weights(weights, logp_f.shape[1], logp_f.device)
        if w is not None and not bool((w > 0).all()):
            keep = (w > 0).nonzero().flatten()
            logp_f, logp_g, w = logp_f[:, keep], logp_g[:, keep], w[keep]
        if acc.validate:
            _check_logp(logp_f, acc.front_name, acc.front_labels, acc.num_chunks)
            _check_logp(logp_g, acc.back_name, acc.back_labels, acc.num_chunks)
        T, V = logp_f.shape[1], logp_f.shape[2]
        k = min(self.k, V)
        chunk = acc.num_chunks
        for s, e in _sub_chunks(T, self.m + self.n, V, self.max_elements):
            lf, lg = logp_f[:, s:e].float(), logp_g[:, s:e].float()
            tc = e - s
            top = torch.cat([lf.topk(k, dim=-1).indices, lg.topk(k, dim=-1).indices])  # [m+n, tc, k]
            mask = torch.zeros(tc, V, dtype=torch.bool, device=lf.device)
            mask.scatter_(1, top.permute(1, 0, 2).reshape(tc, -1), True)
            sizes = mask.sum(1)
            U = int(sizes.max())
            uidx = mask.to(torch.float32).topk(U, dim=1).indices  # union first; extra slots are outside it
            valid = mask.gather(1, uidx)
            rf = self._reduce(lf, uidx, valid, mask)
            rg = self._reduce(lg, uidx, valid, mask)
            acc._accumulate(rf, rg, None if w is None else w[s:e], chunk)
            self._union_sum += float(sizes.sum())
        acc.count += float(T if w is None else w.sum())
        acc.num_tokens += T
        acc.num_chunks += 1

    @staticmethod
    def _reduce(lp, uidx, valid, mask):
        """[B, tc, V] -> [B, tc, U+1]: kept outputs (−inf in padding slots) + log of the lumped remainder."""
        B, tc, U = lp.shape[0], uidx.shape[0], uidx.shape[1]
        kept = lp.gather(2, uidx.unsqueeze(0).expand(B, tc, U)).masked_fill(~valid.unsqueeze(0), -math.inf)
        other = lp.masked_fill(mask.unsqueeze(0), -math.inf).logsumexp(-1, keepdim=True)  # -inf if empty
        return torch.cat([kept, other], dim=-1)

    def state(self) -> list[torch.Tensor]:
        return self._acc.state() + [torch.tensor([self._union_sum], dtype=torch.float64)]

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self._acc.load_state(tensors[:3])
        self._union_sum = float(tensors[3][0])

    # same read-outs as the exact accumulator
    def mean(self) -> torch.Tensor:
        return self._acc.mean()

    def sum(self) -> torch.Tensor:
        return self._acc.sum()

    @property
    def count(self) -> float:
        return self._acc.count

    @property
    def mean_union_size(self) -> float:
        """Average |U_t| (kept outputs per token, excluding the "other" bucket)."""
        return self._union_sum / max(1, self._acc.num_tokens)


@dataclass
class TopKErrorReport:
    """Top-k Θ vs exact Θ on one sample chunk (error = exact − approx ≥ 0 up to rounding)."""

    k: int
    exact: torch.Tensor
    approx: torch.Tensor
    max_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    mean_union_size: float


def topk_kl_error(logp_f: torch.Tensor, logp_g: torch.Tensor, k: int, weights=None, **kwargs) -> TopKErrorReport:
    """Compare :class:`TopKKLMatrixAccumulator` with the exact Θ on a sample chunk (choose k with this)."""
    m, n = logp_f.shape[0], logp_g.shape[0]
    exact = KLMatrixAccumulator(m, n, **kwargs)
    exact.update(logp_f, logp_g, weights)
    approx = TopKKLMatrixAccumulator(m, n, k, **kwargs)
    approx.update(logp_f, logp_g, weights)
    ex, ap = exact.mean(), approx.mean()
    err = (ex - ap).abs()
    rel = err / ex.abs().clamp_min(1e-12)
    return TopKErrorReport(
        k=int(k), exact=ex, approx=ap, max_abs_error=float(err.max()), max_rel_error=float(rel.max()),
        mean_rel_error=float(rel.mean()), mean_union_size=approx.mean_union_size,
    )


# ----------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def naive_kl_matrix(logp_f: torch.Tensor, logp_g: torch.Tensor, weights=None) -> torch.Tensor:
    """Reference Θ: a python loop over pairs, elementwise in float64 (tests; tiny inputs only).

    Same conventions as :class:`KLMatrixAccumulator`: 0·log 0 = 0, ``inf`` where q = 0 < p (not raised).
    """
    lf = logp_f.reshape(logp_f.shape[0], -1, logp_f.shape[-1]).double()
    lg = logp_g.reshape(logp_g.shape[0], -1, logp_g.shape[-1]).double()
    T = lf.shape[1]
    w = torch.ones(T, dtype=torch.float64) if weights is None else torch.as_tensor(weights).reshape(-1).double()
    out = torch.zeros(lf.shape[0], lg.shape[0], dtype=torch.float64)
    for i in range(lf.shape[0]):
        p = lf[i].exp()
        for j in range(lg.shape[0]):
            per_tok = torch.where(p > 0, p * (lf[i] - lg[j]), torch.zeros_like(p)).sum(-1)
            out[i, j] = (per_tok * w).sum() / w.sum()
    return out
