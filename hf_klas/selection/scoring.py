"""KLAS stitch score Γ, FLOPs-bucketed candidate sets, budget picks and anchor-pair selection.

Matrix convention (shared by every [m, n] matrix in hf_klas.selection):

* row ``r = i - 1`` ↔ ``front_blocks = i`` (1 ≤ i ≤ m): the front's representation is the OUTPUT of front
  block i (python index i-1);
* column ``j`` ↔ ``back_start = j`` (0 ≤ j ≤ n-1): the stitched output goes INTO back block j (python index)
  and back blocks j..n-1 run. The back's representation at that point — its *resume point j* — is the
  OUTPUT of back block j-1, and for j = 0 the back's embedding output.

So Θ[r, j] = Θ(P^f after front block i, P^g at resume point j), and Γ's denominator for column j is the
back's own KL from resume point j to resume point j+1, i.e. the change made by back block j — the first back
block that runs and must absorb the mismatch. For the last column (j = n-1) "resume point n" is the output of
back block n-1 (the last block, before the final norm), so every valid column has a denominator: the
paper's "no j+1" case would be a configuration that runs no back block, which is invalid by contract.
The caller passes these n within-anchor KLs as one array (``WithinAnchorKL`` over the n+1 points
embedding, block 0 … block n-1 outputs gives exactly that).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch

from ..errors import BudgetError, NumericalError, StitchPointError
from ..flops import format_flops

__all__ = [
    "Candidate",
    "spread_candidates",
    "DEFAULT_EPS_ABS",
    "DEFAULT_EPS_REL",
    "all_configs",
    "assign_buckets",
    "best_under_budget",
    "bucket_edges",
    "candidate_set",
    "denominator_floor",
    "gamma_matrix",
    "select_anchor_pair",
]

DEFAULT_EPS_ABS = 1e-6
DEFAULT_EPS_REL = 1e-3


@dataclass(frozen=True)
class Candidate:
    """One stitch configuration with its cost and its selector's score (lower is better: Γ for KLAS).

    ``bucket`` is the FLOPs bucket index (−1: not bucketed, e.g. from :func:`all_configs`); ``source`` says
    why it is in the set: ``"bucket"`` (argmin or within τ) or ``"cover"`` (added by ``cover_back_blocks``).
    """

    front_blocks: int
    back_start: int
    flops: float
    score: float
    bucket: int = -1
    source: str = "bucket"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        score = d["score"] if "score" in d else d["gamma"]  # plans written before 0.2 call it gamma
        return cls(int(d["front_blocks"]), int(d["back_start"]), float(d["flops"]), float(score),
                   int(d.get("bucket", -1)), str(d.get("source", "bucket")))


def _as2d(x, name: str, dtype=torch.float64) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [m, n] matrix, got shape {tuple(t.shape)}")
    return t.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# Γ
# ----------------------------------------------------------------------------------------------------------
def denominator_floor(within_back_kl, eps_abs: float = DEFAULT_EPS_ABS, eps_rel: float = DEFAULT_EPS_REL) -> float:
    """The floor for Γ's denominator: ``max(eps_abs, eps_rel × median(within_back_kl))``.

    Why relative: a back block that barely changes the distribution (KL → 0) would blow Γ up to ~∞ and, with
    calibration noise, make the ranking of its column arbitrary. Flooring at 1/1000 of a typical block's
    change keeps such columns scored as "very little capacity" without letting rounding noise dominate;
    the absolute 1e-6 covers the degenerate case where most blocks change nothing.
    """
    d = torch.as_tensor(within_back_kl, dtype=torch.float64).reshape(-1)
    finite = d[torch.isfinite(d)]
    med = float(finite.median()) if finite.numel() else 0.0
    return max(float(eps_abs), float(eps_rel) * max(med, 0.0))


def gamma_matrix(
    theta,
    within_back_kl,
    eps: float | None = None,
    eps_abs: float = DEFAULT_EPS_ABS,
    eps_rel: float = DEFAULT_EPS_REL,
    last_denominator: str = "own",
) -> torch.Tensor:
    """Γ[r, j] = Θ[r, j] / max(D[j], eps) as float64 [m, n] (lower is better).

    ``theta``: [m, n] (module docstring convention). ``within_back_kl``: [n], entry j = KL(back resume point j
    ‖ resume point j+1) = the change made by back block j. ``eps=None`` uses :func:`denominator_floor`.
    ``last_denominator="median"`` replaces the last back block's own change (``D[n-1]``, from its input to its
    output before the final norm -- often far from the other blocks') by the median of ``D``: an ablation of
    the paper's Γ, which uses the block's own change (``"own"``, the default).
    """
    th = _as2d(theta, "theta")
    d = torch.as_tensor(within_back_kl, dtype=torch.float64).reshape(-1).cpu()
    if d.numel() != th.shape[1]:
        raise ValueError(
            f"within_back_kl has {d.numel()} entries but theta has {th.shape[1]} columns: pass one KL per back "
            "resume point j (KL from point j to j+1; the last one ends at the back's final block output)."
        )
    if not torch.isfinite(th).all() or not torch.isfinite(d).all():
        raise NumericalError(
            "NaN or inf in Θ or in the back anchor's within-anchor KLs; Γ would be meaningless.",
            "check the probes' log-probabilities (the KL accumulators raise on NaN inputs) and that every "
            "chunk had tokens; recompute Θ.",
        )
    if last_denominator not in ("own", "median"):
        raise ValueError(f"last_denominator={last_denominator!r}: use 'own' or 'median'")
    if last_denominator == "median":
        d = d.clone()
        d[-1] = d.median()
    floor = denominator_floor(d, eps_abs, eps_rel) if eps is None else float(eps)
    return th / d.clamp_min(floor)[None, :]


# ----------------------------------------------------------------------------------------------------------
# FLOPs buckets and the τ candidate set
# ----------------------------------------------------------------------------------------------------------
def bucket_edges(lo: float, hi: float, num_buckets: int) -> list[float]:
    """Equal-width edges ``lo = e_0 < … < e_B = hi`` (bucket b is [e_b, e_{b+1}), the last one closed)."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise BudgetError(
            f"FLOPs range ({format_flops(lo)}, {format_flops(hi)}) is empty or not finite.",
            "pass flops_range=(cheaper anchor FLOPs, dearer anchor FLOPs) with lo < hi.",
        )
    return [lo + (hi - lo) * b / num_buckets for b in range(num_buckets)] + [hi]


def assign_buckets(flops, edges: Sequence[float]) -> torch.Tensor:
    """Bucket index per entry (same shape as ``flops``); −1 outside [edges[0], edges[-1]]."""
    f = torch.as_tensor(flops, dtype=torch.float64)
    lo, hi, B = float(edges[0]), float(edges[-1]), len(edges) - 1
    e = torch.tensor(list(edges), dtype=torch.float64)
    b = torch.bucketize(f, e[1:-1], right=True)  # number of inner edges <= f
    inside = (f >= lo) & (f <= hi)
    return torch.where(inside, b.clamp_max(B - 1), torch.full_like(b, -1))


def _within_tau(values: torch.Tensor, best: float, tau: float) -> torch.Tensor:
    # (1+τ)·min for min ≥ 0 (Γ, KL, 1−CKA, MSE); min + τ·|min| keeps the meaning for negative scores
    return values <= best + float(tau) * abs(best)


def candidate_set(
    gamma,
    flops,
    flops_range: tuple[float, float],
    num_buckets: int = 20,
    tau: float = 0.05,
    valid_mask=None,
    cover_back_blocks: bool = True,
) -> list[Candidate]:
    """KLAS's candidate set: per equal-width FLOPs bucket, the argmin-Γ configuration plus every configuration
    with Γ ≤ (1+τ)·min Γ of that bucket.

    Only valid configurations (``valid_mask``, finite score) with FLOPs inside ``flops_range`` (inclusive)
    take part: a configuration dearer than the back anchor is dominated by the anchor itself, and one cheaper
    than the front anchor is outside the trade-off the buckets describe (widen ``flops_range`` to include
    it). ``cover_back_blocks=True`` (default) then adds, for every back_start j that has an eligible
    configuration but no candidate yet, its lowest-Γ eligible configuration (``source="cover"``), so every
    back resume point is represented, as the paper asks. Sorted by FLOPs, then score.
    """
    g = _as2d(gamma, "gamma")
    f = _as2d(flops, "flops")
    if g.shape != f.shape:
        raise ValueError(f"gamma {tuple(g.shape)} and flops {tuple(f.shape)} must have the same shape")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    valid = torch.ones_like(g, dtype=torch.bool) if valid_mask is None else _as2d(valid_mask, "valid_mask", torch.bool)
    if valid.shape != g.shape:
        raise ValueError(f"valid_mask {tuple(valid.shape)} must match gamma {tuple(g.shape)}")
    edges = bucket_edges(flops_range[0], flops_range[1], num_buckets)
    buckets = assign_buckets(f, edges)
    eligible = valid & torch.isfinite(g) & torch.isfinite(f) & (buckets >= 0)

    chosen: dict[tuple[int, int], Candidate] = {}
    for b in range(num_buckets):
        in_b = eligible & (buckets == b)
        if not in_b.any():
            continue
        best = float(g[in_b].min())
        for r, j in (in_b & _within_tau(g, best, tau)).nonzero().tolist():
            chosen[(r, j)] = Candidate(r + 1, j, float(f[r, j]), float(g[r, j]), b, "bucket")
    if cover_back_blocks:
        have = {j for (_, j) in chosen}
        for j in range(g.shape[1]):
            col = eligible[:, j]
            if j in have or not col.any():
                continue
            scores = torch.where(col, g[:, j], torch.full_like(g[:, j], math.inf))
            r = int(scores.argmin())
            chosen[(r, j)] = Candidate(r + 1, j, float(f[r, j]), float(g[r, j]), int(buckets[r, j]), "cover")
    return sorted(chosen.values(), key=lambda c: (c.flops, c.score, c.front_blocks, c.back_start))


def all_configs(gamma, flops, valid_mask=None, edges: Sequence[float] | None = None) -> list[Candidate]:
    """Every valid configuration with a finite score as a :class:`Candidate` (bucket from ``edges`` or −1)."""
    g = _as2d(gamma, "gamma")
    f = _as2d(flops, "flops")
    valid = torch.ones_like(g, dtype=torch.bool) if valid_mask is None else _as2d(valid_mask, "valid_mask", torch.bool)
    ok = valid & torch.isfinite(g) & torch.isfinite(f)
    buckets = assign_buckets(f, edges) if edges is not None else torch.full(g.shape, -1, dtype=torch.long)
    return [Candidate(r + 1, j, float(f[r, j]), float(g[r, j]), int(buckets[r, j]), "all")
            for r, j in ok.nonzero().tolist()]


def best_under_budget(candidates_or_all: Iterable[Candidate], budget_flops: float) -> Candidate:
    """The lowest-score configuration with ``flops <= budget_flops`` (ties: the cheaper one).

    Pass the candidate set, or :func:`all_configs` for the unrestricted pick.
    """
    pool = list(candidates_or_all)
    if not pool:
        raise BudgetError("there are no configurations to choose from.",
                          "compute the candidate set (candidate_set) or pass all_configs(...) first.")
    fits = [c for c in pool if c.flops <= float(budget_flops)]
    if not fits:
        lo, hi = min(c.flops for c in pool), max(c.flops for c in pool)
        raise BudgetError(
            f"no configuration fits the budget of {format_flops(budget_flops)}; the configurations given cost "
            f"{format_flops(lo)} to {format_flops(hi)} (feasible range: budget >= {format_flops(lo)}).",
            f"raise the budget to at least {format_flops(lo)} ({lo:.6g} FLOPs) or use a cheaper front anchor.",
        )
    return min(fits, key=lambda c: (c.score, c.flops))


# ----------------------------------------------------------------------------------------------------------
# anchor selection
# ----------------------------------------------------------------------------------------------------------
def select_anchor_pair(final_kl, costs: Sequence[float], symmetric: bool = False,
                       names: Sequence[str] | None = None) -> tuple[int, int]:
    """The anchor pair (a, b) whose final output distributions are closest; a is the cheaper (front).

    ``final_kl[a, b]`` = KL(anchor a ‖ anchor b) (e.g. ``FinalOutputKLAccumulator.mean()``). Each pair is
    scored in the stitching direction, source = cheaper anchor (KLAS puts f, the source, first): the score of
    {a, b} with cost[a] < cost[b] is final_kl[a, b] (equal costs: lower index is the front).
    ``symmetric=True`` scores the mean of both directions instead. Ties: the cheaper pair.
    """
    kl = _as2d(final_kl, "final_kl")
    k = kl.shape[0]
    who = [str(x) for x in names] if names is not None else [f"anchor {a}" for a in range(k)]
    if kl.shape[1] != k or len(costs) != k or len(who) != k:
        raise ValueError(f"final_kl must be [k, k] with k = len(costs); got {tuple(kl.shape)} and {len(costs)} costs")
    if k < 2:
        raise StitchPointError(
            f"anchor selection needs at least two anchors, got {k}.",
            "pass two or more anchors of the same family (e.g. 'llama-1b', 'llama-3b').",
        )
    best = None
    for a in range(k):
        for b in range(a + 1, k):
            lo, hi = (a, b) if float(costs[a]) <= float(costs[b]) else (b, a)
            score = (float(kl[lo, hi]) + float(kl[hi, lo])) / 2 if symmetric else float(kl[lo, hi])
            if not math.isfinite(score):
                raise NumericalError(
                    f"final-output KL between {who[lo]} and {who[hi]} is {score}.",
                    "check those anchors' final log-probabilities (same tokenizer, float32, no NaN).",
                )
            key = (score, float(costs[lo]) + float(costs[hi]))
            if best is None or key < best[0]:
                best = (key, (lo, hi))
    return best[1]


def spread_candidates(candidates: list, k: int, lo: float, hi: float) -> list:
    """Up to ``k`` candidates strictly between FLOPs ``lo`` and ``hi``, evenly spread over that range by cost (how
    the demo and the front-payoff benchmark pick the stitches to finetune)."""
    inside = sorted((c for c in candidates if lo < c.flops < hi), key=lambda c: c.flops)
    if len(inside) <= k:
        return inside
    picks = [inside[round(x * (len(inside) - 1) / max(k - 1, 1))] for x in range(k)]
    return list({(c.front_blocks, c.back_start): c for c in picks}.values())

