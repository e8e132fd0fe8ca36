"""Selection-quality study: does a selector's score predict the quality of the stitch after finetuning?

``hf-klas quality`` / :func:`run_quality` (options: :class:`QualityOptions`, the same dataclass for API and CLI;
``benchmarks/selection_quality.py`` is a thin script around it).

For each anchor pair (a *study*):

1. **Oracle.** A fixed pool of stitch configurations gets the same treatment with fixed seeds and its quality is
   measured: ViT pairs (Fashion-MNIST top-1 accuracy on a fixed test subset) -- least-squares init, then an
   identical short finetune per configuration (``build_trainer``, mode ``vit_mode``; one run per seed; the seed
   sets the data order only), the LS-init accuracy (no finetune) is recorded too; the pool is every valid
   configuration whose FLOPs lie between the two anchors (or a stated random subset, ``*_max_configs``).
   SmolLM2 self-stitching (depth pruning): configurations skipping ``lm_min_skip..lm_max_skip`` blocks
   (``j - i`` in that range), two qualities of the **least-squares-initialised stitch without finetuning**
   (training-free oracle: finetuning 150+ configurations of a 135M model does not fit the CPU budget), each its
   own study with the same pool and selector scores: perplexity on Debian package descriptions (test split), and
   ROUGE-L of the greedy one-line synopsis generated for Debian test packages. Perplexity is computed by a fast path that runs
   the anchor once, caches every block's output and runs only back blocks ``j..n-1`` per configuration; it is
   the same network as ``StitchedModel.from_anchors`` (checked in tests/test_quality.py, generation too).
2. **Selectors.** Every selector (``compute_plan``; KLAS with the logit lens, tuned lens and, for ViTs, ProbeNet;
   SN-Net, CKA, MSE, CE, random; for self-stitching also block influence and least-squares replacement) scores
   the whole grid on the same calibration data; only the pool's entries are used.
3. **Metrics per selector** (see :data:`DEFINITIONS`): Spearman / Kendall (tau-b) correlation of ``-score``
   with quality over the pool (positive = the selector ranks good stitches first; scores are lower-is-better,
   quality is oriented higher-is-better, i.e. accuracy or -perplexity), the same within each FLOPs bucket
   (what KLAS claims: Γ is only compared inside a bucket), overlap of the selector's top-K per FLOPs bucket
   with the oracle's top-K, the regret (oracle's best in a bucket minus the best of the selector's picks), and
   the AUC (``hf_klas.evaluation.pareto``) of the front made of the anchors + the selector's picks.
   Equal candidate-set size: every selector's candidate set is exactly its K best-scored configurations in each
   FLOPs bucket of the pool (same equal-width buckets for all; ties broken by more FLOPs, then a seeded random
   order shared by all selectors); KLAS's τ and ``cover_back_blocks`` are not used here.
4. **Outputs**: ``<out_dir>/<name>.json`` (everything), ``<name>.md`` (tables), ``<name>.png`` (every study's
   fronts, all selectors on one plot per study) and one ``<name>_<study>.png`` per study.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from .errors import HfKlasError
from .version import __version__

logger = logging.getLogger(__name__)

__all__ = ["QualityOptions", "run_quality", "spearman", "kendall_tau_b", "rankdata", "analyze_selector",
           "DEFINITIONS", "VIT_SELECTORS", "LM_SELECTORS", "lm_self_stitch_oracle", "lm_self_stitch_perplexities"]

VIT_SELECTORS = ["klas", "klas:tuned_lens", "klas:probenet", "snnet", "cka", "mse", "ce", "random"]
LM_SELECTORS = ["klas", "klas:tuned_lens", "snnet", "cka", "mse", "ce", "random", "block_influence",
                "ls_replacement"]

DEFINITIONS = {
    "correlation": "Spearman rho and Kendall tau-b between -score (selectors' scores are lower-is-better) and "
                   "quality oriented higher-is-better (accuracy, or -perplexity), over every configuration of "
                   "the pool: positive = good (the selector ranks better stitches first), 1 = perfect, 0 = "
                   "none. Ties get average ranks (SN-Net's 0/inf score is one big tie); undefined (null) when "
                   "either side is constant. Quality = mean over seeds; *_seed_std = std of the per-seed "
                   "correlations.",
    "correlation_within_bucket": "The same correlations computed inside each FLOPs bucket holding >= 3 pool "
                                 "configurations, averaged with weights = bucket size (buckets where either "
                                 "side is constant are left out). This is KLAS's own claim: Γ is only "
                                 "compared within a bucket; the global correlation also rewards knowing that "
                                 "dearer stitches are better.",
    "candidate_set": "Equal size for every selector: its top-K configurations by score in each FLOPs bucket "
                     "(equal-width buckets over the pool's FLOPs range: the two anchors' FLOPs, or for "
                     "self-stitching the cheapest pool configuration to the anchor); ties broken by more FLOPs "
                     "(SN-Net's own budget rule), then by one seeded random order shared by all selectors.",
    "overlap": "Mean over non-trivial buckets (more than K pool configurations) of |selector's top-K ∩ oracle's "
               "top-K| / K; oracle top-K = highest mean quality. chance = mean of K / bucket size (expected "
               "overlap of a uniformly random pick). With K = 1 this is the paper's 'configuration recovery'.",
    "regret": "Mean over non-trivial buckets of (oracle's best quality in the bucket - best quality among the "
              "selector's picks), in metric units, >= 0, lower is better (accuracy points as fractions; "
              "perplexity for LMs).",
    "auc": "hf_klas.evaluation.pareto.front_auc of the anchors + the selector's candidate set with their "
           "(finetuned) quality; FLOPs range = the buckets' range. Accuracy: higher is better; perplexity: "
           "lower is better. 'oracle' = the oracle's own top-K per bucket (upper bound for K picks). "
           "auc_stitches: the same without the anchors -- needed when the cheaper anchor beats every stitch "
           "(then the anchors' front is the same for every selector and 'auc' cannot tell them apart).",
    "random": "The random selector is run with random_repeats seeds; its row is the mean, with the std over "
              "seeds in *_std.",
}


def _vit_pairs_default():
    return ["vit-fmnist-tiny:vit-fmnist-small", "vit-fmnist-small:vit-fmnist-base"]


@dataclass
class QualityOptions:
    """Options of ``hf-klas quality`` / :func:`run_quality` (selection-quality study)."""

    out_dir: str = field(default="benchmarks/results", metadata={"help": "Where the JSON/Markdown/PNG go."})
    name: str = field(default="selection_quality", metadata={"help": "File stem of the outputs."})
    studies: list[str] = field(default_factory=lambda: ["vit", "lm"], metadata={
        "help": "Which studies run: vit (the ViT pairs of vit_pairs), lm (self-stitching of lm_anchor)."})
    quick: bool = field(default=False, metadata={
        "help": "Smoke-test sizes (first ViT pair only, a handful of configurations, a few steps/texts): "
                "minutes -> seconds; results are meaningless."})
    # ---- ViT pairs ------------------------------------------------------------------------------------------
    vit_pairs: list[str] = field(default_factory=_vit_pairs_default, metadata={
        "help": "ViT anchor pairs 'front:back' (aliases or directories). The first is the default pair (all "
                "seeds, vit_max_configs); the others use vit_other_seeds / vit_other_max_configs."})
    vit_seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={
        "help": "Finetune seeds of the first ViT pair (the seed sets the data order)."})
    vit_other_seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={
        "help": "Finetune seeds of the other ViT pairs."})
    vit_max_configs: int = field(default=0, metadata={
        "help": "First ViT pair: at most this many pool configurations (seeded random subset); 0 = all."})
    vit_other_max_configs: int = field(default=0, metadata={
        "help": "Other ViT pairs: at most this many pool configurations (seeded random subset); 0 = all. They "
                "run last and stop at time_budget_minutes."})
    vit_mode: str = field(default="stitch", metadata={
        "help": "Finetuning mode of every ViT stitch (build_trainer): stitch, lora or full."})
    vit_steps: int = field(default=64, metadata={
        "help": "Finetuning steps per configuration and seed (64 x batch 64 = two passes over 2048 images)."})
    vit_batch_size: int = field(default=64, metadata={"help": "Finetuning batch size."})
    vit_lr: float = field(default=3e-3, metadata={"help": "Finetuning learning rate (AdamW, linear decay)."})
    vit_train_samples: int = field(default=2048, metadata={
        "help": "Fixed training subset: the first N Fashion-MNIST training images."})
    vit_test_samples: int = field(default=2000, metadata={
        "help": "Fixed evaluation subset: the first N Fashion-MNIST test images."})
    vit_calibration_samples: int = field(default=512, metadata={
        "help": "Calibration images (first N training images, with labels for ProbeNet) for the selectors and "
                "the least-squares stitch init."})
    vit_selectors: list[str] = field(default_factory=lambda: list(VIT_SELECTORS), metadata={
        "help": "Selectors for ViT pairs: method or method:probe."})
    # ---- LLM self-stitching ---------------------------------------------------------------------------------
    lm_anchor: str = field(default="smollm2-135m", metadata={"help": "Causal LM stitched to itself."})
    lm_min_skip: int = field(default=1, metadata={"help": "Pool: configurations skipping at least this many blocks."})
    lm_max_skip: int = field(default=6, metadata={"help": "Pool: ... and at most this many (j - i)."})
    lm_max_configs: int = field(default=0, metadata={
        "help": "At most this many pool configurations (seeded random subset); 0 = all."})
    lm_eval_texts: int = field(default=16, metadata={
        "help": "Debian descriptions (test split, seeded shuffle) for the perplexity oracle."})
    lm_calibration_texts: int = field(default=32, metadata={
        "help": "Debian descriptions (train split) for the least-squares stitch fit of the oracle."})
    lm_selector_texts: int = field(default=16, metadata={
        "help": "Calibration texts for the selectors (the first N of the LS calibration texts)."})
    lm_max_length: int = field(default=128, metadata={"help": "Tokens per text (truncation)."})
    lm_rouge_texts: int = field(default=24, metadata={
        "help": "Debian test packages (same seeded shuffle) whose synopsis every configuration generates for the "
                "ROUGE-L oracle; 0 = perplexity only."})
    lm_max_new_tokens: int = field(default=16, metadata={
        "help": "Greedy new tokens per generated synopsis (only its first line is scored)."})
    lm_selectors: list[str] = field(default_factory=lambda: list(LM_SELECTORS), metadata={
        "help": "Selectors for self-stitching: method or method:probe."})
    # ---- shared ---------------------------------------------------------------------------------------------
    tuned_lens_steps: int = field(default=20, metadata={"help": "Training steps of the tuned lens probes."})
    num_buckets: int = field(default=10, metadata={"help": "Equal-width FLOPs buckets of the pool."})
    top_k: int = field(default=1, metadata={"help": "Candidate-set size per FLOPs bucket (every selector)."})
    random_repeats: int = field(default=20, metadata={"help": "Seeds of the random selector (mean and std)."})
    subset_seed: int = field(default=0, metadata={"help": "Seed of random pool subsets and of tie-breaking."})
    ridge: float = field(default=1e-4, metadata={"help": "Relative ridge of the least-squares stitch init."})
    time_budget_minutes: float = field(default=45.0, metadata={
        "help": "Wall-clock budget: the non-default ViT pairs (run last) stop finetuning when it is spent; "
                "0 = no limit. The default pair and the LM study always run in full."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (0: leave as is)."})
    use_cache: bool = field(default=False, metadata={
        "help": "Reuse cached selection plans (timings then measure the cache, not the selector)."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})
    from_json: str | None = field(default=None, metadata={
        "help": "Re-analyse a previous run: recompute every metric, table and plot from that run's JSON (its oracle "
                "qualities and selector scores) without running any model (the data-free random selector is "
                "re-run if its scores are missing). top_k, random_repeats, out_dir and name come from this call, "
                "everything else from the original run."})


def _quick(opts: QualityOptions) -> QualityOptions:
    return replace(
        opts, vit_pairs=opts.vit_pairs[:1], vit_seeds=opts.vit_seeds[:2], vit_max_configs=min(opts.vit_max_configs or 5, 5),
        vit_steps=2,
        vit_batch_size=16, vit_train_samples=64, vit_test_samples=64, vit_calibration_samples=32,
        lm_max_configs=min(opts.lm_max_configs or 5, 5), lm_eval_texts=2, lm_calibration_texts=4,
        lm_rouge_texts=min(opts.lm_rouge_texts, 2), lm_max_new_tokens=4,
        lm_selector_texts=2, lm_max_length=32, tuned_lens_steps=2, random_repeats=3, num_buckets=3)


# ------------------------------------------------------------------------------------------------------------
# statistics (numpy only: scipy may be missing)
# ------------------------------------------------------------------------------------------------------------
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
        da = np.sign(a[:, None] - a[None, :])
        db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, 1)
    da, db = da[iu], db[iu]
    da = np.nan_to_num(da)  # inf - inf = nan -> tie
    db = np.nan_to_num(db)
    s = float((da * db).sum())
    n_a, n_b = float((da != 0).sum()), float((db != 0).sum())
    if n_a == 0 or n_b == 0:
        return None
    return float(np.clip(s / math.sqrt(n_a * n_b), -1.0, 1.0))


def _finite_score(score) -> np.ndarray:
    """Scores with NaN (not computed) treated as the worst (+inf)."""
    s = np.asarray(score, dtype=np.float64).copy()
    s[np.isnan(s)] = np.inf
    return s


def _corr_pair(neg_score, q):
    return spearman(neg_score, q), kendall_tau_b(neg_score, q)


def _within_bucket(neg_score, q, buckets, min_size: int = 3):
    rho_sum = tau_sum = w_rho = w_tau = 0.0
    used = 0
    for b in sorted(set(int(x) for x in buckets if x >= 0)):
        idx = np.nonzero(buckets == b)[0]
        if len(idx) < min_size:
            continue
        rho, tau = _corr_pair(neg_score[idx], q[idx])
        if rho is not None:
            rho_sum += rho * len(idx)
            w_rho += len(idx)
            used += 1
        if tau is not None:
            tau_sum += tau * len(idx)
            w_tau += len(idx)
    return (rho_sum / w_rho if w_rho else None), (tau_sum / w_tau if w_tau else None), used


def _top_k(order_keys: list[tuple], idx: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in sorted(idx, key=lambda i: order_keys[i])[:k]]


def _oracle_picks(q, flops, buckets, k, tie_rank):
    keys = [(-q[i], -flops[i], tie_rank[i]) for i in range(len(q))]
    return {b: _top_k(keys, np.nonzero(buckets == b)[0], k) for b in sorted(set(int(x) for x in buckets if x >= 0))}


def _selector_picks(score, flops, buckets, k, tie_rank):
    keys = [(score[i], -flops[i], tie_rank[i]) for i in range(len(score))]
    return {b: _top_k(keys, np.nonzero(buckets == b)[0], k) for b in sorted(set(int(x) for x in buckets if x >= 0))}


def _pick_metrics(picks, oracle, q, buckets, k):
    """overlap, chance, regret (in oriented-quality units) over non-trivial buckets."""
    ov, ch, rg = [], [], []
    for b, sel in picks.items():
        size = int((buckets == b).sum())
        if size <= k:
            continue
        ov.append(len(set(sel) & set(oracle[b])) / k)
        ch.append(k / size)
        best = max(q[i] for i in np.nonzero(buckets == b)[0])
        rg.append(best - max(q[i] for i in sel))
    mean = (lambda v: float(np.mean(v)) if v else None)
    return mean(ov), mean(ch), mean(rg), len(ov)


def _auc(points_anchor, pool, picks, metric, flops_min, flops_max, higher):
    from .evaluation.pareto import ParetoPoint, front_auc

    pts = list(points_anchor) + [ParetoPoint(name=pool[i]["name"], flops=float(pool[i]["flops"]), params=0.0,
                                             metric=float(metric[i]), kind="stitch")
                                 for sel in picks.values() for i in sel]
    return front_auc(pts, flops_min, flops_max, higher_is_better=higher), pts


def analyze_selector(score, quality_per_seed, flops, buckets, *, higher_is_better: bool, k: int, tie_rank,
                     anchor_points, pool, flops_min: float, flops_max: float, quality_init=None) -> dict:
    """Every metric of :data:`DEFINITIONS` for one selector over the pool.

    ``score``: [N] lower-is-better (NaN = worst); ``quality_per_seed``: [S, N] in metric units (accuracy or
    perplexity); ``buckets``: [N] bucket index (-1: outside every bucket: correlation only).
    """
    score = _finite_score(score)
    neg = -score
    qs = np.asarray(quality_per_seed, dtype=np.float64).reshape(-1, len(score))
    sign = 1.0 if higher_is_better else -1.0
    metric = qs.mean(0)
    q = sign * metric  # oriented: higher is better
    buckets = np.asarray(buckets)
    flops = np.asarray(flops, dtype=np.float64)
    out: dict = {}
    out["spearman"], out["kendall"] = _corr_pair(neg, q)
    out["spearman_within_bucket"], out["kendall_within_bucket"], out["buckets_correlated"] = \
        _within_bucket(neg, q, buckets)
    if quality_init is not None:
        qi = sign * np.asarray(quality_init, dtype=np.float64)
        out["spearman_init"], out["kendall_init"] = _corr_pair(neg, qi)
    picks = _selector_picks(score, flops, buckets, k, tie_rank)
    oracle = _oracle_picks(q, flops, buckets, k, tie_rank)
    out["overlap"], out["overlap_chance"], reg, out["buckets_nontrivial"] = _pick_metrics(picks, oracle, q, buckets, k)
    out["regret"] = reg  # oriented units: accuracy fraction, or perplexity (lower-is-better metric, sign flipped)
    out["auc"], _ = _auc(anchor_points, pool, picks, metric, flops_min, flops_max, higher_is_better)
    out["auc_stitches"], _ = _auc([], pool, picks, metric, flops_min, flops_max, higher_is_better)
    out["candidates"] = [{"front_blocks": pool[i]["front_blocks"], "back_start": pool[i]["back_start"],
                          "bucket": int(b), "flops": float(flops[i]), "score": _num(score[i]),
                          "quality": float(metric[i])}
                         for b, sel in picks.items() for i in sel]
    if len(qs) > 1:
        per = {"spearman": [], "kendall": [], "spearman_within_bucket": [], "overlap": [], "regret": [], "auc": [],
               "auc_stitches": []}
        for s in range(len(qs)):
            qq = sign * qs[s]
            rho, tau = _corr_pair(neg, qq)
            rw, _, _ = _within_bucket(neg, qq, buckets)
            ov, _, rg, _ = _pick_metrics(picks, _oracle_picks(qq, flops, buckets, k, tie_rank), qq, buckets, k)
            auc, _ = _auc(anchor_points, pool, picks, qs[s], flops_min, flops_max, higher_is_better)
            auc_s, _ = _auc([], pool, picks, qs[s], flops_min, flops_max, higher_is_better)
            for key, v in (("spearman", rho), ("kendall", tau), ("spearman_within_bucket", rw), ("overlap", ov),
                           ("regret", rg), ("auc", auc), ("auc_stitches", auc_s)):
                per[key].append(v)
        out["per_seed"] = per
        for key, vals in per.items():
            vals = [v for v in vals if v is not None]
            out[f"{key}_seed_std"] = float(np.std(vals)) if len(vals) > 1 else None
    return out


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def _parse_selector(spec: str) -> tuple[str, str, dict]:
    """'klas:tuned_lens' -> (label, method, options)."""
    method, _, probe = spec.partition(":")
    from .selection.selectors import SELECTORS

    if method not in SELECTORS:
        raise HfKlasError(f"Unknown selector {spec!r} in the quality study.",
                          f"Use one of {', '.join(SELECTORS)} (optionally method:probe, e.g. klas:tuned_lens).")
    opts = {"probe": probe} if probe else {}
    label = spec if probe else (f"{method}:logit_lens" if method in ("klas",) else method)
    return label, method, opts


def _selector_options(method: str, extra: dict, opts: QualityOptions, seed: int = 0) -> dict:
    from .selection.selectors import SELECTORS

    known = {f.name for f in fields(SELECTORS[method].config_class)}
    out = dict(extra)
    if "seed" in known:
        out["seed"] = seed
    if extra.get("probe") == "tuned_lens":
        out["probe_options"] = {"max_steps": int(opts.tuned_lens_steps)}
    return out


def _pool_subset(n: int, max_configs: int, seed: int) -> np.ndarray:
    if not max_configs or max_configs >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_configs, replace=False))


def _run_selectors(specs, front, back, calibration, opts: QualityOptions, pool, *, compute_kw: dict,
                   flops_grid: np.ndarray) -> dict:
    """{label: {"score": [N], "seconds", "method", "options"}} (random: {"scores": [[N] per seed]})."""
    from .selection.api import compute_plan

    out = {}
    for spec in specs:
        label, method, extra = _parse_selector(spec)
        seeds = list(range(opts.random_repeats)) if method == "random" else [0]
        scores, secs = [], 0.0
        for seed in seeds:
            sel_opts = _selector_options(method, extra, opts, seed)
            t0 = time.perf_counter()
            try:
                plan, info = compute_plan(front, back, calibration, method, cache=opts.use_cache,
                                          progress=opts.progress, **compute_kw, **sel_opts)
            except HfKlasError as err:
                out[label] = {"method": method, "options": sel_opts, "error": str(err)}
                break
            secs += time.perf_counter() - t0
            (logger.debug if seed else logger.info)("selector %s (seed %d): %.1f s%s", label, seed,
                                                     time.perf_counter() - t0,
                                                     " (cached)" if info.get("cached") else "")
            if not np.allclose(plan.flops.numpy(), flops_grid, rtol=1e-9):
                raise HfKlasError(f"Selector {label} counted FLOPs differently from the study.",
                                  "Report this: every plan must use hf_klas.flops.")
            sc = plan.score.numpy()
            scores.append([float(sc[c["front_blocks"] - 1, c["back_start"]]) for c in pool])
        else:
            entry = {"method": method, "options": _json_safe(sel_opts), "seconds": secs / len(seeds),
                     "cached": bool(info.get("cached", False))}
            if method == "random":
                entry["scores"] = scores
            else:
                entry["score"] = scores[0]
            out[label] = entry
    return out


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating,)):
        return _json_safe(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _analyze_study(study: dict, selectors: dict, opts: QualityOptions) -> dict:
    """Fill study["selectors"] with analyze_selector results (+ oracle row)."""
    from .evaluation.pareto import ParetoPoint

    pool = study["oracle"]["configs"]
    qps = np.array([c["quality_per_seed"] for c in pool], dtype=np.float64).T  # [S, N]
    flops = np.array([c["flops"] for c in pool])
    buckets = np.array([c["bucket"] for c in pool])
    higher = study["higher_is_better"]
    tie_rank = np.random.default_rng(opts.subset_seed).permutation(len(pool))
    anchors = [ParetoPoint(name=a["name"], flops=a["flops"], params=0.0, metric=a["metric"], kind="anchor")
               for a in study["anchors"]]
    qinit = None
    if all(c.get("quality_init") is not None for c in pool):
        qinit = [c["quality_init"] for c in pool]
    common = dict(higher_is_better=higher, k=opts.top_k, tie_rank=tie_rank, anchor_points=anchors, pool=pool,
                  flops_min=study["flops_range"][0], flops_max=study["flops_range"][1], quality_init=qinit)
    results = {}
    # the oracle's own top-K (upper bound) -- score = -quality
    sign = 1.0 if higher else -1.0
    orc = analyze_selector(-sign * qps.mean(0), qps, flops, buckets, **common)
    results["oracle"] = {"method": "oracle", "seconds": None, **{k: orc[k] for k in
                                                                  ("overlap", "overlap_chance", "regret", "auc",
                                                                   "auc_stitches", "candidates",
                                                                   "buckets_nontrivial")}}
    for label, entry in selectors.items():
        if "error" in entry:
            results[label] = entry
            continue
        if "scores" in entry:  # random: mean and std over seeds
            runs = [analyze_selector(s, qps, flops, buckets, **common) for s in entry["scores"]]
            agg = {"method": entry["method"], "seconds": entry["seconds"], "repeats": len(runs)}
            for key in ("spearman", "kendall", "spearman_within_bucket", "kendall_within_bucket", "spearman_init",
                        "kendall_init", "overlap", "overlap_chance", "regret", "auc", "auc_stitches",
                        "buckets_nontrivial"):
                vals = [r.get(key) for r in runs if r.get(key) is not None]
                agg[key] = float(np.mean(vals)) if vals else None
                agg[f"{key}_std"] = float(np.std(vals)) if len(vals) > 1 else None
            agg["candidates"] = runs[0]["candidates"]
            agg["candidates_note"] = "candidates of the first random seed"
            agg["scores"] = [[_num(x) for x in sc] for sc in entry["scores"]]
            results[label] = agg
        else:
            res = analyze_selector(entry["score"], qps, flops, buckets, **common)
            results[label] = {"method": entry["method"], "options": entry["options"], "seconds": entry["seconds"],
                              "cached": entry["cached"], **res}
            for c, s in zip(pool, entry["score"]):
                c.setdefault("scores", {})[label] = _num(s)
    study["selectors"] = results
    return study


# ------------------------------------------------------------------------------------------------------------
# ViT study
# ------------------------------------------------------------------------------------------------------------
class _PixelDataset(torch.utils.data.Dataset):
    """In-memory ``{"pixel_values", "labels"}`` rows (no Arrow round trip per step)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, k):
        return {"pixel_values": self.pixels[k], "labels": self.labels[k]}


def _vit_data(opts: QualityOptions):
    from .data.fashion_mnist import load_fashion_mnist_arrays, preprocess

    n_train = max(opts.vit_train_samples, opts.vit_calibration_samples)
    tr_img, tr_lab = load_fashion_mnist_arrays("train", limit=n_train)
    te_img, te_lab = load_fashion_mnist_arrays("test", limit=opts.vit_test_samples)
    tr_px, te_px = preprocess(tr_img), preprocess(te_img)
    train = _PixelDataset(tr_px[:opts.vit_train_samples], torch.as_tensor(tr_lab[:opts.vit_train_samples]))
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(te_px, torch.as_tensor(te_lab)),
                                       batch_size=500)
    nc = opts.vit_calibration_samples
    bs = 64
    calib_sel = [{"pixel_values": tr_px[k:k + bs], "labels": torch.as_tensor(tr_lab[k:k + bs])}
                 for k in range(0, nc, bs)]
    calib_ls = [{"pixel_values": tr_px[k:k + bs]} for k in range(0, nc, bs)]
    return train, test, calib_sel, calib_ls


def _vit_study(pair: str, seeds: list[int], max_configs: int, opts: QualityOptions, data,
               deadline: float | None = None) -> dict | None:
    from tqdm.auto import tqdm
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from .building import StitchedModel
    from .evaluation import top1_accuracy
    from .loading import resolve_anchor
    from .selection.scoring import assign_buckets, bucket_edges
    from .selection.selectors.base import grids
    from .training.finetune import build_trainer

    if ":" not in pair:
        raise HfKlasError(f"ViT pair {pair!r} is not 'front:back'.", "Pass e.g. vit-fmnist-tiny:vit-fmnist-small.")
    front_name, back_name = pair.split(":", 1)
    train, test, calib_sel, calib_ls = data
    t_start = time.perf_counter()
    front, back = resolve_anchor(front_name), resolve_anchor(back_name)
    flops_grid, _, a_flops = grids(front.config, back.config)
    flops_grid = flops_grid.numpy()
    lo, hi = min(a_flops), max(a_flops)
    edges = bucket_edges(lo, hi, opts.num_buckets)
    bgrid = assign_buckets(torch.as_tensor(flops_grid), edges).numpy()
    m, n = flops_grid.shape
    eligible = [(i, j) for i in range(1, m + 1) for j in range(n) if bgrid[i - 1, j] >= 0]
    keep = _pool_subset(len(eligible), max_configs, opts.subset_seed)
    pool = [{"name": f"({i},{j})", "front_blocks": i, "back_start": j, "flops": float(flops_grid[i - 1, j]),
             "bucket": int(bgrid[i - 1, j])} for k, (i, j) in enumerate(eligible) if k in set(keep.tolist())]
    if deadline is not None:  # finetune in a seeded random order, so a stop leaves a random subset
        order = np.random.default_rng(opts.subset_seed + 1).permutation(len(pool))
        pool = [pool[k] for k in order]
    planned = len(pool)

    anchors = []
    for name, anc, fl in ((front_name, front, a_flops[0]), (back_name, back, a_flops[1])):
        model = anc.load_full(dtype=torch.float32).eval()
        anchors.append({"name": name, "flops": float(fl), "metric": top1_accuracy(model, test, progress=False)})
        del model

    t_oracle = time.perf_counter()
    building_logger = logging.getLogger("hf_klas.building")
    level, hf_level = building_logger.level, hf_logging.get_verbosity()
    building_logger.setLevel(logging.ERROR)  # "legacy tensor names" once per built model
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="hf_klas_quality_") as tmp:
        for c in tqdm(pool, desc=f"oracle {front_name}->{back_name}", disable=not opts.progress, unit="config"):
            if deadline is not None and time.perf_counter() > deadline:
                logger.info("time budget reached: %s oracle stops after %d of %d configurations", pair,
                            sum("quality" in x for x in pool), planned)
                break
            c["quality_per_seed"] = []
            # the LS init is deterministic: build it once, finetune a copy per seed
            init = StitchedModel.from_anchors(front, back, front_blocks=c["front_blocks"],
                                              back_start=c["back_start"], calibration=calib_ls, ridge=opts.ridge,
                                              progress=False)
            c["quality_init"] = top1_accuracy(init, test, progress=False)
            for seed in seeds:
                model = copy.deepcopy(init)
                if opts.vit_steps > 0:
                    args = TrainingArguments(
                        output_dir=tmp, max_steps=opts.vit_steps, per_device_train_batch_size=opts.vit_batch_size,
                        learning_rate=opts.vit_lr, weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear",
                        seed=seed, data_seed=seed, report_to=[], save_strategy="no", logging_strategy="no",
                        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
                    trainer = build_trainer(model, args, train, mode=opts.vit_mode)
                    from transformers.trainer_callback import PrinterCallback, ProgressCallback

                    trainer.remove_callback(PrinterCallback)  # no per-run metrics dict on stdout
                    trainer.remove_callback(ProgressCallback)
                    trainer.train()
                    model = trainer.model
                c["quality_per_seed"].append(top1_accuracy(model, test, progress=False))
                del model
            del init
            c["quality"] = float(np.mean(c["quality_per_seed"]))
            c["quality_std"] = float(np.std(c["quality_per_seed"])) if len(seeds) > 1 else None
            done = sum("quality" in x for x in pool)
            if done % 5 == 0:
                logger.info("oracle %s: %d/%d configurations (%.0f s)", pair, done, planned,
                            time.perf_counter() - t_oracle)
    building_logger.setLevel(level)
    hf_logging.set_verbosity(hf_level)
    pool = sorted([c for c in pool if "quality" in c], key=lambda c: (c["front_blocks"], c["back_start"]))
    if len(pool) < 3:
        logger.info("skipping %s: only %d configurations finetuned within the time budget", pair, len(pool))
        return None
    oracle_seconds = time.perf_counter() - t_oracle
    logger.info("oracle %s: %d configs x %d seeds in %.1f s", pair, len(pool), len(seeds), oracle_seconds)

    compute_kw = dict(max_samples=None, batch_size=64)
    t_sel = time.perf_counter()
    selectors = _run_selectors(opts.vit_selectors, front, back, calib_sel, opts, pool, compute_kw=compute_kw,
                               flops_grid=flops_grid)
    stds = [c["quality_std"] for c in pool if c.get("quality_std") is not None]
    study = {
        "name": f"{Path(front_name).name}->{Path(back_name).name}",
        "kind": "vit",
        "front": front_name, "back": back_name,
        "metric": "top1_accuracy", "higher_is_better": True,
        "flops_unit": "per image",
        "flops_range": [lo, hi],
        "bucket_edges": edges,
        "anchors": anchors,
        "oracle": {
            "description": ("every valid configuration with FLOPs between the anchors"
                            + (f" (seeded random subset of {len(pool)} of {len(eligible)}"
                               + (f"; {planned} planned, the time budget stopped the rest" if len(pool) < planned
                                  else "") + ")"
                               if len(pool) < len(eligible) else f" ({len(pool)} of {m * n} valid)")
                            + f"; least-squares init on {opts.vit_calibration_samples} training images, then "
                            f"{opts.vit_steps} steps of {opts.vit_mode}-mode finetuning (batch "
                            f"{opts.vit_batch_size}, lr {opts.vit_lr}, AdamW, linear decay) on the first "
                            f"{opts.vit_train_samples} training images, per seed {seeds} (seed = data order); "
                            f"top-1 accuracy on the first {opts.vit_test_samples} test images. quality_init = "
                            "accuracy after the LS init, before finetuning."),
            "finetuned": opts.vit_steps > 0,
            "seeds": list(seeds),
            "grid": [m, n],
            "eligible_configs": len(eligible),
            "planned_configs": planned,
            "configs": pool,
            "quality_seed_std_mean": float(np.mean(stds)) if stds else None,
            "quality_seed_std_max": float(np.max(stds)) if stds else None,
            "seconds": oracle_seconds,
        },
        "selection_seconds": time.perf_counter() - t_sel,
        "seconds": time.perf_counter() - t_start,
    }
    return _analyze_study(study, selectors, opts)


# ------------------------------------------------------------------------------------------------------------
# LM self-stitching study
# ------------------------------------------------------------------------------------------------------------
def _debian_examples(split: str, count: int, seed: int):
    """The first ``count`` Debian descriptions of ``split`` after a seeded shuffle (a ``datasets.Dataset``)."""
    from .data.debian_descriptions import load_debian_descriptions

    ds = load_debian_descriptions(split)
    return ds.shuffle(seed=seed).select(range(min(count, len(ds))))


def _debian_texts(split: str, count: int, seed: int) -> list[str]:
    ds = _debian_examples(split, count, seed)
    return [p + " " + t for p, t in zip(ds["prompt"], ds["target"])]


def _swap_blocks(model, blocks):
    from torch import nn

    from .anatomy import find_block_path

    path = find_block_path(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList(blocks))
    return parent, attr, old


@torch.no_grad()
def lm_self_stitch_oracle(model, configs, calib_batches, eval_batches, ridge: float = 1e-4, progress: bool = True,
                          *, tokenizer=None, prompts=None, max_new_tokens: int = 24,
                          batch_size: int = 16) -> dict:
    """Perplexity (and greedy generations) of every self-stitch configuration ``(i, j)`` with a least-squares stitch.

    Same network as ``StitchedModel.from_anchors(model, None, front_blocks=i, back_start=j,
    calibration=calib_batches)``: the stitch ``T`` is fitted by :class:`~hf_klas.stitch_init.LeastSquaresAccumulator`
    from the output of block ``i-1`` to the input of block ``j`` on ``calib_batches``; then blocks ``j..n-1``,
    the final norm and the head run on ``T(h_i)``. Fast path: the anchor runs once per batch set and every
    block's output is cached, so a configuration's perplexity costs only its back blocks. Perplexity as
    :func:`hf_klas.evaluation.perplexity` (token-weighted next-token NLL, padding excluded).

    With ``prompts`` (and ``tokenizer``), each configuration also continues every prompt greedily
    (:func:`hf_klas.evaluation.generate_texts`) through the anchor's own ``generate``: its block list is swapped
    for ``blocks[:i] + blocks[j:]`` with ``T`` applied by a pre-hook on block ``j`` (blocks keep their layer
    index, so the KV cache simply leaves the skipped layers empty). Checked against the built stitched model in
    tests/test_quality.py. Returns ``{(i, j): {"perplexity": float, "generations": list[str] | None}}``.
    """
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from .activations import run_prefix
    from .anatomy import find_blocks
    from .stitch_init import LeastSquaresAccumulator

    if prompts is not None and tokenizer is None:
        raise HfKlasError("lm_self_stitch_oracle got prompts but no tokenizer.", "Pass tokenizer= as well.")
    was_training = model.training
    model.eval()
    d = int(model.config.hidden_size)
    cal_h = [torch.stack(run_prefix(model, b)) for b in calib_batches]  # [P, B, T, d]
    ev_h = [torch.stack(run_prefix(model, b)) for b in eval_batches]
    cal_m = [b.get("attention_mask") for b in calib_batches]
    blocks = list(find_blocks(model))
    out = {}
    by_i: dict[int, list[int]] = {}
    for i, j in configs:
        by_i.setdefault(int(i), []).append(int(j))
    desc = "oracle: LS stitch perplexity" + (" + generation" if prompts is not None else "")
    bar = tqdm(total=len(configs), desc=desc, disable=not progress, unit="config")
    try:
        for i, js in sorted(by_i.items()):
            xa, keep = [], []
            A = torch.zeros(d + 1, d + 1, dtype=torch.float64)
            count = 0
            for h, mask in zip(cal_h, cal_m):
                x = h[i].reshape(-1, d).double()
                k = mask.reshape(-1).bool() if mask is not None else torch.ones(len(x), dtype=torch.bool)
                x = torch.cat([x[k], torch.ones(int(k.sum()), 1, dtype=torch.float64)], 1)
                A += x.T @ x
                count += len(x)
                xa.append(x)
                keep.append(k)
            for j in sorted(js):
                acc = LeastSquaresAccumulator(d, d, ridge=ridge)
                acc.A = A
                acc.count = count
                acc.B = sum(x.T @ h[j].reshape(-1, d)[k].double() for x, h, k in zip(xa, cal_h, keep))
                weight, bias = acc.solve()
                weight, bias = weight.float(), bias.float()
                parent, attr, old = _swap_blocks(model, blocks[j:])
                nll, tokens = 0.0, 0
                try:
                    for h, b in zip(ev_h, eval_batches):
                        emb = h[i] @ weight.T + bias
                        mask = b.get("attention_mask")
                        logits = model(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits
                        ids = b["input_ids"]
                        labels = (ids.masked_fill(mask == 0, -100) if mask is not None else ids)[:, 1:]
                        nll += float(F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                     labels.reshape(-1), ignore_index=-100, reduction="sum"))
                        tokens += int((labels != -100).sum())
                finally:
                    setattr(parent, attr, old)
                gens = None
                if prompts is not None:
                    gens = _generate_self_stitched(model, blocks, i, j, weight, bias, tokenizer, prompts,
                                                   max_new_tokens, batch_size)
                out[(i, j)] = {"perplexity": math.exp(nll / tokens), "generations": gens}
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return out


def _generate_self_stitched(model, blocks, i, j, weight, bias, tokenizer, prompts, max_new_tokens,
                            batch_size) -> list[str]:
    """Greedy continuations of ``prompts`` by ``blocks[:i] -> T -> blocks[j:]`` (see lm_self_stitch_oracle)."""
    from .evaluation import generate_texts

    def stitch(_module, args, kwargs):
        if args:
            return (args[0] @ weight.T + bias, *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"] @ weight.T + bias
        return args, kwargs

    parent, attr, old = _swap_blocks(model, blocks[:i] + blocks[j:])
    handle = blocks[j].register_forward_pre_hook(stitch, with_kwargs=True)
    try:
        return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=False)
    finally:
        handle.remove()
        setattr(parent, attr, old)


def lm_self_stitch_perplexities(model, configs, calib_batches, eval_batches, ridge: float = 1e-4,
                                progress: bool = True) -> dict:
    """``{(i, j): perplexity}`` of every self-stitch configuration (:func:`lm_self_stitch_oracle` without
    generation)."""
    res = lm_self_stitch_oracle(model, configs, calib_batches, eval_batches, ridge=ridge, progress=progress)
    return {k: v["perplexity"] for k, v in res.items()}


def _lm_study(opts: QualityOptions) -> list[dict]:
    """SmolLM2 self-stitching: one oracle pass (perplexity, and ROUGE-L of greedy synopses unless
    ``lm_rouge_texts=0``), one selector pass; returns one study per quality metric (same pool, same scores)."""
    from .calibration import calibration_batches
    from .evaluation import first_lines, generate_texts, load_rouge, perplexity
    from .flops import DEFAULT_SEQ_LEN
    from .loading import resolve_anchor
    from .selection.scoring import assign_buckets, bucket_edges
    from .selection.selectors.base import grids, valid_mask

    t_start = time.perf_counter()
    anchor = resolve_anchor(opts.lm_anchor)
    tok = anchor.load_preprocessor()
    if tok is None:
        raise HfKlasError(f"The LM anchor {opts.lm_anchor} has no tokenizer.", "Save the tokenizer with it.")
    cal_texts = _debian_texts("train", opts.lm_calibration_texts, opts.subset_seed)
    eval_texts = _debian_texts("test", opts.lm_eval_texts, opts.subset_seed)
    rouge_ds = _debian_examples("test", opts.lm_rouge_texts, opts.subset_seed) if opts.lm_rouge_texts else None
    flops_grid, _, a_flops = grids(anchor.config, anchor.config, DEFAULT_SEQ_LEN, same=True)
    flops_grid = flops_grid.numpy()
    m = n = int(anchor.config.num_hidden_layers)
    valid = valid_mask(m, n, True).numpy()
    eligible = [(i, j) for i in range(1, m + 1) for j in range(n)
                if valid[i - 1, j] and opts.lm_min_skip <= j - i <= opts.lm_max_skip]
    if not eligible:
        raise HfKlasError(f"No self-stitch configuration skips {opts.lm_min_skip}..{opts.lm_max_skip} blocks of a "
                          f"{n}-block model.", "Lower lm_min_skip / lm_max_skip.")
    keep = set(_pool_subset(len(eligible), opts.lm_max_configs, opts.subset_seed).tolist())
    chosen = [c for k, c in enumerate(eligible) if k in keep]
    lo = float(min(flops_grid[i - 1, j] for i, j in chosen))
    hi = float(a_flops[1])
    edges = bucket_edges(lo, hi, opts.num_buckets)
    model = anchor.load_full(dtype=torch.float32).eval()
    cal_b = calibration_batches(cal_texts, anchor.config, tok, batch_size=8, max_length=opts.lm_max_length)
    ev_b = calibration_batches(eval_texts, anchor.config, tok, batch_size=8, max_length=opts.lm_max_length)
    anchor_ppl = perplexity(model, tok, eval_texts, max_length=opts.lm_max_length, batch_size=8, progress=False)
    rouge = load_rouge() if rouge_ds is not None else None
    prompts = refs = None
    anchor_rouge = None

    def rouge_scores(preds):  # mean per-example F-measure (no bootstrap: cheap and deterministic)
        sc = rouge.compute(predictions=first_lines(preds), references=refs, use_aggregator=False)
        return {k: float(np.mean(v)) for k, v in sc.items()}

    if rouge_ds is not None:
        prompts, refs = list(rouge_ds["prompt"]), list(rouge_ds["target"])
        anchor_gens = generate_texts(model, tok, prompts, max_new_tokens=opts.lm_max_new_tokens, batch_size=16,
                                     progress=False)
        anchor_rouge = rouge_scores(anchor_gens)
    t_oracle = time.perf_counter()
    res = lm_self_stitch_oracle(model, chosen, cal_b, ev_b, ridge=opts.ridge, progress=opts.progress,
                                tokenizer=tok, prompts=prompts, max_new_tokens=opts.lm_max_new_tokens)
    oracle_seconds = time.perf_counter() - t_oracle
    logger.info("oracle %s self-stitch: %d configs in %.1f s", opts.lm_anchor, len(chosen), oracle_seconds)
    del model
    pool = []
    for i, j in chosen:
        f = float(flops_grid[i - 1, j])
        b = int(assign_buckets(torch.tensor([f], dtype=torch.float64), edges)[0])
        r = res[(i, j)]
        c = {"name": f"({i},{j})", "front_blocks": i, "back_start": j, "skip": j - i, "flops": f, "bucket": b,
             "perplexity": r["perplexity"], "quality_std": None}
        if r["generations"] is not None:
            c["rouge"] = rouge_scores(r["generations"])
            c["generation_examples"] = r["generations"][:2]
        pool.append(c)
    t_sel = time.perf_counter()
    compute_kw = dict(max_samples=opts.lm_selector_texts, max_length=opts.lm_max_length, batch_size=8)
    selectors = _run_selectors(opts.lm_selectors, anchor, None, cal_texts, opts, pool, compute_kw=compute_kw,
                               flops_grid=flops_grid)
    ntok = lambda bs: int(sum(int(b["attention_mask"].sum()) for b in bs))  # noqa: E731
    pool_text = (f"configurations skipping {opts.lm_min_skip}..{opts.lm_max_skip} blocks (j - i)"
                 + (f", seeded random subset of {len(pool)} of {len(eligible)}"
                    if len(pool) < len(eligible) else f", all {len(pool)}")
                 + f"; NOT finetuned: the least-squares-initialised stitch (fit on {len(cal_texts)} Debian "
                 f"descriptions, train split, {ntok(cal_b)} tokens)")
    base = {
        "kind": "lm_self_stitch",
        "front": opts.lm_anchor, "back": opts.lm_anchor,
        "flops_unit": f"per sequence of {DEFAULT_SEQ_LEN} tokens",
        "flops_range": [lo, hi],
        "bucket_edges": edges,
        "selector_calibration": f"the first {opts.lm_selector_texts} of the LS calibration texts",
        "selection_seconds": time.perf_counter() - t_sel,
        "seconds": time.perf_counter() - t_start,
    }
    oracle_common = {"finetuned": False, "seeds": [None], "grid": [m, n], "eligible_configs": len(eligible),
                     "calibration_tokens": ntok(cal_b), "seconds": oracle_seconds}
    studies = []
    ppl_pool = [dict(copy.deepcopy(c), quality_per_seed=[c["perplexity"]], quality=c["perplexity"]) for c in pool]
    studies.append(dict(copy.deepcopy(base), name=f"{Path(opts.lm_anchor).name} self-stitch", metric="perplexity",
                        higher_is_better=False,
                        anchors=[{"name": Path(opts.lm_anchor).name, "flops": float(a_flops[1]),
                                  "metric": anchor_ppl}],
                        oracle=dict(oracle_common, configs=ppl_pool, eval_tokens=ntok(ev_b), description=(
                            pool_text + f"; perplexity on {len(eval_texts)} Debian descriptions (test split, prompt + "
                            f"synopsis, <= {opts.lm_max_length} tokens, {ntok(ev_b)} tokens). Training-free oracle: "
                            "finetuning every configuration does not fit the CPU budget."))))
    if rouge_ds is not None:
        r_pool = [dict(copy.deepcopy(c), quality_per_seed=[c["rouge"]["rougeL"]], quality=c["rouge"]["rougeL"])
                  for c in pool]
        studies.append(dict(copy.deepcopy(base), name=f"{Path(opts.lm_anchor).name} self-stitch ROUGE-L",
                            metric="rougeL", higher_is_better=True,
                            anchors=[{"name": Path(opts.lm_anchor).name, "flops": float(a_flops[1]),
                                      "metric": anchor_rouge["rougeL"], "rouge": anchor_rouge}],
                            oracle=dict(oracle_common, configs=r_pool, description=(
                                pool_text + f"; ROUGE-L (mean per-example F, rouge-score with stemming off) of the first "
                                f"line of the greedy continuation ({opts.lm_max_new_tokens} new tokens) of the "
                                f"'One-line summary:' prompt against the real synopsis, on {len(refs)} Debian packages (test "
                                "split). Same pool and selector scores as the perplexity study; the oracle's "
                                "perplexity and generations run in one pass, so its time is counted there."))))
    return [_analyze_study(st, copy.deepcopy(selectors), opts) for st in studies]


# ------------------------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------------------------
def _fmt(x, digits=3, std=None):
    if x is None:
        return "—"
    s = f"{x:.{digits}f}"
    if std is not None:
        s += f" ± {std:.{digits}f}"
    return s


def _markdown(report: dict) -> str:
    lines = [f"# Selection quality (hf_klas {report['hf_klas_version']})", "",
             f"Command: `{report['command']}`  ", f"Wall time: {report['wall_seconds'] / 60:.1f} min on "
             f"{report['machine']['threads']} torch threads ({report['machine']['platform']}); process CPU time "
             f"{report.get('cpu_seconds', float('nan')) / 60:.1f} min.", "",
             "Correlations are between **−score** (every selector's score is lower-is-better) and quality "
             "oriented higher-is-better (accuracy, ROUGE-L, or −perplexity): **positive = good**. Candidate sets: every "
             f"selector's top-{report['options']['top_k']} per FLOPs bucket (equal size for all). "
             "`±` on a selector = std over finetuning seeds (ViT default pair) or over random-selector seeds. "
             "Definitions are in the JSON (`definitions`).", ""]
    if report.get("reanalysis"):
        lines += [f"Metrics re-computed from the stored oracle and scores with `{report['reanalysis']['command']}` "
                  "(no model was run again; wall and CPU time above are the original run's).", ""]
    for line in report.get("skipped") or []:
        lines += [f"Skipped: {line}", ""]
    for st in report["studies"]:
        o = st["oracle"]
        higher = st["higher_is_better"]
        unit = {"top1_accuracy": "accuracy", "perplexity": "perplexity, lower is better"}.get(st["metric"], st["metric"])
        short = {"top1_accuracy": "acc.", "perplexity": "ppl"}.get(st["metric"], st["metric"])
        lines += [f"## {st['name']} ({st['metric']})", "", f"Oracle: {o['description']}", "",
                  f"Pool: {len(o['configs'])} configurations in {st['selectors']['oracle']['buckets_nontrivial']} "
                  f"non-trivial FLOPs buckets (of {len(st['bucket_edges']) - 1}); anchors: "
                  + ", ".join(f"{a['name']} {a['metric']:.4g}" for a in st["anchors"]) + ". "
                  + (f"Seed-to-seed std of a configuration's quality: mean {o['quality_seed_std_mean']:.4f}, "
                     f"max {o['quality_seed_std_max']:.4f}. " if o.get("quality_seed_std_mean") is not None else "")
                  + f"Oracle {o['seconds'] / 60:.1f} min, selectors {st['selection_seconds'] / 60:.1f} min.", ""]
        warnings = _study_warnings(st)
        lines += [f"**Note:** {w}" for w in warnings] + ([""] if warnings else [])
        has_init = "spearman_init" in next((v for k, v in st["selectors"].items() if k != "oracle" and "error" not in v), {})
        head = ["selector", "Spearman ρ", "Kendall τ", "ρ in bucket", "τ in bucket"]
        if has_init:
            head.append("ρ vs LS-init acc.")
        head += ["overlap (chance)", f"regret ({short})", f"AUC ({unit})",
                 "AUC stitches only", "select s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, r in st["selectors"].items():
            if "error" in r:
                lines.append(f"| {label} | error: {r['error'][:80]} |" + " |" * (len(head) - 2))
                continue
            sd = lambda k: r.get(f"{k}_seed_std", r.get(f"{k}_std"))  # noqa: E731
            regret = r.get("regret")  # oriented units: accuracy, or perplexity (>= 0 either way)
            row = [f"**{label}**" if label == "oracle" else label,
                   _fmt(r.get("spearman"), 3, sd("spearman")), _fmt(r.get("kendall"), 3, sd("kendall")),
                   _fmt(r.get("spearman_within_bucket"), 3, sd("spearman_within_bucket")),
                   _fmt(r.get("kendall_within_bucket"), 3, sd("kendall_within_bucket"))]
            if has_init:
                row.append(_fmt(r.get("spearman_init"), 3, sd("spearman_init")))
            ov = _fmt(r.get("overlap"), 2, sd("overlap"))
            row += [f"{ov} ({_fmt(r.get('overlap_chance'), 2)})", _fmt(regret, 4 if higher else 2, sd("regret")),
                    _fmt(r.get("auc"), 4, sd("auc")), _fmt(r.get("auc_stitches"), 4, sd("auc_stitches")),
                    _fmt(r.get("seconds"), 1)]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", _picks_table(st), "", f"![fronts]({report['name']}_{_slug(st['name'])}.png)", ""]
    return "\n".join(lines) + "\n"


def _study_warnings(st: dict) -> list[str]:
    """Caveats read off the data (too small a pool; anchors that make the AUC blind)."""
    out = []
    pool = st["oracle"]["configs"]
    nontrivial = st["selectors"].get("oracle", {}).get("buckets_nontrivial") or 0
    if len(pool) < 8 or nontrivial < 3:
        out.append(f"only {len(pool)} configurations in {nontrivial} non-trivial buckets: too few for conclusions "
                   "(correlations and overlaps of a handful of points are noise).")
    higher = st["higher_is_better"]
    cheap = min(st["anchors"], key=lambda a: a["flops"])
    best = max(c["quality"] for c in pool) if higher else min(c["quality"] for c in pool)
    if len(st["anchors"]) > 1 and ((cheap["metric"] >= best) if higher else (cheap["metric"] <= best)):
        out.append(f"the cheaper anchor ({cheap['name']}, {cheap['metric']:.4g}) is at least as good as every "
                   "stitch of the pool, so the front with anchors (AUC) is the same for every selector; compare "
                   "'AUC stitches only'.")
    return out


def _picks_table(st: dict) -> str:
    """Per FLOPs bucket: the oracle's best configuration and every selector's pick, with their quality."""
    higher = st["higher_is_better"]
    labels = [k for k, r in st["selectors"].items() if "candidates" in r]
    sizes: dict[int, int] = {}
    for c in st["oracle"]["configs"]:
        if c["bucket"] >= 0:
            sizes[c["bucket"]] = sizes.get(c["bucket"], 0) + 1
    head = ["bucket (configs)"] + labels
    rows = ["Picks per FLOPs bucket: configuration (front_blocks i, back_start j) and its quality"
            + f" ({st['metric']})"
            + "; random = its first seed.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = (lambda q: f"{q:.3f}") if higher else (lambda q: f"{q:.1f}")
    for b in sorted(sizes):
        cells = [f"{b} ({sizes[b]})"]
        for lab in labels:
            picks = [c for c in st["selectors"][lab]["candidates"] if c["bucket"] == b]
            cells.append(", ".join(f"({c['front_blocks']},{c['back_start']}) {fmt(c['quality'])}" for c in picks))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").replace("--", "-")


def _plots(report: dict, out: Path) -> list[str]:
    from .evaluation.pareto import ParetoPoint, plot_pareto

    paths = []
    for st in report["studies"]:
        anchors = [ParetoPoint(name=a["name"], flops=a["flops"], params=0.0, metric=a["metric"], kind="anchor")
                   for a in st["anchors"]]
        series = {}
        for label, r in st["selectors"].items():
            if "candidates" not in r:
                continue
            series[label] = anchors + [ParetoPoint(name=f"({c['front_blocks']},{c['back_start']})",
                                                   flops=c["flops"], params=0.0, metric=c["quality"],
                                                   kind="stitch", selector=label) for c in r["candidates"]]
        p = out / f"{report['name']}_{_slug(st['name'])}.png"
        plot_pareto(series, p, metric_name=st["metric"], higher_is_better=st["higher_is_better"],
                    title=f"{st['name']}: top-{report['options']['top_k']} per FLOPs bucket, every selector",
                    flops_min=st["flops_range"][0], flops_max=st["flops_range"][1])
        paths.append(p)
    combined = out / f"{report['name']}.png"
    if paths:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.image import imread

        studies = report["studies"]
        fig = Figure(figsize=(15, 5 * len(paths)))
        FigureCanvasAgg(fig)
        for k, (p, st) in enumerate(zip(paths, studies)):
            ax = fig.add_subplot(len(paths), 2, 2 * k + 1)
            ax.imshow(imread(str(p)))
            ax.axis("off")
            ax = fig.add_subplot(len(paths), 2, 2 * k + 2)
            labels = [lab for lab, r in st["selectors"].items() if lab != "oracle" and "error" not in r]
            keys = [("spearman", "Spearman ρ (all)"), ("spearman_within_bucket", "Spearman ρ (within bucket)"),
                    ("overlap", f"top-{report['options']['top_k']} overlap with oracle")]
            width = 0.8 / len(keys)
            xs = np.arange(len(labels))
            for n_key, (key, name) in enumerate(keys):
                vals = [st["selectors"][lab].get(key) for lab in labels]
                errs = [st["selectors"][lab].get(f"{key}_seed_std", st["selectors"][lab].get(f"{key}_std")) or 0.0
                        for lab in labels]
                ax.bar(xs + (n_key - 1) * width, [np.nan if v is None else v for v in vals], width,
                       yerr=errs if any(errs) else None, capsize=2, label=name)
            chance = st["selectors"]["oracle"].get("overlap_chance")
            if chance is not None:
                ax.axhline(chance, color="C2", ls=":", lw=1, label="overlap by chance")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
            ax.set_ylim(-1, 1)
            ax.set_title(f"{st['name']}: rank agreement with the oracle (positive = good)", fontsize=10)
            ax.legend(fontsize=7, loc="lower left")
            ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(combined, dpi=110)
    return [str(p) for p in paths] + [str(combined)]


# ------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------
def _validate(opts: QualityOptions) -> None:
    bad = sorted(set(opts.studies) - {"vit", "lm"})
    if bad or not opts.studies:
        raise HfKlasError(f"Unknown studies {bad or opts.studies}.", "Use --studies vit lm (or one of them).")
    if "vit" in opts.studies and not opts.vit_pairs:
        raise HfKlasError("The vit study has no vit_pairs.", "Pass --vit_pairs front:back ...")
    if not opts.vit_seeds or not opts.vit_other_seeds:
        raise HfKlasError("vit_seeds / vit_other_seeds is empty.", "Pass at least one seed.")
    if opts.top_k < 1 or opts.num_buckets < 1:
        raise HfKlasError(f"top_k={opts.top_k} and num_buckets={opts.num_buckets} must be >= 1.", "Use e.g. 1 and 10.")
    if opts.vit_mode not in ("stitch", "lora", "full"):
        raise HfKlasError(f"Unknown vit_mode {opts.vit_mode!r}.", "Use stitch, lora or full.")
    if not 1 <= opts.lm_min_skip <= opts.lm_max_skip:
        raise HfKlasError(f"lm_min_skip={opts.lm_min_skip}, lm_max_skip={opts.lm_max_skip}.",
                          "Use 1 <= lm_min_skip <= lm_max_skip.")
    for spec in (opts.vit_selectors if "vit" in opts.studies else []) + (
            opts.lm_selectors if "lm" in opts.studies else []):
        _parse_selector(spec)
    if opts.random_repeats < 1:
        raise HfKlasError("random_repeats must be >= 1.", "Use e.g. 20.")


def _run_studies(opts: QualityOptions, t0: float) -> tuple[list[dict], list[str]]:
    """Order: the default ViT pair, the LM study, then the other ViT pairs, whose oracle stops at the time
    budget (the configurations finetuned by then are the pool; fewer than 3 -> the study is skipped)."""
    studies, skipped = [], []
    data = _vit_data(opts) if "vit" in opts.studies else None
    if data is not None:
        studies.append(_vit_study(opts.vit_pairs[0], list(opts.vit_seeds), opts.vit_max_configs, opts, data))
    if "lm" in opts.studies:
        studies.extend(_lm_study(opts))
    if data is not None:
        deadline = t0 + 60.0 * opts.time_budget_minutes if opts.time_budget_minutes > 0 else None
        for pair in opts.vit_pairs[1:]:
            st = _vit_study(pair, list(opts.vit_other_seeds), opts.vit_other_max_configs, opts, data, deadline)
            if st is None:
                skipped.append(f"{pair}: skipped, the time budget ({opts.time_budget_minutes} min) left fewer than "
                               "3 finetuned configurations")
            else:
                studies.append(st)
    return studies, skipped


def run_quality(opts: QualityOptions | None = None, *, command: str | None = None, **kwargs) -> dict:
    """Run the study (module docstring) and write ``<out_dir>/<name>.json/.md/.png``; returns a summary.

    ``command``: the command line recorded in the report (default: ``sys.argv``)."""
    if opts is None:
        opts = QualityOptions(**kwargs)
    elif kwargs:
        opts = replace(opts, **kwargs)
    if opts.from_json:
        return _reanalyze(opts, command)
    given = opts
    if opts.quick:
        opts = _quick(opts)
    _validate(opts)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    t0, cpu0 = time.perf_counter(), time.process_time()
    Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not opts.progress:
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bars, once per anchor load
    try:
        studies, skipped = _run_studies(opts, t0)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    report = {
        "format": "hf_klas.selection_quality",
        "hf_klas_version": __version__,
        "name": opts.name,
        "command": command or (" ".join(sys.argv) if sys.argv and sys.argv[0] else "run_quality(...)"),
        "options": asdict(opts),
        "options_given": asdict(given),
        "definitions": _definitions(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "studies": studies,
        "skipped": skipped,
    }
    report["wall_seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - cpu0
    try:
        report["machine"]["load_average_at_end"] = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        pass
    return _write_outputs(report, opts)


def _definitions() -> dict:
    from .evaluation.pareto import AUC_DEFINITION

    return dict(DEFINITIONS, auc_pareto=AUC_DEFINITION)


def _write_outputs(report: dict, opts: QualityOptions) -> dict:
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{opts.name}.json"
    report = _json_safe(report)
    md_path = out / f"{opts.name}.md"
    pngs = _plots(report, out)
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    md_path.write_text(_markdown(report))
    summary = {"json": str(json_path), "markdown": str(md_path), "png": pngs, "wall_seconds": report["wall_seconds"],
               "studies": {}}
    for st in report["studies"]:
        summary["studies"][st["name"]] = {
            label: {k: r.get(k) for k in ("spearman", "kendall", "spearman_within_bucket", "overlap", "regret", "auc",
                                          "auc_stitches")}
            for label, r in st["selectors"].items() if "error" not in r}
    return summary


def _random_scores(st: dict, pool: list[dict], repeats: int, opts: QualityOptions) -> list[list[float]]:
    """The random selector's pool scores for seeds 0..repeats-1 (data-free: no model runs)."""
    from .selection.api import compute_plan

    back = None if st["kind"] == "lm_self_stitch" else st["back"]
    scores = []
    for seed in range(repeats):
        plan, _ = compute_plan(st["front"], back, None, "random", cache=False, progress=False, seed=seed)
        sc = plan.score.numpy()
        scores.append([float(sc[c["front_blocks"] - 1, c["back_start"]]) for c in pool])
    return scores


def _reanalyze(opts: QualityOptions, command: str | None) -> dict:
    """``from_json``: metrics, tables and plots recomputed from a previous report (see the option's help)."""
    t0 = time.perf_counter()
    path = Path(opts.from_json)
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HfKlasError(f"Cannot read the previous report {path}: {err}.",
                          "Pass the selection_quality JSON written by run_quality / benchmarks/selection_quality.py.")
    if old.get("format") != "hf_klas.selection_quality":
        raise HfKlasError(f"{path} is not a selection-quality report (format={old.get('format')!r}).",
                          "Pass the selection_quality JSON written by run_quality.")
    known = {f.name for f in fields(QualityOptions)}
    orig = QualityOptions(**{k: v for k, v in old["options"].items() if k in known})
    new_opts = replace(orig, top_k=opts.top_k, random_repeats=opts.random_repeats, out_dir=opts.out_dir,
                       name=opts.name, progress=opts.progress, from_json=str(path))
    _validate(replace(new_opts, studies=[s for s in new_opts.studies if s in ("vit", "lm")] or ["vit"]))
    studies = []
    for old_st in old["studies"]:
        st = {k: v for k, v in old_st.items() if k != "selectors"}
        pool = st["oracle"]["configs"]
        selectors = {}
        for label, r in old_st["selectors"].items():
            if label == "oracle":
                continue
            if "error" in r:
                selectors[label] = r
                continue
            entry = {"method": r["method"], "options": r.get("options", {}), "seconds": r.get("seconds"),
                     "cached": r.get("cached", False)}
            if r["method"] == "random":
                stored = r.get("scores") or []
                entry["scores"] = (stored[:new_opts.random_repeats] if len(stored) >= new_opts.random_repeats
                                   else _random_scores(st, pool, new_opts.random_repeats, new_opts))
            else:
                entry["score"] = [math.nan if c.get("scores", {}).get(label) is None else c["scores"][label]
                                  for c in pool]
            selectors[label] = entry
        for c in pool:
            c.pop("scores", None)
        studies.append(_analyze_study(st, selectors, new_opts))
    report = dict(old, name=new_opts.name, options=asdict(new_opts), definitions=_definitions(), studies=studies,
                  reanalysis={"from": str(path), "command": command or " ".join(sys.argv),
                              "seconds": time.perf_counter() - t0,
                              "note": "metrics recomputed from the stored oracle qualities and selector scores; "
                                      "wall_seconds / cpu_seconds are the original run's"})
    return _write_outputs(report, new_opts)


def cli_options(run_name: str, argv: list[str]) -> list[type]:
    """The dataclasses whose fields are ``hf-klas quality``'s flags."""
    return [QualityOptions]
