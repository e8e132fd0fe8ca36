"""Sampling error of accuracy numbers and of front AUCs, so that a difference inside its interval is called a tie.

Why these three: a test set is a sample, and every model here is scored on the *same* images, so
- one accuracy gets a Wilson score interval (binomial; honest near 0 and 1 where the normal one is not);
- the difference of two models on the same images gets the paired interval (only the images where they disagree
  carry information: McNemar's view), much tighter than two independent intervals;
- the AUC of a front (hf_klas.evaluation.pareto.front_auc) is a function of several models' accuracies on the same
  images, so its difference between two fronts gets a paired bootstrap over the test images (resample images,
  recompute every model's accuracy, then both AUCs).
Seed-to-seed spread (another finetuning run) is a separate source of variation: callers report it next to these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..errors import DataError
from .pareto import ParetoPoint, front_auc

__all__ = ["Z95", "wilson_interval", "paired_difference", "bootstrap_accuracies", "auc_difference",
           "paired_bootstrap_difference", "paired_perplexity_ratio"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / total``."""
    if total <= 0 or not 0 <= correct <= total:
        raise DataError(f"wilson_interval needs 0 <= correct <= total and total > 0; got {correct} / {total}.",
                        "Pass counts of one evaluated test set.")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _as_bool(x) -> torch.Tensor:
    return torch.as_tensor(x).reshape(-1).bool()


def paired_difference(correct_a, correct_b, z: float = Z95) -> dict:
    """Accuracy of A minus accuracy of B on the same examples, with its 95% interval (normal approximation of the
    paired difference: variance ``(p10 + p01 - (p10 - p01)^2) / n``), and the verdict ``"A"``, ``"B"`` or
    ``"tie"`` (the interval contains 0)."""
    a, b = _as_bool(correct_a), _as_bool(correct_b)
    if a.numel() != b.numel() or a.numel() == 0:
        raise DataError(f"paired_difference needs two equally long, non-empty correctness vectors; got {a.numel()} "
                        f"and {b.numel()}.", "Score both models on the same examples, in the same order.")
    n = a.numel()
    p10 = float((a & ~b).sum()) / n
    p01 = float((~a & b).sum()) / n
    diff = p10 - p01
    half = z * math.sqrt(max(p10 + p01 - diff * diff, 0.0) / n)
    lo, hi = diff - half, diff + half
    return {"difference": diff, "low": lo, "high": hi, "examples": n,
            "verdict": "A" if lo > 0 else "B" if hi < 0 else "tie"}


def bootstrap_accuracies(correct: Mapping[str, torch.Tensor], samples: int = 1000, seed: int = 0
                         ) -> dict[str, torch.Tensor]:
    """Per model, ``samples`` bootstrap replicates of its accuracy, every model resampled with the *same* examples
    (multinomial weights over the examples, one draw per replicate), so differences stay paired."""
    names = list(correct)
    if not names:
        raise DataError("bootstrap_accuracies got no models.", "Pass {model name: correctness vector}.")
    matrix = torch.stack([_as_bool(correct[k]).double() for k in names])  # [models, examples]
    n = matrix.shape[1]
    gen = torch.Generator().manual_seed(seed)
    weights = torch.stack([torch.bincount(torch.randint(n, (n,), generator=gen), minlength=n)
                           for _ in range(samples)]).double()  # [samples, examples]
    acc = (weights @ matrix.t()) / n  # [samples, models]
    return {k: acc[:, m] for m, k in enumerate(names)}


def _auc_replicates(points_a, points_b, correct, flops_min, flops_max, samples, seed):
    names = {p.name for p in (*points_a, *points_b)}
    missing = sorted(names - set(correct))
    if missing:
        raise DataError(f"auc_difference has no per-example correctness for {missing}.",
                        "Pass the correctness vector of every point of both fronts.")
    reps = bootstrap_accuracies({k: correct[k] for k in sorted(names)}, samples=samples, seed=seed)

    def auc(points, s=None):
        pts = [ParetoPoint(name=p.name, flops=p.flops, params=p.params, kind=p.kind,
                           metric=p.metric if s is None else float(reps[p.name][s])) for p in points]
        return front_auc(pts, flops_min, flops_max)

    diffs = torch.tensor([auc(points_a, s) - auc(points_b, s) for s in range(samples)], dtype=torch.float64)
    return auc(points_a), auc(points_b), diffs


def _summary(auc_a: float, auc_b: float, diffs: torch.Tensor, level: float) -> dict:
    tail = (1 - level) / 2
    lo, hi = (float(torch.quantile(diffs, q)) for q in (tail, 1 - tail))
    return {"difference": auc_a - auc_b, "low": lo, "high": hi, "auc_a": auc_a, "auc_b": auc_b,
            "verdict": "A" if lo > 0 else "B" if hi < 0 else "tie"}


def auc_difference(runs: Sequence[tuple[Sequence[ParetoPoint], Sequence[ParetoPoint], Mapping[str, torch.Tensor]]],
                   flops_min: float, flops_max: float, samples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """``front_auc(A) - front_auc(B)`` with a paired bootstrap interval over the test examples.

    ``runs``: one ``(points_a, points_b, correct)`` per training seed; ``correct`` maps every point's ``name`` to
    its per-example correctness on one test set (the same examples in every run), and each point's ``metric`` is
    that accuracy. Every run is resampled with the same bootstrap draws, so ``"mean"`` (the difference of the
    seed-mean AUCs) gets an interval for test-set sampling at fixed seeds; ``"runs"`` has each seed's own, and
    ``"seed_std"`` the spread between seeds, the part of the variation the bootstrap does not see. Verdicts:
    ``"A"``, ``"B"``, or ``"tie"`` when the interval contains 0.
    """
    if not runs:
        raise DataError("auc_difference got no runs.", "Pass one (points_a, points_b, correct) per seed.")
    per_run = [_auc_replicates(a, b, c, flops_min, flops_max, samples, seed) for a, b, c in runs]
    out = {"runs": [_summary(a, b, d, level) for a, b, d in per_run], "bootstrap_samples": samples,
           "level": level}
    mean_a = sum(a for a, _, _ in per_run) / len(per_run)
    mean_b = sum(b for _, b, _ in per_run) / len(per_run)
    out["mean"] = _summary(mean_a, mean_b, torch.stack([d for _, _, d in per_run]).mean(0), level)
    diffs = torch.tensor([r["difference"] for r in out["runs"]], dtype=torch.float64)
    out["seed_std"] = float(diffs.std()) if len(runs) > 1 else None
    return out


def paired_bootstrap_difference(scores_a, scores_b, samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of per-example ``scores_a - scores_b`` (e.g. ROUGE-L of two models on the same prompts) with a paired
    bootstrap percentile interval; verdict ``"A"``, ``"B"`` or ``"tie"`` (the interval contains 0)."""
    a = torch.as_tensor(scores_a, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(scores_b, dtype=torch.float64).reshape(-1)
    if a.numel() != b.numel() or a.numel() == 0:
        raise DataError(f"paired_bootstrap_difference needs two equally long, non-empty score lists; got "
                        f"{a.numel()} and {b.numel()}.", "Score both models on the same examples, in the same order.")
    d = a - b
    gen = torch.Generator().manual_seed(seed)
    reps = d[torch.randint(d.numel(), (samples, d.numel()), generator=gen)].mean(1)
    tail = (1 - level) / 2
    lo, hi = (float(torch.quantile(reps, q)) for q in (tail, 1 - tail))
    return {"difference": float(d.mean()), "low": lo, "high": hi, "examples": d.numel(),
            "verdict": "A" if lo > 0 else "B" if hi < 0 else "tie"}


def paired_perplexity_ratio(nll_a, nll_b, samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Perplexity of A over perplexity of B on the same texts, with a paired bootstrap interval over texts.

    ``nll_a`` / ``nll_b``: :func:`~hf_klas.evaluation.perplexity.text_nll` of both models on one text list (the
    token counts must agree: same tokenizer, same texts). Each replicate resamples texts and pools tokens as
    perplexity does; verdict ``"A"`` (A lower, better), ``"B"`` or ``"tie"`` (the interval contains 1)."""
    a = torch.tensor([n for n, _ in nll_a], dtype=torch.float64)
    b = torch.tensor([n for n, _ in nll_b], dtype=torch.float64)
    tokens = torch.tensor([t for _, t in nll_a], dtype=torch.float64)
    if a.numel() != b.numel() or a.numel() == 0 or [t for _, t in nll_b] != tokens.long().tolist():
        raise DataError("paired_perplexity_ratio needs per-text NLLs of two models on the same texts (equal "
                        "lengths and token counts).", "Score both models with text_nll on the same texts.")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(a.numel(), (samples, a.numel()), generator=gen)
    count = tokens[idx].sum(1).clamp_min(1.0)
    reps = torch.exp((a[idx].sum(1) - b[idx].sum(1)) / count)
    tail = (1 - level) / 2
    lo, hi = (float(torch.quantile(reps, q)) for q in (tail, 1 - tail))
    ratio = float(torch.exp((a.sum() - b.sum()) / tokens.sum().clamp_min(1.0)))
    return {"ratio": ratio, "low": lo, "high": hi, "texts": a.numel(),
            "verdict": "A" if hi < 1 else "B" if lo > 1 else "tie"}
