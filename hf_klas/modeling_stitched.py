"""Stitched models: the first blocks of one checkpoint, a learned stitch, the last blocks of another.

``StitchedModelForCausalLM`` and ``StitchedModelForImageClassification`` compose the *installed*
transformers modules of each anchor's family (base model class built from a truncated part config) and run
them in one loop. They are ordinary ``PreTrainedModel`` s: ``from_pretrained`` / ``save_pretrained`` /
``push_to_hub``, ``generate`` with dynamic and static caches, Trainer losses, PEFT and gradient checkpointing.

This module ships inside stitched checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

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
from .families import family_of
from .model_card import CARD_MARKER, render_model_card, write_model_card


def _build_part(part_config, drop: tuple[str, ...]) -> PreTrainedModel:
    """The family's own base model for a truncated config, minus the pieces this part never runs."""
    fam = family_of(part_config)
    model_cls = MODEL_MAPPING[type(part_config)]
    part = model_cls(part_config, **dict(fam.base_kwargs))
    for name in drop:
        setattr(part, name, None)
    return part


def _checkpointing(model) -> bool:
    # `is_gradient_checkpointing` became `is_activation_checkpointing` after 5.0 (the old name warns).
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing)


class StitchedPreTrainedModel(PreTrainedModel):
    """Shared plumbing: part construction, attention-implementation propagation, stitch init."""

    config_class = StitchedConfig
    base_model_prefix = "stitched"
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
        fam = self.anatomy
        self.front = _build_part(front_cfg, drop=(fam.norm,) + (("pooler",) if hasattr(front_cfg, "image_size") else ()))
        self.back = _build_part(back_cfg, drop=(fam.embed,))
        self._front_blocks_path = find_block_path(self.front)
        self._back_blocks_path = find_block_path(self.back)
        self.stitch = nn.Linear(config.front_config.hidden_size, config.back_config.hidden_size,
                                bias=config.stitch_bias)
        self._no_split_modules = sorted({type(b).__name__ for b in self.front_blocks} |
                                        {type(b).__name__ for b in self.back_blocks})
        # KV cache slots follow the block's position in the stitched stack, not its original index.
        for k, block in enumerate(self.back_blocks):
            set_layer_index(block, config.front_blocks + k)
        self.front_layer_types = layer_types_of(front_cfg)
        self.back_layer_types = layer_types_of(back_cfg)

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
            preprocessor = getattr(self, "_hf_klas_preprocessor", None)
            if preprocessor is not None:
                preprocessor.save_pretrained(save_directory)
            write_model_card(save_directory, self.config)
        return out

    def push_to_hub(self, *args, **kwargs):
        """The standard ``PushToHubMixin`` push, keeping our model card.

        transformers replaces README.md with the repo's remote card, or a generic template when there is none;
        we use the template's slot for our card (and replace our own older card), but a README a user wrote on
        the Hub is kept.
        """
        import transformers.utils.hub as hub_utils
        from huggingface_hub import ModelCard

        original = hub_utils.create_and_tag_model_card
        config = self.config

        def card_for(repo_id, tags=None, token=None, **kw):
            card = original(repo_id, tags, token=token, **kw)
            text = str(card.content)
            if CARD_MARKER in text or "has been automatically generated" in text:
                card = ModelCard(render_model_card(config))
            return card

        hub_utils.create_and_tag_model_card = card_for
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            hub_utils.create_and_tag_model_card = original

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

    def _run_blocks(self, part, blocks, layer_types, hidden, masks, position_ids, cache, use_cache,
                    cache_position, all_hidden, kwargs):
        fam = self.anatomy
        pe = rotary_embeddings(getattr(part, fam.rotary), family_of(part.config), hidden, position_ids, layer_types)
        extra = {"cache_position": cache_position} if layers_want_cache_position() else {}
        for block, layer_type in zip(blocks, layer_types):
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
        """Head on final-normed hidden states, the family's final logit soft-cap (Gemma) and the shifted LM loss;
        the SN-Net supernet calls this too, so a supernet configuration and its extracted model agree."""
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
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.training and _checkpointing(self):
            use_cache = False
        output_hidden_states = bool(output_hidden_states)

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        cache = one_cache(cache, past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_seen = cache.get_seq_length() if cache is not None else 0
        if cache_position is None:
            cache_position = torch.arange(past_seen, past_seen + inputs_embeds.shape[1], device=inputs_embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)

        # Both parts' masks are built before any block runs: a block writes the cache, and masks built
        # after that would count the new tokens twice.
        parts = ((self.front, self.front_blocks, self.front_layer_types),
                 (self.back, self.back_blocks, self.back_layer_types))
        masks = [self._masks(part, types, inputs_embeds, attention_mask, cache, position_ids, cache_position)
                 for part, _, types in parts]
        all_hidden = [inputs_embeds] if output_hidden_states else None
        hidden = inputs_embeds
        for (part, blocks, types), part_masks in zip(parts, masks):
            if part is self.back:
                hidden = self.stitch(hidden)
            hidden = self._run_blocks(part, blocks, types, hidden, part_masks, position_ids, cache, use_cache,
                                      cache_position, all_hidden, kwargs)
        hidden = getattr(self.back, self.anatomy.norm)(hidden)
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
        embeddings = getattr(self.front, self.anatomy.embed)
        dtype = embeddings.patch_embeddings.projection.weight.dtype
        hidden = embeddings(pixel_values.to(dtype), interpolate_pos_encoding=bool(interpolate_pos_encoding))
        all_hidden = [hidden] if output_hidden_states else None
        for is_back, part_blocks in ((False, self.front_blocks), (True, self.back_blocks)):
            if is_back:
                hidden = self.stitch(hidden)
            for block in part_blocks:
                out = block(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
                if all_hidden is not None:
                    all_hidden.append(hidden)
        hidden = getattr(self.back, self.anatomy.norm)(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        logits = self.classifier(hidden[:, 0, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(loss=loss, logits=logits,
                                     hidden_states=tuple(all_hidden) if all_hidden is not None else None)
