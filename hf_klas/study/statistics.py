"""How well a selector's scores predict the oracle's quality over a pool of stitch configurations.

numpy only. Scores are lower-is-better (every selector's convention); qualities are oriented higher-is-better
before they get here (accuracy, ROUGE-L, or -perplexity). Every metric is defined in :data:`DEFINITIONS`, which
is written into every report.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..evaluation.pareto import AUC_DEFINITION, ParetoPoint, front_auc
from ..selection.scoring import candidate_set

DEFINITIONS = {
    "correlation": "Spearman rho and Kendall tau-b between -score (selectors' scores are lower-is-better) and "
                   "quality oriented higher-is-better (accuracy, ROUGE-L, or -perplexity), over every "
                   "configuration of the pool: positive = the selector ranks better stitches first. Ties get "
                   "average ranks (SN-Net's 0/inf score is one big tie); undefined (null) when either side is "
                   "constant. Quality = mean over seeds; *_seed_std = std over seeds.",
    "correlation_within_bucket": "The same inside each FLOPs bucket holding >= 3 pool configurations, averaged "
                                 "with weights = bucket size. KLAS's own claim: its score is only compared "
                                 "within a bucket; the global correlation also rewards knowing that dearer "
                                 "stitches are better.",
    "top1": "Top-1 per bucket: fraction of non-trivial buckets (more than one pool configuration) where the "
            "selector's best-scored configuration is the oracle's best; chance = mean of 1 / bucket size. Equal "
            "candidate-set size for every selector (one per bucket, tau and back-block cover off); ties broken "
            "by more FLOPs (SN-Net's budget rule), then one seeded random order shared by all selectors.",
    "regret": "Mean over non-trivial buckets of (oracle's best quality in the bucket - quality of the selector's "
              "top-1 pick), in metric units (accuracy as a fraction; perplexity for LMs), >= 0, lower is better.",
    "recovery": "The paper's configuration recovery: the selector's candidate set built exactly as KLAS builds it "
                "(hf_klas.selection.scoring.candidate_set over the study's FLOPs buckets, tau = 0.05, every back "
                "block covered), and its recall of the oracle's best configuration of every bucket that holds a "
                "pool configuration: |oracle bests in the set| / K, K = that number of buckets (reported per "
                "study; the paper's K was 18). Larger sets recall more, so each row also reports its set size "
                "and the recall a random set of that size would have (chance: sum over buckets of the set's "
                "share of the bucket, / K).",
    "auc": "hf_klas.evaluation.pareto.front_auc of the anchors + the selector's top-1 picks with their oracle "
           "quality, FLOPs between the buckets' range. auc_stitches: the same without the anchors (needed when "
           "the cheaper anchor beats every stitch: the front is then the same for every selector).",
    "random": "The random selector runs with random_repeats seeds; its row is the mean, *_std the std over seeds.",
}

__all__ = ["DEFINITIONS", "AUC_DEFINITION", "rankdata", "spearman", "kendall_tau_b", "analyze_selector"]


def rankdata(x) -> np.ndarray:
    """Average ranks (1-based) of a 1-D array; ±inf allowed (they rank last / first), NaN is not."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    k = 0
    while k < len(x):
        e = k
        while e + 1 < len(x) and sx[e + 1] == sx[k]:
            e += 1
        ranks[order[k:e + 1]] = (k + e) / 2.0 + 1.0
        k = e + 1
    return ranks


def spearman(a, b) -> float | None:
    """Spearman rho with average ranks; None when fewer than 2 points or either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if den == 0.0:
        return None
    return float(np.clip((ra * rb).sum() / den, -1.0, 1.0))


def kendall_tau_b(a, b) -> float | None:
    """Kendall tau-b (tie-corrected); None when fewer than 2 points or either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return None
    with np.errstate(invalid="ignore"):  # inf - inf = nan: a tie
        da = np.nan_to_num(np.sign(a[:, None] - a[None, :]))
        db = np.nan_to_num(np.sign(b[:, None] - b[None, :]))
    iu = np.triu_indices(n, 1)
    da, db = da[iu], db[iu]
    s = float((da * db).sum())
    n_a, n_b = float((da != 0).sum()), float((db != 0).sum())
    if n_a == 0 or n_b == 0:
        return None
    return float(np.clip(s / math.sqrt(n_a * n_b), -1.0, 1.0))


def _finite_score(score) -> np.ndarray:
    """Scores with NaN (not computed / unscored) treated as the worst (+inf)."""
    s = np.asarray(score, dtype=np.float64).copy()
    s[np.isnan(s)] = np.inf
    return s


def _corr(neg_score, q):
    return spearman(neg_score, q), kendall_tau_b(neg_score, q)


def _within_bucket(neg_score, q, buckets, min_size: int = 3):
    sums, weights = [0.0, 0.0], [0.0, 0.0]
    for b in sorted({int(x) for x in buckets if x >= 0}):
        idx = np.nonzero(buckets == b)[0]
        if len(idx) < min_size:
            continue
        for k, v in enumerate(_corr(neg_score[idx], q[idx])):
            if v is not None:
                sums[k] += v * len(idx)
                weights[k] += len(idx)
    return tuple(s / w if w else None for s, w in zip(sums, weights))


def _top1(keys, buckets) -> dict[int, int]:
    """Per bucket, the pool index with the smallest key."""
    return {b: int(min(np.nonzero(buckets == b)[0], key=lambda i: keys[i]))
            for b in sorted({int(x) for x in buckets if x >= 0})}


def _top1_metrics(picks: dict, oracle: dict, q, buckets):
    """(top-1 agreement, chance, regret) over non-trivial buckets."""
    hit, chance, regret = [], [], []
    for b, i in picks.items():
        size = int((buckets == b).sum())
        if size <= 1:
            continue
        hit.append(float(i == oracle[b]))
        chance.append(1.0 / size)
        regret.append(float(q[oracle[b]] - q[i]))
    mean = (lambda v: float(np.mean(v)) if v else None)
    return mean(hit), mean(chance), mean(regret), len(hit)


def _recovery(score, q, pool, buckets, grid, edges, tau: float, cover: bool):
    """(recall of the oracle's per-bucket bests, chance, set size, K) for KLAS's candidate set of ``score``."""
    m, n = grid
    g = torch.full((m, n), float("nan"), dtype=torch.float64)  # outside the pool: not a candidate
    f = torch.zeros(m, n, dtype=torch.float64)
    for k, c in enumerate(pool):
        g[c["front_blocks"] - 1, c["back_start"]] = score[k] if math.isfinite(score[k]) else float("nan")
        f[c["front_blocks"] - 1, c["back_start"]] = c["flops"]
    valid = torch.isfinite(g)
    index = {(c["front_blocks"], c["back_start"]): k for k, c in enumerate(pool)}
    chosen = set()
    if bool(valid.any()):
        cands = candidate_set(g, f, (edges[0], edges[-1]), len(edges) - 1, tau, valid_mask=valid,
                              cover_back_blocks=cover)
        chosen = {index[(c.front_blocks, c.back_start)] for c in cands}
    best = _top1(-np.asarray(q), buckets)
    k = len(best)
    if not k:
        return None, None, len(chosen), 0
    recall = sum(best[b] in chosen for b in best) / k
    chance = sum(sum(i in chosen for i in np.nonzero(buckets == b)[0]) / int((buckets == b).sum())
                 for b in best) / k
    return recall, chance, len(chosen), k


def _auc(anchor_points, pool, picks: dict, metric, flops_min, flops_max, higher):
    pts = list(anchor_points) + [ParetoPoint(name=pool[i]["name"], flops=float(pool[i]["flops"]), params=0.0,
                                             metric=float(metric[i]), kind="stitch") for i in picks.values()]
    return front_auc(pts, flops_min, flops_max, higher_is_better=higher)


def analyze_selector(score, quality_per_seed, pool: list[dict], buckets, *, higher_is_better: bool, tie_rank,
                     anchor_points, flops_range, edges, grid, tau: float = 0.05, cover: bool = True,
                     quality_init=None) -> dict:
    """Every metric of :data:`DEFINITIONS` for one selector's ``score`` ([N], lower is better, NaN = unscored)
    over the pool; ``quality_per_seed``: [S, N] in metric units; ``buckets``: [N] (-1: outside every bucket)."""
    score = _finite_score(score)
    neg = -score
    qs = np.asarray(quality_per_seed, dtype=np.float64).reshape(-1, len(score))
    sign = 1.0 if higher_is_better else -1.0
    metric = qs.mean(0)
    q = sign * metric
    buckets = np.asarray(buckets)
    flops = np.asarray([c["flops"] for c in pool], dtype=np.float64)
    sel_keys = [(score[i], -flops[i], tie_rank[i]) for i in range(len(score))]
    picks = _top1(sel_keys, buckets)

    def per_quality(qq, raw):
        out = {}
        out["spearman"], out["kendall"] = _corr(neg, qq)
        out["spearman_within_bucket"], out["kendall_within_bucket"] = _within_bucket(neg, qq, buckets)
        oracle = _top1([(-qq[i], -flops[i], tie_rank[i]) for i in range(len(qq))], buckets)
        out["top1"], out["top1_chance"], out["regret"], out["buckets_nontrivial"] = \
            _top1_metrics(picks, oracle, qq, buckets)
        out["recovery"], out["recovery_chance"], out["set_size"], out["recovery_k"] = _recovery(
            score, qq, pool, buckets, grid, edges, tau, cover)
        out["auc"] = _auc(anchor_points, pool, picks, raw, *flops_range, higher_is_better)
        out["auc_stitches"] = _auc([], pool, picks, raw, *flops_range, higher_is_better)
        return out

    res = per_quality(q, metric)
    if quality_init is not None:
        res["spearman_init"], res["kendall_init"] = _corr(neg, sign * np.asarray(quality_init, dtype=np.float64))
    res["candidates"] = [{"front_blocks": pool[i]["front_blocks"], "back_start": pool[i]["back_start"],
                          "bucket": int(b), "flops": float(flops[i]), "score": _num(score[i]),
                          "quality": float(metric[i])} for b, i in picks.items()]
    if len(qs) > 1:
        runs = [per_quality(sign * qs[s], qs[s]) for s in range(len(qs))]
        for key in ("spearman", "kendall", "spearman_within_bucket", "top1", "regret", "recovery", "auc",
                    "auc_stitches"):
            vals = [r[key] for r in runs if r[key] is not None]
            res[f"{key}_seed_std"] = float(np.std(vals)) if len(vals) > 1 else None
    return res


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None
