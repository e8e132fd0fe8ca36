"""from_anchors(..., budget_flops=...) through hf_klas.selection.api: the budget is respected, the model works,
plans are reused without running the anchors again, and bad inputs fail before any work with cause + fix."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import llama_pair, vision_pair

from hf_klas import StitchedModel
from hf_klas.errors import BudgetError, CalibrationError, HfKlasError, IncompatibleAnchorsError, StitchPointError
from hf_klas.flops import anchor_flops, stitch_flops
from hf_klas.selection.api import SelectOptions, compute_plan, run_select, select_anchors, select_for_budget
from hf_klas.selection.plan import PlanExistsError, StitchPlan


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_KLAS_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def calib(n=6, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (length,), generator=g) for _ in range(n)]


class Counter:
    """Counts forward calls of anchors (pre-hooks on the whole model)."""

    def __init__(self, *models):
        self.n = 0
        self.handles = [m.register_forward_pre_hook(self._hit) for m in models]

    def _hit(self, *args):
        self.n += 1

    def close(self):
        for h in self.handles:
            h.remove()


def test_budget_is_respected_and_the_model_works():
    front, back = llama_pair()
    budget = 0.6 * anchor_flops(back.config, seq_len=128).total
    model = StitchedModel.from_anchors(front, back, budget_flops=budget, calibration=calib(), progress=False)
    i, j = model.config.front_blocks, model.config.back_start
    assert stitch_flops(front.config, back.config, i, j, seq_len=128).total <= budget
    assert model.config.stitch_info["flops"] <= budget  # same 128-token count as the selector
    assert model.config.recipe["selection_method"] == "klas"
    plan = model.stitch_plan
    assert (i, j) in {(c.front_blocks, c.back_start) for c in plan.candidates} or plan.valid_mask[i - 1, j]
    ids = torch.randint(3, 128, (2, 9))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 9, 128) and torch.isfinite(out.loss)
    assert model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_fraction_budget_self_stitching_and_vision():
    front, _ = llama_pair()
    model = StitchedModel.from_anchors(front, budget_flops=0.8, calibration=calib(), progress=False,
                                       method="block_influence")
    assert model.config.back_start > model.config.front_blocks  # depth pruning skips blocks
    assert model.config.stitch_info["flops"] <= 0.8 * anchor_flops(front.config, seq_len=128).total
    small, big = vision_pair("vit")
    pixels = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    vm = StitchedModel.from_anchors(small, big, budget_flops=0.9, calibration=pixels, progress=False)
    assert vm.config.stitch_info["flops"] <= 0.9 * anchor_flops(big.config).total
    assert vm(pixel_values=pixels[0]).logits.shape == (8, 5)


def test_second_budget_reuses_the_plan_without_running_the_anchors():
    front, back = llama_pair()
    data = calib()
    count = Counter(front, back)
    try:
        c1, p1 = select_for_budget(front, back, 0.7, calibration=data, progress=False)
        first = count.n
        assert first == 2  # one batch, each anchor once
        c2, p2 = select_for_budget(front, back, 0.45, calibration=data, progress=False)
        assert count.n == first  # disk cache: no probe / anchor forward at all
        assert p2 == p1 and c2.flops <= 0.45 * p1.anchor_flops[1]
        c3, _ = select_for_budget(front, back, 0.9, calibration=data, plan=p1, progress=False)
        assert count.n == first  # in-memory plan
        # another calibration set is another plan
        select_for_budget(front, back, 0.7, calibration=calib(seed=1), progress=False)
        assert count.n == first + 2
        # from_anchors with a plan: the selection does not run (only the stitch fit touches the back anchor)
        before = count.n
        StitchedModel.from_anchors(front, back, budget_flops=0.6, plan=p1, stitch_init="identity", progress=False)
        assert count.n == before
    finally:
        count.close()


def test_plan_reuse_for_other_anchors_is_refused(tmp_path):
    front, back = llama_pair()
    _, plan = select_for_budget(front, back, 0.7, calibration=calib(), progress=False)
    plan.save(tmp_path / "plan")
    other_front, _ = llama_pair(seed=1)
    other_front.name_or_path = "someone-else"
    with pytest.raises(HfKlasError, match="not the front anchor"):
        select_for_budget(other_front, back, 0.7, plan=tmp_path / "plan")
    with pytest.raises(HfKlasError, match="not the back anchor"):
        select_for_budget(front, None, 0.7, plan=plan)


def test_bad_budgets_fail_before_any_forward_with_the_range():
    front, back = llama_pair()
    count = Counter(front, back)
    try:
        with pytest.raises(BudgetError, match="feasible range") as err:
            select_for_budget(front, back, 1e3, calibration=calib(), progress=False)
        assert "raise the budget" in str(err.value)
        with pytest.raises(BudgetError, match="above the dearer anchor"):
            select_for_budget(front, back, 1e15, calibration=calib(), progress=False)
        for bad in (-1.0, 0, float("nan"), float("inf"), "half", True):
            with pytest.raises(BudgetError):
                select_for_budget(front, back, bad, calibration=calib(), progress=False)
        assert count.n == 0
    finally:
        count.close()


def test_bad_calibration_methods_and_anchor_counts():
    front, back = llama_pair()
    with pytest.raises(CalibrationError, match="tokenised to nothing"):
        select_for_budget(front, back, 0.7, calibration=[torch.tensor([5]), torch.tensor([7])], progress=False)
    with pytest.raises(CalibrationError):
        select_for_budget(front, back, 0.7, calibration=[], progress=False)
    with pytest.raises(CalibrationError, match="tokenizer"):
        select_for_budget(front, back, 0.7, calibration=["text needs a tokenizer"], progress=False)
    with pytest.raises(HfKlasError, match="Unknown selection method"):
        select_for_budget(front, back, 0.7, calibration=calib(), method="magic")
    with pytest.raises(IncompatibleAnchorsError, match="self-stitching"):
        select_for_budget(front, back, 0.7, calibration=calib(), method="ls_replacement")
    with pytest.raises(HfKlasError, match="budget policy"):
        select_for_budget(front, back, 0.7, calibration=calib(), policy="cheapest")
    with pytest.raises(StitchPointError, match="at least 2 anchors"):
        select_anchors([front], calib())
    with pytest.raises(StitchPointError, match="at least 2 anchors"):
        run_select(SelectOptions(anchors=["only-one"]))
    _, other_vocab = llama_pair(vocab=96)
    with pytest.raises(IncompatibleAnchorsError):
        select_for_budget(front, other_vocab, 0.7, calibration=calib())


def test_select_anchors_ranks_pairs_cheaper_to_dearer():
    front, back = llama_pair()
    twin, _ = llama_pair(seed=3)
    ranking = select_anchors([back, front, twin], calib(), progress=False)
    assert len(ranking) == 3
    assert ranking == sorted(ranking, key=lambda r: r["final_kl"])
    for r in ranking:
        assert r["front_flops"] <= r["back_flops"]
        assert r["final_kl"] >= 0


def test_run_select_writes_plan_and_pngs_and_refuses_overwrite(tmp_path):
    front, back = llama_pair()
    front.save_pretrained(tmp_path / "front")
    back.save_pretrained(tmp_path / "back")
    out = tmp_path / "plan"
    opts = SelectOptions(front=str(tmp_path / "front"), back=str(tmp_path / "back"), budget=0.7,
                         calibration=calib(), out_dir=str(out), progress=False)
    summary = run_select(opts)
    json.dumps(summary)  # JSON-able
    assert sorted(p.name for p in out.iterdir()) == ["candidates.png", "heatmap.png", "plan.json"]
    assert summary["chosen"]["flops"] <= 0.7 * summary["anchor_flops"][1]
    assert summary["grid"] == [4, 6] and summary["candidates"]
    assert StitchPlan.load(out).method == "klas"
    with pytest.raises(PlanExistsError):
        run_select(opts)
    again = run_select(opts, overwrite=True)
    assert again["cached"] is True and again["chosen"] == summary["chosen"]
    with pytest.raises(HfKlasError, match="no 'probe' option"):
        run_select(opts, method="cka", probe="tuned_lens", overwrite=True)


def test_the_default_selector_is_chosen_per_task_and_named_methods_win():
    """method=None: theta for a causal LM stitched to itself, klas (the paper's Γ) for two LLMs, snnet for two
    vision anchors; a
    named method is used as given; the summary says where the name came from."""
    front, back = llama_pair()
    self_stitched = StitchedModel.from_anchors(front, budget_flops=0.7, calibration=calib(), progress=False)
    assert self_stitched.config.recipe["selection_method"] == "theta"
    cross = StitchedModel.from_anchors(front, back, budget_flops=0.7, calibration=calib(), progress=False)
    assert cross.config.recipe["selection_method"] == "klas"
    named = StitchedModel.from_anchors(front, budget_flops=0.7, calibration=calib(), method="klas", progress=False)
    assert named.config.recipe["selection_method"] == "klas"
    _, info = compute_plan(front, None, calib(), progress=False)
    assert info["method_source"] == "task default"
    small, big = vision_pair()
    plan, info = compute_plan(small, big, None, progress=False)  # two vision anchors: SN-Net's data-free rule
    assert (plan.method, info["method_source"], info["forward_calls"]) == ("snnet", "task default",
                                                                           {"front": 0, "back": 0})
    _, info = compute_plan(front, None, calib(), "theta", progress=False)
    assert info["method_source"] == "named" and info["cached"]  # same selector, same key: one cache entry


def test_select_without_method_carries_klas_flags_to_the_default_and_refuses_foreign_ones(tmp_path, monkeypatch):
    from hf_klas.families import CAUSAL_LM
    from hf_klas.selection.selectors import TASK_DEFAULTS
    from hf_klas.selection.selectors.klas import KlasConfig

    front, _ = llama_pair()
    front.save_pretrained(tmp_path / "m")
    opts = SelectOptions(front=str(tmp_path / "m"), budget=0.7, calibration=calib(), out_dir=str(tmp_path / "p"),
                         progress=False)
    summary = run_select(opts, KlasConfig(num_buckets=3))
    assert (summary["method"], summary["method_source"]) == ("theta", "task default")
    assert StitchPlan.load(tmp_path / "p").method == "theta"
    monkeypatch.setitem(TASK_DEFAULTS, (CAUSAL_LM, True), "cka")  # a default outside the KLAS family
    with pytest.raises(HfKlasError, match="probe.*'cka'"):
        run_select(opts, KlasConfig(probe="tuned_lens"), overwrite=True)
    summary = run_select(opts, KlasConfig(num_buckets=3), overwrite=True)  # shared options carry over
    assert summary["method"] == "cka"
