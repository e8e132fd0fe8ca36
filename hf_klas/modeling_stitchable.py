"""Stitchable models: two anchors' blocks held once, one trained stitch per configuration, and the configuration
switched at run time -- SN-Net's "one network, every budget" as an ordinary transformers model.

``StitchableModelForCausalLM`` / ``StitchableModelForImageClassification`` *are* the stitched models of their active
configuration: the same forward (one shared block loop, :mod:`hf_klas.modeling_stitched`), KV-cache handling,
``generate()``, losses, saving, Auto classes and ``trust_remote_code``. On top:

* ``set_stitch(i, j)`` / ``set_budget(flops_or_fraction)`` set the model-wide default in O(1): no weight is
  copied or loaded, and the config's description of the stitched stack (``front_blocks`` / ``back_start`` /
  ``num_hidden_layers`` / ``layer_types``) follows. ``from_pretrained(repo, stitch=(i, j))`` or
  ``budget_flops=...`` picks it at load time.
* Per call, without touching the default: ``generate(..., stitch=(i, j))`` / ``budget_flops=`` (so pipelines'
  generate keywords), ``model(..., stitch=...)`` / ``budget_flops=``, and ``with model.use_stitch(i, j):`` for
  the calls of one thread. Such a call, and every call without one, pins its configuration when it starts: in
  its thread, ``model.config`` is then a copy describing that configuration (what ``generate()`` sizes caches
  and masks from), so one object serves many budgets from many threads, each with a KV cache, and a
  ``set_stitch`` elsewhere never changes a call in flight. Blocks keep one fixed ``layer_idx`` each; the
  forward gives them a view of the cache that puts each block at its slot in the running stack
  (:class:`~hf_klas.modeling_stitched.CacheSlots`), and a cache another configuration filled is refused.
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
import importlib
import threading

import torch
from torch import nn
from transformers import initialization as init
from transformers.initialization import no_init_weights

from .anatomy import find_block_path, find_blocks, layer_types_of, set_layer_index
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

#: Per thread, the configuration each model's calls run there (``id(model) -> config``): set for the duration of
#: a ``generate()`` or a ``use_stitch`` block, never shared between threads (a forward's own ``stitch=`` travels
#: in its ``StitchedStack``).
_PINNED = threading.local()
#: Held while the model-wide default configuration is written or read, so a call never pins half a switch.
_SWITCH = threading.Lock()


def _pins() -> dict:
    pins = getattr(_PINNED, "configs", None)
    if pins is None:
        pins = _PINNED.configs = {}
    return pins


class StitchablePreTrainedModel:
    """Switching, sampling and extraction, mixed in front of a stitched task class (see the module docstring)."""

    config_class = StitchableConfig
    #: The stitched class one configuration is extracted as (set by each task class).
    stitched_class: type = None

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
        # One fixed KV-cache index per block, whatever configuration runs (the forward maps it to the block's slot
        # in the running stack): a front block its index, a back block of another anchor that plus the front's depth.
        self._back_offset = 0 if config.self_stitch else len(self._all_blocks[0])
        if not config.self_stitch:
            for k, block in enumerate(self._all_blocks[1]):
                set_layer_index(block, self._back_offset + k)
        self.stitches = nn.ModuleDict({
            config_key(i, j): nn.Linear(config.front_config.hidden_size, config.back_config.hidden_size,
                                        bias=config.stitch_bias) for i, j in config.stitches})
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_anchors(cls, front, back=None, configs=None, **kwargs):
        """A stitchable model of ``front -> back`` (``back=None``: self-stitching) over ``configs=[(i, j), ...]`` or
        ``plan=`` (a StitchPlan or ``hf-klas select`` directory: its candidates, scores and FLOPs buckets), every
        stitch fitted by least squares (``calibration=``; ``stitch_init="identity"`` skips the fit). Keywords:
        ``hf_klas.building.build_stitchable``'s."""
        # Anchor loading and least squares do not ship with a checkpoint, so this file (also the Hub copy, which
        # imports only its siblings) looks the installed builder up by name when called, never at import time.
        try:
            building = importlib.import_module("hf_klas.building")
        except ImportError as e:
            raise HfKlasError("Building a stitchable model from anchors needs hf_klas (anchor loading, least squares); "
                              "this copy of the modeling code only loads, runs and switches saved models.",
                              "pip install hf-klas, then call from_anchors again.") from e
        model = building.build_stitchable(front, back, configs, **kwargs)
        if type(model).__name__ != cls.__name__:  # by name: the Hub copy's class is another object, same code
            raise IncompatibleAnchorsError(f"These anchors build a {type(model).__name__}, not a {cls.__name__}.",
                                           f"Use {type(model).__name__}.from_anchors for them.")
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, stitch=None, budget_flops=None, **kwargs):
        """``PreTrainedModel.from_pretrained``, plus the configuration to activate: ``stitch=(i, j)`` or
        ``budget_flops=`` (FLOPs, or a fraction in (0, 1] of the back anchor's; see :meth:`set_budget`). Without
        either, the saved active configuration."""
        _one_of(stitch, budget_flops)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        key = model.requested_stitch(stitch, budget_flops)
        if key is not None:
            model.set_stitch(key)
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
    def config(self) -> StitchableConfig:
        """The config this thread's calls run: inside a pinned call (``generate()``, ``use_stitch``) a copy
        describing its configuration, else :attr:`default_config`."""
        pinned = self._pinned()
        return pinned if pinned is not None else self.default_config

    @config.setter
    def config(self, value) -> None:
        self.__dict__["_default_config"] = value

    @property
    def default_config(self) -> StitchableConfig:
        """The model's own config: the table and the model-wide default configuration (what ``set_stitch``
        changes, what is saved)."""
        try:
            return self.__dict__["_default_config"]
        except KeyError:
            raise AttributeError("config") from None

    def _pinned(self):
        return _pins().get(id(self))

    @contextlib.contextmanager
    def _pin(self, key: tuple[int, int] | None):
        """Run this thread's calls with configuration ``key`` (None: the one they run now) until the block ends."""
        config = self._described(key)
        pins = _pins()
        previous = pins.get(id(self))
        pins[id(self)] = config
        try:
            yield config
        finally:
            if previous is None:
                pins.pop(id(self), None)
            else:
                pins[id(self)] = previous

    def _described(self, key: tuple[int, int] | None) -> StitchableConfig:
        """A config copy describing ``key`` (None: this thread's current configuration, read under the switch
        lock so a concurrent ``set_stitch`` is seen whole or not at all)."""
        pinned = self._pinned()
        if pinned is not None:
            return pinned if key is None or key == pinned.active_stitch else pinned.for_stitch(*key)
        with _SWITCH:
            base = self.default_config
            return base.for_stitch(*(key if key is not None else base.active_stitch))

    def requested_stitch(self, stitch=None, budget_flops=None) -> tuple[int, int] | None:
        """The configuration a call asks for: ``stitch=(i, j)`` (checked against the table), ``budget_flops=``
        (:meth:`set_budget`'s rule), or None when it asks for neither."""
        _one_of(stitch, budget_flops)
        if stitch is not None:
            return self.config.check_stitch(stitch)
        if budget_flops is not None:
            return self.config.budget_stitch(budget_flops)
        return None

    @property
    def back(self) -> nn.Module:
        """The back part; in a self-stitch the front part itself (the anchor's blocks are held once)."""
        back = self._modules.get("back")
        return back if back is not None else self._modules.get("front")

    @property
    def active_stitch(self) -> tuple[int, int]:
        """The configuration this thread's calls run (the model-wide default outside a pinned call)."""
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
        """Make ``(i, j)`` the model-wide default (``set_stitch(i, j)`` or ``set_stitch((i, j))``): what calls that
        ask for no configuration run from now on; calls in flight keep theirs. O(1) in the weights: nothing is
        copied or loaded. Returns ``(i, j)``; a configuration without a trained stitch, or of another anchor pair,
        raises with the table."""
        config = self.default_config
        i, j = config.check_stitch(front_blocks, back_start)
        with _SWITCH:
            config.activate(i, j)
        return i, j

    def set_budget(self, budget_flops) -> tuple[int, int]:
        """Make the best known configuration within ``budget_flops`` (FLOPs, or a fraction in (0, 1] of the back
        anchor's) the default: by the measured ``config.selection_metric`` when the table has it, else by the
        selector's score (KLAS: highest FLOPs bucket, then lowest score), else the dearest that fits. Returns
        ``(i, j)``. Per call: ``generate(..., budget_flops=...)``, same rule."""
        return self.set_stitch(self.default_config.budget_stitch(budget_flops))

    @contextlib.contextmanager
    def use_stitch(self, front_blocks, back_start: int | None = None):
        """Run ``(i, j)`` in this thread's calls inside the ``with`` block (generate included; training does not
        sample); other threads and the model-wide default are untouched."""
        with self._pin(self.config.check_stitch(front_blocks, back_start)):
            yield self

    @property
    def _cache(self):
        # transformers 5.0's generate() keeps its static cache on the model across calls (``self._cache``): keep
        # one per thread and configuration, so concurrent or switched calls never share or reuse another's.
        try:
            return self.__dict__["_static_caches"][self._static_cache_key()]
        except KeyError:
            raise AttributeError("_cache") from None

    @_cache.setter
    def _cache(self, value) -> None:
        self.__dict__.setdefault("_static_caches", {})[self._static_cache_key()] = value

    @_cache.deleter
    def _cache(self) -> None:
        self.__dict__.get("_static_caches", {}).pop(self._static_cache_key(), None)

    def _static_cache_key(self) -> tuple:
        return threading.get_ident(), self.config.active_stitch

    def record_metric(self, name: str, values: dict, higher_is_better: bool = True) -> None:
        """Measured ``values`` (``{(i, j): value}``) of metric ``name`` into the table; ``set_budget`` ranks by it."""
        self.config.record_metric(name, values, higher_is_better)

    def extra_repr(self) -> str:
        return (f"active_stitch={self.config.active_stitch}, stitches={self.config.stitches}, "
                f"sampling={self.config.sampling!r}")

    # ---- what one forward runs ----------------------------------------------------------------------------------
    def stitched_stack(self, kwargs: dict) -> StitchedStack:
        """``stitch=(i, j)`` / ``budget_flops=`` from the forward's keywords; else the pinned configuration of this
        thread's call; else a sampled one in training mode with gradients (``config.sampling``); else the default
        (read once: a concurrent switch changes the next call)."""
        requested = self.requested_stitch(kwargs.pop("stitch", None), kwargs.pop("budget_flops", None))
        pinned = self._pinned()
        if requested is not None:
            config = self._described(requested)
        elif pinned is not None:
            config = pinned
        elif self.training and torch.is_grad_enabled() and self.default_config.sampling is not None:
            config = self._described(self.sample_stitch())
        else:
            config = self._described(None)
        i, j = key = config.active_stitch
        (front, back), (front_types, back_types) = self._all_blocks, self._all_types
        offset = self._back_offset
        slots = {k: k for k in range(i)} | {offset + k: i + k - j for k in range(j, len(back))}
        return StitchedStack(Part(self.front, front[:i], front_types[:i]), self.stitches[config_key(i, j)],
                             Part(self.back, back[j:], back_types[j:]), key, config, slots)

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
        model.preprocessor = getattr(self, "preprocessor", None)
        if getattr(self, "generation_config", None) is not None and hasattr(model, "generation_config"):
            model.generation_config = copy.deepcopy(self.generation_config)
        return model.eval()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Standard save (every stitch, the anchors' blocks once, the sampler's step), config table and model card."""
        if int(self.sample_step):
            self.config.recipe["sample_steps"] = int(self.sample_step)
        return super().save_pretrained(save_directory, *args, **kwargs)


def _one_of(stitch, budget_flops) -> None:
    if stitch is not None and budget_flops is not None:
        raise HfKlasError("Both stitch= and budget_flops= were given; it is unclear which decides.",
                          "Pass stitch=(front_blocks, back_start) or budget_flops=..., not both.")


class StitchableModelForCausalLM(StitchablePreTrainedModel, StitchedModelForCausalLM):
    """A causal LM that runs any of its trained stitch configurations; see the module docstring."""

    stitched_class = StitchedModelForCausalLM

    def generate(self, *args, stitch=None, budget_flops=None, **kwargs):
        """``GenerationMixin.generate``, with configuration ``stitch=(i, j)`` or ``budget_flops=`` for this call
        (default: the current one), pinned from the first token to the last: the cache is built and checked for
        it, and a ``set_stitch`` meanwhile changes later calls only."""
        with self._pin(self.requested_stitch(stitch, budget_flops)):
            return super().generate(*args, **kwargs)


class StitchableModelForImageClassification(StitchablePreTrainedModel, StitchedModelForImageClassification):
    """An image classifier that runs any of its trained stitch configurations; see the module docstring."""

    stitched_class = StitchedModelForImageClassification
