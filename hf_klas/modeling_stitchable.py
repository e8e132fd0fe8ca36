"""Stitchable models: two anchors' blocks held once, one trained stitch per configuration, and the configuration
switched at run time -- SN-Net's "one network, every budget" as an ordinary transformers model.

``StitchableModelForCausalLM`` / ``StitchableModelForImageClassification`` *are* the stitched models of their active
configuration: the same forward (one shared block loop, :mod:`hf_klas.modeling_stitched`), KV-cache handling,
``generate()``, losses, saving, Auto classes and ``trust_remote_code``. On top:

* ``set_stitch(i, j)`` / ``set_budget(flops_or_fraction)`` switch in O(1): no weight is copied or loaded. The
  config's description of the stitched stack (``front_blocks`` / ``back_start`` / ``num_hidden_layers`` /
  ``layer_types``, what ``generate()`` sizes caches from) and every block's KV-cache slot follow the active
  configuration, and a cache filled by another configuration is refused. ``use_stitch(i, j)`` switches for a
  ``with`` block; ``from_pretrained(repo, stitch=(i, j))`` or ``budget_flops=...`` picks at load time.
* ``forward(..., stitch=(i, j))`` runs another configuration for one call, without a KV cache (scoring, training).
* Training mode with gradients: each forward draws a configuration (``config.sampling``; SN-Net / SN-Netv2), so the
  ordinary ``Trainer`` trains the supernet; the draw is a pure function of ``(sampling_seed, sample_step)``, and
  ``sample_step`` is a saved buffer, so a run resumed from a checkpoint or a saved model continues the sequence.
* ``extract(i, j)``: the plain ``StitchedModelFor...`` of one configuration, with identical logits.
* ``from_anchors(front, back, configs=[...])`` / ``plan=...`` builds one (with hf_klas installed; the copy of this
  file shipped with a checkpoint loads, runs and switches saved models, it has no anchor loader).

Self-stitching (front and back one checkpoint) holds the anchor's blocks once: ``model.front`` holds embeddings,
every block and the final norm, ``model.back`` is that same module; configuration ``(i, j)`` runs its blocks
``0..i-1``, the stitch, then blocks ``j..n-1``.

This module ships inside stitchable checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from transformers import initialization as init
from transformers.initialization import no_init_weights

from .anatomy import find_block_path, find_blocks, layer_types_of
from .configuration_stitchable import StitchableConfig, config_key
from .configuration_stitched import StitchedConfig
from .errors import HfKlasError, IncompatibleAnchorsError
from .families import CAUSAL_LM
from .flops import stitch_params

# transformers 5.0 copies only the *direct* relative imports of a local checkpoint's code files (trust_remote_code),
# so every module the saved code needs is imported by name here or in configuration_stitchable, not only reached
# through another one.
from .model_card import CARD_MARKER  # noqa: F401
from .modeling_stitched import (
    Part,
    StitchedModelForCausalLM,
    StitchedModelForImageClassification,
    StitchedStack,
    build_parts,
)


class StitchablePreTrainedModel:
    """Switching, sampling and extraction, mixed in front of a stitched task class (see the module docstring)."""

    config_class = StitchableConfig
    #: The stitched class one configuration is extracted as (set by each task class).
    stitched_class: type = None
    #: ``from_anchors``'s builder, installed by ``import hf_klas`` (it needs hf_klas's anchor loading and
    #: least-squares fitting, which do not ship with a checkpoint).
    anchor_builder = None

    # ---- construction -------------------------------------------------------------------------------------------
    def _build_parts(self, front_cfg, back_cfg) -> None:
        """Every block of both anchors (or of the one anchor, in a self-stitch), one stitch per configuration."""
        config = self.config
        self.front, back = build_parts(front_cfg, back_cfg, shared=config.self_stitch)
        if back is not None:
            self.back = back
        self._front_blocks_path = find_block_path(self.front)
        self._back_blocks_path = find_block_path(self.back)
        self._all_blocks = (tuple(find_blocks(self.front)), tuple(find_blocks(self.back)))
        self._all_types = (layer_types_of(front_cfg), layer_types_of(back_cfg))
        # the modules that write a KV-cache slot, per block: switching re-numbers them without walking the blocks
        self._cache_writers = tuple(tuple(tuple(m for m in block.modules() if hasattr(m, "layer_idx"))
                                          for block in blocks) for blocks in self._all_blocks)
        self.stitches = nn.ModuleDict({
            config_key(i, j): nn.Linear(config.front_config.hidden_size, config.back_config.hidden_size,
                                        bias=config.stitch_bias) for i, j in config.stitches})
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))
        self._sampling_paused = False
        self._index_layers()

    @classmethod
    def from_anchors(cls, front, back=None, configs=None, **kwargs):
        """A stitchable model of ``front -> back`` (``back=None``: self-stitching) over ``configs=[(i, j), ...]`` or
        ``plan=`` (a StitchPlan or ``hf-klas select`` directory: its candidates, scores and FLOPs buckets), every
        stitch fitted by least squares (``calibration=``; ``stitch_init="identity"`` skips the fit). Keywords:
        ``hf_klas.building.build_stitchable``'s."""
        builder = StitchablePreTrainedModel.anchor_builder
        if builder is None:
            raise HfKlasError("Building a stitchable model from anchors needs hf_klas (anchor loading, least squares); "
                              "this copy of the modeling code only loads, runs and switches saved models.",
                              "pip install hf-klas, import hf_klas, then call from_anchors again.")
        model = builder(front, back, configs, **kwargs)
        if not isinstance(model, cls):
            raise IncompatibleAnchorsError(f"These anchors build a {type(model).__name__}, not a {cls.__name__}.",
                                           f"Use {type(model).__name__}.from_anchors for them.")
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, stitch=None, budget_flops=None, **kwargs):
        """``PreTrainedModel.from_pretrained``, plus the configuration to activate: ``stitch=(i, j)`` or
        ``budget_flops=`` (FLOPs, or a fraction in (0, 1] of the back anchor's; see :meth:`set_budget`). Without
        either, the saved active configuration."""
        if stitch is not None and budget_flops is not None:
            raise HfKlasError("Both stitch= and budget_flops= were given; it is unclear which decides.",
                              "Pass stitch=(front_blocks, back_start) or budget_flops=..., not both.")
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if stitch is not None:
            model.set_stitch(stitch)
        elif budget_flops is not None:
            model.set_budget(budget_flops)
        return loaded

    def _init_weights(self, module):
        if any(module is stitch for stitch in self.stitches.values()):
            init.eye_(module.weight)  # identity on shared dims, as a stitched model's stitch starts
            if module.bias is not None:
                init.zeros_(module.bias)
        elif module is self:
            init.zeros_(self.sample_step)
        else:
            super()._init_weights(module)

    # ---- the active configuration -------------------------------------------------------------------------------
    @property
    def back(self) -> nn.Module:
        """The back part; in a self-stitch the front part itself (the anchor's blocks are held once)."""
        back = self._modules.get("back")
        return back if back is not None else self._modules.get("front")

    @property
    def active_stitch(self) -> tuple[int, int]:
        return self.config.active_stitch

    @property
    def front_blocks(self) -> nn.ModuleList:
        return nn.ModuleList(self._all_blocks[0][: self.config.front_blocks])

    @property
    def back_blocks(self) -> nn.ModuleList:
        return nn.ModuleList(self._all_blocks[1][self.config.back_start:])

    @property
    def front_layer_types(self) -> list[str]:
        return self._all_types[0][: self.config.front_blocks]

    @property
    def back_layer_types(self) -> list[str]:
        return self._all_types[1][self.config.back_start:]

    @property
    def stitch(self) -> nn.Module:
        """The active configuration's stitch layer."""
        return self.stitches[config_key(*self.config.active_stitch)]

    def set_stitch(self, front_blocks, back_start: int | None = None) -> tuple[int, int]:
        """Activate configuration ``(i, j)`` (``set_stitch(i, j)`` or ``set_stitch((i, j))``): what forward,
        ``generate()`` and pipelines run from now on. O(1) in the weights: nothing is copied or loaded. Returns
        ``(i, j)``; a configuration without a trained stitch, or of another anchor pair, raises with the table."""
        i, j = self.config.check_stitch(front_blocks, back_start)
        self.config.activate(i, j)
        self._index_layers()
        self.__dict__.pop("_cache", None)  # transformers 5.0's generate() keeps its static cache across calls
        return i, j

    def set_budget(self, budget_flops) -> tuple[int, int]:
        """Activate the best known configuration within ``budget_flops`` (FLOPs, or a fraction in (0, 1] of the back
        anchor's): by the measured ``config.selection_metric`` when the table has it, else by the selector's score
        (KLAS: highest FLOPs bucket, then lowest score), else the dearest that fits. Returns ``(i, j)``."""
        return self.set_stitch(self.config.budget_stitch(budget_flops))

    @contextlib.contextmanager
    def use_stitch(self, front_blocks, back_start: int | None = None):
        """Run ``(i, j)`` inside the ``with`` block (generate included; training does not sample), then switch back."""
        previous, paused = self.config.active_stitch, self._sampling_paused
        self.set_stitch(front_blocks, back_start)
        self._sampling_paused = True
        try:
            yield self
        finally:
            self._sampling_paused = paused
            self.set_stitch(previous)

    def _index_layers(self) -> None:
        """Each block of the active stack writes the KV-cache slot of its position in that stack."""
        i, j = self.config.active_stitch
        front, back = self._cache_writers
        for k in range(i):
            for module in front[k]:
                module.layer_idx = k
        for k in range(j, len(back)):
            for module in back[k]:
                module.layer_idx = i + k - j

    def record_metric(self, name: str, values: dict, higher_is_better: bool = True) -> None:
        """Measured ``values`` (``{(i, j): value}``) of metric ``name`` into the table; ``set_budget`` ranks by it."""
        self.config.record_metric(name, values, higher_is_better)

    def extra_repr(self) -> str:
        return (f"active_stitch={self.config.active_stitch}, stitches={self.config.stitches}, "
                f"sampling={self.config.sampling!r}")

    # ---- what one forward runs ----------------------------------------------------------------------------------
    def stitched_stack(self, kwargs: dict) -> StitchedStack:
        """``stitch=(i, j)`` from the forward's keywords; else a sampled configuration in training mode with
        gradients (``config.sampling``); else the active one."""
        requested = kwargs.pop("stitch", None)
        active = self.config.active_stitch
        if requested is not None:
            key = self.config.check_stitch(requested)
        elif (self.training and torch.is_grad_enabled() and self.config.sampling is not None
              and not self._sampling_paused):
            key = self.sample_stitch()
        else:
            key = active
        i, j = key
        (front, back), (front_types, back_types) = self._all_blocks, self._all_types
        return StitchedStack(Part(self.front, front[:i], front_types[:i]), self.stitches[config_key(i, j)],
                             Part(self.back, back[j:], back_types[j:]), key, key == active)

    def sample_stitch(self) -> tuple[int, int]:
        """The configuration of the next training forward (advances ``sample_step``)."""
        index = self.config.sample_index(int(self.sample_step))
        with torch.no_grad():
            self.sample_step += 1
        return self.config.stitches[index]

    # ---- one configuration as its own model ----------------------------------------------------------------------
    def _head_is_embedding(self) -> bool:
        """Whether an extracted model may tie head and input embedding: this model ties them, or it is an untied
        self-stitch of a tied anchor whose head still equals its embedding (not trained apart)."""
        if self.config.tie_word_embeddings or not self.config.ties_head():
            return bool(self.config.tie_word_embeddings)
        head, embed = self.lm_head.weight, self.get_input_embeddings().weight
        return head.shape == embed.shape and bool(torch.equal(head, embed))

    @torch.no_grad()
    def extract(self, front_blocks, back_start: int | None = None):
        """Configuration ``(i, j)`` as a standalone ``StitchedModelFor...`` (weights copied, not shared), whose
        logits equal this model's for that configuration."""
        i, j = self.config.check_stitch(front_blocks, back_start)
        cfg = self.config
        tie = self.config.task == CAUSAL_LM and self._head_is_embedding()
        recipe = copy.deepcopy(cfg.recipe)
        recipe["supernet"] = {"configs": len(cfg.stitch_configs), "sampling": cfg.sampling,
                              "sample_steps": int(self.sample_step)}
        info = dict(cfg.stitch_info_of(cfg.entry(i, j)))
        info["params"] = int(stitch_params(cfg.front_config, cfg.back_config, i, j, tied_head=tie).total)
        config = StitchedConfig(front_config=cfg.front_config, back_config=cfg.back_config, front_blocks=i,
                                back_start=j, anchors=copy.deepcopy(cfg.anchors), stitch_bias=cfg.stitch_bias,
                                dtype=self.dtype, tie_word_embeddings=tie, recipe=recipe, stitch_info=info)
        config._attn_implementation = cfg._attn_implementation
        with no_init_weights():
            model = self.stitched_class(config)
        model.to(self.dtype)
        source = self.state_dict()
        back_part = "front" if cfg.self_stitch else "back"
        back_blocks = f"back.{model._back_blocks_path}."
        state = {}
        for key in model.state_dict():
            if key.startswith("stitch."):
                state[key] = source[f"stitches.{config_key(i, j)}.{key[len('stitch.'):]}"]
            elif key.startswith(back_blocks):
                index, rest = key[len(back_blocks):].split(".", 1)
                state[key] = source[f"{back_part}.{self._back_blocks_path}.{int(index) + j}.{rest}"]
            elif key.startswith("back."):
                state[key] = source[f"{back_part}.{key[len('back.'):]}"]
            else:
                state[key] = source[key]
        model.load_state_dict(state, strict=True)
        front_name = (cfg.anchors.get("front") or {}).get("name_or_path", "front")
        back_name = (cfg.anchors.get("back") or {}).get("name_or_path", "back")
        model.config.name_or_path = f"stitched({front_name}[:{i}] -> {back_name}[{j}:])"
        model._hf_klas_preprocessor = getattr(self, "_hf_klas_preprocessor", None)
        if getattr(self, "generation_config", None) is not None and hasattr(model, "generation_config"):
            model.generation_config = copy.deepcopy(self.generation_config)
        return model.eval()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Standard save (every stitch, the anchors' blocks once, the sampler's step), config table and model card."""
        if int(self.sample_step):
            self.config.recipe["sample_steps"] = int(self.sample_step)
        return super().save_pretrained(save_directory, *args, **kwargs)


class StitchableModelForCausalLM(StitchablePreTrainedModel, StitchedModelForCausalLM):
    """A causal LM that runs any of its trained stitch configurations; see the module docstring."""

    stitched_class = StitchedModelForCausalLM


class StitchableModelForImageClassification(StitchablePreTrainedModel, StitchedModelForImageClassification):
    """An image classifier that runs any of its trained stitch configurations; see the module docstring."""

    stitched_class = StitchedModelForImageClassification
