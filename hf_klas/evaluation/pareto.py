"""Quality/FLOPs Pareto fronts, their area (AUC), a JSON table and a plot.

AUC definition (KLAS leaves the normalisation open; this is hf_klas's choice, also written into every JSON
table as ``auc_definition``):

* FLOPs are normalised to ``x = (flops - flops_min) / (flops_max - flops_min)`` where ``flops_min`` /
  ``flops_max`` are the two anchors' FLOPs; points outside are clipped to [0, 1] (a point cheaper than the
  small anchor counts from x = 0; a point dearer than the large anchor lands on x = 1 and adds no area).
* The front is the *attainment curve*: ``A(x)`` = best metric among points with normalised cost <= x (max
  when higher is better, min when lower is better). It is a right-continuous step function: no interpolation,
  because a budget between two configurations can only buy the cheaper one.
* Before the cheapest point, ``A`` takes the cheapest point's value (backward extension). Normally the small
  anchor is in the set, sits at x = 0 and this never applies; when it is absent, the extension avoids having
  to invent a "worst" metric value, and it behaves identically for higher- and lower-is-better metrics.
* ``AUC = integral_0^1 A(x) dx / 1``: the mean best metric over the normalised budget range, in metric
  units (e.g. accuracy or ROUGE-1; for perplexity lower AUC is better). With ``metric_range=(lo, hi)`` the
  metric is first mapped to ``(m - lo) / (hi - lo)`` (direction unchanged), i.e. ``(AUC - lo) / (hi - lo)``.
* Points with a non-finite metric (failed runs) are ignored by the front and the AUC.

KLAS's Step 5 suggests a trapezoid; the step function is the conservative reading (the trapezoid credits
budgets between two configurations with quality no configuration reaches).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DataError
from ..version import __version__

__all__ = ["ParetoPoint", "pareto_front", "front_auc", "attainment_curve", "write_pareto_table",
           "plot_pareto", "AUC_DEFINITION"]

AUC_DEFINITION = (
    "FLOPs normalised to [0,1] between the anchors' FLOPs (flops_min, flops_max), points outside clipped; "
    "attainment curve A(x) = best metric among points with normalised FLOPs <= x (step function, max if "
    "higher_is_better else min); before the cheapest point A takes the cheapest point's value; "
    "AUC = integral of A over [0,1] divided by 1 (mean best metric over the budget range, metric units); "
    "with metric_range (lo, hi) the metric is first mapped to (m - lo) / (hi - lo); non-finite metrics ignored."
)

_KINDS = ("anchor", "stitch")


@dataclass
class ParetoPoint:
    """One evaluated model: an anchor or a stitch configuration, with its forward FLOPs and quality."""

    name: str
    flops: float
    params: float
    metric: float
    kind: str = "stitch"
    config: dict | None = None  # {"front_blocks": i, "back_start": j} for stitches
    selector: str | None = None
    scores: dict | None = None  # every number measured with ``metric`` (e.g. rouge1/rouge2/rougeL/rougeLsum)

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise DataError(f"ParetoPoint {self.name!r} has kind={self.kind!r}.", f"Use one of {_KINDS}.")
        if not (isinstance(self.flops, (int, float)) and math.isfinite(self.flops) and self.flops >= 0):
            raise DataError(f"ParetoPoint {self.name!r} has flops={self.flops!r}.",
                            "Pass the non-negative forward FLOPs from hf_klas.flops.")


def _finite(points):
    return [p for p in points if isinstance(p.metric, (int, float)) and math.isfinite(p.metric)]


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def pareto_front(points, higher_is_better: bool = True) -> list[ParetoPoint]:
    """Non-dominated points sorted by FLOPs (ties: better metric first, then name).

    A point is dominated when another costs no more *and* is at least as good, strictly better in one of the
    two. Identical (flops, metric) points do not dominate each other, so both stay.
    """
    pts = sorted(_finite(points), key=lambda p: (p.flops, -p.metric if higher_is_better else p.metric, p.name))
    front = []
    for p in pts:
        dominated = any(
            q is not p and q.flops <= p.flops
            and (q.metric >= p.metric if higher_is_better else q.metric <= p.metric)
            and (q.flops < p.flops or q.metric != p.metric)
            for q in pts)
        if not dominated:
            front.append(p)
    return front


def _check_range(flops_min, flops_max):
    if not (math.isfinite(flops_min) and math.isfinite(flops_max) and flops_max > flops_min):
        raise DataError(f"AUC needs flops_min < flops_max; got {flops_min} and {flops_max}.",
                        "Pass the small and large anchors' FLOPs (hf_klas.flops) as flops_min and flops_max.")


def attainment_curve(points, flops_min: float, flops_max: float, higher_is_better: bool = True):
    """Steps ``[(x_k, value_k)]`` of the attainment curve: value_k holds on [x_k, x_{k+1}) (last one to 1).

    The first step starts at x = 0 (backward extension of the cheapest point, see the module docstring).
    """
    _check_range(flops_min, flops_max)
    pts = _finite(points)
    if not pts:
        raise DataError("No point with a finite metric to build a front from.",
                        "Evaluate at least one anchor or stitch; failed runs (NaN metric) are ignored.")
    span = flops_max - flops_min
    xs = sorted(((min(max((p.flops - flops_min) / span, 0.0), 1.0), p.metric) for p in pts),
                key=lambda t: t[0])
    steps: list[tuple[float, float]] = []
    best = None
    for x, m in xs:
        if best is None or _better(m, best, higher_is_better):
            best = m
            if steps and steps[-1][0] == x:
                steps[-1] = (x, best)
            else:
                steps.append((x, best))
    steps[0] = (0.0, steps[0][1])
    return steps


def front_auc(points, flops_min: float, flops_max: float, higher_is_better: bool = True,
              metric_range: tuple[float, float] | None = None) -> float:
    """Area under the attainment curve over normalised FLOPs [0, 1]; definition in the module docstring."""
    steps = attainment_curve(points, flops_min, flops_max, higher_is_better)
    area = 0.0
    for k, (x, value) in enumerate(steps):
        x_next = steps[k + 1][0] if k + 1 < len(steps) else 1.0
        area += value * (x_next - x)
    auc = area / 1.0  # width of the normalised budget range
    if metric_range is not None:
        lo, hi = metric_range
        if not hi > lo:
            raise DataError(f"metric_range={metric_range} needs lo < hi.", "Pass (worst_or_min, max) with lo < hi.")
        auc = (auc - lo) / (hi - lo)
    return auc


def _anchor_range(points):
    anchors = [p for p in points if p.kind == "anchor"]
    ref = anchors if len(anchors) >= 2 else points
    if not ref:
        raise DataError("No points given.", "Pass at least the two anchors.")
    return min(p.flops for p in ref), max(p.flops for p in ref)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _summary(points, higher_is_better, flops_min, flops_max, metric_range):
    front = pareto_front(points, higher_is_better)
    try:
        auc = front_auc(points, flops_min, flops_max, higher_is_better, metric_range)
    except DataError:
        auc = None
    return {"front": [p.name for p in front], "auc": auc}


def write_pareto_table(points, path_json, higher_is_better: bool = True, flops_min: float | None = None,
                       flops_max: float | None = None, metric_name: str = "metric",
                       metric_range: tuple[float, float] | None = None) -> dict:
    """Write points, front, AUC and the AUC definition as JSON; returns the written dict.

    Why per-selector entries: one table usually holds several selectors' stitches plus the shared anchors;
    ``by_selector`` gives each selector's own front and AUC with the anchors included, so selectors are
    compared on equal terms. ``flops_min/max`` default to the anchors' FLOPs (all points if < 2 anchors).
    """
    points = list(points)
    auto_min, auto_max = _anchor_range(points)
    flops_min = auto_min if flops_min is None else flops_min
    flops_max = auto_max if flops_max is None else flops_max
    anchors = [p for p in points if p.kind == "anchor"]
    selectors = sorted({p.selector for p in points if p.kind == "stitch" and p.selector is not None})
    table = {
        "hf_klas_version": __version__,
        "metric_name": metric_name,
        "higher_is_better": higher_is_better,
        "flops_min": flops_min,
        "flops_max": flops_max,
        "metric_range": list(metric_range) if metric_range else None,
        "auc_definition": AUC_DEFINITION,
        "points": [asdict(p) for p in points],
        **_summary(points, higher_is_better, flops_min, flops_max, metric_range),
        "by_selector": {
            s: _summary(anchors + [p for p in points if p.kind == "stitch" and p.selector == s],
                        higher_is_better, flops_min, flops_max, metric_range)
            for s in selectors},
    }
    path = Path(path_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(table), indent=2, allow_nan=False) + "\n")
    return table


def _flops_unit(max_flops: float) -> tuple[float, str]:
    for scale, unit in ((1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if max_flops >= scale:
            return scale, unit
    return 1.0, "FLOPs"


def plot_pareto(series: dict, path_png, metric_name: str = "metric", title: str = "",
                higher_is_better: bool = True, flops_min: float | None = None,
                flops_max: float | None = None) -> Path:
    """Plot each series' stitches (dots) and front (step line, own colour); anchors as labelled stars.

    Uses a bare Agg ``Figure`` (no pyplot), so it never touches the global backend and works headless. Legend
    entries carry each series' AUC (anchor FLOPs range, see the module docstring) when it can be computed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    all_points = [p for pts in series.values() for p in pts]
    if not all_points:
        raise DataError("plot_pareto got no points.", "Pass {selector_name: [ParetoPoint, ...]}.")
    auto_min, auto_max = _anchor_range(all_points)
    flops_min = auto_min if flops_min is None else flops_min
    flops_max = auto_max if flops_max is None else flops_max
    scale, unit = _flops_unit(max(p.flops for p in all_points))

    fig = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{k}" for k in range(10)]
    x_right = max(max(p.flops for p in all_points), flops_max) / scale
    for k, (name, pts) in enumerate(series.items()):
        color = colors[k % len(colors)]
        stitches = _finite([p for p in pts if p.kind == "stitch"])
        if stitches:
            ax.scatter([p.flops / scale for p in stitches], [p.metric for p in stitches], s=18, alpha=0.45,
                       color=color, edgecolors="none")
        front = pareto_front(pts, higher_is_better)
        label = name
        try:
            label += f" (AUC {front_auc(pts, flops_min, flops_max, higher_is_better):.4g})"
        except DataError:
            pass
        if front:
            xs = [p.flops / scale for p in front] + [x_right]
            ys = [p.metric for p in front] + [front[-1].metric]
            ax.step(xs, ys, where="post", color=color, lw=1.8, label=label)
    seen = set()
    for p in all_points:
        if p.kind != "anchor" or p.name in seen or not math.isfinite(p.metric):
            continue
        seen.add(p.name)
        ax.scatter([p.flops / scale], [p.metric], marker="*", s=220, color="black", zorder=5)
        ax.annotate(p.name, (p.flops / scale, p.metric), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlabel(f"forward {unit}")
    ax.set_ylabel(metric_name + ("" if higher_is_better else " (lower is better)"))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
