"""SN-Net supernets: :class:`StitchedSupernet`, the training view of a stitchable model.

The supernet *is* a stitchable model (:mod:`hf_klas.modeling_stitchable`, built by
:func:`hf_klas.building.build_stitchable`): the anchors' blocks held once, one stitch ``nn.Linear`` per candidate
configuration, trained by the ordinary ``Trainer`` (each training forward draws one configuration) and saved, loaded,
switched, pushed and served as one transformers model. The view runs the *dearest* configuration in eval mode (a
stitchable model runs its active one), ``stitch_config=`` / :meth:`~StitchedSupernet.use_config` pin one, and
:meth:`~StitchedSupernet.save_pretrained` writes ``supernet_config.json`` + ``model.safetensors``.
:meth:`~StitchedSupernet.to_stitchable` hands over the model it trains.

Sampling (``sampling=``): ``"uniform"`` (SN-Net: every configuration equally likely) or ``"flops"`` (SN-Netv2: a
FLOPs bucket uniformly, then a configuration in it; buckets come from a plan's candidates or ``num_buckets``
equal-width FLOPs bins). The draw for forward ``k`` is a pure function of ``(seed, k)`` and ``k`` is the model's
saved ``sample_step`` buffer: every process of a distributed run trains the same configuration at a step, and a
resumed run continues the exact sequence. Train with :func:`hf_klas.training.train_supernet` (a
:class:`StitchTrainer`: the anchors at ``anchor_lr_scale`` x the stitch learning rate).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig
from transformers.initialization import no_init_weights

from ..building import STITCHABLE_CLASSES, build_stitchable, fit_stitches, init_stitches_identity
from ..configuration_stitchable import StitchableConfig, equal_width_buckets
from ..errors import HfKlasError
from ..families import CAUSAL_LM
from ..flops import DEFAULT_SEQ_LEN

__all__ = ["StitchedSupernet", "SUPERNET_CONFIG_FILE", "SAMPLING"]

SUPERNET_CONFIG_FILE = "supernet_config.json"
SAMPLING = ("uniform", "flops")


# ---- the training view ---------------------------------------------------------------------------------------------
def _allocate(front_config, back_config, configs, sampling, num_buckets, seed, seq_len, buckets, anchors, dtype,
              attn_implementation, initialise: bool, self_stitch: bool = False, tie: bool = False):
    """A stitchable model of two anchor configs with random (or uninitialised) weights."""
    configs = list(configs)
    config = StitchableConfig(front_config=front_config, back_config=back_config, stitch_configs=configs,
                              sampling=sampling, sampling_seed=seed, flops_seq_len=seq_len, anchors=anchors or {},
                              dtype=dtype, self_stitch=self_stitch, tie_word_embeddings=tie)
    given = buckets is None and all(getattr(c, "bucket", -1) >= 0 for c in configs)
    if buckets is not None or (num_buckets is not None and not given):
        values = list(buckets) if buckets is not None else equal_width_buckets(
            [e["flops"] for e in config.stitch_configs], num_buckets)
        for entry, bucket in zip(config.stitch_configs, values):
            entry["bucket"] = int(bucket)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with contextlib.nullcontext() if initialise else no_init_weights():
        model = STITCHABLE_CLASSES[config.task](config)
    return model.to(dtype)


class StitchedSupernet(nn.Module):
    """The training view of a stitchable model (see the module docstring).

    Build with :meth:`from_anchors` (the anchors' weights, least-squares stitches when ``calibration`` is given) or
    :meth:`from_pretrained` (a directory of :meth:`save_pretrained`, or a saved stitchable model); ``model=`` wraps
    an existing stitchable model. The constructor alone allocates random weights.

    Args:
        front_config, back_config: the anchors' configs.
        configs: ``[(front_blocks, back_start), ...]`` or plan ``Candidate`` s (their ``bucket`` is kept).
        sampling: ``"uniform"`` or ``"flops"``.
        num_buckets: FLOPs buckets for ``sampling="flops"`` when configs carry none (default: 10).
        seed: seed of the configuration sampler.
        seq_len: tokens per sequence at which LLM FLOPs are counted (for buckets and reports).
    """

    def __init__(self, front_config=None, back_config=None, configs=None, sampling: str = "uniform",
                 num_buckets: int | None = None, seed: int = 0, seq_len: int = DEFAULT_SEQ_LEN,
                 buckets: list[int] | None = None, anchors: dict | None = None, dtype: torch.dtype = torch.float32,
                 attn_implementation: str | None = None, _init: bool = True, *, model=None):
        super().__init__()
        if sampling not in SAMPLING:
            raise HfKlasError(f"Unknown supernet sampling {sampling!r}.", f"Use one of {SAMPLING}.")
        if model is None:
            if not configs:
                raise HfKlasError("A supernet needs at least one stitch configuration.",
                                  "Pass configs=[(front_blocks, back_start), ...] or a plan with candidates.")
            model = _allocate(front_config, back_config, configs, sampling, num_buckets, seed, seq_len, buckets,
                              anchors, dtype, attn_implementation, _init)
        self.model = model
        self.task = model.config.task
        self.accepts_loss_kwargs = self.task == CAUSAL_LM  # vision losses are per-batch means
        self.main_input_name = "input_ids" if self.task == CAUSAL_LM else "pixel_values"
        self._pinned: tuple[int, int] | None = None

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_anchors(cls, front, back=None, configs=None, *, plan=None, calibration=None, sampling: str = "uniform",
                     num_buckets: int | None = None, seed: int = 0, seq_len: int | None = None, ridge: float = 1e-4,
                     max_calibration_samples: int = 64, max_length: int = 128, dtype: torch.dtype = torch.float32,
                     progress: bool = True) -> "StitchedSupernet":
        """A supernet over ``configs`` (or ``plan.candidates``) with the anchors' weights.

        ``calibration`` (anything :func:`hf_klas.calibration.calibration_batches` accepts) fits every stitch layer by
        least squares; ``calibration=None`` keeps identity-like stitches (``calibration="default"``: the documented
        offline default data). Head and input embedding of a tied self-stitch are trained apart (a full finetune
        may move them differently); :meth:`extract` ties them again where they are still equal."""
        if sampling not in SAMPLING:
            raise HfKlasError(f"Unknown supernet sampling {sampling!r}.", f"Use one of {SAMPLING}.")
        default = isinstance(calibration, str) and calibration == "default"
        model = build_stitchable(front, back, configs, plan=plan, calibration=None if default else calibration,
                                 stitch_init="identity" if calibration is None else "least_squares",
                                 sampling=sampling, seed=seed, num_buckets=num_buckets, seq_len=seq_len, ridge=ridge,
                                 max_calibration_samples=max_calibration_samples, max_length=max_length, dtype=dtype,
                                 tie_word_embeddings=False, progress=progress)
        model.config.name_or_path = model.config.name_or_path.replace("stitchable(", "supernet(", 1)
        return cls(model=model).eval()

    @torch.no_grad()
    def init_stitches_identity(self) -> None:
        init_stitches_identity(self.model)

    def fit_stitches(self, batches: list[dict], front, back, ridge: float = 1e-4, progress: bool = True) -> dict:
        """Least-squares fit of every stitch (see :func:`fit_stitches`)."""
        stats = fit_stitches(self.model, batches, front, back, ridge=ridge, progress=progress)
        self.model.config.recipe.update({"stitch_init": "least_squares", "ridge": ridge, "stitch_fit": stats})
        return stats

    # ---- what the supernet is -----------------------------------------------------------------------------------
    @property
    def core(self):
        """The stitchable model this view trains (anchors' blocks, norm, head, every stitch)."""
        return self.model

    @property
    def stitches(self) -> nn.ModuleDict:
        return self.model.stitches

    @property
    def sample_step(self) -> torch.Tensor:
        return self.model.sample_step

    # the supernet's settings are its stitchable model's config, under the names this class always had
    front_config = property(lambda self: self.model.config.front_config)
    back_config = property(lambda self: self.model.config.back_config)
    configs = property(lambda self: self.model.config.stitches, doc="[(front_blocks, back_start), ...]")
    flops = property(lambda self: [float(e["flops"]) for e in self.model.config.stitch_configs])
    buckets = property(lambda self: [int(e["bucket"]) for e in self.model.config.stitch_configs])
    sampling = property(lambda self: self.model.config.sampling)
    seed = property(lambda self: self.model.config.sampling_seed)
    seq_len = property(lambda self: self.model.config.flops_seq_len)
    anchors = property(lambda self: self.model.config.anchors)
    dearest_config = property(lambda self: self.model.config.dearest_stitch, doc="The configuration with most FLOPs.")

    @property
    def stitch_init(self) -> str:
        return self.model.config.recipe.get("stitch_init", "identity")

    def sample_index(self, step: int) -> int:
        """Index into :attr:`configs` drawn for forward call ``step`` (a pure function of seed and step)."""
        return self.model.config.sample_index(step)

    @contextlib.contextmanager
    def use_config(self, front_blocks: int, back_start: int):
        """Run one configuration (training or eval) inside the ``with`` block."""
        key = self.model.config.check_stitch(front_blocks, back_start)
        old, self._pinned = self._pinned, key
        try:
            yield self
        finally:
            self._pinned = old

    def _choose(self, stitch_config) -> tuple[int, int]:
        if stitch_config is not None:
            return self.model.config.check_stitch(stitch_config)
        if self._pinned is not None:
            return self._pinned
        if not self.training:
            return self.dearest_config
        return self.model.sample_stitch()

    # ---- forward -------------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None, position_ids=None,
                stitch_config=None, **kwargs):
        """Run one configuration: sampled (training), ``stitch_config=(i, j)``, pinned, or the dearest (eval)."""
        key = self._choose(stitch_config)
        if self.task == CAUSAL_LM:
            if input_ids is None:
                raise HfKlasError("The causal-LM supernet needs input_ids.", "Pass input_ids (and attention_mask).")
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              labels=labels, use_cache=False, stitch=key,
                              num_items_in_batch=kwargs.get("num_items_in_batch"))
        if pixel_values is None:
            raise HfKlasError("The image-classification supernet needs pixel_values.", "Pass pixel_values.")
        return self.model(pixel_values=pixel_values, labels=labels, stitch=key)

    # ---- extraction and persistence ------------------------------------------------------------------------------
    def extract(self, front_blocks: int, back_start: int):
        """Configuration ``(i, j)`` as a standalone stitched model (weights copied, not shared)."""
        model = self.model.extract(front_blocks, back_start)
        model.config.recipe["training"] = "supernet"
        return model

    def to_stitchable(self):
        """The stitchable model this supernet trains (the same weights, not a copy), its recipe saying so: save,
        push, switch or serve it like any transformers model."""
        if int(self.sample_step):
            self.model.config.recipe["training"] = "supernet"
        return self.model

    def supernet_config(self) -> dict:
        cfg = self.model.config
        return {"format": "hf_klas.supernet", "front_config": cfg.front_config.to_dict(),
                "back_config": cfg.back_config.to_dict(), "configs": [list(c) for c in self.configs],
                "buckets": self.buckets, "sampling": self.sampling, "seed": self.seed, "seq_len": self.seq_len,
                "anchors": self.anchors, "stitch_init": self.stitch_init, "self_stitch": cfg.self_stitch,
                "tie_word_embeddings": bool(cfg.tie_word_embeddings),
                "dtype": str(self.model.dtype).replace("torch.", ""), "flops": self.flops}

    def save_pretrained(self, directory) -> Path:
        """``supernet_config.json`` + ``model.safetensors`` (+ the anchors' tokenizer / image processor). For the one
        transformers directory (Auto classes, model card, ``trust_remote_code``) save :meth:`to_stitchable`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        if self.model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # the input embedding, stored once
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / SUPERNET_CONFIG_FILE).write_text(json.dumps(self.supernet_config(), indent=1) + "\n")
        pre = getattr(self.model, "preprocessor", None)
        if pre is not None:
            pre.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory) -> "StitchedSupernet":
        """A directory of :meth:`save_pretrained`, or a saved stitchable model (``hf-klas finetune --plan`` output)."""
        directory = Path(directory)
        cfg_file = directory / SUPERNET_CONFIG_FILE
        if (directory / "config.json").is_file() and not cfg_file.is_file():
            config = AutoConfig.from_pretrained(directory)
            if not isinstance(config, StitchableConfig):
                raise HfKlasError(f"{directory} holds a {config.model_type!r} model, not a supernet.",
                                  "Point at a stitchable model directory or a StitchedSupernet.save_pretrained one.")
            return cls(model=STITCHABLE_CLASSES[config.task].from_pretrained(directory))
        if not cfg_file.is_file():
            raise HfKlasError(f"{directory} has no {SUPERNET_CONFIG_FILE} and no config.json.",
                              "Point at a directory written by StitchedSupernet.save_pretrained or save_pretrained "
                              "of a stitchable model.")
        d = json.loads(cfg_file.read_text())
        configs = [tuple(c) for c in d["configs"]]
        model = _allocate(d["front_config"], d["back_config"], configs, d["sampling"], None, d["seed"], d["seq_len"],
                          d["buckets"], d.get("anchors"), getattr(torch, d.get("dtype", "float32")), None, False,
                          self_stitch=bool(d.get("self_stitch")), tie=bool(d.get("tie_word_embeddings")))
        # files written before the supernet was a stitchable model name the same tensors "core.<name>"
        state = {k[len("core."):] if k.startswith("core.") else k: v
                 for k, v in load_file(str(directory / "model.safetensors")).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set()):
            raise HfKlasError(f"{directory}/model.safetensors does not match its {SUPERNET_CONFIG_FILE} (missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}).",
                              "Save the supernet again with StitchedSupernet.save_pretrained.")
        model.config.recipe["stitch_init"] = d.get("stitch_init", "identity")
        return cls(model=model).eval()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count (the ``PreTrainedModel.num_parameters`` signature; the Trainer's FLOs log uses it)."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

    def extra_repr(self) -> str:
        return f"configs={self.configs}, sampling={self.sampling!r}, seed={self.seed}"

