"""The main job, as CI runs it: `hf-klas demo --quick` on the packaged real weights, with sanity checks."""

from __future__ import annotations

import json
import math

import pytest

from hf_klas.cli import main
from hf_klas.errors import HfKlasError

pytestmark = pytest.mark.integration


def test_quick_demo_report_is_sane(tmp_path):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("summary.md", "vit_pareto.png", "vit_pareto.json", "vit_score_heatmap.png", "vit_candidates.png",
                 "llm_score_heatmap.png", "demo.log"):
        assert (out / name).stat().st_size > 0, name

    vit = report["vit"]
    seeds = vit["seeds"]
    rows = vit["rows"]
    shipped = {r["anchor"]: r for r in rows if r["kind"] == "anchor (shipped)"}
    assert set(shipped) == {"vit-fmnist-tiny", "vit-fmnist-small", "vit-fmnist-base"}  # aliases, not paths
    # every anchor in range got the stitches' extra training, once per seed, next to the shipped one
    for seed in seeds:
        assert {r["anchor"] for r in rows if r["kind"] == "anchor" and r["seed"] == seed} == set(shipped)
    assert vit["anchors_in_range"] == ["vit-fmnist-tiny", "vit-fmnist-small", "vit-fmnist-base"]
    assert vit["finetune"]["applies_to"] == "every anchor and every stitch, per seed"
    lo, hi = shipped[vit["pair"][0]]["flops"], shipped[vit["pair"][1]]["flops"]
    stitches = [r for r in rows if r["kind"] == "stitch"]
    assert stitches and len(stitches) % len(seeds) == 0
    n = vit["test_images"]
    assert n == report["sizes"]["vit_test_images"] == 2000
    for r in rows:
        assert r["low"] <= r["accuracy"] <= r["high"]
        half = 1.96 * (r["accuracy"] * (1 - r["accuracy"]) / n) ** 0.5  # normal approximation, independent
        assert abs((r["high"] - r["low"]) / 2 - half) < 0.3 * half + 2e-3
    for r in stitches:
        assert lo < r["flops"] < hi  # strictly between the pair's anchors
        assert 0.0 <= r["accuracy"] <= 1.0
    # a short finetune improves the least-squares-initialised stitches (validation split)
    assert sum(r["validation_accuracy"] for r in stitches) > sum(r["validation_accuracy_init"] for r in stitches)

    def brute_auc(names, grid=4000):
        """Mean over budgets of the best seed-mean accuracy affordable (independent of hf_klas.evaluation)."""
        acc = {}
        for r in rows:
            if r["model"] in names:
                acc.setdefault(r["model"], []).append((r["flops"], r["accuracy"]))
        pts = [(v[0][0], sum(a for _, a in v) / len(v)) for v in acc.values()]
        cheapest = min(pts)[1]
        total = 0.0
        for k in range(grid):
            x = lo + (hi - lo) * (k + 0.5) / grid
            total += max([a for f, a in pts if f <= x], default=cheapest)
        return total / grid

    anchor_names = {r["model"] for r in rows if r["kind"] != "stitch"}
    mean = vit["auc"]["mean"]
    assert mean["auc_b"] == pytest.approx(brute_auc(anchor_names), abs=2e-3)
    assert mean["auc_a"] == pytest.approx(brute_auc(anchor_names | {r["model"] for r in stitches}), abs=2e-3)
    assert mean["auc_a"] >= mean["auc_b"] - 1e-12  # adding points never lowers a front
    assert mean["low"] <= mean["difference"] <= mean["high"]
    for c in vit["stitch_vs_anchor_front"]:
        assert c["low"] <= c["difference"] <= c["high"]

    llm = report["llm"]
    anchor, init, tuned, anchor_tuned = llm["rows"]
    assert "same" in anchor_tuned["model"] and llm["finetune"]["mode"] == "lora"
    assert llm["method"] == "theta"  # the task-aware default for a self-stitched causal LM
    d = llm["rougeL_stitch_minus_anchor"]
    per_stitch, per_anchor = tuned["rougeL_per_example"], anchor_tuned["rougeL_per_example"]
    assert d["difference"] == pytest.approx((sum(per_stitch) - sum(per_anchor)) / len(per_stitch))
    assert 0 < llm["chosen"]["flops_fraction"] <= report["options"]["llm_budget"]
    # LoRA trains on the synopsis only, so perplexity over prompt + synopsis may rise (the full demo: 47.5 -> 62.9);
    # what must hold is that the finetune changed both models and every score is a valid one
    assert tuned["perplexity"] != pytest.approx(init["perplexity"], rel=1e-6)
    assert anchor_tuned["perplexity"] != pytest.approx(anchor["perplexity"], rel=1e-6)
    for row in llm["rows"]:
        assert math.isfinite(row["perplexity"]) and row["perplexity"] > 1
        assert all(0 <= row[k] <= 1 for k in ("rouge1", "rouge2", "rougeL"))
    assert anchor["perplexity"] < init["perplexity"]  # skipping blocks costs the untrained stitch
    summary = (out / "summary.md").read_text()
    assert "Stitches above the anchors-only front" in summary and "same extra training" in summary


def test_demo_refuses_to_overwrite_a_report(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(HfKlasError, match="overwrite"):
        from hf_klas.demo import DemoOptions, run_demo

        run_demo(DemoOptions(out_dir=str(tmp_path), quick=True))
    assert (tmp_path / "old.txt").read_text() == "keep me"
