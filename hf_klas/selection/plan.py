"""StitchPlan: everything a selector decided, as one JSON file that round-trips exactly.

Why JSON only (no safetensors side file): the matrices are small (m·n ≤ a few thousand entries), JSON stays
human-readable and diffable, and Python writes floats with ``repr`` — the shortest string that parses back
to the identical float64 — so the round trip is exact. Non-finite entries (NaN = "not computed", ±inf) are
written as the strings "NaN", "Infinity", "-Infinity" so the file stays strict JSON.

Matrix convention: see :mod:`hf_klas.selection.scoring` (row i-1 ↔ front_blocks=i, column j ↔ back_start=j).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BudgetError, HfKlasError, VersionError
from ..flops import format_flops
from ..identity import AnchorDescriptor
from ..version import __version__
from .scoring import Candidate, all_configs

__all__ = ["AnchorDescriptor", "PlanExistsError", "StitchPlan", "PLAN_FILE", "PLAN_FORMAT_VERSION"]

PLAN_FILE = "plan.json"
PLAN_FORMAT = "hf_klas.stitch_plan"
PLAN_FORMAT_VERSION = 1
_MATRICES = ("score", "flops", "params", "theta")


class PlanExistsError(HfKlasError):
    """A plan directory already holds plan.json and overwrite was not requested."""


def _version_tuple(v: str) -> tuple[int, int]:
    m = re.match(r"\s*(\d+)\.(\d+)", str(v))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _enc_float(x: float):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return float(x)


def _dec_float(x) -> float:
    return float(x)  # float("NaN"), float("Infinity"), float("-Infinity") parse; numbers pass through


def _enc_matrix(t: torch.Tensor | None):
    if t is None:
        return None
    if t.dtype == torch.bool:
        return t.tolist()
    return [[_enc_float(v) for v in row] for row in t.tolist()]


def _dec_matrix(x, dtype=torch.float64) -> torch.Tensor | None:
    if x is None:
        return None
    if dtype == torch.bool:
        return torch.tensor(x, dtype=torch.bool).reshape(len(x), -1)
    return torch.tensor([[_dec_float(v) for v in row] for row in x], dtype=torch.float64).reshape(len(x), -1)


def _matrix(x, name: str, dtype=torch.float64) -> torch.Tensor | None:
    if x is None:
        return None
    t = torch.as_tensor(x).detach().to("cpu")
    if t.dim() != 2:
        raise ValueError(f"StitchPlan.{name} must be a 2-D [m, n] matrix, got shape {tuple(t.shape)}")
    return t.to(dtype)


def _eq_t(a, b) -> bool:
    """Exact equality, NaN == NaN (for round-trip checks)."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


@dataclass(eq=False)
class StitchPlan:
    """A selector's output: scores, costs and the candidate set for one (front, back) anchor pair.

    ``score`` is the method's [m, n] score, lower is better (Γ for KLAS).
    ``anchor_flops`` = (front anchor FLOPs, back anchor FLOPs), counted like ``flops`` (seq_len tokens or
    one image_size image). ``bucket_edges`` are the FLOPs bucket edges used for the candidate set.
    """

    method: str
    front: AnchorDescriptor
    back: AnchorDescriptor
    score: Any
    flops: Any
    valid_mask: Any
    anchor_flops: tuple[float, float]
    params: Any = None
    theta: Any = None
    method_params: dict = field(default_factory=dict)
    seq_len: int | None = None
    image_size: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    bucket_edges: list[float] | None = None
    calibration: dict = field(default_factory=dict)
    created_with: str = __version__
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.front, dict):
            self.front = AnchorDescriptor.from_dict(self.front)
        if isinstance(self.back, dict):
            self.back = AnchorDescriptor.from_dict(self.back)
        self.score = _matrix(self.score, "score")
        self.flops = _matrix(self.flops, "flops")
        self.valid_mask = (torch.ones(self.score.shape, dtype=torch.bool) if self.valid_mask is None
                           else _matrix(self.valid_mask, "valid_mask", torch.bool))
        self.params = _matrix(self.params, "params")
        self.theta = _matrix(self.theta, "theta")
        shape = tuple(self.score.shape)
        for name in ("flops", "valid_mask", "params", "theta"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"StitchPlan.{name} has shape {tuple(t.shape)}, expected {shape} like score")
        m, n = shape
        for desc, count, side in ((self.front, m, "front"), (self.back, n, "back")):
            if desc.num_blocks and desc.num_blocks != count:
                raise ValueError(f"{side} anchor has {desc.num_blocks} blocks but the matrices have {count} "
                                 f"{'rows' if side == 'front' else 'columns'}")
        self.anchor_flops = tuple(float(x) for x in self.anchor_flops)
        if len(self.anchor_flops) != 2 or not all(math.isfinite(x) and x > 0 for x in self.anchor_flops):
            raise ValueError(f"anchor_flops must be two positive numbers, got {self.anchor_flops}")
        self.candidates = [c if isinstance(c, Candidate) else Candidate.from_dict(c) for c in self.candidates]
        for c in self.candidates:
            if not (1 <= c.front_blocks <= m and 0 <= c.back_start <= n - 1):
                raise ValueError(f"candidate {c} is outside the {m}×{n} configuration grid")
        if self.bucket_edges is not None:
            self.bucket_edges = [float(x) for x in self.bucket_edges]

    # ---- convenience --------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.score.shape)

    def __eq__(self, other) -> bool:
        if not isinstance(other, StitchPlan):
            return NotImplemented
        return (
            all(_eq_t(getattr(self, k), getattr(other, k)) for k in ("score", "flops", "valid_mask", "params", "theta"))
            and self.to_dict(matrices=False) == other.to_dict(matrices=False)
        )

    # ---- serialisation ------------------------------------------------------------------------------------
    def to_dict(self, matrices: bool = True) -> dict:
        d = {
            "format": PLAN_FORMAT,
            "format_version": PLAN_FORMAT_VERSION,
            "created_with": self.created_with,
            "method": self.method,
            "method_params": self.method_params,
            "front": asdict(self.front),
            "back": asdict(self.back),
            "seq_len": self.seq_len,
            "image_size": self.image_size,
            "anchor_flops": [_enc_float(x) for x in self.anchor_flops],
            "bucket_edges": self.bucket_edges,
            "candidates": [dict(c.to_dict(), score=_enc_float(c.score), flops=_enc_float(c.flops))
                           for c in self.candidates],
            "calibration": self.calibration,
            "extra": self.extra,
        }
        if matrices:
            d["matrices"] = {k: _enc_matrix(getattr(self, k)) for k in _MATRICES}
            d["matrices"]["valid_mask"] = _enc_matrix(self.valid_mask)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StitchPlan":
        if d.get("format") != PLAN_FORMAT:
            raise HfKlasError(f"not a hf_klas stitch plan (format={d.get('format')!r}).",
                              "pass the directory written by StitchPlan.save / a selector.")
        written = str(d.get("created_with", "0.0.0"))
        newer_format = int(d.get("format_version", 1)) > PLAN_FORMAT_VERSION
        if _version_tuple(written) > _version_tuple(__version__) or newer_format:
            raise VersionError(
                f"this plan was written by hf_klas {written} (plan format {d.get('format_version')}); the "
                f"installed hf_klas {__version__} reads plan format <= {PLAN_FORMAT_VERSION} from versions "
                f"<= {'.'.join(map(str, _version_tuple(__version__)))}.x.",
                f"upgrade hf_klas (pip install -U hf-klas) to >= {written}, or re-run the selection with this "
                "version.",
            )
        mats = d["matrices"]
        return cls(
            method=d["method"],
            method_params=d.get("method_params") or {},
            front=AnchorDescriptor.from_dict(d["front"]),
            back=AnchorDescriptor.from_dict(d["back"]),
            seq_len=d.get("seq_len"),
            image_size=d.get("image_size"),
            score=_dec_matrix(mats["score"]),
            flops=_dec_matrix(mats["flops"]),
            params=_dec_matrix(mats.get("params")),
            theta=_dec_matrix(mats.get("theta")),
            valid_mask=_dec_matrix(mats["valid_mask"], torch.bool),
            anchor_flops=tuple(_dec_float(x) for x in d["anchor_flops"]),
            candidates=[Candidate.from_dict(dict(c, score=_dec_float(c.get("score", c.get("gamma"))),
                                                 flops=_dec_float(c["flops"])))
                        for c in d.get("candidates", [])],
            bucket_edges=d.get("bucket_edges"),
            calibration=d.get("calibration") or {},
            created_with=written,
            extra=d.get("extra") or {},
        )

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``<directory>/plan.json`` (creating the directory). Refuses to replace an existing plan unless
        ``overwrite=True``; everything is validated and serialised before anything is written."""
        directory = Path(directory)
        target = directory / PLAN_FILE
        if target.exists() and not overwrite:
            raise PlanExistsError(f"{target} already exists.",
                                  "choose a new directory, or pass overwrite=True to replace that plan.")
        try:
            text = json.dumps(self.to_dict(), indent=1, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise HfKlasError(
                f"the plan cannot be written as JSON: {e}.",
                "keep method_params / calibration / extra to JSON types (str, int, finite float, bool, None, "
                "lists, dicts with string keys).",
            ) from e
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".plan.", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)  # atomic: a crash never leaves a half-written plan.json
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "StitchPlan":
        """Read ``<directory>/plan.json`` (or a path to the file itself); refuses plans from a newer hf_klas."""
        p = Path(directory)
        path = p if p.is_file() else p / PLAN_FILE
        if not path.exists():
            raise HfKlasError(f"no stitch plan at {path}.",
                              "pass the directory given to StitchPlan.save (it holds plan.json).")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise HfKlasError(f"{path} is not valid JSON ({e}).", "re-run the selection to rewrite the plan.") from e
        return cls.from_dict(d)

    # ---- budget ------------------------------------------------------------------------------------------
    def feasible_range(self) -> tuple[float, float]:
        """(cheapest valid configuration's FLOPs, dearer anchor's FLOPs): the budgets best_for_budget accepts."""
        ok = self.valid_mask & torch.isfinite(self.score) & torch.isfinite(self.flops)
        if not ok.any():
            raise BudgetError("the plan has no valid configuration with a finite score.",
                              "re-run the selection with a larger valid_mask / check the score matrix.")
        return float(self.flops[ok].min()), max(self.anchor_flops)

    def resolve_budget(self, budget_flops: float) -> float:
        """A number of FLOPs, or a float in (0, 1] read as a fraction of the back anchor's FLOPs."""
        is_number = isinstance(budget_flops, (int, float)) and not isinstance(budget_flops, bool)
        if not is_number or not math.isfinite(budget_flops) or budget_flops <= 0:
            lo, hi = self.feasible_range()
            raise BudgetError(
                f"budget {budget_flops!r} is not a positive number; feasible range is {format_flops(lo)} to "
                f"{format_flops(hi)} ({lo:.6g} to {hi:.6g} FLOPs).",
                "pass FLOPs (e.g. 2.5e9) or a fraction in (0, 1] of the back anchor's FLOPs (e.g. 0.6).",
            )
        return float(budget_flops) * self.anchor_flops[1] if budget_flops <= 1 else float(budget_flops)

    def best_for_budget(self, budget_flops: float, policy: str = "top_bucket") -> Candidate:
        """The configuration to build for a FLOPs budget (number, or fraction (0, 1] of the back anchor).

        Pool: the candidate set, or all valid configurations if no candidate fits (warned). ``policy``:
        ``"top_bucket"`` (default) — among configurations that fit, those in the highest FLOPs bucket, then
        lowest score: scores are compared within a bucket, as KLAS does, and the budget is used rather than
        jumping to a much cheaper configuration that happens to score lower; ``"lowest"`` — lowest score
        among all that fit. Raises BudgetError (with the feasible range) below the cheapest valid
        configuration or above the dearer anchor.
        """
        if policy not in ("top_bucket", "lowest"):
            raise ValueError(f"policy must be 'top_bucket' or 'lowest', got {policy!r}")
        budget = self.resolve_budget(budget_flops)
        lo, hi = self.feasible_range()
        rng = (f"feasible range is {format_flops(lo)} to {format_flops(hi)} ({lo:.6g} to {hi:.6g} FLOPs; "
               f"fractions {lo / self.anchor_flops[1]:.3f} to {hi / self.anchor_flops[1]:.3f} of the back anchor)")
        if budget < lo:
            raise BudgetError(f"budget {format_flops(budget)} is below the cheapest valid configuration; {rng}.",
                              f"raise the budget to at least {lo:.6g} FLOPs, or use a smaller front anchor.")
        if budget > hi * (1 + 1e-12):
            raise BudgetError(f"budget {format_flops(budget)} is above the dearer anchor's own cost; {rng}.",
                              "use the back anchor itself (it fits the budget), or pass a budget inside the range.")
        pool = [c for c in self.candidates if c.flops <= budget]
        if not pool:
            if self.candidates:
                warnings.warn(f"no candidate fits {format_flops(budget)}; choosing among all valid configurations",
                              stacklevel=2)
            pool = [c for c in all_configs(self.score, self.flops, self.valid_mask, self.bucket_edges)
                    if c.flops <= budget]
        if policy == "top_bucket":
            top = max(c.bucket for c in pool)
            pool = [c for c in pool if c.bucket == top]
        return min(pool, key=lambda c: (c.score, -c.flops, c.front_blocks, c.back_start))

    # ---- plots -------------------------------------------------------------------------------------------
    def _score_label(self) -> str:
        return "Γ" if self.method.lower() == "klas" else f"{self.method} score"

    def plot_heatmap(self, path_png: str | os.PathLike) -> Path:
        """Score heatmap (log colour scale): front blocks on y, back start on x, invalid cells blank,
        candidates circled."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm, Normalize
        from matplotlib.figure import Figure

        m, n = self.shape
        s = self.score.clone()
        ok = self.valid_mask & torch.isfinite(s)
        pos = ok & (s > 0)
        if pos.any():  # log scale over the positive valid scores; the rest is left blank
            norm = LogNorm(vmin=float(s[pos].min()), vmax=float(s[pos].max()) * (1 + 1e-9))
            shown = pos
        else:
            norm, shown = Normalize(), ok
        data = torch.where(shown, s, torch.full_like(s, math.nan)).numpy()
        fig = Figure(figsize=(max(4.0, 0.25 * n + 2.5), max(3.5, 0.25 * m + 1.8)))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(data, origin="lower", aspect="auto", norm=norm, cmap="viridis",
                       extent=(-0.5, n - 0.5, 0.5, m + 0.5), interpolation="nearest")
        fig.colorbar(im, ax=ax, label=f"{self._score_label()} (log scale, lower is better)"
                     if isinstance(norm, LogNorm) else self._score_label())
        if self.candidates:
            ax.scatter([c.back_start for c in self.candidates], [c.front_blocks for c in self.candidates],
                       s=40, facecolors="none", edgecolors="red", linewidths=1.5, label="candidates")
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.06), fontsize=7, frameon=False)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"back start j (back: {self.back.name_or_path})")
        ax.set_ylabel(f"front blocks i (front: {self.front.name_or_path})")
        ax.set_title(f"{self.method}: {self._score_label()} per stitch configuration", fontsize=9)
        path = Path(path_png)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def plot_candidates(self, path_png: str | os.PathLike) -> Path:
        """Every valid configuration as (FLOPs, score), candidates highlighted, bucket edges as vertical lines,
        anchors' FLOPs dotted."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        ok = self.valid_mask & torch.isfinite(self.score) & torch.isfinite(self.flops)
        fig = Figure(figsize=(7, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.scatter(self.flops[ok].numpy(), self.score[ok].numpy(), s=10, c="0.6", label="valid configurations")
        if self.candidates:
            ax.scatter([c.flops for c in self.candidates], [c.score for c in self.candidates], s=30, c="red",
                       label="candidates", zorder=3)
        for k, e in enumerate(self.bucket_edges or []):
            ax.axvline(e, color="0.8", lw=0.8, ls="--", label="bucket edges" if k == 0 else None, zorder=0)
        for x, name in zip(self.anchor_flops, ("front anchor", "back anchor")):
            ax.axvline(x, color="k", lw=1.0, ls=":", zorder=0)
            ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                        va="top", ha="right")
        if ok.any() and bool((self.score[ok] > 0).all()):
            ax.set_yscale("log")
        ax.set_xlabel("forward FLOPs" + (f" (seq_len {self.seq_len})" if self.seq_len else "")
                      + (f" (image {self.image_size})" if self.image_size else ""))
        ax.set_ylabel(f"{self._score_label()} (lower is better)")
        ax.set_title(f"{self.method}: {self.front.name_or_path} → {self.back.name_or_path}", fontsize=9)
        ax.legend(fontsize=7)
        path = Path(path_png)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path
