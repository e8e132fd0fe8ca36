"""SN-Net-style supernet: two anchors held once, one stitch layer per configuration, one configuration per step.

:class:`StitchedSupernet` holds the front anchor's embeddings and *all* its blocks and the back anchor's *all*
blocks, final norm and head -- once -- plus one stitch ``nn.Linear`` per candidate configuration
(``nn.ModuleDict`` keyed ``"i_j"``). Memory therefore grows with the number of configurations by exactly their
stitch layers. Each training forward samples one configuration and runs ``embeddings -> front[:i] -> stitch_ij
-> back[j:] -> norm -> head``; :meth:`StitchedSupernet.extract` copies one configuration out as a standalone
``StitchedModelForCausalLM`` / ``StitchedModelForImageClassification`` whose logits equal the supernet's for that
configuration (the same modules, run by the same code path of the stitched model).

Sampling (``sampling=``):

* ``"uniform"`` -- SN-Net: every configuration equally likely.
* ``"flops"`` -- SN-Netv2: first a FLOPs bucket uniformly (among non-empty ones), then a configuration inside
  it uniformly; so cheap and dear stitches train equally often however unevenly the candidates spread over
  FLOPs. Buckets come from a plan's candidates (their ``bucket``) or from ``num_buckets`` equal-width FLOPs bins.

The draw for forward call ``k`` is a pure function of ``(seed, k)`` and ``k`` is a persistent buffer
(``sample_step``): every process of a distributed run trains the same configuration at the same step (DDP
averages gradients of one sub-network), and a run resumed from a checkpoint continues the exact sequence. In
eval mode without an explicit configuration the dearest configuration (most FLOPs) runs, so evaluating never
advances the sampler. ``forward(..., stitch_config=(i, j))`` or ``with supernet.use_config(i, j):`` pins one.

Stitch layers start as least-squares fits (SN-Net's initialisation) when calibration batches are given,
otherwise as identity-like maps. Train it with :func:`hf_klas.training.train_supernet` (a :class:`StitchTrainer`: tqdm progress,
checkpoints, resume, ``accelerate launch``) -- the anchors at ``anchor_lr_scale`` x the stitch learning rate.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import CausalLMOutputWithPast, ImageClassifierOutput

from ..activations import run_prefix
from ..anatomy import ties_embeddings
from ..building import TASK_CLASSES, build_back_prefix, copy_generation_config, load_anchor_weights, stitch_info
from ..calibration import calibration_batches
from ..configuration_stitched import StitchedConfig, as_config, validate_stitch_point
from ..errors import HfKlasError, StitchPointError
from ..families import CAUSAL_LM
from ..flops import DEFAULT_SEQ_LEN, stitch_flops
from ..loading import resolve_anchor
from ..selection.plan import StitchPlan
from ..stitch_init import LeastSquaresAccumulator

__all__ = ["StitchedSupernet", "config_key", "SUPERNET_CONFIG_FILE", "SAMPLING"]

SUPERNET_CONFIG_FILE = "supernet_config.json"
SAMPLING = ("uniform", "flops")


def config_key(i: int, j: int) -> str:
    return f"{int(i)}_{int(j)}"


def _as_pairs(configs) -> list[tuple[int, int]]:
    out = []
    for c in configs:
        if hasattr(c, "front_blocks"):
            out.append((int(c.front_blocks), int(c.back_start)))
        else:
            i, j = c
            out.append((int(i), int(j)))
    return out


class StitchedSupernet(nn.Module):
    """All stitch configurations of one anchor pair in one module (see the module docstring).

    Build with :meth:`from_anchors` (weights from the anchors, least-squares stitch init) or
    :meth:`from_pretrained` (a directory written by :meth:`save_pretrained`). The constructor allocates the
    modules only (random anchor weights).

    Args:
        front_config, back_config: the anchors' configs.
        configs: ``[(front_blocks, back_start), ...]`` or plan ``Candidate`` s (their ``bucket`` is kept).
        sampling: ``"uniform"`` or ``"flops"``.
        num_buckets: FLOPs buckets for ``sampling="flops"`` when configs carry none (default: 10).
        seed: seed of the configuration sampler.
        seq_len: tokens per sequence at which LLM FLOPs are counted (for buckets and reports).
    """

    def __init__(self, front_config, back_config, configs, sampling: str = "uniform", num_buckets: int | None = None,
                 seed: int = 0, seq_len: int = DEFAULT_SEQ_LEN, buckets: list[int] | None = None, anchors: dict | None = None,
                 dtype: torch.dtype = torch.float32, attn_implementation: str | None = None, _init: bool = True):
        super().__init__()

        front_config, back_config = as_config(front_config), as_config(back_config)
        if sampling not in SAMPLING:
            raise HfKlasError(f"Unknown supernet sampling {sampling!r}.", f"Use one of {SAMPLING}.")
        given_buckets = [int(c.bucket) for c in configs if getattr(c, "bucket", -1) is not None
                         and getattr(c, "bucket", -1) >= 0] if buckets is None else list(buckets)
        pairs = _as_pairs(configs)
        if not pairs:
            raise HfKlasError("A supernet needs at least one stitch configuration.",
                              "Pass configs=[(front_blocks, back_start), ...] or a plan with candidates.")
        if len(set(pairs)) != len(pairs):
            dup = sorted({p for p in pairs if pairs.count(p) > 1})
            raise HfKlasError(f"Configurations {dup} are listed twice.", "Pass each (front_blocks, back_start) once.")
        for i, j in pairs:
            validate_stitch_point(front_config, back_config, i, j)
        m = front_config.num_hidden_layers
        core_config = StitchedConfig(front_config=front_config, back_config=back_config, front_blocks=m,
                                     back_start=0, anchors=anchors or {}, dtype=dtype)
        if attn_implementation is not None:
            core_config._attn_implementation = attn_implementation
        self.task = core_config.task
        ctx = contextlib.nullcontext() if _init else no_init_weights()
        with ctx:
            core = TASK_CLASSES[self.task](core_config)
        core.to(dtype)
        core.stitch = None  # the supernet owns one stitch per configuration instead
        self.core = core
        self.front_config, self.back_config = front_config, back_config
        self.configs = pairs
        self.stitches = nn.ModuleDict({
            config_key(i, j): nn.Linear(front_config.hidden_size, back_config.hidden_size,
                                        bias=core_config.stitch_bias, dtype=dtype) for i, j in pairs})
        self.init_stitches_identity()
        self.sampling, self.seed, self.seq_len = sampling, int(seed), int(seq_len)
        self.anchors = anchors or {}
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long), persistent=True)
        self.flops = self._flops()
        self.buckets = self._buckets(given_buckets if len(given_buckets) == len(pairs) else None, num_buckets)
        self._pinned: tuple[int, int] | None = None
        self.stitch_init = "identity"
        self.accepts_loss_kwargs = self.task == CAUSAL_LM  # vision losses are per-batch means
        self.main_input_name = "input_ids" if self.task == CAUSAL_LM else "pixel_values"

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_anchors(cls, front, back=None, configs=None, *, plan=None, calibration=None, sampling: str = "uniform",
                     num_buckets: int | None = None, seed: int = 0, seq_len: int = DEFAULT_SEQ_LEN, ridge: float = 1e-4,
                     max_calibration_samples: int = 64, max_length: int = 128, dtype: torch.dtype = torch.float32,
                     progress: bool = True) -> "StitchedSupernet":
        """A supernet over ``configs`` (or ``plan.candidates``) with the anchors' weights.

        ``calibration`` (anything :func:`hf_klas.calibration.calibration_batches` accepts) fits every stitch layer
        by least squares; ``calibration=None`` keeps identity-like stitches (pass ``calibration="default"`` for
        the documented offline default data).
        """

        front_anchor = resolve_anchor(front)
        back_anchor = front_anchor if back is None else resolve_anchor(back)
        if configs is None:
            if plan is None:
                raise HfKlasError("Neither configs nor a plan was given.",
                                  "Pass configs=[(front_blocks, back_start), ...] or plan=<StitchPlan or plan dir>.")
            if not hasattr(plan, "candidates"):

                plan = StitchPlan.load(plan)
            configs = plan.candidates
            if not configs:
                raise HfKlasError("The plan has no candidates.", "Re-run the selection (hf-klas select).")
        anchors = {"front": front_anchor.provenance, "back": back_anchor.provenance}
        net = cls(front_anchor.config, back_anchor.config, configs, sampling=sampling, num_buckets=num_buckets,
                  seed=seed, seq_len=seq_len, anchors=anchors, dtype=dtype, _init=False)
        load_anchor_weights(net.core, net.core.config, front_anchor, back_anchor)
        net.core._hf_klas_preprocessor = back_anchor.load_preprocessor() or front_anchor.load_preprocessor()
        copy_generation_config(net.core, back_anchor)
        net.core.config.name_or_path = f"supernet({front_anchor.name_or_path} -> {back_anchor.name_or_path})"
        if calibration is not None:

            preprocessor = front_anchor.load_preprocessor() or back_anchor.load_preprocessor()
            batches = calibration_batches(None if isinstance(calibration, str) and calibration == "default"
                                          else calibration, front_anchor.config, preprocessor,
                                          max_samples=max_calibration_samples, max_length=max_length)
            net.fit_stitches(batches, front_anchor, back_anchor, ridge=ridge, progress=progress)
        net.eval()
        return net

    def init_stitches_identity(self) -> None:
        """Identity on the shared dimensions, zero bias (the stitched models' own default)."""
        with torch.no_grad():
            for lin in self.stitches.values():
                nn.init.eye_(lin.weight)
                if lin.bias is not None:
                    lin.bias.zero_()

    @torch.no_grad()
    def fit_stitches(self, batches: list[dict], front, back, ridge: float = 1e-4, progress: bool = True) -> dict:
        """Least-squares fit of every stitch layer (SN-Net's init), one pass over ``batches`` for all of them.

        Per batch the front anchor runs once up to the deepest ``i`` and the back anchor once up to the deepest
        ``j``; ``X^T X`` is accumulated once per distinct ``i`` and ``X^T Y`` per configuration.
        """

        front, back = resolve_anchor(front), resolve_anchor(back)
        max_i = max(i for i, _ in self.configs)
        max_j = max(j for _, j in self.configs)
        front_prefix = build_back_prefix(front, max_i)
        back_prefix = build_back_prefix(back, max_j)
        d_in, d_out = self.front_config.hidden_size, self.back_config.hidden_size
        accs = {c: LeastSquaresAccumulator(d_in, d_out, ridge=ridge) for c in self.configs}
        for batch in tqdm(batches, desc="fit supernet stitches (least squares)", disable=not progress):
            xs = run_prefix(front_prefix, batch, upto=max_i)
            ys = run_prefix(back_prefix, batch, upto=max_j)
            mask = batch.get("attention_mask")
            for (i, j), acc in accs.items():
                acc.update(xs[i], ys[j], mask)
        for (i, j), acc in accs.items():
            weight, bias = acc.solve()
            lin = self.stitches[config_key(i, j)]
            lin.weight.copy_(weight.to(lin.weight.dtype))
            if lin.bias is not None:
                lin.bias.copy_(bias.to(lin.bias.dtype))
        self.stitch_init = "least_squares"
        return {"tokens": next(iter(accs.values())).count, "ridge": ridge, "configs": len(accs)}

    # ---- FLOPs and sampling ------------------------------------------------------------------------------------
    def _flops(self) -> list[float]:

        lm = self.task == CAUSAL_LM
        return [float(stitch_flops(self.front_config, self.back_config, i, j,
                                   seq_len=self.seq_len if lm else None).total) for i, j in self.configs]

    def _buckets(self, given: list[int] | None, num_buckets: int | None) -> list[int]:
        if given is not None:
            return given
        k = num_buckets or 10
        lo, hi = min(self.flops), max(self.flops)
        if hi <= lo:
            return [0] * len(self.configs)
        return [min(int((f - lo) / (hi - lo) * k), k - 1) for f in self.flops]

    def sample_index(self, step: int) -> int:
        """Index into :attr:`configs` drawn for forward call ``step`` (a pure function of seed and step)."""
        rng = random.Random(self.seed * 1_000_003 + int(step))
        if self.sampling == "uniform":
            return rng.randrange(len(self.configs))
        groups: dict[int, list[int]] = {}
        for idx, b in enumerate(self.buckets):
            groups.setdefault(b, []).append(idx)
        bucket = sorted(groups)[rng.randrange(len(groups))]
        members = groups[bucket]
        return members[rng.randrange(len(members))]

    @property
    def dearest_config(self) -> tuple[int, int]:
        return self.configs[max(range(len(self.configs)), key=lambda k: (self.flops[k], self.configs[k]))]

    @contextlib.contextmanager
    def use_config(self, front_blocks: int, back_start: int):
        """Run one configuration (training or eval) inside the ``with`` block."""
        self._check_config((front_blocks, back_start))
        old, self._pinned = self._pinned, (int(front_blocks), int(back_start))
        try:
            yield self
        finally:
            self._pinned = old

    def _check_config(self, config) -> tuple[int, int]:
        i, j = (int(config[0]), int(config[1]))
        if config_key(i, j) not in self.stitches:
            raise StitchPointError(f"Configuration (front_blocks={i}, back_start={j}) is not in this supernet.",
                                   f"Use one of {self.configs}.")
        return i, j

    def _choose(self, stitch_config) -> tuple[int, int]:
        if stitch_config is not None:
            return self._check_config(stitch_config)
        if self._pinned is not None:
            return self._pinned
        if not self.training:
            return self.dearest_config
        idx = self.sample_index(int(self.sample_step))
        with torch.no_grad():
            self.sample_step += 1
        return self.configs[idx]

    # ---- forward -----------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None, position_ids=None,
                stitch_config=None, **kwargs):
        """Run one configuration: sampled (training), ``stitch_config=(i, j)``, pinned, or the dearest (eval)."""
        i, j = self._choose(stitch_config)
        stitch = self.stitches[config_key(i, j)]
        if self.task == CAUSAL_LM:
            return self._forward_lm(i, j, stitch, input_ids, attention_mask, position_ids, labels,
                                    kwargs.get("num_items_in_batch"))
        return self._forward_vision(i, j, stitch, pixel_values, labels)

    def _forward_lm(self, i, j, stitch, input_ids, attention_mask, position_ids, labels, num_items_in_batch):
        core = self.core
        core._sync_attn_implementation()
        if input_ids is None:
            raise HfKlasError("The causal-LM supernet needs input_ids.", "Pass input_ids (and attention_mask).")
        embeds = core.get_input_embeddings()(input_ids)
        cache_position = torch.arange(embeds.shape[1], device=embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        ftypes, btypes = core.front_layer_types[:i], core.back_layer_types[j:]
        fmasks = core._masks(core.front, ftypes, embeds, attention_mask, None, position_ids, cache_position)
        bmasks = core._masks(core.back, btypes, embeds, attention_mask, None, position_ids, cache_position)
        hidden = core._run_blocks(core.front, core.front_blocks[:i], ftypes, embeds, fmasks, position_ids, None,
                                  False, cache_position, None, {})
        hidden = stitch(hidden)
        hidden = core._run_blocks(core.back, core.back_blocks[j:], btypes, hidden, bmasks, position_ids, None,
                                  False, cache_position, None, {})
        hidden = getattr(core.back, core.anatomy.norm)(hidden)
        logits, loss = core._logits_and_loss(hidden, labels, num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _forward_vision(self, i, j, stitch, pixel_values, labels):
        core = self.core
        core._sync_attn_implementation()
        if pixel_values is None:
            raise HfKlasError("The image-classification supernet needs pixel_values.", "Pass pixel_values.")
        embeddings = getattr(core.front, core.anatomy.embed)
        hidden = embeddings(pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype),
                            interpolate_pos_encoding=False)
        for blocks in (core.front_blocks[:i], None, core.back_blocks[j:]):
            if blocks is None:
                hidden = stitch(hidden)
                continue
            for block in blocks:
                out = block(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
        hidden = getattr(core.back, core.anatomy.norm)(hidden)
        logits = core.classifier(hidden[:, 0, :])
        loss = core.loss_function(labels, logits, core.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

    # ---- extraction and persistence ----------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, front_blocks: int, back_start: int):
        """Configuration ``(i, j)`` as a standalone stitched model (weights copied, not shared)."""

        i, j = self._check_config((front_blocks, back_start))
        core = self.core
        config = StitchedConfig(front_config=self.front_config, back_config=self.back_config, front_blocks=i,
                                back_start=j, anchors=dict(self.anchors), stitch_bias=core.config.stitch_bias,
                                dtype=core.dtype, tie_word_embeddings=self._head_is_embedding())
        config._attn_implementation = core.config._attn_implementation
        with no_init_weights():
            model = TASK_CLASSES[self.task](config)
        model.to(core.dtype)
        src = core.state_dict()
        stitch_sd = self.stitches[config_key(i, j)].state_dict()
        back_prefix = f"back.{model._back_blocks_path}."
        state = {}
        for key in model.state_dict():
            if key.startswith("stitch."):
                state[key] = stitch_sd[key[len("stitch."):]]
            elif key.startswith(back_prefix):
                idx, rest = key[len(back_prefix):].split(".", 1)
                state[key] = src[f"{back_prefix}{int(idx) + j}.{rest}"]
            else:
                state[key] = src[key]
        model.load_state_dict(state, strict=True)
        model.config.recipe = {"stitch_init": self.stitch_init, "training": "supernet",
                               "supernet": {"configs": len(self.configs), "sampling": self.sampling,
                                            "sample_steps": int(self.sample_step)}}
        model.config.stitch_info = stitch_info(config)
        front_name = (self.anchors.get("front") or {}).get("name_or_path", "front")
        back_name = (self.anchors.get("back") or {}).get("name_or_path", "back")
        model.config.name_or_path = f"stitched({front_name}[:{i}] -> {back_name}[{j}:])"
        model._hf_klas_preprocessor = getattr(core, "_hf_klas_preprocessor", None)
        if getattr(core, "generation_config", None) is not None and hasattr(model, "generation_config"):
            model.generation_config = core.generation_config
        return model.eval()

    def _head_is_embedding(self) -> bool:
        """Whether the extracted models can tie head and input embedding without losing anything: a tied anchor
        (self-stitching) whose head and embedding are still equal. The supernet itself keeps them apart, since
        a full finetune may train them differently; then the extracted models stay untied."""
        if not ties_embeddings(self.back_config):
            return False
        head = self.core.lm_head.weight
        embed = self.core.get_input_embeddings().weight
        return head.shape == embed.shape and bool(torch.equal(head, embed))

    def supernet_config(self) -> dict:
        return {"format": "hf_klas.supernet", "front_config": self.front_config.to_dict(),
                "back_config": self.back_config.to_dict(), "configs": [list(c) for c in self.configs],
                "buckets": self.buckets, "sampling": self.sampling, "seed": self.seed, "seq_len": self.seq_len,
                "anchors": self.anchors, "stitch_init": self.stitch_init,
                "dtype": str(self.core.dtype).replace("torch.", ""), "flops": self.flops}

    def save_pretrained(self, directory) -> Path:
        """``supernet_config.json`` + ``model.safetensors`` (+ the anchors' tokenizer / image processor)."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / SUPERNET_CONFIG_FILE).write_text(json.dumps(self.supernet_config(), indent=1) + "\n")
        pre = getattr(self.core, "_hf_klas_preprocessor", None)
        if pre is not None:
            pre.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory) -> "StitchedSupernet":

        directory = Path(directory)
        cfg_file = directory / SUPERNET_CONFIG_FILE
        if not cfg_file.is_file():
            raise HfKlasError(f"{directory} has no {SUPERNET_CONFIG_FILE}.",
                              "Point at a directory written by StitchedSupernet.save_pretrained.")
        d = json.loads(cfg_file.read_text())
        net = cls(d["front_config"], d["back_config"], [tuple(c) for c in d["configs"]], sampling=d["sampling"],
                  seed=d["seed"], seq_len=d["seq_len"], buckets=d["buckets"], anchors=d.get("anchors"),
                  dtype=getattr(torch, d.get("dtype", "float32")), _init=False)
        net.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        net.stitch_init = d.get("stitch_init", "identity")
        return net.eval()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count (the ``PreTrainedModel.num_parameters`` signature; the Trainer's FLOs log uses it)."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

    def extra_repr(self) -> str:
        return f"configs={self.configs}, sampling={self.sampling!r}, seed={self.seed}"
