"""Finding a family's embeddings, blocks, final norm, head and rotary embedding in a live model, and calling
the installed transformers' masks and layers the way its own models do.

Architecture knowledge is *data* (:mod:`hf_klas.families`), looked up explicitly and failing loudly for an
unknown ``model_type`` -- never guessed. The block list itself is discovered structurally (the ``ModuleList``
whose children are the class named in ``_no_split_modules``) because its path moved between transformers
releases (ViT: ``encoder.layer`` in 5.0, ``layers`` in 5.23).

This module ships inside stitched checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch
from torch import nn

from .errors import IncompatibleAnchorsError, UnknownFamilyError, UnsupportedTransformersError
from .families import CAUSAL_LM, Family, family_of
from .version import TRANSFORMERS_RANGE, __version__


def layer_types_of(config) -> list[str]:
    """Per-layer attention kind in the anchor's own order ("full_attention" / "sliding_attention")."""
    n = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)[:n]
    if family_of(config).global_sliding_window and getattr(config, "sliding_window", None):
        return ["sliding_attention"] * n
    return ["full_attention"] * n


def _block_class_names(model: nn.Module) -> set[str]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return {n for n in names if "Embedding" not in n}


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks, found structurally.

    It is the ``ModuleList`` whose children are all instances of a class named in ``_no_split_modules``
    (what FSDP wraps and ``device_map`` keeps whole). Exactly one such list must exist.
    """
    names = _block_class_names(model)
    found = []
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if all(type(child).__name__ in names for child in module):
                found.append((path, module))
    if len(found) != 1:
        raise UnknownFamilyError(
            f"Could not find exactly one block list in {type(model).__name__} "
            f"(block classes {sorted(names)}; found {[p for p, _ in found]}).",
            "Check that the model is a supported family and loaded with a supported transformers version.",
        )
    return found[0][1]


def find_block_path(model: nn.Module) -> str:
    """Dotted path of :func:`find_blocks` (used to map checkpoint tensor names)."""
    blocks = find_blocks(model)
    for path, module in model.named_modules():
        if module is blocks:
            return path
    raise AssertionError("unreachable")


def get_base(model: nn.Module, config=None) -> nn.Module:
    """The base model inside a task model (``LlamaForCausalLM.model``); a base model is returned as is."""
    fam = family_of(config if config is not None else model.config)
    return getattr(model, fam.base, model)


def get_final_norm(model: nn.Module) -> nn.Module:
    """The family's final norm -- explicit lookup, failing if absent (no heuristics)."""
    fam = family_of(model.config)
    base = get_base(model)
    norm = getattr(base, fam.norm, None)
    if not isinstance(norm, nn.Module):
        raise UnknownFamilyError(
            f"{type(model).__name__} has no final norm at '{fam.base}.{fam.norm}'.",
            "The installed transformers version moved it; update its record in hf_klas/families.py.",
        )
    return norm


def get_head(model: nn.Module) -> nn.Linear:
    """The unembedding / classifier. For a causal LM without ``lm_head`` (a base model), the tied input
    embedding is returned wrapped as a Linear view so a logit lens still works."""
    fam = family_of(model.config)
    head = getattr(model, fam.head, None)
    if isinstance(head, nn.Linear):
        return head
    if fam.task == CAUSAL_LM:
        embed = getattr(get_base(model), fam.embed, None)
        if isinstance(embed, nn.Embedding) and ties_embeddings(model.config):
            lin = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False, device=embed.weight.device,
                            dtype=embed.weight.dtype)
            lin.weight = embed.weight
            return lin
    raise UnknownFamilyError(
        f"{type(model).__name__} has no head at '{fam.head}'.",
        "Load the anchor with its task class (AutoModelForCausalLM / AutoModelForImageClassification).",
    )


def ties_embeddings(config) -> bool:
    """Whether a causal LM's head is its input embedding matrix (SmolLM2, Gemma-3, Llama-3.2-1B/3B)."""
    return family_of(config).task == CAUSAL_LM and bool(getattr(config, "tie_word_embeddings", False))


def final_logit_softcap(config) -> float | None:
    """Gemma-style tanh soft-capping of the final logits (None for families without it)."""
    return getattr(config, "final_logit_softcapping", None)


def check_compatible(front_config, back_config) -> Family:
    """Refuse pairs that cannot be stitched; returns the shared task anatomy."""
    ff, fb = family_of(front_config), family_of(back_config)
    if ff.task != fb.task:
        raise IncompatibleAnchorsError(
            f"The front anchor is a {ff.task} model ({front_config.model_type}) and the back anchor a "
            f"{fb.task} model ({back_config.model_type}); a stitch must stay within one task.",
            "Stitch two language models or two vision models of one family.",
        )
    if ff.task == CAUSAL_LM:
        if front_config.vocab_size != back_config.vocab_size:
            raise IncompatibleAnchorsError(
                f"The anchors have different vocabularies ({front_config.vocab_size} vs "
                f"{back_config.vocab_size} tokens): the front embeds token ids the back head cannot name.",
                "Use two checkpoints that share one tokenizer (e.g. Llama-3.2-1B with Llama-3.2-3B).",
            )
    else:
        for key in ("image_size", "patch_size", "num_channels"):
            if getattr(front_config, key, None) != getattr(back_config, key, None):
                raise IncompatibleAnchorsError(
                    f"The anchors differ in {key} ({getattr(front_config, key, None)} vs "
                    f"{getattr(back_config, key, None)}), so their token sequences do not line up.",
                    "Use vision anchors with the same image size, patch size and channels.",
                )
        if ff.prefix_tokens != fb.prefix_tokens:
            raise IncompatibleAnchorsError(
                f"The anchors have different prefix tokens ({ff.prefix_tokens} vs {fb.prefix_tokens}: "
                f"{front_config.model_type} vs {back_config.model_type}).",
                "Stitch ViT with ViT and DeiT with DeiT.",
            )
    return fb


# --- transformers version compatibility -------------------------------------------------------------------
# The KV cache is called ``past_key_values`` up to transformers 5.23 and ``cache`` from 5.24 (in model forwards,
# decoder layers, mask builders, ``generate()`` and output classes). A layer given the cache under a name it
# does not declare swallows it in ``**kwargs`` and decodes without history, silently. So every callee's name is
# read from the installed signature, once, and a callee that declares neither known name is refused.
CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")  # newest first


def _installed_transformers() -> str:
    import transformers

    return transformers.__version__


@functools.lru_cache(maxsize=None)
def cache_argument(fn) -> str:
    """The name under which ``fn`` (a decoder layer's ``forward``, a mask builder) takes the KV cache."""
    params = inspect.signature(fn).parameters
    for name in CACHE_ARGUMENT_NAMES:
        if name in params:
            return name
    raise UnsupportedTransformersError(
        f"{getattr(fn, '__qualname__', fn)} takes the KV cache under none of the names hf_klas knows "
        f"({', '.join(CACHE_ARGUMENT_NAMES)}); installed transformers {_installed_transformers()}, "
        f"hf_klas {__version__} supports transformers {TRANSFORMERS_RANGE}. Passing the cache anyway would "
        "generate text without its history.",
        f"Install a supported transformers (pip install 'transformers{TRANSFORMERS_RANGE}'), or upgrade hf_klas.",
    )


def layer_cache_argument(block: nn.Module) -> str:
    """The cache argument name of a decoder layer (its class's own ``forward``)."""
    return cache_argument(type(block).forward)


@functools.lru_cache(maxsize=None)
def output_cache_field(output_cls) -> str:
    """The field of a transformers output class that carries the cache (``generate()`` reads it there)."""
    names = {f.name for f in dataclasses.fields(output_cls)}
    for name in CACHE_ARGUMENT_NAMES:
        if name in names:
            return name
    raise UnsupportedTransformersError(
        f"{output_cls.__name__} has none of the cache fields hf_klas knows ({', '.join(CACHE_ARGUMENT_NAMES)}); "
        f"installed transformers {_installed_transformers()}, supported {TRANSFORMERS_RANGE}.",
        f"Install a supported transformers (pip install 'transformers{TRANSFORMERS_RANGE}').",
    )


def one_cache(cache, past_key_values):
    """The cache a caller passed under either name (``generate()`` in 5.24 uses ``cache``, 5.0 the old name)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise IncompatibleAnchorsError(
            "Two different KV caches were passed, as cache= and as past_key_values=.",
            "Pass the cache once (cache= on transformers >= 5.24, past_key_values= before).",
        )
    return cache if cache is not None else past_key_values


@functools.lru_cache(maxsize=None)
def _mask_api():
    """(masking_utils, wants cache_position, name of the embeddings argument, name of the cache argument).

    5.0 passes ``cache_position`` to masks and layers and calls the embeddings ``input_embeds``; later releases
    dropped ``cache_position`` and renamed the embeddings, and 5.24 renamed the cache.
    """
    from transformers import masking_utils

    fn = masking_utils.create_causal_mask
    params = inspect.signature(fn).parameters
    embeds = "inputs_embeds" if "inputs_embeds" in params else "input_embeds"
    name = cache_argument(fn)
    if cache_argument(masking_utils.create_sliding_window_causal_mask) != name:
        raise UnsupportedTransformersError(
            "transformers' causal and sliding-window mask builders take the cache under different names "
            f"(installed transformers {_installed_transformers()}, supported {TRANSFORMERS_RANGE}).",
            f"Install a supported transformers (pip install 'transformers{TRANSFORMERS_RANGE}').")
    return masking_utils, "cache_position" in params, embeds, name


def build_masks(config, layer_types, inputs_embeds, attention_mask, cache, position_ids, cache_position):
    """Causal masks for each layer type present, built the way the family's own model builds them."""
    masking_utils, wants_cache_position, embeds_name, cache_name = _mask_api()
    kwargs = {
        "config": config,
        embeds_name: inputs_embeds,
        "attention_mask": attention_mask,
        cache_name: cache,
        "position_ids": position_ids,
    }
    if wants_cache_position:
        kwargs["cache_position"] = cache_position
    masks = {}
    for layer_type in set(layer_types):
        if layer_type == "sliding_attention":
            masks[layer_type] = masking_utils.create_sliding_window_causal_mask(**kwargs)
        else:
            masks[layer_type] = masking_utils.create_causal_mask(**kwargs)
    return masks


def layers_want_cache_position() -> bool:
    return _mask_api()[1]


def rotary_embeddings(rotary: nn.Module, fam: Family, hidden: torch.Tensor, position_ids, layer_types):
    """Position embeddings per layer type (one tuple shared by all types for single-rope families)."""
    if fam.rotary_takes_layer_type:
        return {t: rotary(hidden, position_ids, t) for t in set(layer_types)}
    pe = rotary(hidden, position_ids)
    return {t: pe for t in set(layer_types)}


def set_layer_index(block: nn.Module, index: int) -> None:
    """Point every submodule that writes the KV cache at ``index`` (its position in the stitched stack)."""
    for module in block.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = index
