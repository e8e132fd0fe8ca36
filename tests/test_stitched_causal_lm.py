"""StitchedModelForCausalLM on tiny random anchors with the shape relations of Llama-3.2-1B -> 3B."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from tiny import DECODER_FAMILIES, decoder_anchor, llama_pair
from transformers import (
    AutoModelForCausalLM,
)

import hf_klas  # noqa: F401  (registers the Auto classes)
from hf_klas import StitchedModel, StitchedModelForCausalLM
from hf_klas.model_card import CARD_MARKER

ATOL = 1e-5

# Prepended to subprocess code: a user who never installed hf_klas (trust_remote_code must suffice).
BLOCK_HF_KLAS = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "hf_klas" or name.startswith("hf_klas."):
            raise ImportError("hf_klas is not installed here")
sys.meta_path.insert(0, Block())
"""


@pytest.fixture(scope="module")
def pair():
    return llama_pair()


@pytest.fixture(scope="module")
def stitched(pair):
    f, b = pair
    torch.manual_seed(0)
    calib = [torch.randint(3, 128, (24,)) for _ in range(8)]
    return StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, calibration=calib, progress=False)


def ids(batch=2, length=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, length), generator=g)


def test_weights_come_from_the_right_anchor_blocks(pair, stitched):
    f, b = pair
    assert isinstance(stitched, StitchedModelForCausalLM)
    assert len(stitched.front_blocks) == 2 and len(stitched.back_blocks) == 3
    assert torch.equal(stitched.front.embed_tokens.weight, f.model.embed_tokens.weight)
    for k in range(2):
        assert torch.equal(stitched.front.layers[k].mlp.down_proj.weight, f.model.layers[k].mlp.down_proj.weight)
    for k in range(3):
        back_k = stitched.back.layers[k].self_attn.k_proj.weight
        assert torch.equal(back_k, b.model.layers[3 + k].self_attn.k_proj.weight)
    assert torch.equal(stitched.back.norm.weight, b.model.norm.weight)
    # tied back anchor: the head is built from its input embedding, and the stitched config unties it
    assert torch.equal(stitched.lm_head.weight, b.model.embed_tokens.weight)
    assert stitched.config.tie_word_embeddings is False
    assert stitched.stitch.weight.shape == (96, 64)


def test_stitched_config_describes_the_stitched_stack(stitched):
    cfg = stitched.config
    assert cfg.num_hidden_layers == 2 + 6 - 3
    assert len(cfg.layer_types) == cfg.num_hidden_layers
    # every attention module writes its own cache slot, numbered in stitched order
    idx = [blk.self_attn.layer_idx for blk in list(stitched.front_blocks) + list(stitched.back_blocks)]
    assert idx == list(range(cfg.num_hidden_layers))


def test_cached_equals_uncached_decoding(stitched):
    x = ids()
    full = stitched(x, use_cache=False).logits
    out = stitched(x[:, :6], use_cache=True)
    cache, steps = out.past_key_values, [out.logits]
    for t in range(6, 10):
        out = stitched(x[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL)
    g1 = stitched.generate(x, max_new_tokens=8, do_sample=False)
    g2 = stitched.generate(x, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(g1, g2)


def test_static_cache_generation_matches_dynamic(stitched):
    x = ids()
    g1 = stitched.generate(x, max_new_tokens=6, do_sample=False)
    g2 = stitched.generate(x, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(g1, g2)


def test_left_padding_gives_the_same_continuation(stitched):
    a, b_ = ids(1, 9, seed=2), ids(1, 6, seed=3)
    pad = stitched.config.pad_token_id
    batch = torch.full((2, 9), pad)
    mask = torch.zeros((2, 9), dtype=torch.long)
    batch[0], mask[0] = a[0], 1
    batch[1, 3:], mask[1, 3:] = b_[0], 1
    out = stitched.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False)
    alone = stitched.generate(b_, max_new_tokens=5, do_sample=False)
    assert torch.equal(out[1, 9:], alone[0, 6:])


def test_logits_to_keep_and_hidden_states(stitched):
    x = ids()
    out = stitched(x, logits_to_keep=1, output_hidden_states=True)
    assert out.logits.shape == (2, 1, 128)
    full = stitched(x).logits
    assert torch.allclose(out.logits[:, -1], full[:, -1], atol=ATOL)
    hs = out.hidden_states
    assert len(hs) == stitched.config.num_hidden_layers + 1
    assert [h.shape[-1] for h in hs] == [64, 64, 64, 96, 96, 96]


def test_labels_give_the_causal_lm_loss(stitched):
    x = ids()
    out = stitched(x, labels=x)
    logits = out.logits[:, :-1].reshape(-1, 128)
    ref = torch.nn.functional.cross_entropy(logits, x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ref, atol=ATOL)
    # Trainer passes num_items_in_batch: accepted, and it normalises the summed loss
    out2 = stitched(x, labels=x, num_items_in_batch=torch.tensor(18))
    assert torch.allclose(out2.loss, ref, atol=ATOL)


def test_gradient_checkpointing_gives_the_same_gradients(pair):
    f, b = pair
    grads = []
    for ckpt in (False, True):
        m = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, stitch_init="identity")
        m.train()
        if ckpt:
            enable = getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable
            enable()
        x = ids()
        m(x, labels=x).loss.backward()
        grads.append(m.stitch.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_sdpa_and_eager_agree(pair, tmp_path):
    f, b = pair
    m = StitchedModel.from_anchors(f, b, front_blocks=3, back_start=2, stitch_init="identity")
    m.save_pretrained(tmp_path)
    x = ids()
    eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    sdpa = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert eager.front.config._attn_implementation == "eager"
    assert torch.allclose(eager(x).logits, sdpa(x).logits, atol=ATOL)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_save_load_gives_identical_logits(stitched, tmp_path, impl):
    stitched.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=impl)
    assert isinstance(reloaded, StitchedModelForCausalLM)
    assert reloaded.front.config._attn_implementation == impl  # reaches the borrowed blocks
    x = ids()
    ref = stitched(x).logits
    stitched.set_attn_implementation(impl)
    try:
        assert torch.allclose(reloaded(x).logits, stitched(x).logits, atol=ATOL)
        assert torch.allclose(reloaded(x).logits, ref, atol=1e-4)
    finally:
        stitched.set_attn_implementation("sdpa")
    assert reloaded.config.front_blocks == 2 and reloaded.config.back_start == 3
    assert reloaded.config.anchors == stitched.config.anchors


def test_model_card_written_and_user_readme_kept(stitched, tmp_path):
    stitched.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert CARD_MARKER in card and "(2, 3)" in card and "least_squares" in card
    # in-memory anchors have no Hub identity: nothing may claim one in the card's metadata
    assert "base_model:" not in card
    user = tmp_path / "mine"
    user.mkdir()
    (user / "README.md").write_text("my own notes")
    stitched.save_pretrained(user)
    assert (user / "README.md").read_text() == "my own notes"


def test_model_card_names_hub_ids_never_local_paths(stitched, tmp_path):
    """An offline alias of a Hub model records the Hub id as base_model; a local path never enters the metadata."""
    from hf_klas.model_card import render_model_card

    config = copy.deepcopy(stitched.config)
    config.anchors = {"front": {"name_or_path": "smollm2-135m", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                      "back": {"name_or_path": str(tmp_path / "cache" / "hf_klas" / "gguf" / "SmolLM2")}}
    card = render_model_card(config)
    meta = card.split("---")[1]
    assert "base_model:\n- HuggingFaceTB/SmolLM2-135M-Instruct" in meta and str(tmp_path) not in meta
    assert "**HuggingFaceTB/SmolLM2-135M-Instruct**" in card
    config.anchors["front"] = {"name_or_path": "meta-llama/Llama-3.2-1B"}  # a Hub id by name
    assert "- meta-llama/Llama-3.2-1B" in render_model_card(config).split("---")[1]


def test_trust_remote_code_without_hf_klas(stitched, tmp_path):
    stitched.save_pretrained(tmp_path)
    code = BLOCK_HF_KLAS + f"""
import torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
assert "hf_klas" not in sys.modules
x = torch.tensor({ids().tolist()!r})
torch.save if False else None
print(repr(m(x).logits[0, -1, :4].tolist()))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = torch.tensor(eval(res.stdout.strip().splitlines()[-1]))
    assert torch.allclose(got, stitched(ids()).logits[0, -1, :4], atol=1e-4)


# --- every decoder family: a self-stitch at (i, i) with an identity stitch IS the anchor ------------------
def _family_models():
    for family in DECODER_FAMILIES:
        yield family, decoder_anchor(family)


@pytest.mark.parametrize("name,anchor", list(_family_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_identity_self_stitch_reproduces_each_family(name, anchor):
    torch.manual_seed(0)
    anchor.eval()
    m = StitchedModel.from_anchors(anchor, front_blocks=2, back_start=2, stitch_init="identity")
    x = ids(2, 12)  # longer than the sliding windows
    assert torch.allclose(m(x).logits, anchor(x).logits, atol=1e-4), name
    g1 = m.generate(x, max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, anchor.generate(x, max_new_tokens=6, do_sample=False)), name
    assert torch.equal(g1, m.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)), name


def test_self_stitch_skipping_blocks_generates(pair):
    f, _ = pair
    calib = [torch.randint(3, 128, (24,)) for _ in range(8)]
    m = StitchedModel.from_anchors(f, front_blocks=1, back_start=3, calibration=calib, progress=False)
    assert m.config.num_hidden_layers == 2
    # same shapes in both parts: distinct cache slots are what keeps the two parts apart
    assert [blk.self_attn.layer_idx for blk in list(m.front_blocks) + list(m.back_blocks)] == [0, 1]
    x = ids()
    assert torch.equal(m.generate(x, max_new_tokens=5, do_sample=False),
                       m.generate(x, max_new_tokens=5, do_sample=False, use_cache=False))


def test_least_squares_fit_is_the_least_squares_solution(pair):
    """Streamed normal equations give the same map as a direct lstsq on all calibration tokens."""
    from hf_klas.activations import run_prefix

    f, b = pair
    torch.manual_seed(0)
    calib = [torch.randint(3, 128, (32,)) for _ in range(16)]
    fitted = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, calibration=calib, progress=False,
                                        ridge=1e-8)
    x = torch.stack(calib)
    hx = run_prefix(f, {"input_ids": x}, upto=2)[2].reshape(-1, 64).double()
    hy = run_prefix(b, {"input_ids": x}, upto=3)[3].reshape(-1, 96).double()
    xa = torch.cat([hx, torch.ones(len(hx), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(xa, hy).solution
    best = ((xa @ sol - hy) ** 2).mean().item()
    got = ((fitted.stitch.double()(hx) - hy) ** 2).mean().item()
    eye = ((hx @ torch.eye(96, 64, dtype=torch.float64).T - hy) ** 2).mean().item()
    assert got == pytest.approx(best, rel=1e-3)
    assert got < eye
    assert fitted.config.recipe["stitch_fit"]["tokens"] == 16 * 32


def test_self_stitch_of_a_tied_anchor_stays_tied(pair, tmp_path):
    """Depth pruning must not grow the model: head and input embedding stay one matrix, saved once, counted
    once, and still one after loading (with and without hf_klas installed)."""
    from safetensors import safe_open

    from hf_klas.errors import IncompatibleAnchorsError
    from hf_klas.flops import anchor_params

    f, b = pair
    calib = [torch.randint(3, 128, (24,)) for _ in range(8)]
    m = StitchedModel.from_anchors(f, front_blocks=2, back_start=3, calibration=calib, progress=False)
    assert m.config.tie_word_embeddings and m.lm_head.weight is m.front.embed_tokens.weight
    assert torch.equal(m.lm_head.weight, f.lm_head.weight)
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == m.config.stitch_info["params"]
    assert n_params < anchor_params(f.config).total + 64 * 64 + 64  # one block fewer, plus the stitch
    m.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert "front.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.lm_head.weight is again.front.embed_tokens.weight
    assert torch.allclose(again(ids()).logits, m(ids()).logits, atol=ATOL)
    code = BLOCK_HF_KLAS + f"""
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
assert m.lm_head.weight is m.front.embed_tokens.weight
print("tied")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("tied"), res.stderr[-2000:]
    # two different models (both tied) keep their own head and embedding
    cross = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, calibration=calib, progress=False)
    assert not cross.config.tie_word_embeddings and cross.lm_head.weight is not cross.front.embed_tokens.weight
    with pytest.raises(IncompatibleAnchorsError, match="tie_word_embeddings"):
        type(m.config)(front_config=m.config.front_config, back_config=_untied(m.config.back_config),
                       front_blocks=2, back_start=3, tie_word_embeddings=True)


def _untied(config):
    import copy

    config = copy.deepcopy(config)
    config.tie_word_embeddings = False
    return config
