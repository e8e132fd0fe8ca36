"""The probe interface: a distribution over the anchor's outputs after every block.

A probe turns the captured block outputs of one anchor (``hf_klas.activations.run_prefix``:
``outputs[0]`` = embedding output, ``outputs[k]`` = output of block ``k-1``) into float32 log-probabilities
``[num_points, tokens, classes]`` with ``num_points = num_hidden_layers + 1`` -- one distribution per
*point* of the residual stream, the embedding output included (it is the "resume point" ``j = 0`` of a back
anchor).

Tokens: for a causal LM every non-padding token position is one sample (``attention_mask`` drops padding);
for a ViT/DeiT one image is one sample, pooled by ``config.pooling`` (``"cls"``: token 0, what the classifier
reads; ``"mean"``: the mean over all tokens). Features that are already 2-D (``[tokens, hidden]``) are taken
as they are, which is how :mod:`hf_klas.selection.engine` feeds chunks of tokens.

Every probe folder has the same shape (PEFT style)::

    probe_config.json      probe type, its config, the anchor it belongs to, hf_klas version
    probe.safetensors      trained parameters (absent for the logit lens, which has none)

and :meth:`Probe.load` refuses an anchor other than the one the probe was built for
(:class:`~hf_klas.errors.ProbeMismatchError`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..anatomy import final_logit_softcap, get_final_norm, get_head
from ..errors import HfKlasError, ProbeMismatchError, VersionError
from ..families import CAUSAL_LM, family_of
from ..identity import model_identity
from ..loading import resolve_anchor
from ..version import __version__

PROBE_CONFIG_NAME = "probe_config.json"
#: probe type -> class, filled as the probe modules define their classes (hf_klas.probes imports them all)
PROBES: dict[str, type] = {}
PROBE_WEIGHTS_NAME = "probe.safetensors"
FORMAT_VERSION = 1
POOLINGS = ("cls", "mean")


@dataclass
class ProbeConfig:
    """Options shared by every probe."""

    pooling: str = field(default="cls", metadata={
        "help": "Vision anchors only: how one image becomes one feature vector per block -- 'cls' (token 0, "
                "what the ViT/DeiT classifier reads) or 'mean' (mean over all tokens). Causal LMs always use "
                "every non-padding token."})

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise HfKlasError(f"Unknown probe pooling {self.pooling!r}.", f"Use one of {POOLINGS}.")


# --------------------------------------------------------------------------------------------------------
# Anchor identity (probes and cached plans are tied to it)
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _config_from_dict(config_class, data: dict):
    known = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------------


class Probe(nn.Module):
    """Base class. Subclasses set ``probe_type`` / ``config_class`` and implement :meth:`logits`.

    The anchor model is held by reference and never registered as a submodule: ``state_dict()`` holds only
    the probe's own parameters, which is what :meth:`save` writes.
    """

    probe_type: ClassVar[str] = "base"
    config_class: ClassVar[type] = ProbeConfig
    trainable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        PROBES[cls.probe_type] = cls  # every probe module registers itself by defining its class

    def __init__(self, model: nn.Module, config: ProbeConfig | None = None):
        super().__init__()
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise HfKlasError(f"{type(self).__name__} takes a {self.config_class.__name__}, got "
                              f"{type(config).__name__}.", f"Pass {self.config_class.__name__}(...).")
        config.validate()
        self.config = config
        fam = family_of(model.config)
        object.__setattr__(self, "anchor_model", model)  # not a submodule: never saved, never trained
        self.task = fam.task
        self.is_lm = fam.task == CAUSAL_LM
        self.num_points = int(model.config.num_hidden_layers) + 1
        self.hidden_size = int(model.config.hidden_size)
        self.num_classes = int(model.config.vocab_size if self.is_lm else model.config.num_labels)
        self.softcap = final_logit_softcap(model.config)
        object.__setattr__(self, "norm", get_final_norm(model))
        object.__setattr__(self, "head", get_head(model))
        self._identity: dict | None = None

    # ---- identity -----------------------------------------------------------------------------------
    @property
    def anchor_identity(self) -> dict:
        if self._identity is None:
            self._identity = model_identity(self.anchor_model)
        return self._identity

    @property
    def fingerprint(self) -> str:
        """Hash of probe type, config, anchor identity and (for trained probes) the trained parameters."""
        h = hashlib.sha256(json.dumps({"type": self.probe_type, "config": asdict(self.config),
                                       "anchor": self.anchor_identity}, sort_keys=True, default=str).encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    # ---- features and distributions -----------------------------------------------------------------
    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One block output ``[batch, seq, hidden]`` -> samples ``[tokens, hidden]`` (see module docstring).
        2-D input is returned unchanged."""
        if hidden.dim() == 2:
            return hidden
        if self.is_lm:
            if attention_mask is not None:
                return hidden[attention_mask.bool()]
            return hidden.reshape(-1, hidden.shape[-1])
        if self.config.pooling == "mean":
            return hidden.mean(dim=1)
        return hidden[:, 0]

    def logits(self, feats: torch.Tensor, points: Sequence[int]) -> torch.Tensor:
        """``feats[p]`` are samples of point ``points[p]``: ``[P, N, hidden]`` -> logits ``[P, N, classes]``."""
        raise NotImplementedError

    def _norm_head(self, h: torch.Tensor) -> torch.Tensor:
        """The anchor's final norm + head (+ Gemma's final soft-capping) on ``[..., hidden]``."""
        dtype = self.head.weight.dtype
        z = self.head(self.norm(h.to(dtype)))
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def log_probs(self, feats: torch.Tensor, points: Sequence[int]) -> torch.Tensor:
        """float32 log-softmax of :meth:`logits` (``[P, N, classes]``)."""
        points = list(points)
        if feats.dim() == 2:
            feats = feats.unsqueeze(0)
        if feats.shape[0] != len(points):
            raise HfKlasError(f"{feats.shape[0]} feature sets were given for {len(points)} probe points.",
                              "Pass one [tokens, hidden] slice per point.")
        for p in points:
            if not 0 <= p < self.num_points:
                raise HfKlasError(f"Probe point {p} is out of range (the anchor has {self.num_points} points: "
                                  "embedding output and one per block).", f"Use 0 <= point < {self.num_points}.")
        z = self.logits(feats, points)
        z = z.float() if z.dtype != torch.float32 else z
        return torch.log_softmax(z, dim=-1)

    # ---- streaming-engine entry points (vocabulary tiles) -------------------------------------------------
    # Point-major layout ([P, N, ...]: all tokens of point 0, then point 1, ...): the engine's GEMM writes the
    # rows of every point into one buffer that it pads with constant rows (see hf_klas.selection.engine).
    @torch.no_grad()
    def tile_state(self, feats: torch.Tensor, points: Sequence[int]):
        """Prepare ``feats [P, N, hidden]`` for :meth:`logits_tile`. Default: the full float32 logits
        ``[P, N, classes]`` (fine for few classes); the lenses override it to keep only the normed features."""
        return self.logits(feats, list(points)).float().contiguous()

    @torch.no_grad()
    def logits_tile(self, state, start: int, stop: int, out: torch.Tensor) -> None:
        """Write the logits of classes ``start:stop`` into the contiguous float32 ``out [P, N, stop-start]``.

        The engine walks the vocabulary in tiles small enough to stay in cache, so no ``[P, N, vocab]`` tensor
        is ever materialised (online softmax, see :mod:`hf_klas.selection.engine`)."""
        out.copy_(state[..., start:stop])

    def tile_operands(self, state):
        """``(x [P*N, hidden] float32, head weight [V, hidden], bias | None, softcap | None)`` when the tile
        logits are ``softcap(x @ W[start:stop]ᵀ + b)`` (the lenses), so the engine can run that matmul itself
        (in float32, whatever the head's dtype); else None."""
        if isinstance(state, tuple) and state and state[0] == "rows":
            return state[1], self.head.weight, self.head.bias, self.softcap
        return None

    def _norm_head_state(self, h: torch.Tensor):
        """Point-major normed features ``[P*N, hidden]`` in float32 for the head's tiles, on the head's device.

        The norm runs as the anchor runs it (its own dtype, through any accelerate hook); the head matmul of the
        tiles is then float32, so a bf16/fp16 anchor's distributions are formed in float32."""
        norm_dtype = next((p.dtype for p in self.norm.parameters()), h.dtype)
        x = self.norm(h.to(norm_dtype)).float()
        x = x.to(self.head.weight.device) if self.head.weight.device.type != "meta" else x
        return ("rows", x.reshape(-1, x.shape[-1]).contiguous(), x.shape[0], x.shape[1])

    def _norm_head_tile(self, state, start: int, stop: int, out: torch.Tensor) -> None:
        if not isinstance(state, tuple):
            out.copy_(state[..., start:stop])
            return
        _, x, _, _ = state
        z = out.view(-1, stop - start)
        w = self.head.weight[start:stop]
        torch.mm(x, (w if w.dtype == torch.float32 else w.float()).t(), out=z)
        if self.head.bias is not None:
            z.add_(self.head.bias[start:stop])
        if self.softcap:
            z.div_(self.softcap).tanh_().mul_(self.softcap)

    @torch.no_grad()
    def block_log_probs(self, block_outputs: list[torch.Tensor], attention_mask: torch.Tensor | None = None,
                        points: Sequence[int] | None = None) -> torch.Tensor:
        """``[num_points, tokens, classes]`` float32 log-probabilities of the points of ``block_outputs``.

        ``block_outputs`` is what ``run_prefix`` returns (``len == num_points``), or the selected ``points``'
        outputs when ``points`` is given.
        """
        points = list(range(len(block_outputs))) if points is None else list(points)
        if len(points) != len(block_outputs):
            raise HfKlasError(f"{len(block_outputs)} block outputs were given for points {points}.",
                              "Pass run_prefix(model, batch) whole, or one output per requested point.")
        feats = torch.stack([self.features(h, attention_mask) for h in block_outputs])
        return self.log_probs(feats, points)

    # ---- training (trained probes override) ---------------------------------------------------------
    def fit(self, batches: list[dict], progress: bool = True) -> dict:
        """Train on calibration batches; returns statistics. The logit lens has nothing to train."""
        return {}

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``probe_config.json`` (+ ``probe.safetensors`` when the probe has parameters)."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "probe_type": self.probe_type,
            "config": asdict(self.config),
            "anchor": self.anchor_identity,
            "num_points": self.num_points,
            "num_classes": self.num_classes,
            "hf_klas_version": __version__,
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        weights = directory / PROBE_WEIGHTS_NAME
        if state:
            save_file(state, str(weights), metadata={"probe_type": self.probe_type})
        elif weights.exists():
            weights.unlink()
        (directory / PROBE_CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, anchor) -> "Probe":
        """Load a saved probe for ``anchor`` (a model, an :class:`~hf_klas.loading.Anchor` or any anchor spec).

        Raises :class:`~hf_klas.errors.ProbeMismatchError` when the folder belongs to another anchor (other
        shapes or other weights) or to another probe type than ``cls``.
        """
        directory = Path(directory)
        path = directory / PROBE_CONFIG_NAME
        if not path.is_file():
            raise HfKlasError(f"{directory} holds no {PROBE_CONFIG_NAME}.",
                              "Point at a folder written by Probe.save(...).")
        record = json.loads(path.read_text())
        if int(record.get("format_version", 1)) > FORMAT_VERSION:
            raise VersionError(f"{path} was written by a newer hf_klas ({record.get('hf_klas_version')}).",
                               "Upgrade hf_klas to read it.")
        kind = record.get("probe_type")
        if kind not in PROBES:
            raise HfKlasError(f"{path} names an unknown probe type {kind!r}.", f"Known types: {sorted(PROBES)}.")
        probe_cls = PROBES[kind]
        if cls is not Probe and probe_cls is not cls:
            raise ProbeMismatchError(f"{directory} holds a {kind!r} probe, not a {cls.probe_type!r} one.",
                                     f"Load it with Probe.load (any type) or {probe_cls.__name__}.load.")
        model = _anchor_model(anchor)
        mine = model_identity(model)
        theirs = record.get("anchor", {})
        for key, what in (("shape", "architecture (config numbers)"), ("weights", "weights")):
            if theirs.get(key) is not None and theirs.get(key) != mine[key]:
                raise ProbeMismatchError(
                    f"The probe in {directory} was built for anchor {theirs.get('name_or_path')!r} "
                    f"({theirs.get('model_type')}, {theirs.get('num_hidden_layers')} blocks) and this anchor "
                    f"({mine['name_or_path']!r}, {mine['model_type']}, {mine['num_hidden_layers']} blocks) has "
                    f"different {what} ({key} fingerprint {theirs.get(key)} vs {mine[key]}).",
                    "Load the probe with the anchor it was trained on, or train a new probe for this anchor "
                    "(hf_klas.probes.build_probe(...)).",
                )
        probe = probe_cls(model, _config_from_dict(probe_cls.config_class, record.get("config", {})))
        weights = directory / PROBE_WEIGHTS_NAME
        if weights.is_file():

            state = load_file(str(weights))
            missing, unexpected = probe.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ProbeMismatchError(f"{weights} does not fit a {kind} probe for this anchor "
                                         f"(missing {missing}, unexpected {unexpected}).",
                                         "Re-save the probe with this hf_klas version.")
        elif any(True for _ in probe.parameters()):
            raise HfKlasError(f"{directory} has no {PROBE_WEIGHTS_NAME} for a trained {kind} probe.",
                              "Copy the whole probe folder.")
        probe._identity = mine
        return probe


def _anchor_model(anchor) -> nn.Module:
    if isinstance(anchor, nn.Module):
        return anchor
    return resolve_anchor(anchor).load_full().eval()
