"""Tiny random anchors with the shape relations of the real pairs (shared by the tests)."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_klas.families import CAUSAL_LM, FAMILIES, IMAGE_CLASSIFICATION

WINDOW = 4  # sliding window of the windowed families: shorter than the test sequences

#: What makes each decoder family different, switched on in its tiny config: family -> fields(layers, head_dim,
#: window). The families come from hf_klas/families.py; adding one there without an entry here fails every
#: family-parametrised test with a KeyError naming this table.
DECODER_FEATURES = {
    "llama": lambda layers, head_dim, window: dict(head_dim=head_dim, tie_word_embeddings=True),  # tied, GQA
    "mistral": lambda layers, head_dim, window: dict(head_dim=head_dim, sliding_window=window),  # global window
    # sliding window on the upper layers only (head_dim = hidden / heads)
    "qwen2": lambda layers, head_dim, window: dict(use_sliding_window=True, sliding_window=window,
                                                   max_window_layers=layers // 2),
    "qwen3": lambda layers, head_dim, window: dict(head_dim=head_dim),  # q/k norm, explicit head_dim
    # sliding/full pattern, scaled embeddings, final logit soft-cap, tied
    "gemma3_text": lambda layers, head_dim, window: dict(
        head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=window,
        layer_types=(["sliding_attention", "full_attention"] * layers)[:layers], final_logit_softcapping=30.0),
}
DECODER_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.task == CAUSAL_LM)
VISION_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.task == IMAGE_CLASSIFICATION)


def decoder_config(family: str, wide: bool = False, layers: int = 4, vocab: int = 128, window: int = WINDOW,
                   **overrides):
    """A tiny config of ``family``. ``wide=True`` changes hidden size, head_dim and KV heads the way
    Llama-3.2-3B differs from -1B, so a (narrow -> wide) pair has the real pair's shape relations; ``overrides``
    set any other config field (biases, tying, ...)."""
    hidden, heads, kv, head_dim = (96, 3, 1, 32) if wide else (64, 4, 2, 16)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family not in DECODER_FEATURES:
        raise KeyError(f"tests/tiny.py has no tiny config for the decoder family {family!r}: add an entry to "
                       "DECODER_FEATURES switching on what makes the family different.")
    extra = DECODER_FEATURES[family](layers, head_dim, window)
    return AutoConfig.for_model(family, **{**common, **extra, **overrides})


def decoder_anchor(family: str, seed: int = 0, **kwargs):
    """A tiny random causal LM of ``family`` (eval mode)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(decoder_config(family, **kwargs)).eval()


def llama_pair(vocab: int = 128, seed: int = 0):
    """Front/back like Llama-3.2-1B/3B: different hidden size, head_dim and KV heads; tied embeddings."""
    torch.manual_seed(seed)
    front = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0))
    back = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=96, intermediate_size=192, num_hidden_layers=6, num_attention_heads=3,
        num_key_value_heads=1, head_dim=32, tie_word_embeddings=True, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0))
    return front.eval(), back.eval()


def vision_pair(family: str = "vit", seed: int = 0, num_labels: int = 5):
    """Two tiny image classifiers of one family with different width and depth (like DeiT-Ti -> DeiT-S)."""
    labels = {k: f"class_{k}" for k in range(num_labels)}
    torch.manual_seed(seed)
    models = []
    for hidden, layers, heads in ((32, 3, 2), (48, 4, 3)):
        models.append(AutoModelForImageClassification.from_config(AutoConfig.for_model(
            family, image_size=8, patch_size=4, num_channels=1, hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=2 * hidden, id2label=labels,
            label2id={v: k for k, v in labels.items()}, architectures=[])).eval())  # []: the family's default class
    return models[0], models[1]
