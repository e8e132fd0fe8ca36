"""Tiny random anchors with the shape relations of the real pairs (shared by the tests)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


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
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    cfg_cls, model_cls = (ViTConfig, ViTForImageClassification) if family == "vit" else (DeiTConfig, DeiTForImageClassification)
    labels = {k: f"class_{k}" for k in range(num_labels)}
    torch.manual_seed(seed)
    models = []
    for hidden, layers, heads in ((32, 3, 2), (48, 4, 3)):
        models.append(model_cls(cfg_cls(
            image_size=8, patch_size=4, num_channels=1, hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=2 * hidden, id2label=labels,
            label2id={v: k for k, v in labels.items()})).eval())
    return models[0], models[1]
