"""What hf_klas knows about each model family: one record per ``model_type``, data only.

Everything here is a fact the module tree or the config does not state (where a family keeps its final norm,
whether its MLP is gated, which of its biases are hard-coded, which Linear layers LoRA should adapt, how its
checkpoints name tensors). The anatomy (module lookups), the cost model (FLOPs/params) and the LoRA defaults all
read these records; an unknown ``model_type`` fails loudly in each of them, never guessed. Adding a family = one
record here + one tiny config in the tests' fixture (``tests/tiny.py``).

No torch, no transformers: this file ships inside stitched checkpoints (``trust_remote_code``) and is imported by
code that only counts FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownFamilyError

CAUSAL_LM = "causal-lm"
IMAGE_CLASSIFICATION = "image-classification"

_LLM_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# transformers >= 5.1 names first; 5.0 builds ViT/DeiT blocks with the old names (query .. dense). Only names
# present in the installed model are used.
_VIT_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "query", "key", "value", "dense")

# ViT/DeiT checkpoints (the Hub's, and what ``save_pretrained`` still writes in 5.24) keep the original layout
# ``encoder.layer.{i}.attention.attention.query``; transformers >= 5.1 builds ``layers.{i}.attention.q_proj`` and
# renames on load. (module-name regex, checkpoint-name template) pairs, tried when a module name is not in the
# checkpoint, so those tensors are still read one by one.
_VIT_CHECKPOINT_NAMES = (
    (r"^(\w+)\.layers\.(\d+)\.attention\.q_proj\.(\w+)$", r"\1.encoder.layer.\2.attention.attention.query.\3"),
    (r"^(\w+)\.layers\.(\d+)\.attention\.k_proj\.(\w+)$", r"\1.encoder.layer.\2.attention.attention.key.\3"),
    (r"^(\w+)\.layers\.(\d+)\.attention\.v_proj\.(\w+)$", r"\1.encoder.layer.\2.attention.attention.value.\3"),
    (r"^(\w+)\.layers\.(\d+)\.attention\.o_proj\.(\w+)$", r"\1.encoder.layer.\2.attention.output.dense.\3"),
    (r"^(\w+)\.layers\.(\d+)\.mlp\.fc1\.(\w+)$", r"\1.encoder.layer.\2.intermediate.dense.\3"),
    (r"^(\w+)\.layers\.(\d+)\.mlp\.fc2\.(\w+)$", r"\1.encoder.layer.\2.output.dense.\3"),
    (r"^(\w+)\.layers\.(\d+)\.(layernorm_before|layernorm_after)\.(\w+)$", r"\1.encoder.layer.\2.\3.\4"),
)


@dataclass(frozen=True)
class Family:
    """One family. Attribute paths are names: ``base`` inside the task model (``LlamaForCausalLM.model``), the
    rest inside the base model (``head`` inside the task model). A bias field is ``True``/``False`` when the
    modeling code hard-codes it, or the name of the config attribute that switches it."""

    model_type: str
    task: str
    # --- anatomy --------------------------------------------------------------------------------------------
    base: str
    embed: str
    norm: str
    head: str
    rotary: str | None = None
    rotary_takes_layer_type: bool = False  # Gemma-3: one rotary module called with the layer type
    global_sliding_window: bool = False  # Mistral: config.sliding_window applies to every layer
    prefix_tokens: int = 0  # ViT: CLS; DeiT: CLS + distillation. The classifier reads token 0.
    base_kwargs: tuple[tuple[str, object], ...] = ()  # base-model kwargs leaving out unused parts (ViT pooler)
    # --- cost model (hf_klas.flops) -------------------------------------------------------------------------
    gated_mlp: bool = True  # gate/up/down (3 matrices) vs fc1/fc2 (2)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3, Gemma-3)
    norms_per_block: int = 2  # Gemma-3: pre/post norms around attention and MLP (4)
    norm_bias: bool = False  # LayerNorm (weight + bias) vs RMSNorm (weight only)
    qkv_bias: bool | str = False
    o_bias: bool | str = False
    mlp_bias: bool | str = False
    # --- finetuning -----------------------------------------------------------------------------------------
    lora_targets: tuple[str, ...] = _LLM_LORA
    # --- checkpoints ----------------------------------------------------------------------------------------
    checkpoint_names: tuple[tuple[str, str], ...] = ()


def _decoder(model_type: str, **facts) -> Family:
    return Family(model_type, CAUSAL_LM, base="model", embed="embed_tokens", norm="norm", head="lm_head",
                  rotary="rotary_emb", **facts)


def _vision(model_type: str, prefix_tokens: int) -> Family:
    return Family(model_type, IMAGE_CLASSIFICATION, base=model_type, embed="embeddings", norm="layernorm",
                  head="classifier", prefix_tokens=prefix_tokens, base_kwargs=(("add_pooling_layer", False),),
                  gated_mlp=False, norm_bias=True, qkv_bias="qkv_bias", o_bias=True, mlp_bias=True,
                  lora_targets=_VIT_LORA, checkpoint_names=_VIT_CHECKPOINT_NAMES)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    _decoder("llama", qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias"),
    _decoder("mistral", global_sliding_window=True),
    _decoder("qwen2", qkv_bias=True),
    _decoder("qwen3", qk_norm=True, qkv_bias="attention_bias", o_bias="attention_bias"),
    _decoder("gemma3_text", rotary_takes_layer_type=True, qk_norm=True, norms_per_block=4,
             qkv_bias="attention_bias", o_bias="attention_bias"),
    _vision("vit", prefix_tokens=1),
    _vision("deit", prefix_tokens=2),
)}


def family_of(config) -> Family:
    """The record of ``config``'s family (a config, a model carrying one, or a ``model_type`` string), or an
    error that lists the supported families."""
    if not isinstance(config, str) and getattr(config, "model_type", None) is None:
        config = getattr(config, "config", config)  # a model: its config
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnknownFamilyError(
            f"Model type {model_type!r} is not a family hf_klas knows how to stitch "
            f"(supported: {', '.join(sorted(FAMILIES))}).",
            "Use anchors of a supported family, or add a Family record to hf_klas/families.py (anatomy, cost "
            "facts, LoRA targets) and its tiny config to tests/tiny.py.",
        )
    return FAMILIES[model_type]


def task_of(obj) -> str:
    """``CAUSAL_LM`` or ``IMAGE_CLASSIFICATION`` for an anchor config or model, a stitched config or model, or a
    supernet (which say it themselves) -- the one place that answers "what task is this"."""
    for candidate in (obj, getattr(obj, "config", None)):
        task = getattr(candidate, "task", None)
        if task in (CAUSAL_LM, IMAGE_CLASSIFICATION):
            return task
    return family_of(obj).task
