"""StitchableConfig: two anchors, every trained stitch configuration with its cost, and the active one.

A stitchable model is a stitched model that switches. Everything :class:`StitchedConfig` says describes the *active*
configuration -- ``front_blocks`` / ``back_start`` and the stitched stack's ``num_hidden_layers`` / ``layer_types``
(what ``generate()`` sizes caches from) -- and ``stitch_configs`` is the table of all configurations, one entry each:

``{"front_blocks": i, "back_start": j, "flops": ..., "params": ..., "bucket": b, "score": ..., "source": ...,
"metrics": {"rouge1": ...}}``

FLOPs and params are :mod:`hf_klas.flops` numbers (per sequence of ``flops_seq_len`` tokens, or per image; params
of the configuration as its own stitched model). ``score`` is the selector's (lower is better: Γ for KLAS) when the
configurations came from a plan; ``metrics`` are measured values (``hf-klas pareto --record_metrics``,
``model.record_metric``). ``sampling`` / ``sampling_seed`` say how supernet training draws a configuration per
forward (SN-Net ``uniform``, SN-Netv2 ``flops``: a FLOPs bucket, then a configuration in it; ``None``: train the
active configuration only).

This module ships inside stitchable checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

import copy
import math
import random

from .anatomy import ties_embeddings
from .configuration_stitched import StitchedConfig, as_config, validate_stitch_point
from .errors import BudgetError, IncompatibleAnchorsError, StitchPointError
from .families import CAUSAL_LM, family_of
from .flops import DEFAULT_SEQ_LEN, anchor_flops, format_flops, stitch_flops, stitch_params

# transformers 5.0 copies only the *direct* relative imports of a local checkpoint's code files (trust_remote_code):
# the version module its imports need is imported by name so the config loads without hf_klas there too.
from .version import __version__  # noqa: F401

SAMPLING = ("uniform", "flops")
DEFAULT_BUCKETS = 10
_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "vocab_size", "image_size", "patch_size")


def config_key(front_blocks: int, back_start: int) -> str:
    """Name of configuration ``(i, j)``'s stitch layer in ``model.stitches``."""
    return f"{int(front_blocks)}_{int(back_start)}"


def equal_width_buckets(flops: list[float], num_buckets: int = DEFAULT_BUCKETS) -> list[int]:
    """FLOPs bucket of each value: ``num_buckets`` equal-width bins between the smallest and the largest."""
    lo, hi = min(flops), max(flops)
    if hi <= lo:
        return [0] * len(flops)
    return [min(int((f - lo) / (hi - lo) * num_buckets), num_buckets - 1) for f in flops]


def _pair(value) -> tuple:
    """``(i, j)`` from a pair, a table entry, or anything with ``front_blocks`` / ``back_start`` (a plan candidate,
    a stitched config or model)."""
    if isinstance(value, dict):
        return value.get("front_blocks"), value.get("back_start")
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(value)
    config = getattr(value, "config", None)
    source = config if hasattr(config, "back_start") else value
    if hasattr(source, "front_blocks") and hasattr(source, "back_start"):
        return source.front_blocks, source.back_start
    raise StitchPointError(f"{value!r} does not name a stitch configuration.",
                           "Pass (front_blocks, back_start), e.g. model.set_stitch(4, 20).")


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (hasattr(value, "__index__")):
        raise StitchPointError(f"{what}={value!r} is not a whole number.", f"Pass {what} as an int.")
    return int(value)


class StitchableConfig(StitchedConfig):
    """Configuration of a stitchable model: the anchors' configs, the table of trained stitch configurations
    (``stitch_configs``) and the active one (``front_blocks`` / ``back_start``).

    Args:
        front_config / back_config: the anchors' configs (a self-stitch passes the same one twice).
        stitch_configs: ``[(i, j), ...]``, plan ``Candidate`` s or table entries (dicts); FLOPs, params and FLOPs
            buckets are filled in.
        front_blocks / back_start: the active configuration (default: the one with the most FLOPs).
        self_stitch: front and back are one checkpoint, held once (depth pruning); every configuration must skip
            or keep blocks (``back_start >= front_blocks``), never run one twice.
        sampling / sampling_seed: supernet training's configuration sampler (``"uniform"``, ``"flops"`` or None).
        flops_seq_len: tokens per sequence at which LLM FLOPs are counted.
        selection_metric: ``{"name": ..., "higher_is_better": ...}``, the measured metric ``set_budget`` ranks by.
        Other arguments: as :class:`StitchedConfig`.
    """

    model_type = "hf_klas_stitchable"

    def __init__(self, front_config=None, back_config=None, stitch_configs=None, front_blocks: int | None = None,
                 back_start: int | None = None, self_stitch: bool = False, sampling: str | None = "uniform",
                 sampling_seed: int = 0, flops_seq_len: int = DEFAULT_SEQ_LEN, selection_metric: dict | None = None,
                 **kwargs):
        if sampling is not None and sampling not in SAMPLING:
            raise StitchPointError(f"Unknown supernet sampling {sampling!r}.",
                                   f"Use one of {SAMPLING}, or None to train the active configuration only.")
        front_config, back_config = as_config(front_config), as_config(back_config)
        self.self_stitch = bool(self_stitch)
        self.sampling = sampling
        self.sampling_seed = int(sampling_seed)
        self.flops_seq_len = int(flops_seq_len)
        self.selection_metric = dict(selection_metric) if selection_metric else None
        self.stitch_configs = []
        if front_config is not None and back_config is not None:
            if self.self_stitch and any(getattr(front_config, k, None) != getattr(back_config, k, None)
                                        for k in _SHAPE_KEYS):
                raise IncompatibleAnchorsError(
                    "self_stitch=True, but the front and back configs differ: a self-stitch holds one checkpoint.",
                    "Pass the same anchor config twice, or self_stitch=False for two anchors.")
            if kwargs.get("tie_word_embeddings") and not self.self_stitch:
                raise IncompatibleAnchorsError(
                    "tie_word_embeddings=True in a stitchable model of two anchors: the head (back) and the input "
                    "embedding (front) come from two models, so they cannot be one matrix.",
                    "Leave tie_word_embeddings unset; only a self-stitch of a tied anchor keeps them tied.")
            self.stitch_configs = self._table(front_config, back_config, stitch_configs or [],
                                              bool(kwargs.get("tie_word_embeddings")))
            if front_blocks is None and back_start is None:
                front_blocks, back_start = self.dearest_stitch
            front_blocks, back_start = _as_int(front_blocks, "front_blocks"), _as_int(back_start, "back_start")
        super().__init__(front_config=front_config, back_config=back_config, front_blocks=front_blocks,
                         back_start=back_start, **kwargs)  # checks the point is one of these anchors'
        if self.stitch_configs:
            self.stitch_info = self.stitch_info_of(self.entry(self.front_blocks, self.back_start))

    # ---- the table -------------------------------------------------------------------------------------------------
    def _table(self, f, b, configs, tied: bool) -> list[dict]:
        lm = family_of(b).task == CAUSAL_LM
        table, seen = [], set()
        for c in configs:
            i, j = _pair(c)
            i, j = _as_int(i, "front_blocks"), _as_int(j, "back_start")
            validate_stitch_point(f, b, i, j)
            if self.self_stitch and j < i:
                raise StitchPointError(
                    f"Configuration ({i}, {j}) of a self-stitch would run blocks {j + 1}-{i} twice; a stitchable "
                    "model holds each block once, with one KV-cache slot.",
                    "Use back_start >= front_blocks in a self-stitch (depth pruning).")
            if (i, j) in seen:
                raise StitchPointError(f"Configuration ({i}, {j}) is listed twice.",
                                       "Pass each (front_blocks, back_start) once.")
            seen.add((i, j))
            given = dict(c) if isinstance(c, dict) else {}
            entry = {"front_blocks": i, "back_start": j,
                     "flops": int(stitch_flops(f, b, i, j, seq_len=self.flops_seq_len if lm else None).total),
                     "params": int(stitch_params(f, b, i, j, tied_head=tied).total)}
            for key in ("bucket", "score", "source"):
                value = given.get(key, getattr(c, key, None))
                if value is not None and not (key == "bucket" and value < 0):
                    entry[key] = value
            entry["metrics"] = dict(given.get("metrics") or {})
            table.append(entry)
        if not table:
            raise StitchPointError("A stitchable model needs at least one stitch configuration.",
                                   "Pass stitch_configs=[(front_blocks, back_start), ...] or a plan with candidates.")
        if any("bucket" not in e for e in table):
            for e, bucket in zip(table, equal_width_buckets([e["flops"] for e in table])):
                e["bucket"] = bucket
        return table

    def stitch_info_of(self, entry: dict) -> dict:
        unit = (f"per sequence of {self.flops_seq_len} tokens" if self.task == CAUSAL_LM else "per image")
        return {"flops": entry["flops"], "params": entry["params"], "flops_unit": unit}

    @property
    def stitches(self) -> list[tuple[int, int]]:
        """Every configuration ``(front_blocks, back_start)``, in table order."""
        return [(e["front_blocks"], e["back_start"]) for e in self.stitch_configs]

    @property
    def active_stitch(self) -> tuple[int, int]:
        return (self.front_blocks, self.back_start)

    @property
    def dearest_stitch(self) -> tuple[int, int]:
        """The configuration with the most FLOPs (the active one unless chosen)."""
        best = max(self.stitch_configs, key=lambda e: (e["flops"], e["front_blocks"], e["back_start"]))
        return best["front_blocks"], best["back_start"]

    def entry(self, front_blocks: int, back_start: int) -> dict:
        for e in self.stitch_configs:
            if (e["front_blocks"], e["back_start"]) == (front_blocks, back_start):
                return e
        raise self._untrained(front_blocks, back_start)

    def table_text(self) -> str:
        """The table, one configuration a line (for errors and logs)."""
        metric = (self.selection_metric or {}).get("name")
        lines = []
        for e in sorted(self.stitch_configs, key=lambda e: e["flops"]):
            extra = f", {metric} {e['metrics'][metric]:.4g}" if metric in e["metrics"] else ""
            extra += f", score {e['score']:.4g}" if e.get("score") is not None else ""
            lines.append(f"  ({e['front_blocks']}, {e['back_start']}): {format_flops(e['flops'])}, "
                         f"{e['params'] / 1e6:.2f}M params{extra}")
        return "\n".join(lines)

    def _untrained(self, i, j) -> StitchPointError:
        return StitchPointError(f"Configuration ({i}, {j}) is not in this supernet: it has no trained stitch. Its "
                                f"configurations (front_blocks, back_start):\n{self.table_text()}",
                                "Pick one of the listed configurations, or build a stitchable model that includes it "
                                "(from_anchors(..., configs=[...]) / hf-klas finetune --plan).")

    def _trained(self, front_blocks, back_start) -> tuple[int, int]:
        i, j = _as_int(front_blocks, "front_blocks"), _as_int(back_start, "back_start")
        validate_stitch_point(self.front_config, self.back_config, i, j)  # out of these anchors' range
        self.entry(i, j)
        return i, j

    def check_stitch(self, front_blocks, back_start=None) -> tuple[int, int]:
        """``(i, j)`` of a configuration this model has trained, from ``(i, j)``, ``i, j`` or an object carrying
        ``front_blocks`` / ``back_start`` -- a stitched config or model of another anchor pair is refused."""
        value = (front_blocks, back_start) if back_start is not None else front_blocks
        other = getattr(value, "config", value)
        for side in ("front_config", "back_config"):
            theirs = getattr(other, side, None)
            if theirs is not None:
                mine = getattr(self, side)
                diff = [k for k in _SHAPE_KEYS if getattr(theirs, k, None) != getattr(mine, k, None)]
                if diff:
                    raise IncompatibleAnchorsError(
                        f"That stitch configuration belongs to another anchor pair: its {side.split('_')[0]} anchor "
                        f"differs from this model's in {', '.join(diff)}.",
                        f"Pass a configuration of this model's anchors:\n{self.table_text()}")
        return self._trained(*_pair(value))

    # ---- switching ---------------------------------------------------------------------------------------------------
    def activate(self, front_blocks: int, back_start: int) -> None:
        """Make ``(i, j)`` the active configuration (already validated): the stitched-stack description follows."""
        self.front_blocks, self.back_start = front_blocks, back_start
        self._describe_stitched_stack({})
        self.stitch_info = self.stitch_info_of(self.entry(front_blocks, back_start))

    def for_stitch(self, front_blocks: int, back_start: int) -> "StitchableConfig":
        """A copy describing configuration ``(i, j)`` (already validated) for one call, the table shared: what a
        pinned call reads as ``model.config`` while the model-wide default stays as it is."""
        config = copy.copy(self)
        config.activate(front_blocks, back_start)
        return config

    def part_config(self, which: str):
        """A part holds *every* block of its anchor (any configuration may run it); the front is also the back in a
        self-stitch."""
        cfg = copy.deepcopy(self.front_config if which == "front" or self.self_stitch else self.back_config)
        cfg.tie_word_embeddings = False
        return cfg

    def budget_flops_of(self, budget) -> float:
        """A budget in FLOPs: a number above 1, or a fraction in (0, 1] of the back anchor's FLOPs."""
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) \
                or budget <= 0:
            raise BudgetError(f"budget_flops={budget!r} is not a positive number.",
                              "Pass FLOPs (e.g. 2.5e9) or a fraction in (0, 1] of the back anchor's FLOPs (e.g. 0.6).")
        if budget > 1:
            return float(budget)
        lm = self.task == CAUSAL_LM
        return float(budget) * anchor_flops(self.back_config, seq_len=self.flops_seq_len if lm else None).total

    def budget_stitch(self, budget) -> tuple[int, int]:
        """The best known configuration within ``budget``: by the measured ``selection_metric`` when every
        configuration within budget has it; else KLAS's pick (highest FLOPs bucket, then the lowest selector score)
        when they have scores; else the one with the most FLOPs. Raises :class:`BudgetError` listing the table when
        none fits."""
        flops = self.budget_flops_of(budget)
        pool = [e for e in self.stitch_configs if e["flops"] <= flops * (1 + 1e-12)]
        if not pool:
            cheapest = min(e["flops"] for e in self.stitch_configs)
            raise BudgetError(f"A budget of {format_flops(flops)} is below every configuration of this model:\n"
                              f"{self.table_text()}",
                              f"Raise the budget to at least {cheapest:.6g} FLOPs "
                              f"({cheapest / self.budget_flops_of(1.0):.3f} of the back anchor).")
        metric = self.selection_metric or {}
        name = metric.get("name")
        if name and all(name in e["metrics"] for e in pool):
            sign = 1 if metric.get("higher_is_better", True) else -1
            best = max(pool, key=lambda e: (sign * e["metrics"][name], e["flops"]))
        elif all(e.get("score") is not None for e in pool):
            top = max(e["bucket"] for e in pool)
            best = min((e for e in pool if e["bucket"] == top), key=lambda e: (e["score"], -e["flops"]))
        else:
            best = max(pool, key=lambda e: (e["flops"], e["front_blocks"], e["back_start"]))
        return best["front_blocks"], best["back_start"]

    def record_metric(self, name: str, values: dict, higher_is_better: bool = True, rank_by: bool = True) -> None:
        """Store measured ``values`` (``{(i, j): value}``) of metric ``name`` in the table; ``rank_by``: let
        ``set_budget`` rank configurations by it."""
        for key, value in values.items():
            self.entry(*self._trained(*_pair(key)))["metrics"][name] = float(value)
        if rank_by:
            self.selection_metric = {"name": name, "higher_is_better": bool(higher_is_better)}

    # ---- supernet sampling -------------------------------------------------------------------------------------------
    def sample_index(self, step: int) -> int:
        """Table index drawn for training forward ``step``: a pure function of ``(sampling_seed, step)``, so every
        process of a distributed run trains the same configuration at a step and a resumed run continues the
        sequence. ``"flops"``: a FLOPs bucket uniformly (among non-empty ones), then a configuration in it."""
        rng = random.Random(self.sampling_seed * 1_000_003 + int(step))
        if self.sampling != "flops":
            return rng.randrange(len(self.stitch_configs))
        groups: dict[int, list[int]] = {}
        for idx, e in enumerate(self.stitch_configs):
            groups.setdefault(e["bucket"], []).append(idx)
        members = groups[sorted(groups)[rng.randrange(len(groups))]]
        return members[rng.randrange(len(members))]

    def ties_head(self) -> bool:
        """Whether head and input embedding may be one matrix: a self-stitch of an anchor that ties them."""
        return self.self_stitch and ties_embeddings(self.back_config)

    def to_diff_dict(self):
        out = super().to_diff_dict()
        full = self.to_dict()
        for key in ("stitch_configs", "self_stitch", "sampling", "sampling_seed", "flops_seq_len", "selection_metric"):
            out[key] = full[key]
        return out
