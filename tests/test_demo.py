"""The main job, as CI runs it: `hf-klas demo --quick` on the packaged real weights, with sanity checks."""

from __future__ import annotations

import json

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
    anchors = {r["model"]: r for r in vit["rows"] if r["kind"] == "anchor"}
    assert set(anchors) == {"vit-fmnist-tiny", "vit-fmnist-small", "vit-fmnist-base"}  # aliases, not paths
    lo, hi = anchors[vit["pair"][0]]["flops"], anchors[vit["pair"][1]]["flops"]
    stitches = [r for r in vit["rows"] if r["kind"] == "stitch"]
    assert stitches
    for r in stitches:
        assert lo < r["flops"] < hi  # strictly between the pair's anchors
        assert 0.0 <= r["accuracy"] <= 1.0
    # a short finetune improves the least-squares-initialised stitches
    assert sum(r["accuracy"] for r in stitches) > sum(r["accuracy_init"] for r in stitches)
    cheaper = anchors[vit["pair"][0]]["accuracy"]
    assert vit["stitches_above_cheaper_anchor"] == [r["model"] for r in stitches if r["accuracy"] > cheaper]
    assert 0 < vit["auc_anchors_only"] <= 1 and 0 < vit["auc"] <= 1

    llm = report["llm"]
    anchor, init, tuned, anchor_tuned = llm["rows"]
    assert "same" in anchor_tuned["model"] and llm["finetune"]["mode"] == "lora"
    assert 0 < llm["chosen"]["flops_fraction"] <= report["options"]["llm_budget"]
    assert tuned["perplexity"] < init["perplexity"]  # the finetuned stitch beats its untrained init
    assert anchor["perplexity"] < init["perplexity"]
    summary = (out / "summary.md").read_text()
    assert "Stitches above the cheaper anchor" in summary and "same" in summary


def test_demo_refuses_to_overwrite_a_report(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(HfKlasError, match="overwrite"):
        from hf_klas.demo import DemoOptions, run_demo

        run_demo(DemoOptions(out_dir=str(tmp_path), quick=True))
    assert (tmp_path / "old.txt").read_text() == "keep me"
