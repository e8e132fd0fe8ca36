"""hf_klas.evaluation.intervals against values computed by hand or by brute force, not by the code under test."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hf_klas.errors import DataError
from hf_klas.evaluation import ParetoPoint
from hf_klas.evaluation.intervals import (
    auc_difference,
    bootstrap_accuracies,
    paired_bootstrap_difference,
    paired_difference,
    wilson_interval,
)


def test_wilson_interval_known_values():
    # Wilson 95% for 50/100: 0.5 +- 1.96 * sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100) = [0.4038, 0.5962]
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.40383, abs=1e-4) and hi == pytest.approx(0.59617, abs=1e-4)
    # 0 of 10: lower bound 0, upper 1.96^2 / (10 + 1.96^2) = 0.2775
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27754, abs=1e-4)
    with pytest.raises(DataError):
        wilson_interval(3, 0)


def test_paired_difference_by_hand():
    # 100 examples: A right & B wrong on 12, B right & A wrong on 4, equal elsewhere
    a = torch.zeros(100, dtype=torch.bool)
    b = torch.zeros(100, dtype=torch.bool)
    a[:12] = True
    b[12:16] = True
    a[16:60] = b[16:60] = True
    out = paired_difference(a, b)
    p10, p01 = 0.12, 0.04
    half = 1.959964 * math.sqrt((p10 + p01 - (p10 - p01) ** 2) / 100)
    assert out["difference"] == pytest.approx(0.08)
    assert out["low"] == pytest.approx(0.08 - half, abs=1e-6) and out["high"] == pytest.approx(0.08 + half, abs=1e-6)
    assert out["verdict"] == "A"  # 0.08 - 0.077 > 0
    assert paired_difference(a, a)["verdict"] == "tie"
    assert paired_difference(b, a)["verdict"] == "B"
    with pytest.raises(DataError, match="equally long"):
        paired_difference(a, b[:10])


def test_bootstrap_accuracies_are_paired_and_centred():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2000, generator=gen) < 0.7
    reps = bootstrap_accuracies({"x": x, "same": x.clone(), "flipped": ~x}, samples=300, seed=1)
    assert torch.equal(reps["x"], reps["same"])  # the same resample for every model
    assert torch.allclose(reps["x"] + reps["flipped"], torch.ones(300, dtype=torch.float64))
    assert float(reps["x"].mean()) == pytest.approx(float(x.double().mean()), abs=0.005)
    sd = math.sqrt(0.7 * 0.3 / 2000)
    assert float(reps["x"].std()) == pytest.approx(sd, rel=0.25)


def _step_auc(points, lo, hi, grid=20000):
    """Brute force: mean over a fine grid of budgets of the best metric affordable at each budget."""
    total = 0.0
    cheapest = min(points, key=lambda p: p.flops)
    for k in range(grid):
        x = lo + (hi - lo) * (k + 0.5) / grid
        affordable = [p.metric for p in points if p.flops <= x]
        total += max(affordable) if affordable else cheapest.metric
    return total / grid


def test_auc_difference_matches_brute_force_and_calls_ties():
    n = 400
    gen = torch.Generator().manual_seed(2)
    cheap = torch.rand(n, generator=gen) < 0.60
    dear = torch.rand(n, generator=gen) < 0.90
    good = cheap | (torch.rand(n, generator=gen) < 0.6)  # a stitch much better than the cheap anchor
    acc = {k: float(v.double().mean()) for k, v in (("cheap", cheap), ("dear", dear), ("good", good))}
    anchors = [ParetoPoint("cheap", 1.0, 0, acc["cheap"], kind="anchor"), ParetoPoint("dear", 5.0, 0, acc["dear"],
                                                                                         kind="anchor")]
    stitched = anchors + [ParetoPoint("good", 2.0, 0, acc["good"])]
    correct = {"cheap": cheap, "dear": dear, "good": good}
    out = auc_difference([(stitched, anchors, correct)], 1.0, 5.0, samples=300)
    assert out["mean"]["auc_a"] == pytest.approx(_step_auc(stitched, 1.0, 5.0), abs=1e-3)
    assert out["mean"]["auc_b"] == pytest.approx(_step_auc(anchors, 1.0, 5.0), abs=1e-3)
    assert out["mean"]["verdict"] == "A" and out["mean"]["low"] > 0
    assert out["seed_std"] is None and len(out["runs"]) == 1
    # a stitch no better than the cheap anchor adds nothing: the difference is exactly 0, a tie
    same = anchors + [ParetoPoint("copy", 2.0, 0, acc["cheap"])]
    tie = auc_difference([(same, anchors, {**correct, "copy": cheap})] * 2, 1.0, 5.0, samples=100)
    assert tie["mean"]["difference"] == 0.0 and tie["mean"]["verdict"] == "tie" and tie["seed_std"] == 0.0
    with pytest.raises(DataError, match="no per-example correctness"):
        auc_difference([(stitched, anchors, {"cheap": cheap})], 1.0, 5.0)


def test_paired_bootstrap_difference():
    a = [0.5, 0.6, 0.7, 0.8] * 10
    b = [x - 0.1 for x in a]
    out = paired_bootstrap_difference(a, b, samples=200)
    assert out["difference"] == pytest.approx(0.1) and out["low"] == pytest.approx(0.1) and out["verdict"] == "A"
    noisy = [x + d for x, d in zip(b, itertools.cycle([0.6, -0.6]))]
    assert paired_bootstrap_difference(a, noisy, samples=200)["verdict"] == "tie"
