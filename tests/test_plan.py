"""StitchPlan: exact JSON round trip, version/overwrite refusals, budget choice and errors, plots."""

import json
import math

import pytest
import torch

from hf_klas.errors import BudgetError, HfKlasError
from hf_klas.selection.plan import PLAN_FILE, AnchorDescriptor, PlanExistsError, StitchPlan
from hf_klas.selection.scoring import bucket_edges, candidate_set

# The 3×4 example of test_scoring (FLOPs 10/front block, 15/back block; anchors 30 and 60 FLOPs).
FLOPS = torch.tensor([[70.0, 55, 40, 25], [80, 65, 50, 35], [90, 75, 60, 45]], dtype=torch.float64)
GAMMA = torch.tensor([[9.0, 2.0, 1.0, 0.1], [9.0, 9.0, 1.04, 0.8], [9.0, 9.0, 1.2, 1.0]], dtype=torch.float64)


def _plan(**over):
    g = GAMMA.clone()
    g[0, 0] = math.nan  # a "not computed" entry must survive the round trip
    theta = GAMMA * torch.tensor([0.1, 1 / 3, 0.7, 2.0], dtype=torch.float64)  # non-representable decimals
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[0, 0] = False
    kw = dict(
        method="klas",
        method_params={"num_buckets": 2, "tau": 0.05, "eps_rel": 1e-3, "probe": "logit_lens"},
        front=AnchorDescriptor("tiny-front", "main", "sha256:abc", 3, 8, "llama"),
        back=AnchorDescriptor("tiny-back", None, "sha256:def", 4, 12, "llama"),
        seq_len=128,
        score=g,
        theta=theta,
        flops=FLOPS,
        params=FLOPS * 1000 + 0.5,
        valid_mask=valid,
        anchor_flops=(30.0, 60.0),
        candidates=candidate_set(g, FLOPS, (30.0, 60.0), num_buckets=2, tau=0.05, valid_mask=valid),
        bucket_edges=bucket_edges(30.0, 60.0, 2),
        calibration={"source": "default_texts", "num_tokens": 4096},
        extra={"note": "ünïcode ok"},
    )
    kw.update(over)
    return StitchPlan(**kw)


def test_json_round_trip_exact(tmp_path):
    plan = _plan()
    path = plan.save(tmp_path / "p")
    assert path.name == PLAN_FILE
    text = path.read_text(encoding="utf-8")
    json.loads(text)  # strict JSON (NaN written as a string)
    assert "NaN" in text
    back = StitchPlan.load(tmp_path / "p")
    assert back == plan
    assert back.theta.dtype == torch.float64 and torch.equal(back.theta, plan.theta)  # bit-exact float64
    assert back.candidates == plan.candidates and back.front == plan.front
    assert math.isnan(float(back.score[0, 0]))


def test_never_overwrites_silently(tmp_path):
    plan = _plan()
    plan.save(tmp_path)
    with pytest.raises(PlanExistsError, match="overwrite=True"):
        plan.save(tmp_path)
    _plan(method="cka").save(tmp_path, overwrite=True)
    assert StitchPlan.load(tmp_path).method == "cka"


def test_refuses_newer_version(tmp_path):
    _plan(created_with="99.1.0").save(tmp_path)
    with pytest.raises(HfKlasError, match="99.1.0") as ei:
        StitchPlan.load(tmp_path)
    assert "upgrade" in ei.value.fix


def test_not_json_serialisable_refused_before_writing(tmp_path):
    with pytest.raises(HfKlasError, match="JSON"):
        _plan(extra={"bad": object()}).save(tmp_path / "x")
    assert not (tmp_path / "x" / PLAN_FILE).exists()


def test_shape_validation():
    with pytest.raises(ValueError, match="flops"):
        _plan(flops=FLOPS[:, :3])
    with pytest.raises(ValueError, match="blocks"):
        _plan(front=AnchorDescriptor("f", num_blocks=5))


def test_best_for_budget_policies_and_fraction():
    plan = _plan()
    # candidates: (2,3) 35 b0 Γ0.8, (3,3) 45 b1 Γ1.0, (2,2) 50 b1 Γ1.04, (1,1) 55 b1 Γ2.0 (cover)
    top = plan.best_for_budget(50)
    assert (top.front_blocks, top.back_start) == (3, 3)  # highest bucket that fits, lowest Γ in it
    low = plan.best_for_budget(50, policy="lowest")
    assert (low.front_blocks, low.back_start) == (2, 3)
    frac = plan.best_for_budget(0.75)  # 0.75 × 60 = 45 FLOPs
    assert (frac.front_blocks, frac.back_start) == (3, 3)
    # 30 FLOPs: no candidate fits → falls back to all valid configurations ((1,3) = 25 FLOPs)
    with pytest.warns(UserWarning, match="no candidate fits"):
        fb = plan.best_for_budget(30)
    assert (fb.front_blocks, fb.back_start) == (1, 3)


def test_budget_errors_show_feasible_range():
    plan = _plan()
    assert plan.feasible_range() == (25.0, 60.0)
    for bad in (10, 61, 1e12):
        with pytest.raises(BudgetError) as ei:
            plan.best_for_budget(bad)
        assert "feasible range is 25 FLOPs to 60 FLOPs" in str(ei.value)
    with pytest.raises(BudgetError, match="feasible range"):
        plan.best_for_budget(-1)
    with pytest.raises(BudgetError, match="feasible range"):
        plan.best_for_budget(0.1)  # 6 FLOPs


def test_plots_written(tmp_path):
    plan = _plan()
    for fn, name in ((plan.plot_heatmap, "heat.png"), (plan.plot_candidates, "sub/cands.png")):
        out = fn(tmp_path / name)
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    # non-positive scores: linear colour scale, still written
    zero = _plan(score=torch.zeros(3, 4, dtype=torch.float64), candidates=[])
    assert zero.plot_heatmap(tmp_path / "z.png").exists()
    assert zero.plot_candidates(tmp_path / "z2.png").exists()


def test_anchor_identity_lives_with_the_anchor(tmp_path):
    """Key, descriptor and fingerprint come from the Anchor (hf_klas.identity): equal weights -> equal key (in
    memory or reloaded from disk with unchanged files), other weights -> another key."""
    from tiny import llama_pair

    from hf_klas.identity import model_identity
    from hf_klas.loading import resolve_anchor

    front, _ = llama_pair(seed=0)
    other, _ = llama_pair(seed=1)
    a, b = resolve_anchor(front), resolve_anchor(other)
    assert a.cache_key() == resolve_anchor(front).cache_key() and a.cache_key() != b.cache_key()
    d = a.descriptor()
    assert (d.num_blocks, d.hidden_size, d.model_type, d.fingerprint) == (4, 64, "llama", a.fingerprint())
    front.save_pretrained(tmp_path / "m")
    disk = resolve_anchor(str(tmp_path / "m"))
    assert disk.cache_key() == resolve_anchor(str(tmp_path / "m")).cache_key()
    assert model_identity(front)["weights"] == model_identity(disk.load_full())["weights"]
