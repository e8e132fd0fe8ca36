"""Resolve an anchor (alias, Hub id, local directory, GGUF file, in-memory model) and read its tensors lazily.

Building a stitched model needs only some tensors of each anchor (front: embeddings + first ``i`` blocks;
back: last blocks + norm + head). :class:`TensorReader` opens safetensors shards with ``safe_open`` and reads
single tensors by name, so peak memory is about the stitched model, not both anchors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from .errors import HfKlasError

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def cache_dir() -> Path:
    """Where hf_klas keeps derived files (dequantised GGUF checkpoints). ``HF_KLAS_CACHE`` overrides."""
    return Path(os.environ.get("HF_KLAS_CACHE", Path.home() / ".cache" / "hf_klas"))


class TensorReader:
    """Read individual tensors from a directory of safetensors shards, counting what was read."""

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        index = self.directory / SAFE_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.directory / SAFE_WEIGHTS).is_file():
            with safe_open(self.directory / SAFE_WEIGHTS, framework="pt") as f:
                weight_map = {k: SAFE_WEIGHTS for k in f.keys()}
        else:
            raise HfKlasError(
                f"No safetensors weights in {self.directory} (looked for {SAFE_WEIGHTS} and {SAFE_INDEX}).",
                "Save the anchor with save_pretrained(..., safe_serialization=True), or pass the model object.",
            )
        self.weight_map: dict[str, str] = weight_map
        self._handles: dict[str, object] = {}
        self._safe_open = safe_open
        self.names_read: list[str] = []
        self.bytes_read = 0

    def keys(self):
        return self.weight_map.keys()

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        shard = self.weight_map[name]
        if shard not in self._handles:
            self._handles[shard] = self._safe_open(self.directory / shard, framework="pt")
        tensor = self._handles[shard].get_tensor(name)
        self.names_read.append(name)
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor

    def close(self):
        self._handles.clear()


@dataclass
class Anchor:
    """One resolved anchor: its config, where its weights are, and what to record as provenance."""

    name_or_path: str
    config: PretrainedConfig
    directory: Path | None = None  # local checkpoint directory (safetensors)
    model: PreTrainedModel | None = None  # in-memory anchor
    revision: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def provenance(self) -> dict:
        return {"name_or_path": self.name_or_path, "revision": self.revision}

    def state_dict_source(self):
        """A mapping-like object with ``get(name)`` / ``__contains__`` for the anchor's tensors."""
        if self.model is not None:
            return _ModuleTensors(self.model)
        return TensorReader(self.directory)

    def load_full(self, task_cls=None, **kwargs) -> PreTrainedModel:
        """The whole anchor as a transformers model (for probes and calibration)."""
        if self.model is not None:
            return self.model
        from transformers import AutoModelForCausalLM, AutoModelForImageClassification

        from .anatomy import CAUSAL_LM, anatomy_for

        if task_cls is None:
            task_cls = AutoModelForCausalLM if anatomy_for(self.config).task == CAUSAL_LM else AutoModelForImageClassification
        return task_cls.from_pretrained(self.directory, **kwargs)

    def fingerprint(self) -> str:
        return fingerprint_config(self.config, self.name_or_path)

    def load_preprocessor(self):
        """Tokenizer (LLM) or image processor (ViT) saved with the anchor, or None."""
        from .anatomy import CAUSAL_LM, anatomy_for

        if self.extra.get("preprocessor") is not None:
            return self.extra["preprocessor"]
        src = self.directory
        if src is None:
            src = getattr(self.model, "name_or_path", None)
            if not src or not Path(src).is_dir():
                return None
        try:
            if anatomy_for(self.config).task == CAUSAL_LM:
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(src)
            from transformers import AutoImageProcessor

            return AutoImageProcessor.from_pretrained(src)
        except (OSError, ValueError):
            return None


class _ModuleTensors:
    def __init__(self, model: torch.nn.Module):
        self._sd = model.state_dict()
        self.names_read: list[str] = []

    def __contains__(self, name):
        return name in self._sd

    def keys(self):
        return self._sd.keys()

    def get(self, name):
        self.names_read.append(name)
        return self._sd[name]

    def close(self):
        pass


def fingerprint_config(config: PretrainedConfig, name: str | None = None) -> str:
    """A short stable hash of what defines an anchor's shapes and identity (probes are tied to it)."""
    d = config.to_dict()
    keep = {k: d.get(k) for k in sorted(d) if k in {
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "vocab_size", "head_dim", "image_size", "patch_size", "num_labels"}}
    keep["name"] = str(name) if name is not None else None
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_anchor(spec, revision: str | None = None) -> Anchor:
    """Turn whatever the user passed into an :class:`Anchor`.

    Accepted: an in-memory ``PreTrainedModel``; a zoo alias (``"smollm2-135m"``, ``"llama-1b"``, ...); a local
    directory with ``config.json``; a ``.gguf`` file; a Hub id (downloaded through the normal Hub cache).
    """
    if isinstance(spec, Anchor):
        return spec
    if isinstance(spec, PreTrainedModel):
        name = getattr(spec, "name_or_path", None) or type(spec).__name__
        return Anchor(name_or_path=str(name), config=spec.config, model=spec, revision=revision)
    if not isinstance(spec, (str, os.PathLike)):
        raise HfKlasError(
            f"An anchor must be a name, a path or a PreTrainedModel, got {type(spec).__name__}.",
            "Pass e.g. 'llama-1b', 'meta-llama/Llama-3.2-1B', './my_checkpoint' or a loaded model.",
        )
    spec = str(spec)
    from .zoo import resolve_alias

    local = resolve_alias(spec)
    if local is not None:
        if isinstance(local, Anchor):
            return local
        spec = local
    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        from .zoo.gguf import dequantize_gguf

        return resolve_anchor(dequantize_gguf(path), revision=revision)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HfKlasError(f"{path} is a directory without config.json.",
                              "Point at a directory written by save_pretrained, or at a .gguf file.")
        return Anchor(name_or_path=str(path), config=AutoConfig.from_pretrained(path), directory=path,
                      revision=revision)
    return _from_hub(spec, revision)


def _from_hub(repo_id: str, revision: str | None) -> Anchor:
    """Download only configs, tokenizer files and safetensors through the standard Hub cache."""
    from huggingface_hub import snapshot_download

    try:
        directory = snapshot_download(
            repo_id, revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"],
        )
    except Exception as err:  # offline, gated, missing: all end here with the same advice
        raise HfKlasError(
            f"Could not fetch anchor {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}).",
            "Check the name (aliases: hf_klas.zoo.ALIASES), log in for gated repos (`hf auth login`), or pass "
            "a local directory / .gguf file / loaded model when offline.",
        ) from err
    return Anchor(name_or_path=repo_id, config=AutoConfig.from_pretrained(directory), directory=Path(directory),
                  revision=revision)
