"""Probes: logit lens (LLM + ViT) equals norm + head by hand, tuned lens starts at the logit lens and improves,
ProbeNet trains, save/load round trip and refusal of another anchor."""

from __future__ import annotations

import pytest
import torch
from tiny import llama_pair, vision_pair

from hf_klas.activations import run_prefix
from hf_klas.anatomy import get_final_norm, get_head
from hf_klas.errors import CalibrationError, HfKlasError, ProbeMismatchError
from hf_klas.probes import PROBES, LogitLens, Probe, ProbeNet, TunedLens, build_probe, load_probe


def lm_batch(seed=0, b=3, t=10, vocab=128):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, t - 3:] = 0  # right padding in one row
    return {"input_ids": ids, "attention_mask": mask}


def lm_batches(n=4, **kw):
    return [lm_batch(seed=s, **kw) for s in range(n)]


@torch.no_grad()
def test_logit_lens_equals_norm_and_head_by_hand():
    front, _ = llama_pair()
    batch = lm_batch()
    lens = LogitLens(front)
    outs = run_prefix(front, batch)
    lp = lens.block_log_probs(outs, batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    assert lp.shape == (front.config.num_hidden_layers + 1, int(keep.sum()), 128)
    assert lp.dtype == torch.float32
    hs = front(**batch, output_hidden_states=True).hidden_states  # last entry is already normed
    norm, head = get_final_norm(front), get_head(front)
    for k in range(len(hs) - 1):
        ref = torch.log_softmax(head(norm(hs[k])).float(), -1)[keep]
        assert torch.allclose(lp[k], ref, atol=1e-5)
    # the last point (raw last block output) gets norm + head and reproduces the model's own output
    ref_last = torch.log_softmax(front(**batch).logits.float(), -1)[keep]
    assert torch.allclose(lp[-1], ref_last, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("family", ["vit", "deit"])
def test_logit_lens_vision_uses_cls_through_layernorm_and_classifier(family):
    small, _ = vision_pair(family)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    lens = LogitLens(small)
    outs = run_prefix(small, {"pixel_values": x})
    lp = lens.block_log_probs(outs)
    assert lp.shape == (small.config.num_hidden_layers + 1, 4, 5)
    norm, head = get_final_norm(small), get_head(small)
    for k, h in enumerate(outs):
        assert torch.allclose(lp[k], torch.log_softmax(head(norm(h[:, 0])), -1), atol=1e-5)
    if family == "vit":  # ViT's classifier reads the CLS token: the last point is the model's output
        assert torch.allclose(lp[-1], torch.log_softmax(small(pixel_values=x).logits, -1), atol=1e-5)
    mean = LogitLens(small, LogitLens.config_class(pooling="mean")).block_log_probs(outs)
    assert torch.allclose(mean[1], torch.log_softmax(head(norm(outs[1].mean(1))), -1), atol=1e-5)


@torch.no_grad()
def test_vocabulary_tiles_match_log_probs_with_softcap():
    front, _ = llama_pair()
    front.config.final_logit_softcapping = 3.0  # Gemma-style cap, applied by the probe
    try:
        lens = LogitLens(front)
        feats = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(1)) * 3
        points = [0, 1, 2, 3, 4]
        state = lens.tile_state(feats, points)
        z = torch.empty(5, 7, 128)
        for v0 in range(0, 128, 48):  # uneven tiles
            v1 = min(128, v0 + 48)
            tile = torch.empty(5, 7, v1 - v0)  # point-major, like the engine's buffers
            lens.logits_tile(state, v0, v1, tile)
            z[..., v0:v1] = tile
        ref = lens.log_probs(feats, points)  # [P, N, V]
        assert torch.allclose(torch.log_softmax(z, -1), ref, atol=1e-5)
        assert float(z.abs().max()) <= 3.0 + 1e-5
    finally:
        del front.config.final_logit_softcapping


def test_tuned_lens_starts_at_logit_lens_and_training_reduces_kl():
    front, _ = llama_pair()
    batches = lm_batches(4, t=16)
    untrained = TunedLens(front)
    with torch.no_grad():
        outs = run_prefix(front, batches[0])
        mask = batches[0]["attention_mask"]
        assert torch.equal(untrained.block_log_probs(outs, mask), LogitLens(front).block_log_probs(outs, mask))
    lens = build_probe("tuned_lens", front, batches, progress=False, max_steps=40, lr=1e-2)
    stats = lens.fit_stats
    assert stats["kl_after"] < 0.8 * stats["kl_before"]
    # measured independently on the batches: mean KL(final || point) over points and tokens drops
    with torch.no_grad():
        def mean_kl(probe):
            total = 0.0
            for b in batches:
                lp = probe.block_log_probs(run_prefix(front, b), b["attention_mask"])
                p = lp[-1].exp()
                total += float((p * (lp[-1] - lp[:-1])).sum(-1).mean())
            return total
        assert mean_kl(lens) < mean_kl(untrained)
    assert all(not p.requires_grad or p.grad is None for p in front.parameters())  # anchor untouched


def test_probenet_trains_and_refuses_language_models():
    small, _ = vision_pair("vit")
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(32, 1, 8, 8, generator=g)} for _ in range(4)]
    probe = build_probe("probenet", small, batches, progress=False, epochs=8, batch_size=32, lr=5e-2)
    st = probe.fit_stats
    assert st["label_source"] == "anchor predictions"
    assert st["loss_per_epoch"][-1] < st["loss_per_epoch"][0]
    assert st["train_accuracy_per_point"][-1] > 0.5  # the last point can read the anchor's own decision
    lp = probe.block_log_probs(run_prefix(small, batches[0]))
    assert lp.shape == (4, 32, 5) and torch.isfinite(lp).all()
    labelled = [dict(b, labels=torch.randint(0, 5, (32,), generator=g)) for b in batches]
    assert build_probe("probenet", small, labelled, progress=False, epochs=1).fit_stats["label_source"] == "batches"
    front, _ = llama_pair()
    with pytest.raises(HfKlasError, match="vision probe"):
        ProbeNet(front)
    with pytest.raises(CalibrationError):
        build_probe("probenet", small, [], progress=False)


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_save_load_round_trip(kind, tmp_path):
    if kind == "probenet":
        model, other = vision_pair("vit")
        batches = [{"pixel_values": torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))}]
        opts = {"epochs": 2}
    else:
        model, other = llama_pair()
        batches = lm_batches(2)
        opts = {"max_steps": 5, "lr": 1e-2} if kind == "tuned_lens" else {}
    probe = build_probe(kind, model, batches, progress=False, **opts)
    probe.save(tmp_path / "p")
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == (["probe_config.json"] if kind == "logit_lens" else ["probe.safetensors", "probe_config.json"])
    back = load_probe(tmp_path / "p", model)
    assert type(back) is type(probe) and back.fingerprint == probe.fingerprint
    with torch.no_grad():
        outs = run_prefix(model, batches[0])
        assert torch.equal(back.block_log_probs(outs, batches[0].get("attention_mask")),
                           probe.block_log_probs(outs, batches[0].get("attention_mask")))
    with pytest.raises(ProbeMismatchError, match="architecture"):
        Probe.load(tmp_path / "p", other)


def test_load_refuses_same_shape_other_weights_and_other_type(tmp_path):
    front, _ = llama_pair(seed=0)
    twin, _ = llama_pair(seed=1)  # same config, other weights
    build_probe("tuned_lens", front, lm_batches(1), progress=False, max_steps=2).save(tmp_path / "t")
    with pytest.raises(ProbeMismatchError, match="weights"):
        Probe.load(tmp_path / "t", twin)
    with pytest.raises(ProbeMismatchError, match="tuned_lens"):
        LogitLens.load(tmp_path / "t", front)
    with pytest.raises(HfKlasError, match="probe_config.json"):
        Probe.load(tmp_path / "missing", front)
    with pytest.raises(HfKlasError, match="no option"):
        build_probe("tuned_lens", front, lm_batches(1), steps=3)
    with pytest.raises(HfKlasError, match="Unknown probe"):
        build_probe("no_such_probe", front)
