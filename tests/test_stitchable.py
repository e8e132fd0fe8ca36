"""Stitchable models on tiny anchors of both tasks: switching, caches, saving, Auto classes / trust_remote_code,
pipelines, generate(), Trainer supernet training, PEFT, push_to_hub's card, extraction, finetune --plan, pareto, and
the errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch
from test_push_to_hub import hub  # noqa: F401  (fixture: the Hub API stubbed)
from test_stitched_causal_lm import BLOCK_HF_KLAS
from tiny import decoder_anchor, llama_pair, vision_pair
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    pipeline,
)

import hf_klas  # noqa: F401  (registers the Auto classes)
from hf_klas import (
    StitchableConfig,
    StitchableModelForCausalLM,
    StitchableModelForImageClassification,
    StitchedModel,
    StitchedModelForCausalLM,
    StitchedModelForImageClassification,
)
from hf_klas.anatomy import output_cache_field
from hf_klas.errors import BudgetError, HfKlasError, IncompatibleAnchorsError, StitchPointError
from hf_klas.model_card import CARD_MARKER
from hf_klas.training import CausalLMCollator, StitchedSupernet

CROSS = [(1, 2), (2, 3), (4, 5), (3, 0)]  # llama_pair: front 4 blocks (hidden 64), back 6 (hidden 96)
SELF = [(1, 2), (2, 3), (2, 5), (4, 4)]  # a 6-block anchor: skip blocks, keep all
ATOL = 1e-5


def ids(batch=2, length=10, seed=1, vocab=128):
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def calib(n=6, length=24):
    return [ids(1, length, seed=50 + k)[0] for k in range(n)]


@torch.no_grad()
def as_if_trained(model, seed=0):
    """Move every stitch and one anchor weight, so configurations differ from their least-squares start."""
    g = torch.Generator().manual_seed(seed)
    for lin in model.stitches.values():
        lin.weight.add_(0.02 * torch.randn(lin.weight.shape, generator=g))
    model.back_blocks[-1].mlp.up_proj.weight.mul_(1.1)
    return model


@pytest.fixture(scope="module")
def cross():
    front, back = llama_pair()
    return as_if_trained(StitchableModelForCausalLM.from_anchors(front, back, configs=CROSS, calibration=calib(),
                                                                 progress=False))


@pytest.fixture(scope="module")
def selfstitch():
    """A self-stitch of a tied anchor with sliding/full layers and a logit soft-cap (Gemma-3)."""
    anchor = decoder_anchor("gemma3_text", layers=6)
    return anchor, as_if_trained(StitchableModelForCausalLM.from_anchors(anchor, configs=SELF, calibration=calib(),
                                                                         progress=False))


@pytest.fixture(scope="module")
def vision():
    small, big = vision_pair()
    return StitchableModelForImageClassification.from_anchors(
        small, big, configs=[(1, 1), (2, 2), (3, 0), (3, 3)], calibration=[torch.randn(8, 1, 8, 8)], progress=False)


def without_hf_klas(code: str, tmp_path) -> str:
    """Run ``code`` where hf_klas cannot be imported, with a fresh dynamic-module cache (transformers copies the
    checkpoint's code there; a warm cache would hide a file the checkpoint lacks). Returns its last output line."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = subprocess.run([sys.executable, "-c", BLOCK_HF_KLAS + code], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def pixels(n=3, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---- every configuration is its extracted stitched model --------------------------------------------------------
@pytest.mark.parametrize("which", ["cross", "selfstitch"])
def test_every_configuration_equals_its_extracted_model(which, request):
    model = request.getfixturevalue(which)
    model = model[1] if isinstance(model, tuple) else model
    x = ids(length=12)  # longer than the tiny sliding windows
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding
    for i, j in model.config.stitches:
        model.set_stitch(i, j)
        single = model.extract(i, j)
        assert type(single) is StitchedModelForCausalLM
        assert (single.config.front_blocks, single.config.back_start) == (i, j)
        with torch.no_grad():
            want = single(x, attention_mask=mask, use_cache=False).logits
            assert torch.equal(model(x, attention_mask=mask, use_cache=False).logits, want), (i, j)
            assert torch.allclose(model(x, attention_mask=mask).logits, want, atol=ATOL)
            other = (4, 4) if which == "selfstitch" else (3, 0)
            with model.use_stitch(*other):  # forward(stitch=...) runs a configuration for one call
                assert torch.equal(model(x, attention_mask=mask, stitch=(i, j)).logits, want)
        for kw in ({}, {"cache_implementation": "static"}, {"use_cache": False}):
            got = model.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, **kw)
            assert torch.equal(got, single.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False)), kw
    # extracted weights are copies, not views
    with torch.no_grad():
        single.stitch.weight.zero_()
    assert model.stitches[f"{i}_{j}"].weight.abs().sum() > 0


def test_vision_configurations_equal_their_extracted_models_and_keep_labels(vision):
    small, big = vision_pair()
    x = pixels()
    for i, j in vision.config.stitches:
        vision.set_stitch(i, j)
        single = vision.extract(i, j)
        assert type(single) is StitchedModelForImageClassification
        assert single.config.id2label == big.config.id2label == vision.config.id2label
        with torch.no_grad():
            assert torch.equal(vision(pixel_values=x).logits, single(pixel_values=x).logits)


# ---- switching ------------------------------------------------------------------------------------------------
def test_the_active_configuration_drives_config_cache_slots_and_repr(cross):
    for i, j in cross.config.stitches:
        cross.set_stitch(i, j)
        cfg = cross.config
        assert cfg.active_stitch == (cfg.front_blocks, cfg.back_start) == (i, j)
        assert cfg.num_hidden_layers == i + 6 - j == len(cfg.layer_types)
        assert cfg.stitch_info == {k: v for k, v in cfg.entry(i, j).items() if k in ("flops", "params")} | {
            "flops_unit": "per sequence of 128 tokens"}
        # blocks keep one fixed KV-cache index; the stack maps each to its position in the running configuration
        stack = cross.stitched_stack({})
        slots = [stack.slots[b.self_attn.layer_idx] for b in list(stack.front.blocks) + list(stack.back.blocks)]
        assert slots == list(range(cfg.num_hidden_layers))
        assert [b.self_attn.layer_idx for b in cross.back_blocks] == list(range(4 + j, 10))
        assert f"active_stitch=({i}, {j})" in repr(cross).splitlines()[1]
        assert json.loads(cfg.to_json_string())["front_blocks"] == i


def test_switching_copies_no_weight(cross):
    before = {n: p.data_ptr() for n, p in cross.state_dict().items()}
    for c in cross.config.stitches:
        cross.set_stitch(c)
    assert {n: p.data_ptr() for n, p in cross.state_dict().items()} == before


def test_switching_between_generate_calls_leaks_no_cache_state(cross):
    """Each generate() after a switch equals the extracted model's, dynamic and static (transformers 5.0 keeps its
    static cache across calls); a cache one configuration filled is refused by another."""
    x = ids()
    singles = {c: cross.extract(*c) for c in cross.config.stitches}
    order = [(2, 3), (4, 5), (2, 3), (1, 2), (3, 0), (1, 2)]
    for kw in ({}, {"cache_implementation": "static"}):
        for c in order:
            cross.set_stitch(c)
            want = singles[c].generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
            assert torch.equal(cross.generate(x, max_new_tokens=6, do_sample=False, **kw), want), (c, kw)
    cross.set_stitch(2, 3)
    out = cross(x, use_cache=True)
    cache = out[output_cache_field(type(out))]
    cross.set_stitch(4, 5)
    with pytest.raises(StitchPointError, match=r"holds 10 tokens of stitch configuration \(2, 3\)"):
        cross(x[:, -1:], past_key_values=cache)
    with pytest.raises(StitchPointError, match=r"holds 10 tokens of stitch configuration \(2, 3\)"):
        cross(x[:, -1:], past_key_values=cache, stitch=(1, 2))  # nor by a per-call configuration
    cross.set_stitch(2, 3)  # its own configuration continues it
    step = cross(x[:, -1:], past_key_values=cache).logits[:, -1]
    full = singles[(2, 3)](torch.cat([x, x[:, -1:]], 1), use_cache=False).logits[:, -1]
    assert torch.allclose(step, full, atol=ATOL)


def test_set_budget_ranks_by_metric_then_score_then_flops():
    front, back = llama_pair()
    # FLOPs: (4, 5) < (2, 3) < (1, 2) < (3, 0) -- four narrow front blocks cost less than two wide back ones
    configs = [{"front_blocks": 1, "back_start": 2, "score": 0.5, "bucket": 1},
               {"front_blocks": 2, "back_start": 3, "score": 0.1, "bucket": 1},
               {"front_blocks": 4, "back_start": 5, "score": 0.9, "bucket": 0},
               {"front_blocks": 3, "back_start": 0, "score": 0.2, "bucket": 2}]
    model = StitchableModelForCausalLM.from_anchors(front, back, configs=configs, stitch_init="identity")
    flops = {c: model.config.entry(*c)["flops"] for c in model.config.stitches}
    assert flops[(4, 5)] < flops[(2, 3)] < flops[(1, 2)] < flops[(3, 0)]
    assert model.active_stitch == (3, 0)  # the dearest unless chosen
    budget = flops[(1, 2)]
    assert model.set_budget(budget) == (2, 3)  # KLAS: the highest FLOPs bucket within budget, then the score
    assert model.set_budget(flops[(4, 5)]) == (4, 5)
    model.record_metric("rouge1", {(1, 2): 0.4, (2, 3): 0.3, (4, 5): 0.2, (3, 0): 0.5})
    assert model.set_budget(budget) == (1, 2)  # measured: the best metric within budget
    assert model.set_budget(1.0) == (1, 2)  # a fraction of the back anchor's FLOPs: (3, 0) costs more than it
    assert model.set_budget(float(flops[(3, 0)])) == (3, 0)
    with pytest.raises(BudgetError) as err:
        model.set_budget(min(flops.values()) - 1)
    for i, j in flops:
        assert f"({i}, {j}):" in str(err.value)
    plain = StitchableModelForCausalLM.from_anchors(front, back, configs=CROSS, stitch_init="identity")
    assert plain.set_budget(budget) == max((c for c in flops if flops[c] <= budget), key=flops.get)


def test_training_forwards_sample_and_eval_runs_the_active_configuration(cross):
    x = ids()
    cross.set_stitch(2, 3)
    steps = int(cross.sample_step)
    cross.train()
    try:
        seen = []
        for _ in range(20):
            out = cross(x, labels=x, use_cache=False)
            seen.append(cross.config.stitches[cross.config.sample_index(steps + len(seen))])
            out.loss.backward()
        assert int(cross.sample_step) == steps + 20 and len(set(seen)) > 1
        with torch.no_grad():  # no gradients (generate, scoring): the active configuration, no draw
            cross(x)
        with cross.use_stitch(4, 5):  # pinned
            cross(x, labels=x).loss.backward()
        assert int(cross.sample_step) == steps + 20
    finally:
        cross.eval()
        cross.zero_grad(set_to_none=True)
    assert cross.active_stitch == (2, 3)


# ---- saving, loading, Auto classes, trust_remote_code ---------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_save_load_gives_identical_logits_for_every_configuration(cross, tmp_path, impl):
    cross.set_stitch(2, 3)
    cross.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, StitchableConfig) and config.stitches == CROSS and config.active_stitch == (2, 3)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=impl)
    assert type(again) is StitchableModelForCausalLM and again.front.config._attn_implementation == impl
    x = ids()
    cross.set_attn_implementation(impl)
    try:
        for c in CROSS:
            cross.set_stitch(c)
            again.set_stitch(c)
            assert torch.allclose(again(x).logits, cross(x).logits, atol=ATOL), c
    finally:
        cross.set_attn_implementation("sdpa")
    assert AutoModelForCausalLM.from_pretrained(tmp_path, stitch=(1, 2)).active_stitch == (1, 2)
    cheapest = min(cross.config.stitch_configs, key=lambda e: e["flops"])
    picked = AutoModelForCausalLM.from_pretrained(tmp_path, budget_flops=cheapest["flops"])
    assert picked.active_stitch == (cheapest["front_blocks"], cheapest["back_start"])
    with pytest.raises(HfKlasError, match="not both"):
        AutoModelForCausalLM.from_pretrained(tmp_path, stitch=(1, 2), budget_flops=0.9)


def test_self_stitch_holds_the_anchor_once_and_stays_tied(selfstitch, tmp_path):
    from safetensors import safe_open

    anchor, model = selfstitch
    assert model.back is model.front and model.config.self_stitch
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.front.embed_tokens.weight
    stitches = len(SELF) * (64 * 64 + 64)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in anchor.parameters()) + stitches
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert "lm_head.weight" not in keys and not any(k.startswith("back.") for k in keys)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.lm_head.weight is again.front.embed_tokens.weight
    for c in SELF:
        model.set_stitch(c)
        again.set_stitch(c)
        single = model.extract(*c)
        assert single.config.tie_word_embeddings and single.lm_head.weight is single.front.embed_tokens.weight
        assert sum(p.numel() for p in single.parameters()) == single.config.stitch_info["params"]
        assert torch.allclose(again(ids()).logits, model(ids()).logits, atol=ATOL)


def test_trust_remote_code_without_hf_klas_switches_generates_and_extracts(cross, tmp_path):
    cross.set_stitch(4, 5)
    cross.save_pretrained(tmp_path)
    for name in ("modeling_stitchable.py", "configuration_stitchable.py", "modeling_stitched.py", "anatomy.py"):
        assert (tmp_path / name).is_file()
    x = ids()
    expected = {}
    for c in CROSS:
        cross.set_stitch(c)
        expected[c] = cross.generate(x, max_new_tokens=5, do_sample=False).tolist()
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True, stitch=(1, 2))
assert "hf_klas" not in sys.modules and type(m).__name__ == "StitchableModelForCausalLM"
x = torch.tensor({x.tolist()!r})
out = {{}}
for c in m.config.stitches:
    m.set_stitch(c)
    out[str(c)] = m.generate(x, max_new_tokens=5, do_sample=False).tolist()
single = m.extract(2, 3)
assert type(single).__name__ == "StitchedModelForCausalLM"
out["extracted"] = single.generate(x, max_new_tokens=5, do_sample=False).tolist()
try:
    m.from_anchors("x")
except ValueError as err:
    out["from_anchors"] = str(err).splitlines()[0]
print(json.dumps(out))
"""
    got = json.loads(without_hf_klas(code, tmp_path))
    for c in CROSS:
        assert got[str(c)] == expected[c], c
    assert got["extracted"] == expected[(2, 3)]
    assert "needs hf_klas" in got["from_anchors"]


def test_vision_save_load_auto_class_and_remote_code(vision, tmp_path):
    vision.set_stitch(2, 2)
    vision.save_pretrained(tmp_path)
    again = AutoModelForImageClassification.from_pretrained(tmp_path, stitch=(3, 3))
    assert type(again) is StitchableModelForImageClassification and again.active_stitch == (3, 3)
    x = pixels()
    for c in vision.config.stitches:
        vision.set_stitch(c)
        again.set_stitch(c)
        assert torch.allclose(again(pixel_values=x).logits, vision(pixel_values=x).logits, atol=ATOL)
    code = f"""
import torch
from transformers import AutoModelForImageClassification
m = AutoModelForImageClassification.from_pretrained({str(tmp_path)!r}, trust_remote_code=True, stitch=(1, 1))
print(m(pixel_values=torch.tensor({x.tolist()!r})).logits.tolist())
"""
    got = torch.tensor(eval(without_hf_klas(code, tmp_path)))
    vision.set_stitch(1, 1)
    assert torch.allclose(got, vision(pixel_values=x).logits, atol=1e-4)


# ---- the ecosystem ------------------------------------------------------------------------------------------------
def tiny_tokenizer(vocab=128):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{k}": k for k in range(vocab)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", bos_token="t1", eos_token="t2",
                                   unk_token="t3")


def test_pipelines_run_the_active_configuration(cross, tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessor

    tok = tiny_tokenizer()
    generate = pipeline("text-generation", model=cross, tokenizer=tok)
    prompt = "t5 t9 t17 t33 t65"
    x = tok(prompt, return_tensors="pt")["input_ids"]
    for c in ((1, 2), (4, 5)):
        cross.set_stitch(c)
        out = generate(prompt, max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
        assert list(out) == cross.extract(*c).generate(x, max_new_tokens=4, do_sample=False)[0].tolist()
    cross.save_pretrained(tmp_path / "lm")
    by_name = pipeline("text-generation", model=str(tmp_path / "lm"), tokenizer=tok, model_kwargs={"stitch": (2, 3)})
    assert by_name.model.active_stitch == (2, 3)
    # pipelines load images as RGB: a three-channel pair
    from transformers import ViTConfig, ViTForImageClassification

    labels = {k: f"class_{k}" for k in range(5)}
    torch.manual_seed(0)
    small, big = (ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
        intermediate_size=2 * h, id2label=labels, label2id={v: k for k, v in labels.items()})).eval()
        for h, n, a in ((32, 3, 2), (48, 4, 3)))
    rgb = as_if_trained_vision(StitchableModelForImageClassification.from_anchors(
        small, big, configs=[(1, 1), (3, 3)], stitch_init="identity"))
    processor = ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    classify = pipeline("image-classification", model=rgb, image_processor=processor)
    image = Image.fromarray((torch.rand(8, 8, 3) * 255).to(torch.uint8).numpy())
    batch = processor(image, return_tensors="pt")["pixel_values"]
    for c in ((1, 1), (3, 3)):
        rgb.set_stitch(c)
        scores = classify(image, top_k=5)
        with torch.no_grad():
            want = torch.softmax(rgb.extract(*c)(pixel_values=batch).logits[0], -1)
        assert {d["label"]: round(d["score"], 5) for d in scores} == {
            rgb.config.id2label[k]: round(float(v), 5) for k, v in enumerate(want)}


@torch.no_grad()
def as_if_trained_vision(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for lin in model.stitches.values():
        lin.weight.add_(0.5 * torch.randn(lin.weight.shape, generator=g))
    return model


def test_trainer_continues_supernet_training_from_a_saved_stitchable_model(tmp_path):
    front, back = llama_pair()
    model = StitchableModelForCausalLM.from_anchors(front, back, configs=CROSS, calibration=calib(), progress=False,
                                                    sampling="flops", seed=3)
    rows = [[3 + (5 * k + t) % 120 for t in range(12)] for k in range(16)]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})
    batch = CausalLMCollator(0)([ds[k] for k in range(len(ds))])

    def losses(m):
        with torch.no_grad():
            return [float(m(**batch, stitch=c, use_cache=False).loss) for c in CROSS]

    def args(out, steps):
        return TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=steps,
                                 learning_rate=1e-2, lr_scheduler_type="constant", save_strategy="no", report_to=[],
                                 use_cpu=True, disable_tqdm=True, seed=0, logging_steps=100)

    before = losses(model)
    Trainer(model=model, args=args(tmp_path / "a", 8), train_dataset=ds,
            data_collator=CausalLMCollator(0)).train()
    assert int(model.sample_step) == 8
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert int(again.sample_step) == 8 and again.config.sampling == "flops"
    middle = losses(again)
    Trainer(model=again, args=args(tmp_path / "b", 16), train_dataset=ds, data_collator=CausalLMCollator(0)).train()
    assert int(again.sample_step) == 24  # the sampler continued its sequence
    after = losses(again)
    assert all(a < m < b for a, m, b in zip(after, middle, before)), (before, middle, after)
    drawn = {again.config.stitches[again.config.sample_index(k)] for k in range(24)}
    assert drawn == set(CROSS)


def test_peft_lora_trains_and_merges_back_to_a_stitchable_model(tmp_path):
    from hf_klas.training import apply_lora, merge_lora

    front, back = llama_pair()
    model = StitchableModelForCausalLM.from_anchors(front, back, configs=CROSS, calibration=calib(), progress=False)
    stitches = [f"stitches.{key}" for key in model.stitches]
    peft_model = apply_lora(model, r=4, alpha=8, modules_to_save=stitches)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("stitches.1_2.modules_to_save" in n for n in trainable)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    peft_model.eval()
    x = ids()
    with torch.no_grad():
        ref = {c: peft_model(input_ids=x, stitch=c).logits for c in CROSS}
    peft_model.set_stitch(1, 2)  # the PEFT wrapper forwards the switch
    assert torch.equal(peft_model(input_ids=x).logits, ref[(1, 2)])
    merged = merge_lora(peft_model)
    assert type(merged) is StitchableModelForCausalLM
    merged.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for c in CROSS:
        loaded.set_stitch(c)
        assert torch.allclose(loaded(x).logits, ref[c], atol=ATOL), c


def test_push_to_hub_uploads_one_model_with_a_card_listing_every_configuration(hub):  # noqa: F811
    uploaded, _ = hub
    front, back = llama_pair()
    model = StitchableModelForCausalLM.from_anchors(front, back, configs=CROSS, stitch_init="identity")
    model.record_metric("perplexity", {(1, 2): 91.5, (2, 3): 75.25, (4, 5): 60.125, (3, 0): 40.0},
                        higher_is_better=False)
    model.push_to_hub("me/stitchable", token="hf_test")
    for name in ("config.json", "model.safetensors", "modeling_stitchable.py", "configuration_stitchable.py",
                 "modeling_stitched.py", "README.md"):
        assert name in uploaded, sorted(uploaded)
    readme = uploaded["README.md"]
    readme = readme.decode() if isinstance(readme, bytes) else str(readme)
    assert CARD_MARKER in readme and "# Stitchable model" in readme and "identity" in readme
    rows = [ln for ln in readme.splitlines() if ln.startswith("| (")]
    assert len(rows) == len(CROSS)
    for (i, j), value in zip(CROSS, ("91.5", "75.25", "60.12", "40")):
        row = next(r for r in rows if r.startswith(f"| ({i}, {j})"))
        entry = model.config.entry(i, j)
        assert f"{entry['params']:,}" in row and value in row and "FLOPs" in row
    assert "set_budget" in readme and "trust_remote_code=True" in readme


def test_a_trained_supernet_becomes_a_stitchable_model(tmp_path):
    front, back = llama_pair()
    net = StitchedSupernet.from_anchors(front, back, configs=CROSS, calibration=calib(), progress=False)
    with torch.no_grad():
        net.model.sample_step.fill_(5)
    model = net.to_stitchable()
    assert isinstance(model, StitchableModelForCausalLM) and model.config.recipe["training"] == "supernet"
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "SN-Net supernet (5 training forwards" in card and "training steps" in card
    again = StitchedSupernet.from_pretrained(tmp_path)  # the training view reads the stitchable directory too
    x = ids()
    with torch.no_grad():
        for c in CROSS:
            assert torch.equal(again(input_ids=x, stitch_config=c).logits, net(input_ids=x, stitch_config=c).logits)


# ---- hf-klas finetune --plan and hf-klas pareto ----------------------------------------------------------------------
def test_finetune_plan_writes_a_stitchable_model_and_pareto_evaluates_it(tmp_path):
    from hf_klas.evaluation.api import run_pareto
    from hf_klas.selection.plan import AnchorDescriptor, StitchPlan
    from hf_klas.selection.scoring import Candidate
    from hf_klas.training.api import run_finetune

    _, lm = llama_pair(vocab=64)
    lm.save_pretrained(tmp_path / "lm")
    rows = ids(12, 10, vocab=64).tolist()
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp_path / "data"))
    with open(tmp_path / "train.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps({"input_ids": row}) + "\n")
    desc = AnchorDescriptor(str(tmp_path / "lm"), num_blocks=6)
    cands = [Candidate(1, 3, 1.0, 0.3, bucket=0), Candidate(2, 4, 1.5, 0.2, bucket=1), Candidate(3, 3, 2.0, 0.1, 2)]
    StitchPlan(method="klas", front=desc, back=desc, score=torch.zeros(6, 6), flops=torch.ones(6, 6),
               valid_mask=None, anchor_flops=(2.0, 2.0), seq_len=16, candidates=cands,
               extra={"self_stitching": True}).save(tmp_path / "plan")
    out = tmp_path / "ft"
    summary = run_finetune(plan=str(tmp_path / "plan"), dataset=str(tmp_path / "train.jsonl"),
                           calibration=str(tmp_path / "train.jsonl"), mode="full", max_steps=3, extract_configs=False,
                           per_device_train_batch_size=4, save_steps=0, output_dir=str(out), use_cpu=True,
                           progress=False)
    assert summary["model_dir"] == str(out) and summary["models"] == []
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model) is StitchableModelForCausalLM and model.config.stitches == [(1, 3), (2, 4), (3, 3)]
    assert model.config.self_stitch and model.config.tie_word_embeddings and int(model.sample_step) == 3
    assert model.config.recipe["training"] == "supernet" and model.config.recipe["finetune"]["steps"] == 3
    assert [e["score"] for e in model.config.stitch_configs] == [0.3, 0.2, 0.1]
    assert not [p for p in out.iterdir() if p.name.startswith("stitch_i")]
    result = run_pareto(models_dir=str(out), dataset=str(tmp_path / "data"), split="train", metric="perplexity",
                        out_dir=str(tmp_path / "pareto"), record_metrics=True, progress=False)
    names = [p["name"] for p in result["points"] if p["kind"] == "stitch"]
    assert names == ["ft:stitch_i1_j3", "ft:stitch_i2_j4", "ft:stitch_i3_j3"]
    params = {p["name"]: p["params"] for p in result["points"]}
    assert params["ft:stitch_i1_j3"] == model.config.entry(1, 3)["params"]
    recorded = AutoConfig.from_pretrained(out)
    assert recorded.selection_metric == {"name": "perplexity", "higher_is_better": False}
    assert all("perplexity" in e["metrics"] for e in recorded.stitch_configs)
    assert recorded.active_stitch == model.config.active_stitch
    assert "perplexity" in (out / "README.md").read_text()
    more = run_finetune(model=str(out), dataset=str(tmp_path / "train.jsonl"), mode="stitch", max_steps=2,
                        per_device_train_batch_size=4, save_steps=0, output_dir=str(tmp_path / "more"), use_cpu=True,
                        progress=False)  # a saved stitchable model continues its supernet training
    again = AutoModelForCausalLM.from_pretrained(more["model_dir"])
    assert type(again) is StitchableModelForCausalLM and int(again.sample_step) == 5
    metrics = again.config.stitch_configs[0]["metrics"]
    assert metrics["perplexity"] == recorded.stitch_configs[0]["metrics"]["perplexity"]


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_bad_configurations_budgets_and_anchor_pairs_are_refused(cross, tmp_path):
    with pytest.raises(StitchPointError) as err:
        cross.set_stitch(2, 2)  # a valid point of these anchors, but untrained
    assert "not in this supernet" in str(err.value) and all(f"({i}, {j}):" in str(err.value) for i, j in CROSS)
    with pytest.raises(StitchPointError, match="front anchor has 4 blocks"):
        cross.set_stitch(7, 2)  # no configuration of these anchors at all
    with pytest.raises(BudgetError, match="below every configuration") as err:
        cross.set_budget(0.01)
    assert all(f"({i}, {j}):" in str(err.value) for i, j in CROSS)
    with pytest.raises(BudgetError, match="positive"):
        cross.set_budget(-1)
    other_front, other_back = decoder_anchor("qwen3"), decoder_anchor("llama", seed=1, wide=True, layers=6)
    other = StitchedModel.from_anchors(other_front, other_back, front_blocks=2, back_start=3, stitch_init="identity")
    with pytest.raises(IncompatibleAnchorsError, match="another anchor pair"):
        cross.set_stitch(other)  # the same (2, 3), but of other anchors
    assert cross.set_stitch(cross.extract(2, 3)) == (2, 3)  # its own extracted configuration names itself
    front, back = llama_pair()
    with pytest.raises(StitchPointError, match="twice"):
        StitchableModelForCausalLM.from_anchors(front, back, configs=[(1, 2), (1, 2)], stitch_init="identity")
    with pytest.raises(StitchPointError, match="run blocks 2-3 twice"):
        StitchableModelForCausalLM.from_anchors(front, configs=[(3, 1)], stitch_init="identity")
    with pytest.raises(StitchPointError, match="at least one"):
        StitchableModelForCausalLM.from_anchors(front, back, configs=[], stitch_init="identity")
    with pytest.raises(IncompatibleAnchorsError, match="not a StitchableModelForImageClassification"):
        StitchableModelForImageClassification.from_anchors(front, back, configs=[(1, 2)], stitch_init="identity")
    with pytest.raises(StitchPointError, match="sampling"):
        StitchableModelForCausalLM.from_anchors(front, back, configs=[(1, 2)], stitch_init="identity",
                                                sampling="importance")
    from hf_klas.selection.plan import AnchorDescriptor, StitchPlan
    from hf_klas.selection.scoring import Candidate

    plan = StitchPlan(method="klas", front=AnchorDescriptor("a", num_blocks=8),
                      back=AnchorDescriptor("b", num_blocks=6),
                      score=torch.zeros(8, 6), flops=torch.ones(8, 6), valid_mask=None, anchor_flops=(1.0, 2.0),
                      candidates=[Candidate(1, 2, 1.0, 0.1)])
    with pytest.raises(HfKlasError, match="plan's front anchor"):
        StitchableModelForCausalLM.from_anchors(front, back, plan=plan, stitch_init="identity")
