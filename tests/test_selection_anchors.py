"""Big and half-precision anchors: bf16/fp16 anchors give float32 distributions and a Θ close to the float32
anchors'; anchors placed with a device map that offloads blocks, norm and head to disk are probed in place; the
kernel's shift is raised when a later vocabulary tile is far above the first; the selection's memory is in the plan
and does not grow with the data."""

from __future__ import annotations

import copy

import pytest
import torch
from test_selection_engine import lm_batches, naive_kl
from tiny import decoder_anchor, llama_pair

from hf_klas.activations import run_prefix
from hf_klas.errors import HfKlasError
from hf_klas.probes import LogitLens
from hf_klas.selection import engine as engine_module
from hf_klas.selection.api import SelectOptions, compute_plan
from hf_klas.selection.engine import KLEngine
from hf_klas.selection.selectors import get_selector


@torch.no_grad()
def float64_lens(model, batches):
    """Every point's log-probs from the model's own (possibly bf16) block outputs and norm, with the head in
    float64: what the engine computes when it forms the distributions in float32."""
    lens = LogitLens(model)
    per_batch = []
    for b in batches:
        outs = run_prefix(model, b)
        keep = b["attention_mask"].bool()
        normed = [lens.norm(h)[keep].double() for h in outs]
        per_batch.append(torch.stack([torch.log_softmax(x @ lens.head.weight.double().t(), -1) for x in normed]))
    return torch.cat(per_batch, dim=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_anchors_form_float32_distributions(dtype):
    front, back = llama_pair()
    batches = lm_batches()
    full = KLEngine(LogitLens(front), LogitLens(back), progress=False).run(batches)
    hf, hb = copy.deepcopy(front).to(dtype), copy.deepcopy(back).to(dtype)
    half = KLEngine(LogitLens(hf), LogitLens(hb), progress=False, tile_bytes=1).run(batches)
    # the same half-precision block outputs, head and KL in float64: only float32 rounding in between
    lf, lg = float64_lens(hf, batches), float64_lens(hb, batches)
    exact = torch.tensor([[naive_kl(lf[i], lg[j]) for j in range(6)] for i in range(1, 5)], dtype=torch.float64)
    assert torch.allclose(half.theta, exact, atol=2e-6, rtol=1e-4)
    # against the float32 anchors: the blocks' own rounding (bf16 keeps 8 bits of mantissa, fp16 11)
    bound = 5e-5 if dtype == torch.bfloat16 else 1e-5
    assert float((half.theta - full.theta).abs().max()) <= bound
    assert float((half.within_back - full.within_back).abs().max()) <= bound


def test_bf16_dtype_option_loads_anchors_in_bf16(tmp_path):
    front, back = llama_pair()
    front.save_pretrained(tmp_path / "f")
    back.save_pretrained(tmp_path / "b")
    calib = [torch.randint(3, 128, (12,), generator=torch.Generator().manual_seed(k)) for k in range(4)]
    kw = dict(cache=False, progress=False, batch_size=2)
    p32, _ = compute_plan(str(tmp_path / "f"), str(tmp_path / "b"), calib, **kw)
    p16, _ = compute_plan(str(tmp_path / "f"), str(tmp_path / "b"), calib, dtype="bfloat16", **kw)
    assert p16.method_params["dtype"] == "bfloat16" and p32.method_params["dtype"] == "float32"
    assert 0 < float((p16.theta - p32.theta).abs().max()) <= 5e-5
    with pytest.raises(HfKlasError, match="dtype"):
        get_selector("klas", dtype="int8")


def offload_map(model_prefix="model"):
    """Embeddings, two blocks, the final norm and the head on disk; the rest on the CPU."""
    disk = {f"{model_prefix}.embed_tokens", f"{model_prefix}.layers.1", f"{model_prefix}.layers.2",
            f"{model_prefix}.norm", "lm_head"}
    names = [f"{model_prefix}.embed_tokens", f"{model_prefix}.rotary_emb", "lm_head", f"{model_prefix}.norm"]
    names += [f"{model_prefix}.layers.{k}" for k in range(4)]
    return {n: "disk" if n in disk else "cpu" for n in names}


def test_offloaded_anchor_is_probed_in_place(tmp_path):
    model = decoder_anchor("qwen3", tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "anchor")
    calib = [torch.randint(3, 128, (10,), generator=torch.Generator().manual_seed(k)) for k in range(4)]
    ref, _ = compute_plan(model, None, calib, cache=False, progress=False, batch_size=2)
    plan, _ = compute_plan(str(tmp_path / "anchor"), None, calib, cache=False, progress=False, batch_size=2,
                           device_map=offload_map(), offload_folder=str(tmp_path / "offload"))
    assert float((plan.theta - ref.theta).nan_to_num().abs().max()) <= 1e-6
    assert [c.to_dict() for c in plan.candidates] == [c.to_dict() for c in ref.candidates]
    anchors = plan.extra["memory"]["anchors"]["front"]
    assert anchors["offloaded"] > anchors["cpu"] > 0  # head, embeddings, 2 of 4 blocks stayed on disk
    assert ref.extra["memory"]["anchors"]["front"] == {"cpu": anchors["cpu"] + anchors["offloaded"]}
    # the CLI option takes the same map as JSON
    assert SelectOptions(front="x", device_map='{"": "cpu"}').device_map == {"": "cpu"}
    with pytest.raises(HfKlasError, match="JSON"):
        SelectOptions(front="x", device_map="{nope")


def test_offloaded_in_memory_anchor_keeps_its_weights_offloaded(tmp_path):
    from transformers import AutoModelForCausalLM

    model = decoder_anchor("qwen3", tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "anchor")
    placed = AutoModelForCausalLM.from_pretrained(tmp_path / "anchor", device_map=offload_map(),
                                                  offload_folder=str(tmp_path / "offload"), dtype=torch.float32)
    batches = lm_batches(2)
    r = KLEngine(LogitLens(placed), None, progress=False).run(batches)
    ref = KLEngine(LogitLens(model), None, progress=False).run(batches)
    assert torch.allclose(r.theta, ref.theta, atol=1e-6)
    assert placed.lm_head.weight.device.type == "meta" and placed.model.layers[1].mlp.up_proj.weight.is_meta
    assert LogitLens(placed).anchor_identity["weights"] == LogitLens(model).anchor_identity["weights"]


@torch.no_grad()
def test_shift_is_raised_when_a_later_tile_is_far_above_the_first(monkeypatch):
    front, back = llama_pair()
    for model in (front, back):
        model.lm_head.weight[64:] *= 40.0  # tied: also the embeddings; logits of classes 64.. far above 0..63
    raised = []
    original = engine_module._TileSide.raise_shift
    monkeypatch.setattr(engine_module._TileSide, "raise_shift", lambda self, v: raised.append(1) or original(self, v))
    batches = lm_batches(2)
    fused = KLEngine(LogitLens(front), LogitLens(back), progress=False, tile_bytes=1).run(batches)  # 64-class tiles
    ref = KLEngine(LogitLens(front), LogitLens(back), progress=False, kernel="reference").run(batches)
    assert raised
    assert float(ref.theta.max()) > 1.0
    assert torch.allclose(fused.theta, ref.theta, rtol=1e-4, atol=1e-4)
    assert torch.allclose(fused.within_back, ref.within_back, rtol=1e-4, atol=1e-4)


def test_memory_report_is_in_the_plan_and_flat_in_the_data():
    front, back = llama_pair()
    one = get_selector("klas").select(front, back, lm_batches(1), progress=False).extra["memory"]
    four = get_selector("klas").select(front, back, lm_batches(4), progress=False).extra["memory"]
    assert one == four and one["selection_bytes"] == one["features_bytes"] + one["kernel_bytes"] > 0
    assert set(one["anchors"]) == {"front", "back"} and set(one["anchors"]["front"]) == {"cpu"}


@torch.no_grad()
def test_logits_all_far_below_zero_are_redone_with_shifts(monkeypatch):
    from tiny import vision_pair

    small, big = vision_pair("vit")
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(6, 1, 8, 8, generator=g)} for _ in range(2)]
    plain = KLEngine(LogitLens(small), LogitLens(big), progress=False).run(batches)
    for model in (small, big):
        model.classifier.bias -= 100.0  # a softmax does not see it; unshifted exponentials would all underflow
    redone = []
    original = KLEngine._fused_chunk
    monkeypatch.setattr(KLEngine, "_fused_chunk",
                        lambda self, *a, **kw: redone.append(kw.get("shift_first", False)) or original(self, *a, **kw))
    shifted = KLEngine(LogitLens(small), LogitLens(big), progress=False).run(batches)
    assert True in redone
    # float32 logits near -100 (-144 in log2 units) keep ~1e-5 of their differences: that, not the kernel, bounds it
    ref = KLEngine(LogitLens(small), LogitLens(big), progress=False, kernel="reference").run(batches)
    assert float((shifted.theta - ref.theta).abs().max()) <= 3e-5
    assert float((shifted.theta - plain.theta).abs().max()) <= 3e-5
    assert float((shifted.within_back - plain.within_back).abs().max()) <= 3e-5
