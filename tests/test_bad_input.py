"""Every bad input names its cause and its fix, and nothing is written."""

from __future__ import annotations

import json

import pytest
from tiny import llama_pair, vision_pair
from transformers import GPT2Config, GPT2LMHeadModel

from hf_klas import StitchedConfig, StitchedModel
from hf_klas.errors import (
    HfKlasError,
    IncompatibleAnchorsError,
    StitchPointError,
    UnknownFamilyError,
    VersionError,
)


def _assert_helpful(err: HfKlasError, *words):
    text = str(err)
    assert "How to fix:" in text
    for w in words:
        assert w.lower() in text.lower(), text


def test_different_vocabularies():
    f, _ = llama_pair(vocab=128)
    _, b = llama_pair(vocab=256)
    with pytest.raises(IncompatibleAnchorsError) as e:
        StitchedModel.from_anchors(f, b, front_blocks=1, back_start=1)
    _assert_helpful(e.value, "vocabular", "128", "256", "tokenizer")


def test_llm_with_vit():
    f, _ = llama_pair()
    v, _ = vision_pair()
    with pytest.raises(IncompatibleAnchorsError) as e:
        StitchedModel.from_anchors(f, v, front_blocks=1, back_start=1)
    _assert_helpful(e.value, "causal-lm", "image-classification")


def test_unknown_family():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128))
    with pytest.raises(UnknownFamilyError) as e:
        StitchedModel.from_anchors(gpt2, front_blocks=1, back_start=1)
    _assert_helpful(e.value, "gpt2", "llama", "FAMILIES")


@pytest.mark.parametrize("i,j,words", [(0, 1, ["front_blocks=0", "1 <= front_blocks <= 4"]),
                                       (5, 1, ["front_blocks=5"]),
                                       (2, -1, ["back_start=-1"])])
def test_block_indices_out_of_range(i, j, words):
    f, b = llama_pair()
    with pytest.raises(StitchPointError) as e:
        StitchedModel.from_anchors(f, b, front_blocks=i, back_start=j)
    _assert_helpful(e.value, *words)


def test_stitch_that_runs_no_back_block():
    f, b = llama_pair()
    with pytest.raises(StitchPointError) as e:
        StitchedModel.from_anchors(f, b, front_blocks=2, back_start=6)
    _assert_helpful(e.value, "zero blocks", "back_start <= 5")


def test_config_from_a_newer_hf_klas(tmp_path):
    f, b = llama_pair()
    m = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, stitch_init="identity")
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hf_klas_version"] = "99.0.0"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(VersionError) as e:
        StitchedConfig.from_pretrained(tmp_path)
    _assert_helpful(e.value, "99.0.0", "upgrade")
    assert before == {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}  # nothing changed


def test_no_stitch_point_and_no_budget():
    f, b = llama_pair()
    with pytest.raises(HfKlasError) as e:
        StitchedModel.from_anchors(f, b)
    _assert_helpful(e.value, "budget_flops")


def test_vision_anchors_with_different_patch_sizes():
    from transformers import ViTConfig, ViTForImageClassification

    a, _ = vision_pair()
    c = ViTForImageClassification(ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(IncompatibleAnchorsError) as e:
        StitchedModel.from_anchors(a, c, front_blocks=1, back_start=0)
    _assert_helpful(e.value, "patch_size")


def test_unknown_anchor_name_offline_gives_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HfKlasError) as e:
        StitchedModel.from_anchors("no-such-org/no-such-model", front_blocks=1, back_start=1)
    _assert_helpful(e.value, "no-such-org/no-such-model", "local directory")


def test_explicit_stitch_point_and_budget_together_are_refused():
    f, b = llama_pair()
    with pytest.raises(HfKlasError) as e:
        StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, budget_flops=0.5)
    _assert_helpful(e.value, "front_blocks=2", "back_start=3", "budget_flops", "not both")
    with pytest.raises(HfKlasError) as e:
        StitchedModel.from_anchors(f, b, front_blocks=2, budget_flops=0.5)
    with pytest.raises(HfKlasError) as e:
        StitchedModel.from_anchors(f, b, back_start=3, stitch_init="identity")
    _assert_helpful(e.value, "only one of front_blocks / back_start")


def test_calibration_token_ids_outside_the_vocabulary_name_anchor_id_and_size():
    import torch

    from hf_klas.errors import CalibrationError

    f, b = llama_pair(vocab=128)
    f.config._name_or_path = "my-front-anchor"
    with pytest.raises(CalibrationError) as e:
        StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, calibration=[torch.tensor([5, 7, 300])],
                                   progress=False)
    _assert_helpful(e.value, "300", "my-front-anchor", "128 tokens", "tokenizer")


@pytest.mark.parametrize("name", ["nope", "nope/deeper", "nope.gguf"])
def test_a_local_path_that_does_not_exist_says_so_not_a_hub_error(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / name
    with pytest.raises(HfKlasError) as e:
        StitchedModel.from_anchors(str(missing), front_blocks=1, back_start=1)
    _assert_helpful(e.value, "no such", str(missing), "local path")
    assert "Hub (" not in str(e.value) and "HFValidationError" not in str(e.value)
    with pytest.raises(HfKlasError, match="No such directory"):
        StitchedModel.from_anchors("./not-here", front_blocks=1, back_start=1)
    assert not missing.exists()


@pytest.mark.parametrize("kind", ["stitched", "stitchable"])
def test_an_attention_mask_of_the_wrong_length_is_refused(kind):
    import torch

    from hf_klas import StitchableModelForCausalLM
    from hf_klas.errors import DataError

    f, b = llama_pair()
    if kind == "stitched":
        model = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, stitch_init="identity")
    else:
        model = StitchableModelForCausalLM.from_anchors(f, b, configs=[(2, 3), (1, 4)], stitch_init="identity")
    x = torch.randint(3, 128, (2, 6))
    for mask in (torch.ones(2, 5, dtype=torch.long), torch.ones(2, 7, dtype=torch.long),
                 torch.ones(1, 6, dtype=torch.long)):
        with pytest.raises(DataError) as e:
            model(x, attention_mask=mask)
        _assert_helpful(e.value, f"shape {tuple(mask.shape)}", "(2, 6)", "tokenizer")
        with pytest.raises(DataError):
            model.generate(x, attention_mask=mask, max_new_tokens=2, do_sample=False)
    out = model(x, attention_mask=torch.ones(2, 6, dtype=torch.long), use_cache=True)  # the right one passes
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    with pytest.raises(DataError) as e:  # continuing a cache: the mask covers the cached tokens too
        model(x[:, :1], attention_mask=torch.ones(2, 1, dtype=torch.long), past_key_values=cache)
    _assert_helpful(e.value, "+ 6 cached", "(2, 7)")


def test_flops_in_messages_keep_their_significant_digits():
    from hf_klas import StitchableModelForCausalLM
    from hf_klas.errors import BudgetError
    from hf_klas.flops import format_flops

    assert format_flops(7.5) == "7.5 FLOPs"
    assert format_flops(1_234_000_000) == "1.234 GFLOPs"  # four significant digits, not "1.23"
    f, b = llama_pair()
    model = StitchableModelForCausalLM.from_anchors(f, b, configs=[(2, 3), (1, 4)], stitch_init="identity")
    with pytest.raises(BudgetError) as e:
        model.set_budget(7.5)
    _assert_helpful(e.value, "budget of 7.5 FLOPs")
    assert "8 FLOPs" not in str(e.value)
