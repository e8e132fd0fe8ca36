"""``hf-klas evaluate`` and ``hf-klas pareto``: thin runners over :mod:`hf_klas.evaluation`'s functions.

* :class:`EvaluateOptions` / :func:`run_evaluate` -- one model (stitched directory, anchor alias / directory /
  Hub id): perplexity (text), ROUGE (generation from a prompt column, scored against a target column) or top-1
  accuracy (images), with the model's forward FLOPs and parameters.
* :class:`ParetoOptions` / :func:`run_pareto` -- every candidate of a plan directory (built from the anchors with
  the least-squares stitch, i.e. before finetuning) and/or stitched model directories (e.g. the ``stitch_i<i>_j<j>``
  folders ``hf-klas finetune --plan`` writes) and stitchable models (the ``output_dir`` it writes: every
  configuration is evaluated by switching, no copy), plus both anchors; writes ``pareto.json`` (points, front, AUC
  and its definition), ``pareto.png`` (anchors as stars, one front per series).

FLOPs are :mod:`hf_klas.flops` numbers (one sequence of ``seq_len`` tokens, or one image), the same the selector
and the plan use. ``metric="auto"``: accuracy for image classifiers; for causal LMs ROUGE when the data has the
prompt and target columns (``debian_descriptions`` does), perplexity otherwise.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..building import StitchedModel
from ..building.fit import check_stitch_init
from ..calibration import calibration_from_path
from ..configuration_stitchable import StitchableConfig
from ..configuration_stitched import StitchedConfig
from ..data import get_dataset
from ..errors import DataError, HfKlasError
from ..families import CAUSAL_LM, family_of, task_of
from ..flops import anchor_flops, stitch_flops
from ..loading import load_any, resolve_anchor, same_anchor
from ..model_card import write_model_card
from ..selection.plan import StitchPlan
from . import ParetoPoint, front_auc, pareto_front, plot_pareto, write_pareto_table
from .metrics import METRICS as METRIC_REGISTRY
from .metrics import ROUGE_TYPES

__all__ = ["EvaluateOptions", "ParetoOptions", "run_evaluate", "run_pareto", "evaluate_model", "metric_names"]

def metric_names() -> tuple[str, ...]:
    """What ``metric=`` accepts: "auto" and every registered metric (:mod:`hf_klas.evaluation.metrics`), read
    when asked, so a metric defined after import is accepted too."""
    return ("auto", *METRIC_REGISTRY)


@dataclass
class _EvalData:
    """Options shared by ``evaluate`` and ``pareto``: what to measure on which data."""

    metric: str = field(default="auto", metadata={
        "help": "; ".join(f"{name}: {cls.description} [{cls.task}; needs {', '.join(cls.needs)}]"
                          for name, cls in METRIC_REGISTRY.items())
                + "; auto: the task's first metric the data has columns for (LLMs: rouge1 with prompt/target "
                  "columns, else perplexity; images: accuracy)."})
    dataset: str | None = field(default=None, metadata={
        "help": "Evaluation data: debian_descriptions, fashion_mnist, a .json/.jsonl/.csv/.parquet/.txt file, a "
                "save_to_disk directory or a Hub dataset; default debian_descriptions (LLMs) / fashion_mnist "
                "(images)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    split: str = field(default="test", metadata={
        "help": "Split to evaluate on: 'test' for final numbers only; compare, tune and stop on 'validation' "
                "(fashion_mnist: train / validation / test; debian_descriptions: train / validation / test)."})
    text_column: str = field(default="text", metadata={
        "help": "Text column for perplexity (or a pre-tokenised input_ids column; with prompt/target columns and "
                "no text column, prompt + ' ' + target)."})
    prompt_column: str = field(default="prompt", metadata={"help": "Prompt column for ROUGE."})
    target_column: str = field(default="target", metadata={"help": "Reference column for ROUGE."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default pixel_values/image)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default labels/label)."})
    max_samples: int | None = field(default=200, metadata={"help": "Evaluate on the first N examples."})
    batch_size: int = field(default=8, metadata={"help": "Batch size."})
    max_length: int = field(default=512, metadata={"help": "Max tokens per text (perplexity)."})
    max_new_tokens: int = field(default=32, metadata={"help": "Generated tokens per prompt (ROUGE)."})
    first_line_only: bool = field(default=True, metadata={
        "help": "ROUGE: score only the first generated line (one-line targets such as Debian synopses)."})
    seq_len: int = field(default=128, metadata={"help": "Tokens per sequence at which LLM FLOPs are counted."})
    seed: int = field(default=0, metadata={"help": "Seed of ROUGE's bootstrap aggregation."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


@dataclass
class EvaluateOptions(_EvalData):
    """Options of ``hf-klas evaluate`` / :func:`run_evaluate`."""

    model: str | None = field(default=None, metadata={
        "help": "Model: a stitched model directory / Hub id, or an anchor (alias, directory, Hub id, .gguf)."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the result to this JSON file."})


@dataclass
class ParetoOptions(_EvalData):
    """Options of ``hf-klas pareto`` / :func:`run_pareto`."""

    plan: str | None = field(default=None, metadata={
        "help": "Plan directory (hf-klas select): each candidate is built from the anchors (stitch_init) and "
                "evaluated."})
    models: list[str] = field(default_factory=list, metadata={
        "help": "Stitched model directories to evaluate (e.g. finetuned stitch_i*_j* folders); a stitchable model "
                "counts every configuration."})
    models_dir: str | None = field(default=None, metadata={
        "help": "hf-klas finetune --plan output: a stitchable model (every configuration, by switching), or a "
                "directory whose sub-directories are stitched or stitchable models."})
    record_metrics: bool = field(default=False, metadata={
        "help": "Write each stitchable configuration's measured metric into that model's config.json and model card "
                "(set_budget then picks by it)."})
    front: str | None = field(default=None, metadata={
        "help": "Front anchor (default: the plan's / the stitched models' recorded front anchor)."})
    back: str | None = field(default=None, metadata={"help": "Back anchor (default: recorded, as front)."})
    include_anchors: bool = field(default=True, metadata={"help": "Evaluate both anchors as reference points."})
    stitch_init: str = field(default="least_squares", metadata={
        "help": "How plan candidates are initialised: least_squares or identity."})
    calibration: str | None = field(default=None, metadata={
        "help": "Calibration data for the least-squares init (as hf-klas select); default: the offline default."})
    series_name: str | None = field(default=None, metadata={
        "help": "Legend name of the models' series (default 'finetuned'); plan candidates use the plan's method."})
    out_dir: str = field(default="pareto", metadata={"help": "Where pareto.json and pareto.png are written."})
    title: str = field(default="", metadata={"help": "Plot title."})


# ---- evaluation of one model -----------------------------------------------------------------------------------


def _resolve_metric(metric: str, task: str, columns: list[str], opts: _EvalData) -> str:
    if metric not in metric_names():
        raise HfKlasError(f"Unknown metric {metric!r}.", f"Use one of {', '.join(metric_names())}.")
    mine = {name: cls for name, cls in METRIC_REGISTRY.items() if cls.task == task}
    if metric == "auto":
        ranked = sorted((cls.auto_priority, name) for name, cls in mine.items()
                        if cls.auto_priority is not None and cls.applies(columns, opts))
        if not ranked:
            raise HfKlasError(f"No metric applies to a {task} model with columns {columns}.",
                              f"Name one of {', '.join(mine)} and the columns it reads.")
        return ranked[0][1]
    if metric not in mine:
        words = {CAUSAL_LM: "causal LMs"}
        theirs = METRIC_REGISTRY[metric].task
        raise HfKlasError(f"Metric {metric!r} applies to {words.get(theirs, 'image classifiers')}, not to "
                          f"{words.get(task, 'image classifiers')}.", f"Use one of {', '.join(mine)}.")
    return metric


def _load_data(opts: _EvalData, task: str):
    name = opts.dataset or ("debian_descriptions" if task == CAUSAL_LM else "fashion_mnist")
    return get_dataset(name, opts.split, opts.dataset_config, limit=opts.max_samples)


def evaluate_model(model, preprocessor, ds, metric: str, opts: _EvalData) -> dict:
    """``{"metric": name, "value": v, "higher_is_better": ..., ...}`` for one loaded model on a loaded dataset."""
    metric = _resolve_metric(metric, task_of(model), ds.column_names, opts)
    cls = METRIC_REGISTRY[metric]
    out: dict = {"metric": metric, "samples": len(ds)}
    out.update(cls.compute(model, preprocessor, ds, opts))
    out["higher_is_better"] = cls.higher_is_better
    return out


def _cost(model, seq_len: int) -> tuple[float, float]:
    """(forward FLOPs, parameters) for a stitched model or an anchor."""
    cfg = model.config
    lm = task_of(model) == CAUSAL_LM
    if getattr(cfg, "front_blocks", None) is not None:
        flops = stitch_flops(cfg.front_config, cfg.back_config, cfg.front_blocks, cfg.back_start,
                             seq_len=seq_len if lm else None).total
    else:
        flops = anchor_flops(cfg, seq_len=seq_len if lm else None).total
    if isinstance(cfg, StitchableConfig):  # the active configuration's own size, not every stitch's
        return float(flops), float(cfg.stitch_info["params"])
    return float(flops), float(sum(p.numel() for p in model.parameters()))


def run_evaluate(opts: EvaluateOptions | None = None, **kwargs) -> dict:
    """``hf-klas evaluate``: one model, one metric; returns (and optionally writes) a JSON-able result."""
    opts = _options(EvaluateOptions, opts, kwargs)
    if not opts.model:
        raise HfKlasError("No model to evaluate.", "Pass model=<stitched model dir, anchor alias, dir or Hub id>.")
    if opts.metric not in metric_names():
        raise HfKlasError(f"Unknown metric {opts.metric!r}.", f"Use one of {', '.join(metric_names())}.")
    t0 = time.perf_counter()
    model, preprocessor, stitched = load_any(opts.model)
    ds = _load_data(opts, task_of(model))
    result = evaluate_model(model, preprocessor, ds, opts.metric, opts)
    flops, params = _cost(model, opts.seq_len)
    result.update({"model": opts.model, "stitched": stitched, "flops": flops, "params": params,
                   "flops_unit": f"per sequence of {opts.seq_len} tokens" if task_of(model) == CAUSAL_LM
                   else "per image", "seconds": time.perf_counter() - t0})
    if stitched:
        result["config"] = {"front_blocks": model.config.front_blocks, "back_start": model.config.back_start}
    if opts.output_json:
        path = Path(opts.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


# ---- Pareto front ----------------------------------------------------------------------------------------------


def _options(cls, opts, kwargs):
    if opts is None:
        return cls(**kwargs)
    if kwargs:
        from dataclasses import replace

        return replace(opts, **kwargs)
    return opts


def _model_type(directory: Path) -> str | None:
    config = directory / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def _model_dirs(opts: ParetoOptions) -> list[str]:
    dirs = list(opts.models)
    if opts.models_dir:
        root = Path(opts.models_dir)
        if not root.is_dir():
            raise HfKlasError(f"models_dir {root} is not a directory.",
                              "Pass the output_dir of hf-klas finetune --plan.")
        if _model_type(root) == StitchableConfig.model_type:  # its stitch_i*_j* folders are copies of its configs
            dirs.append(str(root))
        else:
            dirs += [str(p) for p in sorted(root.iterdir()) if p.is_dir()
                     and _model_type(p) in (StitchedConfig.model_type, StitchableConfig.model_type)]
    for d in dirs:
        if not (Path(d) / "config.json").is_file():
            raise HfKlasError(f"{d} is not a saved model directory (no config.json).",
                              "Pass directories written by save_pretrained / hf-klas finetune.")
    return dirs


def run_pareto(opts: ParetoOptions | None = None, **kwargs) -> dict:
    """``hf-klas pareto``: evaluate anchors + candidates / stitched models, write the table, front, AUC and plot."""
    opts = _options(ParetoOptions, opts, kwargs)
    t0 = time.perf_counter()
    # ---- validate before evaluating or writing anything -----------------------------------------------------------
    if opts.metric not in metric_names():
        raise HfKlasError(f"Unknown metric {opts.metric!r}.", f"Use one of {', '.join(metric_names())}.")
    check_stitch_init(opts.stitch_init)
    plan = None
    if opts.plan:
        plan = StitchPlan.load(opts.plan)
        if not plan.candidates:
            raise HfKlasError(f"The plan in {opts.plan} has no candidates.", "Re-run hf-klas select.")
    dirs = _model_dirs(opts)
    if plan is None and not dirs:
        raise HfKlasError("Nothing to evaluate: no plan and no stitched models.",
                          "Pass plan=<plan dir>, models=[...] or models_dir=<hf-klas finetune --plan output>.")
    front_spec, back_spec = opts.front, opts.back
    recorded = {}
    if dirs:
        recorded = json.loads((Path(dirs[0]) / "config.json").read_text()).get("anchors") or {}
    if front_spec is None:
        front_spec = (plan.front.name_or_path if plan is not None else None) or \
            (recorded.get("front") or {}).get("name_or_path")
    if back_spec is None:
        back_spec = (plan.back.name_or_path if plan is not None else None) or \
            (recorded.get("back") or {}).get("name_or_path") or front_spec
    need_anchors = plan is not None or opts.include_anchors
    if need_anchors and not front_spec:
        raise HfKlasError("The anchors are not known (not given, not recorded).", "Pass front= and back=.")
    front = back = None
    if need_anchors:
        front = resolve_anchor(front_spec)
        back = front if back_spec == front_spec else resolve_anchor(back_spec)
        if same_anchor(front, back):
            back = front  # self-stitching named two ways (alias and path): one anchor, one reference point
    seq_len = plan.seq_len if plan is not None and plan.seq_len else opts.seq_len
    task = family_of(front.config).task if front is not None else None
    out = Path(opts.out_dir)

    # ---- evaluate --------------------------------------------------------------------------------------------------
    ds = None
    metric_name, higher = opts.metric, True
    points: list = []
    series: dict[str, list] = {}

    def measure(model, preprocessor):
        nonlocal ds, metric_name, higher
        if ds is None:
            ds = _load_data(opts, task_of(model))
        res = evaluate_model(model, preprocessor, ds, opts.metric, opts)
        metric_name, higher = res["metric"], res["higher_is_better"]
        return res

    anchor_points = []
    if opts.include_anchors and front is not None:
        for role, anchor, spec in (("front", front, front_spec), ("back", back, back_spec)):
            if role == "back" and anchor is front:
                continue
            if back is front:
                role = "anchor"
            model = anchor.load_full().eval()
            res = measure(model, anchor.load_preprocessor())
            flops, params = _cost(model, seq_len)
            anchor_points.append(ParetoPoint(name=f"{role}: {spec}", flops=flops, params=params,
                                             metric=res["value"], kind="anchor", scores=_scores(res)))
    points += anchor_points
    if plan is not None:
        calibration = calibration_from_path(opts.calibration)
        name = f"{plan.method} ({'least-squares init' if opts.stitch_init == 'least_squares' else 'identity init'})"
        series[name] = []
        from tqdm.auto import tqdm

        for c in tqdm(plan.candidates, desc="pareto: plan candidates", disable=not opts.progress):
            model = StitchedModel.from_anchors(front, back if back is not front else None, c.front_blocks,
                                               c.back_start, calibration=calibration, stitch_init=opts.stitch_init,
                                               progress=False)
            pre = getattr(model, "preprocessor", None) or front.load_preprocessor()
            res = measure(model.eval(), pre)
            flops, params = _cost(model, seq_len)
            series[name].append(ParetoPoint(name=f"stitch({c.front_blocks},{c.back_start})", flops=flops,
                                            params=params, metric=res["value"], kind="stitch", selector=name,
                                            config={"front_blocks": c.front_blocks, "back_start": c.back_start},
                                            scores=_scores(res)))
    if dirs:
        name = opts.series_name or "finetuned"
        series.setdefault(name, [])
        from tqdm.auto import tqdm

        for d in tqdm(dirs, desc="pareto: stitched models", disable=not opts.progress):
            model, pre, stitched = load_any(d)
            if not stitched:
                raise HfKlasError(f"{d} is not a stitched model.", "List only stitched model directories in models.")
            if task is not None and task_of(model) != task:
                raise HfKlasError(f"{d} is a {task_of(model)} model, the anchors {task} models.",
                                  "Evaluate one task per Pareto front.")
            stitchable = isinstance(model.config, StitchableConfig)
            active, measured = (model.config.active_stitch if stitchable else None), {}
            keys = model.config.stitches if stitchable else [None]
            for key in tqdm(keys, desc=f"pareto: {Path(d).name} configurations", leave=False,
                            disable=not opts.progress or not stitchable):
                if key is not None:
                    model.set_stitch(key)
                res = measure(model, pre)
                flops, params = _cost(model, seq_len)
                cfg = model.config
                label = Path(d).name if key is None else f"{Path(d).name}:stitch_i{key[0]}_j{key[1]}"
                series[name].append(ParetoPoint(name=label, flops=flops, params=params, metric=res["value"],
                                                kind="stitch", selector=name,
                                                config={"front_blocks": cfg.front_blocks, "back_start": cfg.back_start},
                                                scores=_scores(res)))
                measured[key] = res["value"]
            if stitchable:
                model.set_stitch(active)
                if opts.record_metrics:
                    model.record_metric(metric_name, measured, higher_is_better=higher)
                    model.config.save_pretrained(d)
                    write_model_card(d, model.config)
    for pts in series.values():
        points += pts

    # ---- write -----------------------------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    table = write_pareto_table(points, out / "pareto.json", higher_is_better=higher, metric_name=metric_name)
    plot_series = {name: anchor_points + pts for name, pts in series.items()}
    png = plot_pareto(plot_series, out / "pareto.png", metric_name=metric_name, title=opts.title,
                      higher_is_better=higher)
    md = out / "pareto.md"
    md.write_text(_markdown_table(points, metric_name, higher, table, seq_len if task == CAUSAL_LM else None))
    by_series = {}
    anchors_only = [p for p in anchor_points]
    for name, pts in series.items():
        allp = anchors_only + pts
        try:
            lo = min(p.flops for p in anchors_only) if len(anchors_only) >= 2 else min(p.flops for p in allp)
            hi = max(p.flops for p in anchors_only) if len(anchors_only) >= 2 else max(p.flops for p in allp)
            auc = front_auc(allp, lo, hi, higher) if hi > lo else None
        except DataError:
            auc = None
        by_series[name] = {"auc": auc, "front": [p.name for p in pareto_front(allp, higher)],
                           "points": len(pts)}
    return {"out_dir": str(out), "files": [str(out / "pareto.json"), str(png), str(md)], "metric": metric_name,
            "higher_is_better": higher, "auc": table.get("auc"), "front": table.get("front"), "series": by_series,
            "points": [_point_dict(p) for p in points], "seq_len": seq_len if task == CAUSAL_LM else None,
            "seconds": time.perf_counter() - t0, "options": asdict(opts)}


def _scores(res: dict) -> dict:
    """The numbers of one evaluation worth a table column (all ROUGE types, not only the plotted one)."""
    out = {k: float(res[k]) for k in ROUGE_TYPES if isinstance(res.get(k), (int, float))}
    return out or {res["metric"]: float(res["value"])}


def _markdown_table(points, metric_name: str, higher: bool, table: dict, seq_len: int | None) -> str:
    """pareto.md: one row per evaluated model (anchors first, then by FLOPs), every measured score, front marks."""
    front = set(table.get("front") or [])
    cols = sorted({k for p in points for k in (p.scores or {})}, key=lambda k: (k != metric_name, k))
    unit = f"GFLOPs/sequence of {seq_len} tokens" if seq_len else "GFLOPs/image"
    head = ["model", "series", unit, "params (M)", *cols, "on front"]
    lines = [f"Metric: {metric_name} ({'higher' if higher else 'lower'} is better); AUC of the whole front: "
             + (f"{table['auc']:.4f}" if table.get("auc") is not None else "n/a") + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(points, key=lambda p: (p.kind != "anchor", p.flops))
    for p in order:
        vals = [(f"{p.scores[c]:.2f}" if c == "perplexity" else f"{p.scores[c]:.4f}")
                if p.scores and c in p.scores else "" for c in cols]
        lines.append("| " + " | ".join([p.name, p.selector or p.kind, f"{p.flops / 1e9:.3f}", f"{p.params / 1e6:.1f}",
                                        *vals, "yes" if p.name in front else ""]) + " |")
    return "\n".join(lines) + "\n"


def _point_dict(p) -> dict:
    d = asdict(p)
    if isinstance(d.get("metric"), float) and not math.isfinite(d["metric"]):
        d["metric"] = None
    return d


def cli_options(run_name: str, argv: list[str]) -> list[type]:
    """The dataclasses whose fields are ``hf-klas evaluate`` / ``hf-klas pareto``'s flags."""
    return [EvaluateOptions if run_name == "run_evaluate" else ParetoOptions]
