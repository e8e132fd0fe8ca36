"""Every selector of a study run on one pair, and a study's oracle and scores turned into its metrics.

Shared by the ViT study (:mod:`.vit`), the LM study (:mod:`.lm`) and re-analysis from a stored JSON
(:mod:`.runner`, no model runs there).
"""


import hashlib
import math
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..errors import HfKlasError
from ..evaluation.pareto import ParetoPoint
from ..selection.api import compute_plan
from ..selection.selectors import SELECTORS
from .options import QualityOptions, parse_selector
from .statistics import analyze_selector

FORMAT = "hf_klas.selection_quality"


# ------------------------------------------------------------------------------------------------------------
# selectors
# ------------------------------------------------------------------------------------------------------------
def selector_options(method: str, extra: dict, opts: QualityOptions, seed: int = 0) -> dict:
    known = {f.name for f in fields(SELECTORS[method].config_class)}
    out = dict(extra)
    if "seed" in known:
        out["seed"] = seed
    if extra.get("probe") == "tuned_lens":
        out["probe_options"] = {"max_steps": int(opts.tuned_lens_steps)}
    return out


def run_selectors(specs, front, back, calibration, opts: QualityOptions, pool, *, compute_kw: dict,
                  flops_grid: np.ndarray, bar=None) -> dict:
    """``{label: {"score": [N], "seconds", "method", "options"}}`` (random: ``"scores"``, one list per seed)."""
    out = {}
    for spec in specs:
        label, method, extra = parse_selector(spec)
        seeds = list(range(opts.random_repeats)) if method == "random" else [0]
        scores, secs, info = [], 0.0, {}
        for seed in seeds:
            sel_opts = selector_options(method, extra, opts, seed)
            t0 = time.perf_counter()
            try:
                plan, info = compute_plan(front, back, calibration, method, cache=opts.use_cache, progress=False,
                                          **compute_kw, **sel_opts)
            except HfKlasError as err:
                out[label] = {"method": method, "options": json_safe(sel_opts), "error": str(err)}
                break
            secs += time.perf_counter() - t0
            if not np.allclose(plan.flops.numpy(), flops_grid, rtol=1e-9):
                raise HfKlasError(f"Selector {label} counted FLOPs differently from the study.",
                                  "Report this: every plan must use hf_klas.flops.")
            sc = plan.score.numpy()
            scores.append([float(sc[c["front_blocks"] - 1, c["back_start"]]) for c in pool])
        else:
            entry = {"method": method, "options": json_safe(sel_opts), "seconds": secs / len(seeds),
                     "cached": bool(info.get("cached", False))}
            entry["scores" if method == "random" else "score"] = scores if method == "random" else scores[0]
            out[label] = entry
        if bar is not None:
            bar.update()
    return out


def json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return json_safe(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def as_number(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def analyze_study(study: dict, selectors: dict, opts: QualityOptions) -> dict:
    """Fill ``study["selectors"]`` with every metric per selector, plus the oracle's own row (an upper bound)."""
    pool = study["oracle"]["configs"]
    qps = np.array([c["quality_per_seed"] for c in pool], dtype=np.float64).T  # [S, N]
    buckets = np.array([c["bucket"] for c in pool])
    higher = study["higher_is_better"]
    anchors = [ParetoPoint(name=a["name"], flops=a["flops"], params=0.0, metric=a["metric"], kind="anchor")
               for a in study["anchors"]]
    qinit = [c["quality_init"] for c in pool] if all(c.get("quality_init") is not None for c in pool) else None
    common = dict(higher_is_better=higher, tie_rank=np.random.default_rng(opts.subset_seed).permutation(len(pool)),
                  anchor_points=anchors, flops_range=tuple(study["flops_range"]), edges=study["bucket_edges"],
                  grid=study["oracle"]["grid"], tau=opts.tau, quality_init=qinit)
    sign = 1.0 if higher else -1.0
    orc = analyze_selector(-sign * qps.mean(0), qps, pool, buckets, **common)
    results = {"oracle": {"method": "oracle", "seconds": None,
                          **{k: orc[k] for k in ("top1", "top1_chance", "regret", "auc", "auc_stitches",
                                                 "candidates", "buckets_nontrivial", "recovery_k")}}}
    for label, entry in selectors.items():
        if "error" in entry:
            results[label] = entry
            continue
        if "scores" in entry:  # random: mean and std over seeds
            runs = [analyze_selector(s, qps, pool, buckets, **common) for s in entry["scores"]]
            agg = {"method": entry["method"], "seconds": entry["seconds"], "repeats": len(runs)}
            for key in ("spearman", "kendall", "spearman_within_bucket", "kendall_within_bucket", "spearman_init",
                        "top1", "top1_chance", "regret", "recovery", "recovery_chance", "set_size", "recovery_k",
                        "auc", "auc_stitches", "buckets_nontrivial"):
                vals = [r.get(key) for r in runs if r.get(key) is not None]
                agg[key] = float(np.mean(vals)) if vals else None
                agg[f"{key}_std"] = float(np.std(vals)) if len(vals) > 1 else None
            agg["candidates"] = runs[0]["candidates"]
            agg["scores"] = [[as_number(x) for x in sc] for sc in entry["scores"]]
            results[label] = agg
        else:
            res = analyze_selector(entry["score"], qps, pool, buckets, **common)
            results[label] = {"method": entry["method"], "options": entry["options"], "seconds": entry["seconds"],
                              "cached": entry.get("cached", False), **res}
            for c, s in zip(pool, entry["score"]):
                c.setdefault("scores", {})[label] = as_number(s)
    study["selectors"] = results
    return study


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
