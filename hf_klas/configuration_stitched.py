"""StitchedConfig: two anchor configs, the stitch point, and a description of the stitched stack.

The part configs are stored whole (provenance, FLOPs, rebuilding the parts); the top level also carries the
*stitched* stack's ``num_hidden_layers`` / ``layer_types`` because transformers sizes the KV cache and picks
masks from the top-level (decoder) config. The parts are deliberately called ``front_config`` /
``back_config``: ``get_text_config(decoder=True)`` would pick a sub-config named ``text_config``/``decoder``.

This module ships inside stitched checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

import copy

from transformers import AutoConfig, PretrainedConfig

from .anatomy import check_compatible, layer_types_of, ties_embeddings
from .errors import IncompatibleAnchorsError, StitchPointError, VersionError
from .families import CAUSAL_LM, family_of
from .version import __version__


def as_config(value):
    """A transformers config from a config or its ``to_dict()`` (which names its ``model_type``)."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", None)
        if model_type is None:
            raise StitchPointError("A part config has no 'model_type'.", "Pass a transformers config or its to_dict().")
        return AutoConfig.for_model(model_type, **value)
    raise StitchPointError(f"A part config must be a transformers config or a dict, got {type(value).__name__}.",
                           "Pass e.g. AutoConfig.from_pretrained(anchor).")


def _version_tuple(v: str) -> tuple[int, int]:
    parts = (str(v).split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)


def validate_stitch_point(front_config, back_config, front_blocks: int, back_start: int) -> None:
    """Raise :class:`StitchPointError` unless ``1 <= front_blocks <= m`` and ``0 <= back_start < n``."""
    m, n = front_config.num_hidden_layers, back_config.num_hidden_layers
    if not isinstance(front_blocks, int) or not 1 <= front_blocks <= m:
        raise StitchPointError(
            f"front_blocks={front_blocks!r} is out of range: the front anchor has {m} blocks.",
            f"Choose 1 <= front_blocks <= {m} (the number of front blocks to run).",
        )
    if not isinstance(back_start, int) or back_start < 0:
        raise StitchPointError(
            f"back_start={back_start!r} is out of range.",
            f"Choose 0 <= back_start <= {n - 1} (the first back block to run, 0-based).",
        )
    if back_start >= n:
        raise StitchPointError(
            f"back_start={back_start} would run zero blocks of the back anchor (it has {n}); the stitch layer "
            "would feed the back model's final norm directly.",
            f"Choose back_start <= {n - 1} so at least one back block runs.",
        )


class StitchedConfig(PretrainedConfig):
    """Configuration of a stitched model ``g_{>j} . T . f_{<=i}``.

    Args:
        front_config / back_config: the anchors' configs (objects or dicts with ``model_type``).
        front_blocks: ``i``, number of front blocks to run (1-based count).
        back_start: ``j``, 0-based index of the first back block to run.
        stitch_bias: whether the stitch Linear has a bias.
        anchors: provenance, ``{"front": {"name_or_path": ..., "revision": ...}, "back": {...}}``.
        hf_klas_version: version that wrote the config (a newer one is refused).
    """

    model_type = "hf_klas_stitched"

    def __init__(
        self,
        front_config=None,
        back_config=None,
        front_blocks: int | None = None,
        back_start: int | None = None,
        stitch_bias: bool = True,
        anchors: dict | None = None,
        hf_klas_version: str | None = None,
        use_cache: bool = True,
        recipe: dict | None = None,
        stitch_info: dict | None = None,
        **kwargs,
    ):
        if hf_klas_version is not None and _version_tuple(hf_klas_version) > _version_tuple(__version__):
            raise VersionError(
                f"This stitched config was written by hf_klas {hf_klas_version}, newer than the installed "
                f"{__version__}; it may use fields this version would misread.",
                f"Upgrade hf_klas (pip install -U 'hf-klas>={hf_klas_version}').",
            )
        self.front_config = as_config(front_config)
        self.back_config = as_config(back_config)
        self.front_blocks = front_blocks
        self.back_start = back_start
        self.stitch_bias = stitch_bias
        self.anchors = anchors or {}
        self.use_cache = use_cache
        self.recipe = recipe or {}  # how this stitch was chosen and initialised (embedded in the model card)
        self.stitch_info = stitch_info or {}  # FLOPs / params of this configuration
        self.hf_klas_version = __version__
        # The back head is its own tensor, except in a self-stitch of an anchor that ties its head to its input
        # embeddings: front embedding and back head are then one matrix, and the builder asks to keep it tied.
        kwargs["tie_word_embeddings"] = bool(kwargs.get("tie_word_embeddings", False))
        if self.front_config is not None and self.back_config is not None:
            fam = check_compatible(self.front_config, self.back_config)
            validate_stitch_point(self.front_config, self.back_config, front_blocks, back_start)
            self.task = fam.task
            if kwargs["tie_word_embeddings"] and not ties_embeddings(self.back_config):
                raise IncompatibleAnchorsError(
                    "tie_word_embeddings=True needs a causal LM whose anchor ties its head to its input embeddings.",
                    "Leave tie_word_embeddings unset; StitchedModel.from_anchors sets it for self-stitches.")
            self._describe_stitched_stack(kwargs)
        else:
            self.task = None
        super().__init__(**kwargs)

    def _describe_stitched_stack(self, kwargs: dict) -> None:
        """Top-level attributes transformers reads to build caches, masks and heads."""
        f, b = self.front_config, self.back_config
        i, j = self.front_blocks, self.back_start
        self.num_hidden_layers = i + b.num_hidden_layers - j
        self.layer_types = layer_types_of(f)[:i] + layer_types_of(b)[j:]
        self.hidden_size = b.hidden_size
        self.num_attention_heads = b.num_attention_heads
        if self.task == CAUSAL_LM:
            self.vocab_size = b.vocab_size
            self.num_key_value_heads = getattr(b, "num_key_value_heads", None) or b.num_attention_heads
            self.head_dim = getattr(b, "head_dim", None) or b.hidden_size // b.num_attention_heads
            self.sliding_window = getattr(b, "sliding_window", None) or getattr(f, "sliding_window", None)
            self.max_position_embeddings = min(f.max_position_embeddings, b.max_position_embeddings)
            self.final_logit_softcapping = getattr(b, "final_logit_softcapping", None)
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                kwargs.setdefault(key, getattr(b, key, None))
        else:
            if kwargs.get("id2label") is None and getattr(b, "id2label", None):
                kwargs["id2label"] = dict(b.id2label)
                kwargs["label2id"] = dict(getattr(b, "label2id", None) or {v: k for k, v in b.id2label.items()})
            self.image_size, self.patch_size, self.num_channels = b.image_size, b.patch_size, b.num_channels

    def part_config(self, which: str):
        """A copy of the front/back config truncated to the blocks this stitch runs (layer types sliced too).

        Layers are built with local indices in a sliced config: families whose per-layer settings come
        from ``layer_types[idx]`` then get the setting of the original layer.
        """
        src = self.front_config if which == "front" else self.back_config
        cfg = copy.deepcopy(src)
        types = layer_types_of(src)
        if which == "front":
            keep = slice(0, self.front_blocks)
        else:
            keep = slice(self.back_start, src.num_hidden_layers)
        cfg.num_hidden_layers = len(range(src.num_hidden_layers)[keep])
        if getattr(src, "layer_types", None) is not None:
            cfg.layer_types = types[keep]
        cfg.tie_word_embeddings = False
        return cfg

    @property
    def anatomy(self):
        return family_of(self.back_config)

    def to_dict(self):
        out = super().to_dict()
        for key in ("front_config", "back_config"):
            value = getattr(self, key, None)
            out[key] = value.to_dict() if isinstance(value, PretrainedConfig) else value
        return out

    def to_diff_dict(self):
        out = super().to_diff_dict()
        for key in ("front_config", "back_config", "front_blocks", "back_start", "anchors", "hf_klas_version",
                    "recipe", "stitch_info"):
            out[key] = self.to_dict()[key]
        return out
