"""Selection-quality study: does a selector's score predict the quality of the stitch after finetuning?

``hf-klas quality`` / :func:`run_quality` (``benchmarks/selection_quality.py`` is a thin script around it): the
studies end to end, the side-by-side processes, and re-analysis / combination of stored reports.

For each anchor pair:

1. **Oracle** (:mod:`hf_klas.study.oracles`). ViT pairs (:mod:`.vit`): every valid configuration between the
   anchors' FLOPs, least-squares init, then the same finetune per protocol and seed -- ``demo`` (the demo's
   recipe, :data:`~hf_klas.training.recipes.VIT_RECIPE`: the primary oracle), ``full`` (v2's: anchors at 0.1x
   the LR), ``lora`` or ``stitch`` -- each reported as its own study, the anchors finetuned the same way.
   SmolLM2 self-stitching (:mod:`.lm`): a training-free oracle (least-squares stitch, no finetune) over every
   configuration skipping ``lm_min_skip..lm_max_skip`` blocks and a LoRA oracle over a stride grid in three
   FLOPs buckets (perplexity and ROUGE-L, per seed). Every quality is measured on validation data; the test
   splits are never read.
2. **Selectors** (:mod:`.selector_runs`): every selector scores the whole grid once per pair on the same
   calibration data (``compute_plan``); the studies of one pair share those scores.
3. **Metrics** (:mod:`hf_klas.study.statistics`): correlation (global and within FLOPs bucket), top-1 per
   bucket with regret, the paper's configuration recovery (KLAS's own candidate set, τ and back-block cover on),
   AUC; every definition is written into the JSON.
4. **Outputs** (:mod:`hf_klas.study.report`): ``<name>.json`` (everything, including which data was used),
   ``<name>.md``, ``<name>.png`` and one PNG per study. ``from_json`` re-analyses a stored run without models.
"""



import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from ..console import quiet_console, stage
from ..errors import HfKlasError
from ..loading import resolve_anchor
from ..selection.api import compute_plan
from ..version import __version__
from . import report as reporting
from .lm import LMStudy, lm_part_names, lm_store
from .options import QualityOptions, quick
from .selector_runs import FORMAT, analyze_study, json_safe
from .statistics import AUC_DEFINITION, DEFINITIONS
from .vit import vit_data, vit_pool_size, vit_studies

__all__ = ["run_quality", "cli_options"]


# ------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------
def run_quality(opts: QualityOptions | None = None, *, command: str | None = None, **kwargs) -> dict:
    """Run the study (module docstring) and write ``<out_dir>/<name>.json/.md/.png``; returns a summary.
    ``command``: the command line recorded in the report (default: ``sys.argv``)."""
    opts = replace(opts, **kwargs) if opts is not None else QualityOptions(**kwargs)
    if opts.from_json:
        return reanalyze(opts, command)
    if opts.jobs > 1 and "lm" in opts.studies and opts.lm_parts == ["all"]:
        return run_side_by_side(opts, command)
    given = opts
    if opts.quick:
        opts = quick(opts)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies, data_used, lm = [], {}, None

    def bar_factory(total, desc):
        return stage(total, desc, unit="run") if opts.progress else _NoBar()

    with quiet_console(out / f"{opts.name}.log", verbose=opts.verbose):
        if "vit" in opts.studies:
            data, data_used["vit"] = vit_data(opts)
            anchor_cache: dict = {}
            for pair in opts.vit_pairs:
                front, back = pair.split(":", 1)
                total = vit_pool_size(front, back, opts) * len(opts.vit_protocols) * len(opts.vit_seeds)
                bar = bar_factory(total + len(opts.vit_selectors), f"ViT {front}->{back}: oracle runs + selectors")
                studies += vit_studies(pair, opts, data, bar, anchor_cache)
                bar.close()
        if "lm" in opts.studies:
            lm = LMStudy(opts)
            if opts.lm_parts != ["all"]:  # a share of the work: stored, assembled by a later call
                lm.compute(opts.lm_parts, bar_factory)
                return {"parts": list(opts.lm_parts), "parts_dir": str(lm.store.dir),
                        "seconds": time.perf_counter() - t0}
            lm.compute(lm_part_names(opts), bar_factory)
            studies += lm.assemble()
            data_used["lm"] = lm.record
    report = {
        "format": FORMAT, "hf_klas_version": __version__, "name": opts.name,
        "command": command or (" ".join(sys.argv) if sys.argv and sys.argv[0] else "run_quality(...)"),
        "options": asdict(opts), "options_given": asdict(given), "definitions": dict(DEFINITIONS,
                                                                                     auc_pareto=AUC_DEFINITION),
        "data": data_used,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "studies": studies,
    }
    report["wall_seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - cpu0
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    summary = reporting.write_outputs(json_safe(report), opts)
    if lm is not None:  # everything is in the report now
        lm.store.remove()
    return summary


def _run_units(units: list[QualityOptions], command: str) -> list[str]:
    """One process's share of :func:`run_side_by_side`, one call after another; returns the reports written."""
    paths = []
    for unit in units:
        part = unit.studies[0] if unit.lm_parts == ["all"] else " ".join(unit.lm_parts)
        result = run_quality(unit, command=f"{command}  [part: --studies {unit.studies[0]}"
                                           + ("" if unit.lm_parts == ["all"] else f" --lm_parts {part}") + "]")
        if "json" in result:
            paths.append(result["json"])
    return paths


def side_by_side_units(opts: QualityOptions, tmp: Path) -> list[list[QualityOptions]]:
    """The two processes' work: vit and the LoRA oracle of every other seed / the LM training-free oracle, the
    selectors and the other seeds (lm alone: the same, without vit). Each unit stores what it computes."""
    seeds = list((quick(opts) if opts.quick else opts).lm_lora_seeds)
    parts_dir = opts.parts_dir or str(Path(opts.out_dir) / f"{opts.name}.parts")

    def lm(parts, k):
        return replace(opts, studies=["lm"], jobs=1, lm_parts=parts, resume=True, parts_dir=parts_dir,
                       out_dir=str(tmp / f"process{k}"))

    shares: list[list[str]] = [[], ["free", "selectors"]]
    for k, seed in enumerate(seeds):
        shares[(k + 1) % 2].append(f"lora@{seed}")
    units: list[list[QualityOptions]] = [[], []]
    if "vit" in opts.studies:
        units[0].append(replace(opts, studies=["vit"], jobs=1, out_dir=str(tmp / "vit")))
    for k, share in enumerate(shares):
        if share:
            units[k].append(lm(share, k))
    return [u for u in units if u]


def run_side_by_side(opts: QualityOptions, command: str | None) -> dict:
    """The work in two processes (:func:`side_by_side_units`), then the LM parts assembled here and one report
    combined from the studies' JSONs. Every piece is seeded and runs alone in its process, so the numbers equal
    a ``jobs=1`` run's."""
    import multiprocessing as mp
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    command = command or (" ".join(sys.argv) if sys.argv and sys.argv[0] else "run_quality(...)")
    if not opts.resume:  # start over: the children always resume
        effective = quick(opts) if opts.quick else opts
        lm_store(effective, resolve_anchor(effective.lm_anchor)).remove()
    with tempfile.TemporaryDirectory(prefix="hf_klas_quality_") as tmp:
        tmp = Path(tmp)
        units = side_by_side_units(opts, tmp)
        with ProcessPoolExecutor(len(units), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_units, share, command) for share in units]
            paths = [p for fut in futures for p in fut.result()]
        assembled = replace(opts, studies=["lm"], jobs=1, resume=True, out_dir=str(tmp / "lm"),
                            parts_dir=opts.parts_dir or str(Path(opts.out_dir) / f"{opts.name}.parts"))
        paths.append(run_quality(assembled, command=f"{command}  [part: --studies lm, assembled]")["json"])
        Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
        logs = sorted(tmp.glob(f"*/{opts.name}.log"))  # the processes' console logs, one after the other
        (Path(opts.out_dir) / f"{opts.name}.log").write_text("".join(
            f"===== {log.parent.name} =====\n{log.read_text()}\n" for log in logs))
        return reanalyze(replace(opts, from_json=paths), command, wall_seconds=time.perf_counter() - t0,
                         side_by_side=True)


class _NoBar:
    def update(self, n: int = 1):
        pass

    def close(self):
        pass


def _random_scores(st: dict, pool: list[dict], repeats: int) -> list[list[float]]:
    """The random selector's pool scores for seeds 0..repeats-1 (data-free: no model runs)."""
    back = None if st["kind"] == "lm_self_stitch" else st["back"]
    scores = []
    for seed in range(repeats):
        plan, _ = compute_plan(st["front"], back, None, "random", cache=False, progress=False, seed=seed)
        sc = plan.score.numpy()
        scores.append([float(sc[c["front_blocks"] - 1, c["back_start"]]) for c in pool])
    return scores


def _read_report(path: Path) -> dict:
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HfKlasError(f"Cannot read the previous report {path}: {err}.",
                          "Pass the selection_quality JSON written by run_quality / benchmarks/selection_quality.py.")
    if old.get("format") != FORMAT:
        raise HfKlasError(f"{path} is not a selection-quality report (format={old.get('format')!r}).",
                          "Pass the selection_quality JSON written by run_quality.")
    return old


def combine_reports(paths: list[Path]) -> dict:
    """One report from runs of different studies (same hf_klas version): studies, data and times added up."""
    reports = [_read_report(p) for p in paths]
    if len(reports) == 1:
        return reports[0]
    versions = {r["hf_klas_version"] for r in reports}
    if len(versions) > 1:
        raise HfKlasError(f"The reports come from different hf_klas versions {sorted(versions)}.",
                          "Combine runs of one version (rerun the older study).")
    names = [st["name"] for r in reports for st in r["studies"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HfKlasError(f"Studies {dupes} appear in more than one report.",
                          "Combine runs of different studies (e.g. --studies vit and --studies lm).")
    first = reports[0]
    studies_run = [s for r in reports for s in r["options"]["studies"]]
    options = dict(first["options"], studies=studies_run)
    for r in reports[1:]:  # each study's own options (vit_* from the vit run, lm_* from the lm run)
        for key, value in r["options"].items():
            if key.startswith(tuple(f"{s}_" for s in r["options"]["studies"])):
                options[key] = value
    first = {k: v for k, v in first.items() if k != "jobs"}  # a combination, not one side-by-side run
    return dict(first, options=options, studies=[st for r in reports for st in r["studies"]],
                data={k: v for r in reports for k, v in r.get("data", {}).items()},
                command=" + ".join(r["command"] for r in reports),
                wall_seconds=sum(r["wall_seconds"] for r in reports),
                cpu_seconds=sum(r.get("cpu_seconds", math.nan) for r in reports),
                parts=[{"command": r["command"], "wall_seconds": r["wall_seconds"], "machine": r["machine"]}
                       for r in reports])


def reanalyze(opts: QualityOptions, command: str | None, *, wall_seconds: float | None = None,
              side_by_side: bool = False) -> dict:
    """``from_json``: metrics, tables and plots recomputed from previous reports (see the option's help).
    ``side_by_side``: the reports are the parts of one :func:`run_side_by_side` run that took ``wall_seconds``."""
    t0 = time.perf_counter()
    paths = [Path(p) for p in opts.from_json]
    old = combine_reports(paths)
    if side_by_side:
        old = dict(old, command=command, wall_seconds=wall_seconds, jobs=opts.jobs)
    known = {f.name for f in fields(QualityOptions)}
    orig = QualityOptions(**{k: v for k, v in old["options"].items() if k in known and k != "from_json"})
    if side_by_side:  # the parts' own tau / random_repeats (after --quick), as one process would have used
        new_opts = replace(orig, out_dir=opts.out_dir, name=opts.name, progress=opts.progress,
                           from_json=[str(p) for p in paths])
    else:
        new_opts = replace(orig, tau=opts.tau, random_repeats=opts.random_repeats, out_dir=opts.out_dir,
                           name=opts.name, progress=opts.progress, from_json=[str(p) for p in paths])
    studies = []
    for old_st in old["studies"]:
        st = {k: v for k, v in old_st.items() if k != "selectors"}
        pool = st["oracle"]["configs"]
        selectors = {}
        for label, r in old_st["selectors"].items():
            if label == "oracle":
                continue
            if "error" in r:
                selectors[label] = r
                continue
            entry = {"method": r["method"], "options": r.get("options", {}), "seconds": r.get("seconds"),
                     "cached": r.get("cached", False)}
            if r["method"] == "random":
                stored = r.get("scores") or []
                entry["scores"] = (stored[:new_opts.random_repeats] if len(stored) >= new_opts.random_repeats
                                   else _random_scores(st, pool, new_opts.random_repeats))
                entry["scores"] = [[math.nan if x is None else x for x in sc] for sc in entry["scores"]]
            else:
                entry["score"] = [math.nan if c.get("scores", {}).get(label) is None else c["scores"][label]
                                  for c in pool]
            selectors[label] = entry
        for c in pool:
            c.pop("scores", None)
        studies.append(analyze_study(st, selectors, new_opts))
    if side_by_side:
        report = dict(old, name=new_opts.name, options=asdict(replace(new_opts, from_json=[], jobs=opts.jobs)),
                      definitions=dict(DEFINITIONS, auc_pareto=AUC_DEFINITION), studies=studies)
        return reporting.write_outputs(json_safe(report), new_opts)
    report = dict(old, name=new_opts.name, options=asdict(new_opts),
                  definitions=dict(DEFINITIONS, auc_pareto=AUC_DEFINITION), studies=studies,
                  reanalysis={"from": [str(p) for p in paths], "command": command or " ".join(sys.argv),
                              "seconds": time.perf_counter() - t0,
                              "note": "metrics recomputed from the stored oracle qualities and selector scores; "
                                      "wall_seconds / cpu_seconds are the original run's"})
    return reporting.write_outputs(json_safe(report), new_opts)


def cli_options(run_name: str, argv: list[str]) -> list[type]:
    """The dataclasses whose fields are ``hf-klas quality``'s flags."""
    return [QualityOptions]
