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
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from .configuration_stitchable import StitchableConfig
from .configuration_stitched import StitchedConfig
from .errors import HfKlasError
from .families import CAUSAL_LM, family_of
from .identity import AnchorDescriptor, fingerprint_config, weights_digest
from .zoo import ALIASES, HUB_IDS, LOCAL, resolve_alias
from .zoo.gguf import dequantize_gguf

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def _read_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


class TensorReader:
    """Read individual tensors from a directory of safetensors shards, counting what was read.

    Tensors are read with plain ``readinto`` straight into their destination (the stitched model's own
    parameter when dtypes agree), so nothing of the checkpoint stays mapped and the only memory used is the
    stitched model's. The safetensors layout (8-byte header length, JSON header, raw little-endian data) is a
    stable public format.
    """

    def __init__(self, directory: str | Path, renames: tuple[tuple[str, str], ...] = ()):
        self.directory = Path(directory)
        # (module-name regex, checkpoint-name template): the family's checkpoint layout when it differs from the
        # installed modules' names (hf_klas.families), so such checkpoints are still read tensor by tensor
        self._renames = [(re.compile(pattern), template) for pattern, template in renames]
        index = self.directory / SAFE_INDEX
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.directory / SAFE_WEIGHTS).is_file():
            shards = [SAFE_WEIGHTS]
        else:
            raise HfKlasError(
                f"No safetensors weights in {self.directory} (looked for {SAFE_WEIGHTS} and {SAFE_INDEX}).",
                "Save the anchor with save_pretrained(..., safe_serialization=True), or pass the model object.",
            )
        self._entries: dict[str, tuple[Path, int, dict]] = {}
        for shard in shards:
            base, header = _read_header(self.directory / shard)
            for name, info in header.items():
                self._entries[name] = (self.directory / shard, base, info)
        self.names_read: list[str] = []
        self.bytes_read = 0

    def keys(self):
        return self._entries.keys()

    def stored_name(self, name: str) -> str | None:
        """The checkpoint's name for the module tensor ``name`` (itself, or a renamed layout), or None."""
        if name in self._entries:
            return name
        for pattern, template in self._renames:
            if pattern.match(name):
                renamed = pattern.sub(template, name)
                if renamed in self._entries:
                    return renamed
        return None

    def __contains__(self, name: str) -> bool:
        return self.stored_name(name) is not None

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor ``name``; read directly into ``out`` when it has the stored dtype and shape."""
        stored = self.stored_name(name)
        if stored is None:
            raise KeyError(name)
        path, base, info = self._entries[stored]
        dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
        start, end = info["data_offsets"]
        fits = (out is not None and out.dtype == dtype and tuple(out.shape) == shape and out.is_contiguous()
                and out.device.type == "cpu")
        dest = out if fits else torch.empty(shape, dtype=dtype)
        if end > start:
            view = dest.reshape(-1).view(torch.uint8).numpy()
            with open(path, "rb") as f:
                f.seek(base + start)
                if f.readinto(memoryview(view)) != end - start:
                    raise HfKlasError(f"{path.name} ended early while reading {name}.",
                                      "The checkpoint is truncated; download or save it again.")
        self.names_read.append(stored)  # the checkpoint's own name
        self.bytes_read += end - start
        return dest

    def close(self):
        pass


@dataclass
class Anchor:
    """One resolved anchor: its config, where its weights are, and what to record as provenance."""

    name_or_path: str
    config: PretrainedConfig
    directory: Path | None = None  # local checkpoint directory (safetensors)
    model: PreTrainedModel | None = None  # in-memory anchor
    revision: str | None = None
    extra: dict = field(default_factory=dict)
    hub_id: str | None = None  # the Hub model an offline alias stands for (model cards' base_model)

    @property
    def provenance(self) -> dict:
        out = {"name_or_path": self.name_or_path, "revision": self.revision}
        if self.hub_id:
            out["hub_id"] = self.hub_id
        return out

    def state_dict_source(self):
        """A mapping-like object with ``get(name)`` / ``__contains__`` for the anchor's tensors."""
        if self.model is not None:
            return _ModuleTensors(self.model)
        return TensorReader(self.directory, renames=family_of(self.config).checkpoint_names)

    def load_full(self, task_cls=None, **kwargs) -> PreTrainedModel:
        """The whole anchor as a transformers model (for probes and calibration)."""
        if self.model is not None:
            return self.model
        if task_cls is None:
            causal = family_of(self.config).task == CAUSAL_LM
            task_cls = AutoModelForCausalLM if causal else AutoModelForImageClassification
        return task_cls.from_pretrained(self.directory, **kwargs)

    def fingerprint(self) -> str:
        """Shape fingerprint of the config plus the name (:func:`hf_klas.identity.fingerprint_config`)."""
        return fingerprint_config(self.config, self.name_or_path)

    def cache_key(self) -> str:
        """A cache key for this anchor's identity without loading it when possible: an in-memory model hashes its
        weights (sampled digest), a checkpoint on disk its config numbers + path + weight files' size/mtime."""
        if self.model is not None:
            ident = {"shape": fingerprint_config(self.config, None), "weights": weights_digest(self.model)}
        else:
            files = []
            if self.directory is not None:
                for p in sorted(self.directory.glob("*.safetensors*")):
                    st = p.stat()
                    files.append([p.name, st.st_size, int(st.st_mtime)])
            ident = {"shape": fingerprint_config(self.config, None), "dir": str(self.directory), "files": files,
                     "revision": self.revision}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def descriptor(self) -> AnchorDescriptor:
        """What a plan stores about this anchor (to refuse the plan with a different model)."""
        cfg = self.config
        return AnchorDescriptor(name_or_path=str(self.name_or_path), revision=self.revision,
                                fingerprint=self.fingerprint(), num_blocks=int(cfg.num_hidden_layers),
                                hidden_size=int(cfg.hidden_size), model_type=str(cfg.model_type))

    def load_preprocessor(self):
        """Tokenizer (LLM) or image processor (ViT) saved with the anchor, or None."""
        if self.extra.get("preprocessor") is not None:
            return self.extra["preprocessor"]
        src = self.directory
        if src is None:
            src = getattr(self.model, "name_or_path", None)
            if not src or not Path(src).is_dir():
                return None
        try:
            if family_of(self.config).task == CAUSAL_LM:
                return AutoTokenizer.from_pretrained(src)
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

    def get(self, name, out=None):
        self.names_read.append(name)
        return self._sd[name]

    def close(self):
        pass


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
    if spec in LOCAL:  # offline alias: keep its name (portable, readable), read the local files
        anchor = resolve_anchor(resolve_alias(spec), revision=revision)
        anchor.name_or_path, anchor.hub_id = spec, HUB_IDS.get(spec)
        return anchor
    spec = ALIASES.get(spec, spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return resolve_anchor(dequantize_gguf(path), revision=revision)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HfKlasError(f"{path} is a directory without config.json.",
                              "Point at a directory written by save_pretrained, or at a .gguf file.")
        return Anchor(name_or_path=str(path), config=AutoConfig.from_pretrained(path), directory=path,
                      revision=revision)
    if _looks_like_path(spec):
        what = "file" if path.suffix == ".gguf" else "directory"
        raise HfKlasError(f"No such {what}: {path} (the anchor {spec!r} reads as a local path, not a Hub id).",
                          "Check the path (save_pretrained writes a directory with config.json), or pass a Hub id "
                          "'owner/name' or a zoo alias (hf_klas.zoo.ALIASES).")
    return _from_hub(spec, revision)


def _looks_like_path(spec: str) -> bool:
    """Whether a name that is no existing file or directory was meant as a local path: it starts like one
    (``/``, ``./``, ``../``, ``~``), has a file suffix we read (``.gguf``) or more than one ``/``, or cannot be a
    Hub repo id at all."""
    if spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in spec or spec.endswith(".gguf"):
        return True
    if spec.count("/") > 1:
        return True
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return True
    return False


def _from_hub(repo_id: str, revision: str | None) -> Anchor:
    """Download only configs, tokenizer files and safetensors through the standard Hub cache."""
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


def same_anchor(front: Anchor, back: Anchor | None) -> bool:
    """Whether two anchors are one model (self-stitching): the same object, in-memory model or directory."""
    if back is None or back is front:
        return True
    if front.model is not None and front.model is back.model:
        return True
    if front.model is None and back.model is None and front.directory is not None:
        return front.directory == back.directory and front.revision == back.revision
    return False


def load_stitched_model(name_or_path: str):
    """A stitched (or stitchable: a StitchableConfig is a StitchedConfig) model from a directory / Hub id, with the
    right task class."""
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except Exception as err:
        raise HfKlasError(f"Could not read a model config from {name_or_path!r} ({type(err).__name__}: {err}).",
                          "Pass a directory written by save_pretrained (with config.json) or a Hub id.") from err
    if not isinstance(config, StitchedConfig):
        raise HfKlasError(f"{name_or_path} is a {config.model_type!r} model, not a stitched model.",
                          "Build a stitch first (front/back/front_blocks/back_start, or StitchedModel.from_anchors).")
    auto = AutoModelForCausalLM if config.task == CAUSAL_LM else AutoModelForImageClassification
    return auto.from_pretrained(name_or_path)


def preprocessor_for(model, name_or_path: str | None = None):
    """The tokenizer / image processor saved with the model, else its anchors' (None when there is none)."""
    pre = getattr(model, "preprocessor", None)
    if pre is not None:
        return pre
    candidates = [name_or_path] if name_or_path else []
    anchors = getattr(model.config, "anchors", None) or {}
    candidates += [(anchors.get(k) or {}).get("name_or_path") for k in ("back", "front")]
    for cand in candidates:
        # in-memory anchors are recorded by class name: only paths, zoo aliases and Hub ids are worth a look
        if not cand or not (Path(cand).exists() or cand in ALIASES or cand in LOCAL or "/" in cand):
            continue
        try:
            if Path(cand).is_dir():
                loader = AutoTokenizer if model.config.task == CAUSAL_LM else AutoImageProcessor
                pre = loader.from_pretrained(cand)
            else:
                pre = resolve_anchor(cand).load_preprocessor()
        except Exception:  # noqa: BLE001 - no preprocessor there; try the next candidate
            pre = None
        if pre is not None:
            model.preprocessor = pre
            return pre
    return None


def load_any(name: str):
    """``(model, preprocessor, is_stitched)`` for a stitched or stitchable model (directory / Hub id) or any anchor
    spec (a stitchable model runs its active configuration)."""
    path = Path(name)
    if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()).get("model_type") in (
            StitchedConfig.model_type, StitchableConfig.model_type):
        model = load_stitched_model(name)
        return model.eval(), preprocessor_for(model, name), True
    anchor = resolve_anchor(name)
    if isinstance(anchor.config, StitchedConfig):
        model = load_stitched_model(name)
        return model.eval(), preprocessor_for(model, name), True
    return anchor.load_full().eval(), anchor.load_preprocessor(), False
