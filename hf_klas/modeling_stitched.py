"""Stitched models: the first blocks of one checkpoint, a learned stitch, the last blocks of another.

``StitchedModelForCausalLM`` and ``StitchedModelForImageClassification`` compose the *installed*
transformers modules of each anchor's family (base model class built from a truncated part config) and run
them in one loop. They are ordinary ``PreTrainedModel`` s: ``from_pretrained`` / ``save_pretrained`` /
``push_to_hub``, ``generate`` with dynamic and static caches, Trainer losses, PEFT and gradient checkpointing.

This module ships inside stitched checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast, ImageClassifierOutput
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .anatomy import (
    build_masks,
    final_logit_softcap,
    find_block_path,
    layer_cache_argument,
    layer_types_of,
    layers_want_cache_position,
    one_cache,
    output_cache_field,
    rotary_embeddings,
    set_layer_index,
)
from .configuration_stitched import StitchedConfig
from .errors import DataError, StitchPointError
from .families import IMAGE_CLASSIFICATION, family_of

# transformers 5.0 copies only the *direct* relative imports of a local checkpoint's code files (trust_remote_code):
# the model card's FLOPs formatter is imported by name so a saved directory loads without hf_klas there too.
from .flops import format_flops  # noqa: F401
from .model_card import CARD_MARKER, render_model_card, write_model_card

#: Attribute set on a KV cache by the first stitched forward that uses it: the configuration that fills it.
CACHE_OWNER = "_hf_klas_stitch"


def _build_part(part_config, drop: tuple[str, ...]) -> PreTrainedModel:
    """The family's own base model for a truncated config, minus the pieces this part never runs."""
    fam = family_of(part_config)
    model_cls = MODEL_MAPPING[type(part_config)]
    part = model_cls(part_config, **dict(fam.base_kwargs))
    for name in drop:
        setattr(part, name, None)
    return part


def build_parts(front_config, back_config, shared: bool = False) -> tuple[PreTrainedModel, PreTrainedModel | None]:
    """The front part (embeddings + blocks, no final norm) and the back part (blocks + final norm, no embeddings);
    ``shared`` (self-stitching): one part with embeddings, every block and the final norm, returned as the front
    (the back is None: both run blocks of that one module)."""
    fam = family_of(back_config)
    pooler = ("pooler",) if fam.task == IMAGE_CLASSIFICATION else ()
    if shared:
        return _build_part(front_config, drop=pooler), None
    return _build_part(front_config, drop=(fam.norm,) + pooler), _build_part(back_config, drop=(fam.embed,))


class Part(NamedTuple):
    """One anchor's share of a forward: its base model (rotary embedding, mask config, the back's final norm),
    the blocks that run and their layer types."""

    model: nn.Module
    blocks: Sequence[nn.Module]
    layer_types: Sequence[str]


class StitchedStack(NamedTuple):
    """What one forward runs: the front part, the stitch, the back part. ``key`` is ``(front_blocks, back_start)``;
    ``config`` describes this stack (``num_hidden_layers`` / ``layer_types``: the KV cache's layout); ``slots``
    maps each block's ``layer_idx`` to its KV-cache slot in this stack (None: the indices are the slots already)."""

    front: Part
    stitch: nn.Module
    back: Part
    key: tuple[int, int]
    config: StitchedConfig
    slots: dict[int, int] | None = None


class CacheSlots:
    """A KV cache as one stack's blocks see it: a block writes slot ``slots[layer_idx]``.

    A stitchable model's blocks keep one fixed ``layer_idx`` each whatever configuration runs, so concurrent
    calls of different configurations never re-number shared modules; this view puts each block's keys and
    values at its position in the running stack. Everything but ``update`` is the cache's own."""

    def __init__(self, cache, slots: dict[int, int]):
        self._cache, self._slots = cache, slots

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self._cache.update(key_states, value_states, self._slots[layer_idx], *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cache, name)


def check_attention_mask(attention_mask, batch: int, length: int, past: int) -> None:
    """Refuse a 2-D attention mask that does not cover the cached and the new tokens of every sequence: a shorter
    or longer one would be broadcast or cut by the mask builders, and decode with the wrong tokens masked."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        return  # 4-D masks and generate()'s per-layer-type dicts are the caller's own layout
    want = (batch, past + length)
    if tuple(attention_mask.shape) != want:
        cached = f" + {past} cached" if past else ""
        raise DataError(
            f"The attention mask has shape {tuple(attention_mask.shape)}, but the input has {batch} sequence(s) of "
            f"{length} token(s){cached}: it needs shape {want}, one entry per token (1 = attend, 0 = padding).",
            "Pass the attention mask the tokenizer returned with these input ids (tokenizer(..., "
            "return_tensors='pt')), extended by the new tokens when continuing a KV cache.")


def claim_cache(cache, key: tuple[int, int], num_layers: int) -> None:
    """Refuse a KV cache that another stitch configuration filled (or one sized for another stack); mark a new one.

    A cache holds one key/value slot per block of the stack that filled it, numbered in stitched order: reused by
    another configuration, its history would be read by the wrong blocks, silently."""
    if cache is None:
        return
    owner, seen = getattr(cache, CACHE_OWNER, None), cache.get_seq_length()
    layers = len(getattr(cache, "layers", None) or ())
    if seen and owner is not None and tuple(owner) != tuple(key):
        raise StitchPointError(
            f"This KV cache holds {seen} tokens of stitch configuration {tuple(owner)}, but configuration "
            f"{tuple(key)} is running; its blocks would read another stack's history.",
            "Start a new cache after switching (generate() does unless you pass one), or switch back first.")
    if layers and layers != num_layers:
        raise StitchPointError(
            f"This KV cache has {layers} layers; the running stitch configuration {tuple(key)} has {num_layers}.",
            "Let generate() create the cache, or build it from the model's config after set_stitch().")
    setattr(cache, CACHE_OWNER, tuple(key))


def _checkpointing(model) -> bool:
    # `is_gradient_checkpointing` became `is_activation_checkpointing` after 5.0 (the old name warns).
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing)


class StitchedPreTrainedModel(PreTrainedModel):
    """Shared plumbing: part construction, attention-implementation propagation, stitch init."""

    config_class = StitchedConfig
    base_model_prefix = "stitched"
    #: The tokenizer or image processor the model was built with (its anchors'), or None. ``save_pretrained``
    #: writes it beside the weights, so a saved stitch loads with AutoTokenizer / AutoImageProcessor as well;
    #: hf_klas's evaluation and training read it from here.
    preprocessor = None
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _skip_keys_device_placement = ["cache", "past_key_values"]  # the cache's name before transformers 5.24
    _no_split_modules = []  # filled per instance from the parts' block classes

    def __init__(self, config: StitchedConfig):
        if config.front_config is None or config.back_config is None:
            raise ValueError("A StitchedConfig without front_config/back_config cannot build a model; "
                             "use hf_klas.StitchedModel.from_anchors(front, back, ...) to create one.")
        super().__init__(config)
        self.anatomy = family_of(config.back_config)
        front_cfg, back_cfg = config.part_config("front"), config.part_config("back")
        # Trap: PreTrainedModel resolves attention only on the top-level config; the borrowed blocks read
        # their part config, and a missing value there silently turns causal attention bidirectional.
        for cfg in (front_cfg, back_cfg):
            cfg._attn_implementation = config._attn_implementation
        self._build_parts(front_cfg, back_cfg)
        self._no_split_modules = sorted({type(b).__name__ for b in self.front_blocks} |
                                        {type(b).__name__ for b in self.back_blocks})

    def _build_parts(self, front_cfg, back_cfg) -> None:
        """The front truncated to ``front_blocks`` blocks, the back from ``back_start``, one stitch layer."""
        config = self.config
        self.front, self.back = build_parts(front_cfg, back_cfg)
        self._front_blocks_path = find_block_path(self.front)
        self._back_blocks_path = find_block_path(self.back)
        self.stitch = nn.Linear(config.front_config.hidden_size, config.back_config.hidden_size,
                                bias=config.stitch_bias)
        # KV cache slots follow the block's position in the stitched stack, not its original index.
        for k, block in enumerate(self.back_blocks):
            set_layer_index(block, config.front_blocks + k)
        self.front_layer_types = layer_types_of(front_cfg)
        self.back_layer_types = layer_types_of(back_cfg)

    def stitched_stack(self, kwargs: dict) -> StitchedStack:
        """The stack a forward runs (``kwargs``: the forward's extra keyword arguments; a stitchable model takes
        its ``stitch=`` from them)."""
        cfg = self.config
        return StitchedStack(Part(self.front, self.front_blocks, self.front_layer_types), self.stitch,
                             Part(self.back, self.back_blocks, self.back_layer_types),
                             (cfg.front_blocks, cfg.back_start), cfg)

    @property
    def front_blocks(self) -> nn.ModuleList:
        return self.front.get_submodule(self._front_blocks_path)

    @property
    def back_blocks(self) -> nn.ModuleList:
        return self.back.get_submodule(self._back_blocks_path)

    def _init_weights(self, module):
        # Only the modules this class owns; the parts are PreTrainedModels and init themselves.
        if module is getattr(self, "stitch", None):
            init.eye_(module.weight)  # identity on shared dims: equal widths start as a no-op bridge
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module is not getattr(self, "stitch", None):
            init.normal_(module.weight, mean=0.0, std=getattr(self.config.back_config, "initializer_range", 0.02))
            if module.bias is not None:
                init.zeros_(module.bias)

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        out = super().set_attn_implementation(attn_implementation, *args, **kwargs)
        for part in (self.front, self.back):
            part.config._attn_implementation = self.config._attn_implementation
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Standard save, plus the tokenizer/image processor it was built with and a model card."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            preprocessor = getattr(self, "preprocessor", None)
            if preprocessor is not None:
                preprocessor.save_pretrained(save_directory)
            write_model_card(save_directory, self.config)
        return out

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        """``PushToHubMixin.push_to_hub``'s last step, after it saved the model and put the Hub's card (or a
        generic template when the repo has none) in ``working_dir/README.md``: our card takes the template's
        place (and replaces our own older card); a README a user wrote on the Hub is kept. Overriding this step
        of our own class, instead of patching transformers' hub module, keeps the push thread-safe; the
        push_to_hub tests fail if transformers stops calling it."""
        readme = os.path.join(working_dir, "README.md")
        text = open(readme, encoding="utf-8").read() if os.path.isfile(readme) else ""
        if not text or CARD_MARKER in text or "has been automatically generated" in text:
            with open(readme, "w", encoding="utf-8") as f:
                f.write(render_model_card(self.config))
        return super()._upload_modified_files(working_dir, *args, **kwargs)

    def _sync_attn_implementation(self):
        impl = self.config._attn_implementation
        for part in (self.front, self.back):
            if part.config._attn_implementation != impl:
                part.config._attn_implementation = impl


class StitchedModelForCausalLM(StitchedPreTrainedModel, GenerationMixin):
    """Front embeddings + front blocks ``[:i]`` + stitch + back blocks ``[j:]`` + back norm + back head."""

    _tied_weights_keys = {}

    def __init__(self, config: StitchedConfig):
        super().__init__(config)
        self.lm_head = nn.Linear(config.back_config.hidden_size, config.back_config.vocab_size, bias=False)
        if config.tie_word_embeddings:  # self-stitch of a tied anchor: one matrix, saved once
            self._tied_weights_keys = {"lm_head.weight": f"front.{self.anatomy.embed}.weight"}
        self.post_init()
        if config.tie_word_embeddings:
            self.tie_weights()  # post_init does not tie under no_init_weights (how models are allocated)
        # Fail now, not with wrong text later, if the installed blocks take the cache under an unknown name.
        for blocks in (self.front_blocks, self.back_blocks):
            layer_cache_argument(blocks[0])

    def get_input_embeddings(self):
        return getattr(self.front, self.anatomy.embed)

    def set_input_embeddings(self, value):
        setattr(self.front, self.anatomy.embed, value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def generate(self, inputs=None, *args, **kwargs):
        """``GenerationMixin.generate``; an attention mask that does not match the input ids is refused first
        (generate() drops an all-ones mask before the forward sees it, after deriving positions from it)."""
        ids = inputs if inputs is not None else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if isinstance(ids, torch.Tensor) and ids.ndim >= 2:
            check_attention_mask(kwargs.get("attention_mask"), ids.shape[0], ids.shape[1], 0)
        return super().generate(inputs, *args, **kwargs)

    def _run_blocks(self, part: Part, hidden, masks, position_ids, cache, use_cache, cache_position, all_hidden,
                    kwargs):
        base = part.model
        pe = rotary_embeddings(getattr(base, self.anatomy.rotary), family_of(base.config), hidden, position_ids,
                               part.layer_types)
        extra = {"cache_position": cache_position} if layers_want_cache_position() else {}
        for block, layer_type in zip(part.blocks, part.layer_types):
            # under the name this layer class declares: a name it does not know would vanish in its **kwargs
            extra[layer_cache_argument(block)] = cache
            out = block(
                hidden,
                attention_mask=masks[layer_type],
                position_embeddings=pe[layer_type],
                position_ids=position_ids,
                use_cache=use_cache,
                **extra,
                **kwargs,
            )
            hidden = out[0] if isinstance(out, tuple) else out
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden

    def _masks(self, part, layer_types, embeds, attention_mask, cache, position_ids, cache_position):
        if isinstance(attention_mask, dict):  # prepared by generate() (static caches, sliding layers)
            return attention_mask
        return build_masks(part.config, layer_types, embeds, attention_mask, cache, position_ids, cache_position)

    def _logits_and_loss(self, hidden, labels=None, num_items_in_batch=None):
        """Head on final-normed hidden states, the family's final logit soft-cap (Gemma) and the shifted LM loss."""
        logits = self.lm_head(hidden)
        cap = final_logit_softcap(self.config.back_config)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      num_items_in_batch=num_items_in_batch)
        return logits, loss

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """The cache is taken as ``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier releases) and
        returned in the output field the installed transformers declares."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        kwargs.pop("output_attentions", None)
        cache_position = kwargs.pop("cache_position", None)  # passed by transformers 5.0's generate()
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        self._sync_attn_implementation()
        stack = self.stitched_stack(kwargs)
        config = stack.config  # this call's stack: the cache is laid out and sized for it
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.training and _checkpointing(self):
            use_cache = False
        output_hidden_states = bool(output_hidden_states)

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        cache = one_cache(cache, past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        claim_cache(cache, stack.key, config.num_hidden_layers)
        past_seen = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, inputs_embeds.shape[0], inputs_embeds.shape[1], past_seen)
        if cache_position is None:
            cache_position = torch.arange(past_seen, past_seen + inputs_embeds.shape[1], device=inputs_embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        block_cache = CacheSlots(cache, stack.slots) if cache is not None and stack.slots is not None else cache

        # Both parts' masks are built before any block runs: a block writes the cache, and masks built
        # after that would count the new tokens twice.
        parts = (stack.front, stack.back)
        masks = [self._masks(part.model, part.layer_types, inputs_embeds, attention_mask, cache, position_ids,
                             cache_position) for part in parts]
        all_hidden = [inputs_embeds] if output_hidden_states else None
        hidden = inputs_embeds
        for k, (part, part_masks) in enumerate(zip(parts, masks)):
            if k:  # between the parts (in a self-stitch both are one module: its position tells, not its identity)
                hidden = stack.stitch(hidden)
            hidden = self._run_blocks(part, hidden, part_masks, position_ids, block_cache, use_cache,
                                      cache_position, all_hidden, kwargs)
        hidden = getattr(stack.back.model, self.anatomy.norm)(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden  # transformers convention: the last entry is after the final norm

        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits, loss = self._logits_and_loss(hidden[:, slice_indices, :], labels, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{output_cache_field(CausalLMOutputWithPast): cache if use_cache else None},
        )


class StitchedModelForImageClassification(StitchedPreTrainedModel):
    """Front patch/position/prefix-token embeddings + front blocks + stitch + back blocks + back final
    layernorm + classifier on the CLS token."""

    main_input_name = "pixel_values"
    # The loss is a per-batch mean (no num_items_in_batch normalisation): tell the Trainer so it scales
    # gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: StitchedConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.classifier = nn.Linear(config.back_config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return getattr(self.front, self.anatomy.embed).patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        kwargs.pop("num_items_in_batch", None)
        kwargs.pop("output_attentions", None)
        self._sync_attn_implementation()
        stack = self.stitched_stack(kwargs)
        embeddings = getattr(stack.front.model, self.anatomy.embed)
        dtype = embeddings.patch_embeddings.projection.weight.dtype
        hidden = embeddings(pixel_values.to(dtype), interpolate_pos_encoding=bool(interpolate_pos_encoding))
        all_hidden = [hidden] if output_hidden_states else None
        for k, part in enumerate((stack.front, stack.back)):
            if k:
                hidden = stack.stitch(hidden)
            for block in part.blocks:
                out = block(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
                if all_hidden is not None:
                    all_hidden.append(hidden)
        hidden = getattr(stack.back.model, self.anatomy.norm)(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        logits = self.classifier(hidden[:, 0, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(loss=loss, logits=logits,
                                     hidden_states=tuple(all_hidden) if all_hidden is not None else None)
