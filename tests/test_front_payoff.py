"""The front-payoff benchmark on the shipped zoo with a few steps: every front is built from the rows it reports
(recomputed here with front_auc), each recipe trains its own models, and the supernet's configurations differ
from the independently finetuned ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hf_klas.evaluation import ParetoPoint, front_auc
from hf_klas.study.front_payoff import RECIPES, FrontPayoffOptions

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_reports_fronts_consistent_with_its_rows(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import front_payoff as script

    report = script.main(["--pairs", "vit-fmnist-tiny:vit-fmnist-small", "--stitches", "2", "--steps", "2",
                          "--seeds", "0", "--test_images", "300", "--bootstrap_samples", "100",
                          "--out_dir", str(tmp_path), "--progress", "false"])
    pair = report["pairs"]["vit-fmnist-tiny:vit-fmnist-small"]
    rows = pair["rows"]
    lo, hi = pair["flops_range"]
    assert {r["kind"] for r in rows} == {"anchor (shipped)", "anchor", *RECIPES}
    assert pair["anchors_in_range"] == ["vit-fmnist-tiny", "vit-fmnist-small"]

    def points(kinds):
        return [ParetoPoint(name=f"{r['kind']}:{r['model']}", flops=r["flops"], params=0.0, metric=r["accuracy"],
                            kind="stitch" if r["kind"] in RECIPES else "anchor") for r in rows if r["kind"] in kinds]

    anchors_only = front_auc(points(("anchor", "anchor (shipped)")), lo, hi)
    for label, d in pair["auc_vs_anchors_only"].items():
        assert d["auc_b"] == pytest.approx(anchors_only)
        assert d["auc_a"] == pytest.approx(front_auc(points(("anchor", "anchor (shipped)", label)), lo, hi))
        assert d["auc_a"] >= d["auc_b"] - 1e-12  # adding points never lowers a front
    by_kind = {k: sorted((tuple(r["config"]), r["accuracy"]) for r in rows if r["kind"] == k) for k in RECIPES}
    assert [c for c, _ in by_kind["stitches"]] == [c for c, _ in by_kind["supernet"]] == [tuple(c) for c in
                                                                                         sorted(pair["configs"])]
    assert by_kind["stitches"] != by_kind["supernet"]
    md = (tmp_path / "front_payoff.md").read_text()
    assert "anchors + supernet" in md and (tmp_path / pair["plot"]).stat().st_size > 0


def test_bad_pairs_are_refused():
    from hf_klas.errors import HfKlasError

    with pytest.raises(HfKlasError, match="two different zoo anchors"):
        FrontPayoffOptions(pairs=["vit-fmnist-tiny:vit-fmnist-tiny"])
