"""The streamed Θ engine against a naive per-pair reference from the anchors' hidden states; one forward per
anchor and batch; NaN reporting; every selector behind one interface."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import llama_pair, vision_pair

from hf_klas.anatomy import get_final_norm, get_head
from hf_klas.errors import HfKlasError, IncompatibleAnchorsError, NumericalError
from hf_klas.probes import LogitLens
from hf_klas.selection.engine import KLEngine
from hf_klas.selection.plan import StitchPlan
from hf_klas.selection.selectors import SELECTORS, get_selector, nearest_window, valid_mask


def lm_batches(n=3, b=3, t=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 128, (b, t), generator=g)
        mask = torch.ones_like(ids)
        mask[0, t - 4:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@torch.no_grad()
def lens_from_hidden_states(model, batches):
    """Reference: every point's log-probs from output_hidden_states, float64, padding dropped. For causal LMs
    the last entry is already normed (head only); ViT/DeiT hidden states are all raw (norm + head)."""
    norm, head = get_final_norm(model), get_head(model)
    per_batch = []
    for b in batches:
        hs = model(**b, output_hidden_states=True).hidden_states
        lm = "input_ids" in b
        lps = [torch.log_softmax(head(norm(h)).double(), -1) for h in (hs[:-1] if lm else hs)]
        if lm:
            lps.append(torch.log_softmax(head(hs[-1]).double(), -1))
        keep = b["attention_mask"].bool() if "attention_mask" in b else None
        per_batch.append(torch.stack([lp[keep] if keep is not None else lp[:, 0] for lp in lps]))
    return torch.cat(per_batch, dim=1)  # [points, tokens, V]


def naive_kl(lp, lq):
    """Per-pair loop, elementwise, float64: mean over tokens of KL(p || q)."""
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def reference(front, back, batches):
    lf, lg = lens_from_hidden_states(front, batches), lens_from_hidden_states(back, batches)
    m, n = lf.shape[0] - 1, lg.shape[0] - 1
    theta = torch.tensor([[naive_kl(lf[i], lg[j]) for j in range(n)] for i in range(1, m + 1)], dtype=torch.float64)
    within = torch.tensor([naive_kl(lg[j], lg[j + 1]) for j in range(n)], dtype=torch.float64)
    return theta, within, naive_kl(lf[m], lg[n])


@pytest.mark.parametrize("kernel,chunk,tile", [("fused", None, None), ("fused", 5, 1), ("reference", 7, None)])
def test_theta_equals_naive_per_pair_reference_cross_model(kernel, chunk, tile):
    front, back = llama_pair()
    batches = lm_batches()
    theta, within, final = reference(front, back, batches)
    kw = {} if tile is None else {"tile_bytes": tile}  # tile_bytes=1: 64-class tiles, online softmax over 2
    r = KLEngine(LogitLens(front), LogitLens(back), kernel=kernel, chunk_tokens=chunk, progress=False,
                 **kw).run(batches)
    assert r.theta.shape == (4, 6) and r.within_back.shape == (6,)
    assert torch.allclose(r.theta, theta, atol=2e-6, rtol=1e-4)
    assert torch.allclose(r.within_back, within, atol=2e-6, rtol=1e-4)
    assert math.isclose(r.final_kl, final, abs_tol=2e-6, rel_tol=1e-4)
    assert r.tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    if chunk:
        assert r.chunk_tokens == chunk
    # CE baseline = Θ + the front's entropy, from the same pass
    assert torch.allclose(r.cross_entropy, r.theta + r.front_entropy[:, None], atol=1e-5)


def test_self_stitching_runs_the_anchor_once_per_batch_and_matches_reference():
    front, _ = llama_pair()
    batches = lm_batches()
    calls = []
    h = front.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        r = KLEngine(LogitLens(front), None, progress=False, chunk_tokens=4, tile_bytes=1).run(batches)
    finally:
        h.remove()
    assert len(calls) == len(batches) and r.forward_calls == {"front": 3, "back": 0}
    theta, within, _ = reference(front, front, batches)
    assert torch.allclose(r.theta, theta, atol=2e-6, rtol=1e-4)
    assert torch.allclose(r.within_back, within, atol=2e-6, rtol=1e-4)
    assert r.final_kl == 0.0
    # Θ(i, j=i) compares a point with itself
    assert torch.allclose(torch.diagonal(r.theta[:, 1:]), torch.zeros(3, dtype=torch.float64), atol=1e-6)


def test_cross_model_runs_each_anchor_once_per_batch():
    front, back = llama_pair()
    counts = {"f": 0, "b": 0}
    hs = [front.register_forward_pre_hook(lambda *a: counts.__setitem__("f", counts["f"] + 1)),
          back.register_forward_pre_hook(lambda *a: counts.__setitem__("b", counts["b"] + 1))]
    try:
        KLEngine(LogitLens(front), LogitLens(back), progress=False, chunk_tokens=3).run(lm_batches(4))
    finally:
        for h in hs:
            h.remove()
    assert counts == {"f": 4, "b": 4}


@torch.no_grad()
def test_vision_engine_uses_one_cls_sample_per_image():
    small, big = vision_pair("deit")
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(6, 1, 8, 8, generator=g)} for _ in range(2)]
    theta, within, final = reference(small, big, batches)
    r = KLEngine(LogitLens(small), LogitLens(big), progress=False).run(batches)
    assert r.tokens == 12
    assert torch.allclose(r.theta, theta, atol=1e-6, rtol=1e-4)
    assert torch.allclose(r.within_back, within, atol=1e-6, rtol=1e-4)
    assert math.isclose(r.final_kl, final, abs_tol=1e-6, rel_tol=1e-4)


def test_topk_approximation_is_exact_when_k_covers_the_vocabulary():
    front, back = llama_pair()
    batches = lm_batches(1)
    exact = KLEngine(LogitLens(front), LogitLens(back), progress=False).run(batches)
    full = KLEngine(LogitLens(front), LogitLens(back), progress=False, topk=128).run(batches)
    assert torch.allclose(full.theta, exact.theta, atol=1e-5)
    approx = KLEngine(LogitLens(front), LogitLens(back), progress=False, topk=4).run(batches)
    assert bool((approx.theta <= exact.theta + 1e-5).all())  # lumping never exceeds the exact KL


@torch.no_grad()
def test_nan_in_an_anchor_is_reported_with_anchor_and_block():
    front, back = llama_pair()
    front.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    front.name_or_path = "poisoned-front"
    for kernel in ("fused", "reference"):
        with pytest.raises(NumericalError, match=r"poisoned-front.*block 2 output"):
            KLEngine(LogitLens(front), LogitLens(back), progress=False, kernel=kernel).run(lm_batches(1))


def test_engine_rejects_mismatched_vocabularies():
    front, _ = llama_pair(vocab=128)
    _, back = llama_pair(vocab=96)
    with pytest.raises(IncompatibleAnchorsError):
        KLEngine(LogitLens(front), LogitLens(back))


# ------------------------------------------------------------------------------------------------------
# selectors
# ------------------------------------------------------------------------------------------------------
def test_valid_mask_and_snnet_window():
    assert valid_mask(3, 5, same=False).all()
    self_mask = valid_mask(4, 4, same=True)
    assert self_mask.tolist() == [[j >= i for j in range(4)] for i in range(1, 5)]
    # DeiT-style equal depths: SN-Net's 34 configurations |a - b| <= 1, minus the 2 that run no back block
    win = nearest_window(12, 12)
    assert int(win.sum()) == 32
    assert all(abs(i + 1 - j) <= 1 and j >= 1 for i, j in win.nonzero().tolist())
    # different depths: relative-depth pairing covers every back start
    assert nearest_window(4, 8)[:, 1:].any(0).all()


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_returns_a_plan_self_stitching(name):
    front, _ = llama_pair()
    plan = get_selector(name).select(front, None, lm_batches(2), progress=False)
    assert isinstance(plan, StitchPlan) and plan.method == name
    assert plan.shape == (4, 4) and torch.equal(plan.valid_mask, valid_mask(4, 4, True))
    assert plan.candidates and all(c.back_start >= c.front_blocks for c in plan.candidates)
    assert plan.extra["self_stitching"] is True
    chosen = plan.best_for_budget(0.8)
    assert chosen.flops <= 0.8 * plan.anchor_flops[1]


@pytest.mark.parametrize("name", sorted(n for n, cls in SELECTORS.items() if not cls.self_stitch_only))
def test_cross_model_selectors(name):
    front, back = llama_pair()
    plan = get_selector(name).select(front, back, lm_batches(2), progress=False)
    assert plan.shape == (4, 6) and bool(plan.valid_mask.all())
    if name == "klas":
        assert plan.theta is not None and len(plan.extra["within_back_kl"]) == 6
    if name == "snnet":
        assert bool(torch.isinf(plan.score[~nearest_window(4, 6)]).all())
        assert {(c.front_blocks, c.back_start) for c in plan.candidates} <= {
            (i + 1, j) for i, j in nearest_window(4, 6).nonzero().tolist()}


@pytest.mark.parametrize("name", sorted(n for n, cls in SELECTORS.items() if cls.self_stitch_only))
def test_self_only_selectors_refuse_two_anchors(name):
    front, back = llama_pair()
    with pytest.raises(IncompatibleAnchorsError, match="self-stitching"):
        get_selector(name).select(front, back, lm_batches(1), progress=False)


def test_a_selector_registers_itself_by_being_defined():
    from hf_klas.selection.selectors.base import Selector, SelectorConfig

    assert {"klas", "theta", "snnet", "block_influence", "ls_replacement"} <= set(SELECTORS)
    assert all(cls.name == name for name, cls in SELECTORS.items())

    class EchoSelector(Selector):
        name = "test_echo"
        config_class = SelectorConfig

    try:
        assert get_selector("test_echo").__class__ is EchoSelector
    finally:
        del SELECTORS["test_echo"]


def test_same_seed_same_plan_and_options():
    front, back = llama_pair()
    batches = lm_batches(2)
    a = get_selector("random", seed=3).select(front, back, batches, progress=False)
    b = get_selector("random", seed=3).select(front, back, batches, progress=False)
    c = get_selector("random", seed=4).select(front, back, batches, progress=False)
    assert a == b and a != c
    k1 = get_selector("klas").select(front, back, batches, progress=False)
    k2 = get_selector("klas").select(front, back, batches, progress=False)
    assert k1 == k2
    t1 = get_selector("klas", probe="tuned_lens", probe_options={"max_steps": 3}).select(
        front, back, batches, progress=False)
    t2 = get_selector("klas", probe="tuned_lens", probe_options={"max_steps": 3}).select(
        front, back, batches, progress=False)
    assert t1 == t2 and t1.extra["probe"] == "tuned_lens" and "front_probe_fit" in t1.extra
    with pytest.raises(HfKlasError, match="no option"):
        get_selector("cka", probe="tuned_lens")
    with pytest.raises(HfKlasError, match="Unknown selection method"):
        get_selector("nope")


def test_vision_selectors_with_probenet():
    small, big = vision_pair("vit")
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(16, 1, 8, 8, generator=g)} for _ in range(2)]
    plan = get_selector("klas", probe="probenet", probe_options={"epochs": 2}).select(
        small, big, batches, progress=False)
    assert plan.shape == (3, 4) and plan.image_size == 8 and plan.seq_len is None
    assert get_selector("cka").select(small, big, batches, progress=False).extra["cka_mode"] == "exact"


def test_theta_only_gamma_and_ce_come_from_one_pass_and_differ_by_the_denominator_and_entropy():
    from hf_klas.selection.scoring import gamma_matrix

    front, back = llama_pair()
    batches = lm_batches(2)
    klas = get_selector("klas", score_embedding_resume=True).select(front, back, batches, progress=False)
    theta = get_selector("theta", score_embedding_resume=True).select(front, back, batches, progress=False)
    ce = get_selector("ce", score_embedding_resume=True).select(front, back, batches, progress=False)
    assert torch.allclose(theta.score, klas.theta, rtol=1e-12)
    assert torch.allclose(klas.score, gamma_matrix(klas.theta, klas.extra["within_back_kl"]), rtol=1e-12)
    entropy = torch.tensor(klas.extra["front_entropy"], dtype=torch.float64)[:, None]  # one per front block
    assert torch.allclose(ce.score, theta.score + entropy, rtol=1e-6, atol=1e-8)
    # the ablation: the last back block's own change replaced by the median change
    med = get_selector("klas", last_denominator="median", score_embedding_resume=True).select(
        front, back, batches, progress=False)
    d = torch.tensor(klas.extra["within_back_kl"], dtype=torch.float64)
    assert torch.allclose(med.score[:, :-1], klas.score[:, :-1])
    assert torch.allclose(med.score[:, -1], klas.theta[:, -1] / d.median())


def test_the_embedding_resume_point_is_left_unscored_by_default():
    front, back = llama_pair()
    plan = get_selector("klas").select(front, back, lm_batches(2), progress=False)
    assert bool(torch.isnan(plan.score[:, 0]).all()) and bool(torch.isfinite(plan.score[:, 1:]).all())
    assert all(c.back_start > 0 for c in plan.candidates) and plan.extra["unscored"]
    assert plan.best_for_budget(1.0).back_start > 0
