"""Analytic forward FLOPs and parameter counts of anchors and stitch configurations, from configs alone.

Why analytic: the selector sorts O(m*n) configurations into FLOPs buckets and the Pareto plot puts every
finetuned stitch on a FLOPs axis; instantiating (or even tracing) each configuration would cost more than
the selection itself, and the real anchors (Llama-3.2-1B/3B) are gated and too large to build just to count.
Everything here reads a Hugging Face config and does integer arithmetic; nothing imports torch except the
optional :func:`cpu_sdpa_flop_formulas` helper.

Counting conventions (the same numbers everywhere in hf_klas):

* **Forward FLOPs, 2 per multiply-add, matmuls only** -- exactly what
  ``torch.utils.flop_counter.FlopCounterMode`` reports (``mm``/``addmm``/``bmm``/``convolution`` and the
  fused attention kernels). Linear biases, norms, activations, softmax, rotary and residual adds are not
  counted (FlopCounterMode does not count them either); they are a few percent at most.
* **One sequence of ``seq_len`` tokens** (LLM, no KV cache) or **one image** (ViT/DeiT; the token count is
  ``prefix tokens + (H/p_h)*(W/p_w)``). Batch size 1; multiply by the batch for more.
* **Logits**: by default every position goes through ``lm_head`` (training/perplexity cost).
  ``logits_positions=k`` counts the head for the last ``k`` positions only (``logits_to_keep=k`` in
  transformers, e.g. 1 for a generation prefill); the blocks still see all ``seq_len`` tokens.
  ``None`` or ``0`` means all positions, as ``logits_to_keep=0`` does in transformers.
* **Attention scores** (``attention="dense"``, the default): every layer costs ``2*2*heads*head_dim*T*T``
  for ``QK^T`` and ``A V``, *including causal and sliding-window layers*. That is what torch actually
  computes in transformers' eager path (a full ``T x T`` score matrix, masked by adding ``-inf``) and in
  the sdpa math/efficient/flash kernels as FlopCounterMode counts them (its formula ignores masks). GQA
  costs as many score FLOPs as full multi-head attention (``repeat_kv`` / ``enable_gqa`` broadcast the KV
  heads). ``attention="masked"`` instead counts only the (query, key) pairs the mask keeps: the causal
  triangle ``T(T+1)/2`` and, for sliding layers, ``min(t+1, window)`` keys per query -- the bound a
  block-skipping kernel (FlashAttention with a window, flex attention) approaches. Use it to reason about
  long contexts; keep ``dense`` to compare with measurements.
* **sdpa on CPU**: torch dispatches ``scaled_dot_product_attention`` to
  ``aten._scaled_dot_product_flash_attention_for_cpu``, for which FlopCounterMode has *no* formula, so a bare
  counter reports 0 attention-score FLOPs under sdpa on CPU (projections and MLP are still counted). A
  measurement under sdpa on CPU therefore equals ``total - attention``;
  ``FlopCounterMode(custom_mapping=cpu_sdpa_flop_formulas())`` makes it count the dense formula again.
  Eager attention is counted in full (two ``bmm`` per layer).
* **Parameters**: ``sum(p.numel())`` of the model as transformers builds it (ViT/DeiT without pooler, the
  image-classification head included). Tied input/output embeddings count once in an anchor (in
  ``embed``). A stitched model unties the back head, so :func:`stitch_params` counts the front embeddings
  and the back head separately.

Parts of a stitch configuration ``(front_blocks=i, back_start=j)``: front embeddings, front blocks
``0..i-1``, the stitch ``Linear(d_f -> d_g, bias)`` on every token, back blocks ``j..n-1``, back final norm and
head. Family facts that the config does not state (gated MLP, which biases exist, q/k norm, prefix tokens)
are data in :mod:`hf_klas.families`, never guessed: an unknown ``model_type`` raises
:class:`~hf_klas.errors.UnknownFamilyError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import HfKlasError, IncompatibleAnchorsError, StitchPointError
from .families import CAUSAL_LM, Family, family_of

__all__ = [
    "DEFAULT_SEQ_LEN",
    "FlopsBreakdown",
    "ParamsBreakdown",
    "anchor_flops",
    "anchor_params",
    "stitch_flops",
    "stitch_params",
    "stitch_grid_flops",
    "stitch_grid_params",
    "format_flops",
    "format_params",
    "cpu_sdpa_flop_formulas",
]

#: Sequence length used when an LLM cost is asked for without ``seq_len``: the calibration length, what the
#: selector counts budgets at and what stitched configs record. Pass your own; the quadratic attention term
#: makes FLOPs depend on it.
DEFAULT_SEQ_LEN = 128

ATTENTION_MODES = ("dense", "masked")


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FlopsBreakdown:
    """Forward FLOPs by part. ``total = embed + sum(blocks) + stitch + head``.

    ``attention`` is the share of ``blocks`` spent on attention scores (``QK^T`` and ``A V``), kept apart
    because FlopCounterMode sees none of it under sdpa on CPU (see the module docstring). ``tokens`` is the
    sequence length the blocks ran on.
    """

    embed: int
    blocks: list[int]
    head: int
    stitch: int = 0
    total: int = 0
    attention: int = 0
    tokens: int = 0

    def __post_init__(self):
        self.total = int(self.embed + sum(self.blocks) + self.stitch + self.head)


@dataclass
class ParamsBreakdown:
    """Parameter counts by part. ``head`` includes the final norm (and the classifier/lm_head when it is
    not tied to the input embeddings). ``total = embed + sum(blocks) + stitch + head``."""

    embed: int
    blocks: list[int]
    head: int
    stitch: int = 0
    total: int = 0

    def __post_init__(self):
        self.total = int(self.embed + sum(self.blocks) + self.stitch + self.head)


# ----------------------------------------------------------------------------------------------------------
# Shapes read from a config
# ----------------------------------------------------------------------------------------------------------


def _pair(x) -> tuple[int, int]:
    if isinstance(x, (list, tuple)):
        return int(x[0]), int(x[1])
    return int(x), int(x)


def _flag(config, rule) -> bool:
    if isinstance(rule, str):
        return bool(getattr(config, rule, False))
    return bool(rule)


@dataclass
class _Shape:
    """The numbers of one anchor, resolved once (head_dim, GQA, biases, per-layer attention kinds)."""

    facts: Family
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    layer_types: list[str]
    window: int | None
    causal: bool
    # causal LM
    vocab: int = 0
    tied: bool = False
    # vision
    channels: int = 0
    patch: tuple[int, int] = (0, 0)
    image: tuple[int, int] = (0, 0)
    num_labels: int = 0


def _shape(config) -> _Shape:
    config = getattr(config, "config", config) if getattr(config, "model_type", None) is None else config  # a model
    facts = family_of(config)
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    # `head_dim` may be absent (ViT), None (some Mistral configs) or differ from hidden/heads (Llama-3.2-3B).
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    window = getattr(config, "sliding_window", None)
    types = list(getattr(config, "layer_types", None) or [])[:layers]
    if not types:
        kind = "sliding_attention" if facts.global_sliding_window and window else "full_attention"
        types = [kind] * layers
    shape = _Shape(
        facts=facts, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=int(config.intermediate_size),
        qkv_bias=_flag(config, facts.qkv_bias), o_bias=_flag(config, facts.o_bias),
        mlp_bias=_flag(config, facts.mlp_bias), layer_types=types,
        window=int(window) if window else None,
        causal=facts.task == CAUSAL_LM and not getattr(config, "use_bidirectional_attention", False),
    )
    if facts.task == CAUSAL_LM:
        shape.vocab = int(config.vocab_size)
        shape.tied = bool(getattr(config, "tie_word_embeddings", False))
    else:
        shape.channels = int(config.num_channels)
        shape.patch = _pair(config.patch_size)
        shape.image = _pair(config.image_size)
        shape.num_labels = int(getattr(config, "num_labels", 0) or 0)
    return shape


def _tokens(shape: _Shape, seq_len, image_size) -> int:
    """Tokens the blocks see: ``seq_len`` for an LLM, prefix + patches for a ViT (``seq_len`` is ignored
    there, so one call signature serves both kinds)."""
    if shape.facts.task == CAUSAL_LM:
        t = DEFAULT_SEQ_LEN if seq_len is None else int(seq_len)
    else:
        h, w = _pair(image_size) if image_size is not None else shape.image
        t = shape.facts.prefix_tokens + (h // shape.patch[0]) * (w // shape.patch[1])
    if t < 1:
        raise HfKlasError(f"A sequence of {t} tokens has no cost to count.", "Pass seq_len >= 1.")
    return t


def _check_attention(attention: str):
    if attention not in ATTENTION_MODES:
        raise HfKlasError(
            f"Unknown attention counting mode {attention!r}.",
            f"Use one of {ATTENTION_MODES}: 'dense' (what torch computes) or 'masked' (kept pairs only).",
        )


# ----------------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------------


def _score_pairs(shape: _Shape, t: int, layer_type: str, attention: str) -> int:
    """(query, key) pairs whose scores are computed in one head of one layer."""
    if attention == "dense":
        return t * t
    sliding = layer_type == "sliding_attention" and shape.window is not None
    if shape.causal:
        if not sliding:
            return t * (t + 1) // 2
        # keys in (q - window, q]: min(q + 1, window) of them
        d = min(shape.window - 1, t - 1)
        return t + d * t - d * (d + 1) // 2
    if not sliding:
        return t * t
    # bidirectional window (Gemma-3 with use_bidirectional_attention): |q - k| < window
    d = min(shape.window - 1, t - 1)
    return t + 2 * (d * t - d * (d + 1) // 2)


def _block_flops(shape: _Shape, t: int, attention: str) -> tuple[list[int], list[int]]:
    """Per-block (total, attention-score) FLOPs. Blocks differ only through their attention kind."""
    d, hd = shape.hidden, shape.head_dim
    q_out, kv_out = shape.heads * hd, shape.kv_heads * hd
    proj = 2 * t * (d * q_out + 2 * d * kv_out + q_out * d)
    mlp = 2 * t * d * shape.intermediate * (3 if shape.facts.gated_mlp else 2)
    totals, attn = [], []
    for lt in shape.layer_types:
        a = 2 * 2 * shape.heads * hd * _score_pairs(shape, t, lt, attention)
        attn.append(a)
        totals.append(proj + mlp + a)
    return totals, attn


def _embed_flops(shape: _Shape, t: int) -> int:
    """An embedding lookup is no matmul; a ViT's patch embedding is a stride-p convolution."""
    if shape.facts.task == CAUSAL_LM:
        return 0
    patches = t - shape.facts.prefix_tokens
    return 2 * patches * shape.hidden * shape.channels * shape.patch[0] * shape.patch[1]


def _head_flops(shape: _Shape, t: int, logits_positions) -> int:
    """The final norm is not a matmul; the LM head runs on the kept positions, the classifier on CLS."""
    if shape.facts.task == CAUSAL_LM:
        keep = t if not logits_positions else min(int(logits_positions), t)
        return 2 * keep * shape.hidden * shape.vocab
    return 2 * shape.hidden * shape.num_labels


def anchor_flops(config, seq_len=None, image_size=None, logits_positions=None,
                 attention: str = "dense") -> FlopsBreakdown:
    """Forward FLOPs of one anchor on one sequence/image, split into embed / per-block / head."""
    _check_attention(attention)
    shape = _shape(config)
    t = _tokens(shape, seq_len, image_size)
    blocks, attn = _block_flops(shape, t, attention)
    return FlopsBreakdown(embed=_embed_flops(shape, t), blocks=blocks, head=_head_flops(shape, t, logits_positions),
                          attention=sum(attn), tokens=t)


def _check_pair(front: _Shape, back: _Shape, tf: int, tb: int):
    if front.facts.task != back.facts.task:
        raise IncompatibleAnchorsError(
            f"The front anchor is a {front.facts.task} model ({front.facts.model_type}) and the back anchor a "
            f"{back.facts.task} model ({back.facts.model_type}); their costs cannot be joined.",
            "Stitch two language models or two vision models.",
        )
    if tf != tb:
        raise IncompatibleAnchorsError(
            f"The front anchor produces {tf} tokens per image and the back anchor expects {tb}.",
            "Use vision anchors with the same image size, patch size and prefix tokens (CLS/distillation).",
        )


def _check_point(front: _Shape, back: _Shape, i: int, j: int):
    m, n = front.layers, back.layers
    if not (1 <= i <= m and 0 <= j <= n - 1):
        raise StitchPointError(
            f"Stitch configuration (front_blocks={i}, back_start={j}) is out of range for a front anchor of "
            f"{m} blocks and a back anchor of {n} blocks.",
            f"Use 1 <= front_blocks <= {m} and 0 <= back_start <= {n - 1} (at least one back block runs).",
        )


def _stitch_parts(front_config, back_config, seq_len, image_size, attention):
    _check_attention(attention)
    front, back = _shape(front_config), _shape(back_config)
    tf, tb = _tokens(front, seq_len, image_size), _tokens(back, seq_len, image_size)
    _check_pair(front, back, tf, tb)
    fb, fa = _block_flops(front, tf, attention)
    bb, ba = _block_flops(back, tb, attention)
    return front, back, tf, fb, fa, bb, ba


def stitch_flops(front_config, back_config, front_blocks: int, back_start: int, seq_len=None, image_size=None,
                 logits_positions=None, attention: str = "dense") -> FlopsBreakdown:
    """FLOPs of stitch configuration ``(front_blocks=i, back_start=j)``; ``blocks`` lists the front blocks
    ``0..i-1`` then the back blocks ``j..n-1`` in execution order."""
    front, back, t, fb, fa, bb, ba = _stitch_parts(front_config, back_config, seq_len, image_size, attention)
    i, j = int(front_blocks), int(back_start)
    _check_point(front, back, i, j)
    return FlopsBreakdown(
        embed=_embed_flops(front, t), blocks=fb[:i] + bb[j:], head=_head_flops(back, t, logits_positions),
        stitch=2 * t * front.hidden * back.hidden, attention=sum(fa[:i]) + sum(ba[j:]), tokens=t,
    )


def _grid(embed: int, front_blocks: list[int], stitch: int, back_blocks: list[int], head: int) -> np.ndarray:
    """``[i-1, j] = embed + sum(front[:i]) + stitch + sum(back[j:]) + head`` by broadcasting."""
    prefix = np.cumsum(np.asarray(front_blocks, dtype=np.int64))  # [m]: sum(front[:i]) at i-1
    suffix = np.cumsum(np.asarray(back_blocks, dtype=np.int64)[::-1])[::-1]  # [n]: sum(back[j:]) at j
    return np.int64(embed + stitch + head) + prefix[:, None] + suffix[None, :]


def stitch_grid_flops(front_config, back_config, seq_len=None, image_size=None, logits_positions=None,
                      attention: str = "dense") -> np.ndarray:
    """FLOPs of every configuration as an int64 ``[m, n]`` array: entry ``[i-1, j]`` is ``(i, j)``."""
    front, back, t, fb, _, bb, _ = _stitch_parts(front_config, back_config, seq_len, image_size, attention)
    return _grid(_embed_flops(front, t), fb, 2 * t * front.hidden * back.hidden, bb,
                 _head_flops(back, t, logits_positions))


# ----------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------


def _block_params(shape: _Shape) -> int:
    d, hd = shape.hidden, shape.head_dim
    q_out, kv_out = shape.heads * hd, shape.kv_heads * hd
    attn = d * q_out + 2 * d * kv_out + q_out * d
    if shape.qkv_bias:
        attn += q_out + 2 * kv_out
    if shape.o_bias:
        attn += d
    if shape.facts.qk_norm:
        attn += 2 * hd
    mats = 3 if shape.facts.gated_mlp else 2
    mlp = mats * d * shape.intermediate
    if shape.mlp_bias:
        # gated: gate/up biases (I each) + down bias (d); plain: fc1 bias (I) + fc2 bias (d)
        mlp += (mats - 1) * shape.intermediate + d
    norms = shape.facts.norms_per_block * d * (2 if shape.facts.norm_bias else 1)
    return attn + mlp + norms


def _embed_params(shape: _Shape) -> int:
    if shape.facts.task == CAUSAL_LM:
        return shape.vocab * shape.hidden
    d = shape.hidden
    patches = (shape.image[0] // shape.patch[0]) * (shape.image[1] // shape.patch[1])
    conv = d * shape.channels * shape.patch[0] * shape.patch[1] + d
    tokens = shape.facts.prefix_tokens * d  # CLS (+ distillation) token
    positions = (patches + shape.facts.prefix_tokens) * d
    return conv + tokens + positions


def _head_params(shape: _Shape, untie: bool) -> int:
    """Final norm + head; a tied LM head is already counted in the embeddings unless ``untie``."""
    d = shape.hidden
    norm = d * (2 if shape.facts.norm_bias else 1)
    if shape.facts.task == CAUSAL_LM:
        return norm + (0 if shape.tied and not untie else shape.vocab * d)
    return norm + (d * shape.num_labels + shape.num_labels if shape.num_labels > 0 else 0)


def anchor_params(config) -> ParamsBreakdown:
    """Parameters of one anchor as built by transformers (tied embeddings counted once)."""
    shape = _shape(config)
    return ParamsBreakdown(embed=_embed_params(shape), blocks=[_block_params(shape)] * shape.layers,
                           head=_head_params(shape, untie=False))


def stitch_params(front_config, back_config, front_blocks: int, back_start: int,
                  tied_head: bool = False) -> ParamsBreakdown:
    """Parameters of a stitched model: front embeddings + blocks, stitch Linear with bias, back blocks, back
    final norm and back head -- the head counted in full because a stitched model unties it, except
    ``tied_head`` (a self-stitch of a tied anchor keeps head and embedding one matrix)."""
    front, back = _shape(front_config), _shape(back_config)
    i, j = int(front_blocks), int(back_start)
    _check_point(front, back, i, j)
    if front.facts.task != back.facts.task:
        _check_pair(front, back, 0, 0)
    return ParamsBreakdown(
        embed=_embed_params(front), blocks=[_block_params(front)] * i + [_block_params(back)] * (back.layers - j),
        head=_head_params(back, untie=not tied_head), stitch=front.hidden * back.hidden + back.hidden,
    )


def stitch_grid_params(front_config, back_config, tied_head: bool = False) -> np.ndarray:
    """Parameters of every configuration as an int64 ``[m, n]`` array: entry ``[i-1, j]`` is ``(i, j)``
    (``tied_head``: as :func:`stitch_params`)."""
    front, back = _shape(front_config), _shape(back_config)
    if front.facts.task != back.facts.task:
        _check_pair(front, back, 0, 0)
    return _grid(_embed_params(front), [_block_params(front)] * front.layers,
                 front.hidden * back.hidden + back.hidden, [_block_params(back)] * back.layers,
                 _head_params(back, untie=not tied_head))


# ----------------------------------------------------------------------------------------------------------
# Formatting and measurement helpers
# ----------------------------------------------------------------------------------------------------------


def _scaled(x: float, units: list[str], fmt: str, digits: int | None = None) -> str:
    """Divide by 1000 until the number reads naturally. ``digits``: that many significant digits, trailing zeros
    dropped (so a value a user typed reads back as typed: 7.5 FLOPs, 1.234 GFLOPs); None: an integer base unit and
    two decimals above it (parameter counts: 1.24B)."""
    x = float(x)
    for k, unit in enumerate(units):
        if k:
            x /= 1000
        if digits is not None:
            text = f"{x:.{digits}g}"
            if abs(float(text)) < 1000 or unit == units[-1]:
                return fmt.format(f"{x:.0f}" if abs(x) >= 1000 else text, unit)
        elif abs(x) < 1000 or unit == units[-1]:
            return fmt.format(f"{x:.0f}" if k == 0 else f"{x:.2f}", unit)
    raise AssertionError("unreachable")


def format_flops(x) -> str:
    """``1.23e9 -> "1.23 GFLOPs"``, ``7.5 -> "7.5 FLOPs"`` (four significant digits) for messages, logs, plots and
    model cards; accepts a :class:`FlopsBreakdown`."""
    if isinstance(x, FlopsBreakdown):
        x = x.total
    return _scaled(x, ["FLOPs", "KFLOPs", "MFLOPs", "GFLOPs", "TFLOPs", "PFLOPs", "EFLOPs"], "{} {}", digits=4)


def format_params(x) -> str:
    """``1.24e9 -> "1.24B params"`` (the units model names use); accepts a :class:`ParamsBreakdown`."""
    if isinstance(x, ParamsBreakdown):
        x = x.total
    return _scaled(x, ["", "K", "M", "B", "T"], "{}{} params")


def cpu_sdpa_flop_formulas() -> dict:
    """``custom_mapping`` for ``FlopCounterMode`` so sdpa on CPU is counted like everywhere else.

    Why: on CPU torch routes ``scaled_dot_product_attention`` to
    ``aten._scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode's registry lacks, so it
    silently reports 0 attention FLOPs. This registers the same dense formula torch uses for the CUDA
    kernels: ``2 * b * h_q * s_q * s_k * (d_qk + d_v)``, GQA counted with the query heads.
    """
    import torch

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        b, h, s_q, d_qk = query_shape
        s_k, d_v = key_shape[2], value_shape[3]
        return 2 * b * h * s_q * s_k * (d_qk + d_v)

    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: formula}
