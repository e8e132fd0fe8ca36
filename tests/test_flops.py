"""hf_klas.flops against what torch actually counts and what transformers actually builds.

The analytic numbers are compared with ``FlopCounterMode`` on real (tiny, random) transformers models, and
with a stitched network composed by hand from real layers, so the cost model cannot drift from the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import DECODER_FAMILIES, VISION_FAMILIES, decoder_config
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    GPT2Config,
    LlamaConfig,
    ViTConfig,
)

from hf_klas.anatomy import build_masks, find_blocks
from hf_klas.errors import IncompatibleAnchorsError, StitchPointError, UnknownFamilyError
from hf_klas.families import FAMILIES, family_of
from hf_klas.flops import (
    anchor_flops,
    anchor_params,
    cpu_sdpa_flop_formulas,
    format_flops,
    format_params,
    stitch_flops,
    stitch_grid_flops,
    stitch_grid_params,
    stitch_params,
)

T = 24  # longer than the sliding windows below, so windows matter
WINDOW = 8


def llm_configs() -> dict:
    """The shared tiny family configs (tests/tiny.py), each with what makes its cost model differ switched on."""
    return {
        # head_dim * heads (128) != hidden (64), GQA 4/2, tied, biases on everything
        "llama": decoder_config("llama", layers=3, vocab=256, window=WINDOW, head_dim=32, attention_bias=True,
                                mlp_bias=True),
        # q/k/v bias hard-coded, o_proj without; sliding window on the upper layers
        "qwen2": decoder_config("qwen2", layers=3, vocab=256, window=WINDOW, max_window_layers=1),
        # q/k norm, explicit head_dim, untied, one KV head
        "qwen3": decoder_config("qwen3", layers=2, vocab=256, window=WINDOW, attention_bias=True,
                                num_key_value_heads=1),
        # global sliding window (every layer), head_dim from hidden / heads
        "mistral": decoder_config("mistral", layers=2, vocab=256, window=WINDOW, head_dim=None),
        # mixed layer types, four norms per block, q/k norm, tied
        "gemma3_text": decoder_config(
            "gemma3_text", layers=4, vocab=256, window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]),
    }


def vit_configs() -> dict:
    small = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=48, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=96, num_labels=10)
    features = {"vit": dict(qkv_bias=False)}  # what differs per family, switched on
    # architectures=[]: the Auto class takes the family's default (DeiT's would fail on None in transformers 5.24)
    return {family: AutoConfig.for_model(family, **small, **features.get(family, {}), architectures=[])
            for family in VISION_FAMILIES}


def test_every_family_has_a_tiny_config():
    assert sorted(llm_configs()) == sorted(DECODER_FAMILIES) and sorted(vit_configs()) == sorted(VISION_FAMILIES)


def build(config, attn: str = "eager"):
    torch.manual_seed(0)
    config._attn_implementation = attn
    if config.model_type in VISION_FAMILIES:
        model = AutoModelForImageClassification.from_config(config, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.eval()


def count(fn, custom_mapping=None) -> int:
    """FLOPs torch counts for ``fn``, less those inside rotary-embedding modules: hf_klas does not count rotary
    (a few FLOPs; transformers 5.0 computes the angles with a tiny matmul, later releases with a broadcast)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom_mapping) as counter:
        fn()
    per_module = counter.get_flop_counts()
    rotary = [k for k in per_module if "rotary" in k.rsplit(".", 1)[-1].lower()]
    outermost = [k for k in rotary if not any(k != r and k.startswith(r + ".") for r in rotary)]
    return counter.get_total_flops() - sum(sum(per_module[k].values()) for k in outermost)


def ids(config, t: int = T):
    return torch.randint(0, config.vocab_size, (1, t), generator=torch.Generator().manual_seed(1))


def pixels(h: int = 32, w: int = 32):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(2))


# --------------------------------------------------------------------------------------------------------
# Anchors against FlopCounterMode and numel
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(llm_configs()))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llm_anchor_flops_match_flop_counter(family, attn):
    config = llm_configs()[family]
    model = build(config, attn)
    x = ids(config)
    analytic = anchor_flops(config, seq_len=T)
    assert analytic.tokens == T and len(analytic.blocks) == config.num_hidden_layers
    measured = count(lambda: model(x))
    if attn == "eager":
        assert measured == analytic.total
    else:
        # sdpa on CPU: FlopCounterMode has no formula for the CPU flash kernel -> attention scores uncounted
        assert measured == analytic.total - analytic.attention
        assert count(lambda: model(x), cpu_sdpa_flop_formulas()) == analytic.total


@pytest.mark.parametrize("family", sorted(llm_configs()))
def test_llm_logits_positions_and_params(family):
    config = llm_configs()[family]
    model = build(config)
    x = ids(config)
    last = anchor_flops(config, seq_len=T, logits_positions=1)
    assert count(lambda: model(x, logits_to_keep=1)) == last.total
    full = anchor_flops(config, seq_len=T)
    assert full.head == T * last.head and full.blocks == last.blocks
    assert anchor_params(config).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", sorted(vit_configs()))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_vision_anchor_flops_and_params(family, attn):
    config = vit_configs()[family]
    model = build(config, attn)
    analytic = anchor_flops(config)
    assert analytic.tokens == FAMILIES[family].prefix_tokens + 16
    mapping = cpu_sdpa_flop_formulas() if attn == "sdpa" else None
    assert count(lambda: model(pixels()), mapping) == analytic.total
    if attn == "sdpa":
        assert count(lambda: model(pixels())) == analytic.total - analytic.attention
    assert anchor_params(config).total == sum(p.numel() for p in model.parameters())
    # a larger image (position encodings interpolated): more tokens, same parameters
    bigger = anchor_flops(config, image_size=(48, 40))
    assert count(lambda: model(pixels(48, 40), interpolate_pos_encoding=True), mapping) == bigger.total


def test_masked_attention_counts_the_pairs_transformers_keeps():
    config = llm_configs()["gemma3_text"]
    config._attn_implementation = "eager"
    emb = torch.zeros(1, T, config.hidden_size)
    pos = torch.arange(T)[None]
    kept = {}
    for kind in ("full_attention", "sliding_attention"):
        mask = build_masks(config, [kind], emb, None, None, pos, torch.arange(T))[kind]
        kept[kind] = int((mask == 0).sum()) if mask.dtype != torch.bool else int(mask.sum())
    assert kept["sliding_attention"] < kept["full_attention"] == T * (T + 1) // 2
    dense = anchor_flops(config, seq_len=T)
    masked = anchor_flops(config, seq_len=T, attention="masked")
    per_pair = 4 * config.num_attention_heads * config.head_dim
    assert masked.attention == per_pair * sum(kept[k] for k in config.layer_types)
    assert dense.attention == per_pair * T * T * config.num_hidden_layers
    assert dense.total - masked.total == dense.attention - masked.attention
    # sliding layers are bounded by the window: their cost stops growing quadratically
    long = [anchor_flops(config, seq_len=s, attention="masked").blocks[0] for s in (64, 128, 256)]
    assert long[2] - long[1] == 2 * (long[1] - long[0])


def test_real_llama_sizes_without_instantiation():
    """Llama-3.2-1B/3B (gated) from their published configs: the model cards' parameter counts."""
    common = dict(vocab_size=128256, intermediate_size=8192, num_key_value_heads=8, tie_word_embeddings=True)
    c1 = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, head_dim=64, **common)
    c3 = LlamaConfig(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, head_dim=128, **common)
    assert anchor_params(c1).total == 1_235_814_400
    assert anchor_params(c3).total == 3_212_749_824
    # stitched models untie the back head: 1B embeddings + 3B head both count
    full = stitch_params(c1, c3, 16, 0)
    assert full.total == anchor_params(c1).total - 2048 + (2048 * 3072 + 3072) + anchor_params(c3).total
    assert stitch_grid_flops(c1, c3, seq_len=256).shape == (16, 28)


# --------------------------------------------------------------------------------------------------------
# Stitch configurations
# --------------------------------------------------------------------------------------------------------


def shape_pair():
    """The Llama-3.2-1B -> 3B shape relations in miniature: wider back, larger head_dim, fewer KV heads,
    head_dim * heads != hidden on the back, both tied, one vocabulary."""
    common = dict(vocab_size=256, max_position_embeddings=128, tie_word_embeddings=True)
    front = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=4, head_dim=16, **common)
    back = LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, **common)
    return front, back


def test_stitch_flops_is_the_sum_of_its_parts():
    front, back = shape_pair()
    fa, ba = anchor_flops(front, seq_len=T), anchor_flops(back, seq_len=T)
    for i, j in [(1, 0), (2, 1), (3, 3), (1, 3)]:
        s = stitch_flops(front, back, i, j, seq_len=T)
        assert s.stitch == 2 * T * 64 * 96
        assert s.blocks == fa.blocks[:i] + ba.blocks[j:]
        assert s.total == fa.embed + sum(fa.blocks[:i]) + s.stitch + sum(ba.blocks[j:]) + ba.head
        assert s.attention == fa.attention // 3 * i + ba.attention // 4 * (4 - j)  # all layers full attention
        sp = stitch_params(front, back, i, j)
        fp, bp = anchor_params(front), anchor_params(back)
        assert sp.total == fp.embed + sum(fp.blocks[:i]) + (64 * 96 + 96) + sum(bp.blocks[j:]) + 96 + 256 * 96


def test_grid_matches_pointwise_and_is_monotone():
    front, back = shape_pair()
    grid = stitch_grid_flops(front, back, seq_len=T)
    pgrid = stitch_grid_params(front, back)
    assert grid.shape == pgrid.shape == (3, 4) and grid.dtype == np.int64
    for i in range(1, 4):
        for j in range(4):
            assert grid[i - 1, j] == stitch_flops(front, back, i, j, seq_len=T).total
            assert pgrid[i - 1, j] == stitch_params(front, back, i, j).total
    assert (np.diff(grid, axis=0) > 0).all()  # more front blocks cost more
    assert (np.diff(grid, axis=1) < 0).all()  # starting later in the back (fewer of its blocks) costs less
    g1 = stitch_grid_flops(front, back, seq_len=T, logits_positions=1)
    assert (grid - g1 == (T - 1) * 2 * 96 * 256).all()


def test_self_stitch_is_depth_pruning():
    config = llm_configs()["gemma3_text"]
    full = anchor_flops(config, seq_len=T)
    s = stitch_flops(config, config, 2, 3, seq_len=T)  # keep blocks 0,1 and 3, bridge over block 2
    assert s.blocks == [full.blocks[0], full.blocks[1], full.blocks[3]]
    assert s.total == full.total - full.blocks[2] + 2 * T * 64 * 64


def _compose_llm(front_model, back_model, i, j, x, stitch, head):
    """Front embeddings + front layers[:i] -> stitch -> back layers[j:] + norm + untied head, each part with
    its own rotary embedding and masks (as LlamaModel/Gemma3TextModel.forward build them)."""
    pos = torch.arange(x.shape[1])[None]

    def run(part, layers, h):
        rotary_by_type = getattr(part.config, "layer_types", None) and part.config.model_type == "gemma3_text"
        kinds = ["full_attention"] + (["sliding_attention"] if getattr(part.config, "sliding_window", None) else [])
        masks = build_masks(part.config, kinds, h, None, None, pos, pos[0])  # as the installed version builds them
        for layer in layers:
            kind = layer.self_attn.layer_type if hasattr(layer.self_attn, "layer_type") else "full_attention"
            kind = kind or "full_attention"
            pe = part.rotary_emb(h, pos, kind) if rotary_by_type else part.rotary_emb(h, pos)
            h = layer(h, attention_mask=masks[kind], position_embeddings=pe, position_ids=pos)
        return h

    h = front_model.model.embed_tokens(x)
    h = run(front_model.model, front_model.model.layers[:i], h)
    h = stitch(h)
    h = run(back_model.model, back_model.model.layers[j:], h)
    return head(back_model.model.norm(h))


@pytest.mark.parametrize("pair", ["llama_shapes", "gemma3_self"])
def test_composed_stitch_matches_flop_counter_and_numel(pair):
    if pair == "llama_shapes":
        front_cfg, back_cfg = shape_pair()
        points = [(1, 0), (2, 2), (3, 3)]
    else:
        front_cfg = back_cfg = llm_configs()["gemma3_text"]
        points = [(1, 1), (2, 3), (4, 0)]
    front, back = build(front_cfg), build(back_cfg)
    x = ids(front_cfg)
    for i, j in points:
        stitch = nn.Linear(front_cfg.hidden_size, back_cfg.hidden_size)
        head = nn.Linear(back_cfg.hidden_size, back_cfg.vocab_size, bias=False)  # the stitched model unties it
        measured = count(lambda: _compose_llm(front, back, i, j, x, stitch, head))
        assert measured == stitch_flops(front_cfg, back_cfg, i, j, seq_len=T).total
        parts = [front.model.embed_tokens, *front.model.layers[:i], stitch, *back.model.layers[j:], back.model.norm,
                 head]
        assert sum(p.numel() for m in parts for p in m.parameters()) == stitch_params(front_cfg, back_cfg, i, j).total


def test_composed_vit_stitch():
    small = dict(image_size=32, patch_size=8, num_channels=3, num_attention_heads=4, num_labels=10)
    front_cfg = ViTConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, **small)
    back_cfg = ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, **small)
    front, back = build(front_cfg), build(back_cfg)
    i, j = 1, 1
    stitch = nn.Linear(48, 64)

    front_layers, back_layers = find_blocks(front), find_blocks(back)  # the path moved between 5.0 and 5.24

    def run():
        h = front.vit.embeddings(pixels())
        for layer in front_layers[:i]:
            h = layer(h)
        h = stitch(h)
        for layer in back_layers[j:]:
            h = layer(h)
        return back.classifier(back.vit.layernorm(h)[:, 0])

    assert count(run) == stitch_flops(front_cfg, back_cfg, i, j).total
    parts = [front.vit.embeddings, *front_layers[:i], stitch, *back_layers[j:], back.vit.layernorm,
             back.classifier]
    assert sum(p.numel() for m in parts for p in m.parameters()) == stitch_params(front_cfg, back_cfg, i, j).total


# --------------------------------------------------------------------------------------------------------
# Errors and formatting
# --------------------------------------------------------------------------------------------------------


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(UnknownFamilyError) as err:
        family_of(GPT2Config())
    assert "gpt2" in str(err.value) and "llama" in str(err.value) and "How to fix" in str(err.value)
    with pytest.raises(UnknownFamilyError):
        anchor_flops(GPT2Config(), seq_len=8)


def test_invalid_points_and_pairs():
    front, back = shape_pair()
    for i, j in [(0, 0), (4, 0), (1, 4), (1, -1)]:
        with pytest.raises(StitchPointError):
            stitch_flops(front, back, i, j, seq_len=T)
        with pytest.raises(StitchPointError):
            stitch_params(front, back, i, j)
    with pytest.raises(IncompatibleAnchorsError):
        stitch_flops(front, vit_configs()["vit"], 1, 0)
    with pytest.raises(IncompatibleAnchorsError):  # CLS vs CLS + distillation: token counts differ
        stitch_grid_flops(vit_configs()["vit"], vit_configs()["deit"])


def test_family_table_and_formatting():
    assert family_of(llm_configs()["qwen3"]).qk_norm and not family_of(llm_configs()["llama"]).qk_norm
    assert family_of(vit_configs()["deit"]).prefix_tokens == 2
    assert format_flops(1_234_000_000) == "1.234 GFLOPs"
    assert format_flops(1_230_000_000) == "1.23 GFLOPs"
    assert format_flops(999) == "999 FLOPs"
    assert format_flops(anchor_flops(vit_configs()["vit"])).endswith("MFLOPs")
    assert format_params(1_235_814_400) == "1.24B params"
