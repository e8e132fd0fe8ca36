"""The study's outputs: the JSON (everything), a Markdown report with one table per study and a verdict across
studies, and PNG plots (every selector's picks on the Pareto plot; rank agreement per selector)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..evaluation.pareto import ParetoPoint, plot_pareto
from .statistics import rankdata

__all__ = ["write_outputs", "verdict", "markdown"]

#: The studies whose oracle is what users do with a stitch -- ViT: the demo's recipe (every weight adapts); LM: LoRA --
#: the verdict is taken on them.
PRIMARY = ("demo", "lora")


def _fmt(x, digits=3, std=None):
    if x is None:
        return "—"
    s = f"{x:.{digits}f}"
    if std is not None:
        s += f" ± {std:.{digits}f}"
    return s


def _slug(name: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def verdict(report: dict) -> list[dict]:
    """Selectors ranked across the primary studies: mean rank by regret (lower better) and by top-1 agreement
    (tied selectors share their mean rank), and how often each is the best (ties shared). The random selector
    and the oracle are reference rows."""
    studies = [st for st in report["studies"] if st.get("protocol") in PRIMARY]
    table: dict[str, dict] = {}
    for st in studies:
        rows = {k: r for k, r in st["selectors"].items() if k != "oracle" and "error" not in r
                and r.get("regret") is not None}
        if not rows:
            continue
        for key, reverse in (("regret", False), ("top1", True)):
            vals = {k: r.get(key) for k, r in rows.items() if r.get(key) is not None}
            names = list(vals)
            ranks = rankdata([-vals[k] if reverse else vals[k] for k in names])  # ties share their mean rank
            for k, rank in zip(names, ranks):
                entry = table.setdefault(k, {"selector": k, "studies": 0, "regret_rank": [], "top1_rank": [],
                                             "wins_regret": 0.0, "regret": [], "top1": [], "chance": [],
                                             "buckets": 0})
                entry[f"{key}_rank"].append(float(rank))
                entry[key].append(vals[k])
            best = min(vals.values()) if not reverse else max(vals.values())
            winners = [k for k, v in vals.items() if v == best]
            if key == "regret":
                for k in winners:
                    table[k]["wins_regret"] += 1.0 / len(winners)
        for k, r in rows.items():
            table[k]["studies"] += 1
            table[k]["buckets"] += int(r.get("buckets_nontrivial") or 0)
            if r.get("top1_chance") is not None:
                table[k]["chance"].append(r["top1_chance"])
    out = []
    for k, e in table.items():
        out.append({"selector": k, "studies": e["studies"], "mean_regret_rank": float(np.mean(e["regret_rank"])),
                    "mean_top1_rank": float(np.mean(e["top1_rank"])) if e["top1_rank"] else None,
                    "mean_regret": float(np.mean(e["regret"])), "mean_top1": float(np.mean(e["top1"]))
                    if e["top1"] else None, "best_regret_in": e["wins_regret"],
                    "mean_top1_chance": float(np.mean(e["chance"])) if e["chance"] else None,
                    "buckets": e["buckets"]})
    return sorted(out, key=lambda r: (r["mean_regret_rank"], r["mean_top1_rank"] or 0))


def _warnings(st: dict) -> list[str]:
    out = []
    pool = st["oracle"]["configs"]
    nontrivial = st["selectors"].get("oracle", {}).get("buckets_nontrivial") or 0
    if len(pool) < 8 or nontrivial < 3:
        out.append(f"only {len(pool)} configurations in {nontrivial} non-trivial buckets: too few for conclusions.")
    higher = st["higher_is_better"]
    cheap = min(st["anchors"], key=lambda a: a["flops"])
    best = max(c["quality"] for c in pool) if higher else min(c["quality"] for c in pool)
    if len(st["anchors"]) > 1 and ((cheap["metric"] >= best) if higher else (cheap["metric"] <= best)):
        out.append(f"the cheaper anchor ({cheap['name']}, {cheap['metric']:.4g}) is at least as good as every stitch, "
                   "so the front with anchors (AUC) is the same for every selector; compare 'AUC stitches only'.")
    return out


def _picks_table(st: dict) -> str:
    higher = st["higher_is_better"]
    labels = [k for k, r in st["selectors"].items() if "candidates" in r]
    sizes: dict[int, int] = {}
    for c in st["oracle"]["configs"]:
        if c["bucket"] >= 0:
            sizes[c["bucket"]] = sizes.get(c["bucket"], 0) + 1
    head = ["bucket (configs)"] + labels
    rows = [f"Top-1 pick per FLOPs bucket: configuration (i, j) and its quality ({st['metric']}); random = its "
            "first seed.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = (lambda q: f"{q:.3f}") if higher else (lambda q: f"{q:.1f}")
    for b in sorted(sizes):
        cells = [f"{b} ({sizes[b]})"]
        for lab in labels:
            picks = [c for c in st["selectors"][lab]["candidates"] if c["bucket"] == b]
            cells.append(", ".join(f"({c['front_blocks']},{c['back_start']}) {fmt(c['quality'])}" for c in picks))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def markdown(report: dict) -> str:
    o = report["options"]
    lines = [f"# Selection quality (hf_klas {report['hf_klas_version']})", "",
             f"Command: `{report['command']}`  ", f"Wall time: {report['wall_seconds'] / 60:.1f} min on "
             f"{report['machine']['threads']} torch threads ({report['machine']['platform']}); process CPU time "
             f"{report.get('cpu_seconds', float('nan')) / 60:.1f} min.", "",
             "Correlations are between **−score** (every selector's score is lower-is-better) and quality oriented "
             "higher-is-better (accuracy, ROUGE-L, or −perplexity): **positive = good**. Top-1: the selector's best "
             "configuration per FLOPs bucket is the oracle's best (chance in brackets). Recovery: the paper's "
             f"configuration recovery -- KLAS's candidate set (τ = {o['tau']}, back-block cover on) recalling the "
             "oracle's best of every bucket (K buckets; set size and chance in brackets). `±` = std over "
             "finetuning seeds (over seeds of the random selector for its row). Definitions: the JSON's "
             "`definitions`.", ""]
    if report.get("parts") and report.get("jobs"):
        lines += [f"The studies ran side by side in {report['jobs']} processes (wall time above: the whole run):", ""]
    elif report.get("parts"):
        lines += ["Combined from runs of separate studies (same hf_klas version; wall time = their sum):", ""]
        lines += [f"- `{part['command']}`: {part['wall_seconds'] / 60:.1f} min" for part in report["parts"]] + [""]
    if report.get("reanalysis"):
        lines += [f"Metrics re-computed from the stored oracle and scores with `{report['reanalysis']['command']}` "
                  "(no model was run again; wall and CPU time above are the original run's).", ""]
    ranking = verdict(report)
    if ranking:
        lines += ["## Verdict across the studies whose oracle lets the network adapt (" + ", ".join(
            st["name"] for st in report["studies"] if st.get("protocol") in PRIMARY) + ")", "",
            "| selector | studies (buckets) | mean rank by regret | mean rank by top-1 | mean regret | mean top-1 "
            "(chance) | lowest regret in |", "|---|---|---|---|---|---|---|"]
        for r in ranking:
            lines.append(f"| {r['selector']} | {r['studies']} ({r['buckets']}) | {r['mean_regret_rank']:.2f} | "
                         f"{_fmt(r['mean_top1_rank'], 2)} | {r['mean_regret']:.4f} | {_fmt(r['mean_top1'], 2)} "
                         f"({_fmt(r.get('mean_top1_chance'), 2)}) | {r['best_regret_in']:.1f} |")
        lines += ["", "Regret is in each study's own units (accuracy, ROUGE-L, perplexity); the ranks make them "
                  "comparable.", ""]
    for st in report["studies"]:
        orc = st["oracle"]
        unit = {"top1_accuracy": "acc.", "perplexity": "ppl"}.get(st["metric"], st["metric"])
        k = st["selectors"]["oracle"].get("recovery_k")
        lines += [f"## {st['name']} ({st['metric']})", "", f"Oracle: {orc['description']}", "",
                  f"Pool: {len(orc['configs'])} configurations in {st['selectors']['oracle']['buckets_nontrivial']} "
                  f"non-trivial FLOPs buckets (of {len(st['bucket_edges']) - 1}; recovery over K = {k}); anchors: "
                  + ", ".join(f"{a['name']} {a['metric']:.4g}" for a in st["anchors"]) + ". "
                  + (f"Seed-to-seed std of a configuration's quality: mean {orc['quality_seed_std_mean']:.4f}, max "
                     f"{orc['quality_seed_std_max']:.4f}. " if orc.get("quality_seed_std_mean") is not None else "")
                  + f"Oracle {orc['seconds'] / 60:.1f} min, selectors {st['selection_seconds'] / 60:.1f} min.", ""]
        vs = st.get("versus_cheaper_anchor")
        if vs:
            shipped = ", ".join(f"{a['name']} {a['metric_shipped']:.4f} as shipped" for a in st["anchors"]
                                if a.get("finetuned"))
            lines += [f"**Best configuration vs the cheaper anchor** ({vs['anchor']} "
                      f"{'after the same finetune' if vs['anchor_finetuned'] else 'as shipped'}, "
                      f"{vs['anchor_metric']:.4f}): {vs['best_config']} {vs['best_quality']:.4f}, difference "
                      f"{vs['difference']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}] -> **{vs['verdict']}**; "
                      f"{len(vs['configs_above'])} of {len(orc['configs'])} configurations above it beyond the "
                      f"interval, {vs['configs_at_least']} at least as good. Sampling error of one accuracy on "
                      f"{st['evaluation_images']:,} images: ±{1.96 * orc['binomial_se']:.4f} (95%, worst case)."
                      + (f" Anchors {shipped}." if shipped else ""), ""]
        lines += [f"**Note:** {w}" for w in _warnings(st)] + ([""] if _warnings(st) else [])
        head = ["selector", "Spearman ρ", "ρ in bucket", "top-1 (chance)", "recovery (set, chance)",
                f"regret ({unit})", "AUC", "AUC stitches only", "select s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, r in st["selectors"].items():
            if "error" in r:
                lines.append(f"| {label} | error: {r['error'][:80]} |" + " |" * (len(head) - 2))
                continue
            sd = lambda key: r.get(f"{key}_seed_std", r.get(f"{key}_std"))  # noqa: E731
            rec = (f"{_fmt(r.get('recovery'), 2, sd('recovery'))} ({_fmt(r.get('set_size'), 1)}, "
                   f"{_fmt(r.get('recovery_chance'), 2)})" if r.get("recovery") is not None else "—")
            row = [f"**{label}**" if label == "oracle" else label,
                   _fmt(r.get("spearman"), 3, sd("spearman")),
                   _fmt(r.get("spearman_within_bucket"), 3, sd("spearman_within_bucket")),
                   f"{_fmt(r.get('top1'), 2, sd('top1'))} ({_fmt(r.get('top1_chance'), 2)})", rec,
                   _fmt(r.get("regret"), 4 if st["higher_is_better"] else 2, sd("regret")),
                   _fmt(r.get("auc"), 4, sd("auc")), _fmt(r.get("auc_stitches"), 4, sd("auc_stitches")),
                   _fmt(r.get("seconds"), 1)]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", _picks_table(st), "", f"![fronts]({report['name']}_{_slug(st['name'])}.png)", ""]
    return "\n".join(lines) + "\n"


def _plots(report: dict, out: Path) -> list[str]:
    paths = []
    for st in report["studies"]:
        anchors = [ParetoPoint(name=a["name"], flops=a["flops"], params=0.0, metric=a["metric"], kind="anchor")
                   for a in st["anchors"]]
        series = {label: anchors + [ParetoPoint(name=f"({c['front_blocks']},{c['back_start']})", flops=c["flops"],
                                                params=0.0, metric=c["quality"], kind="stitch", selector=label)
                                    for c in r["candidates"]]
                  for label, r in st["selectors"].items() if "candidates" in r}
        p = out / f"{report['name']}_{_slug(st['name'])}.png"
        plot_pareto(series, p, metric_name=st["metric"], higher_is_better=st["higher_is_better"],
                    title=f"{st['name']}: top-1 per FLOPs bucket, every selector", flops_min=st["flops_range"][0],
                    flops_max=st["flops_range"][1])
        paths.append(p)
    combined = out / f"{report['name']}.png"
    studies = report["studies"]
    if studies:
        fig = Figure(figsize=(14, 3.6 * len(studies)))
        FigureCanvasAgg(fig)
        for k, st in enumerate(studies):
            ax = fig.add_subplot(len(studies), 1, k + 1)
            labels = [lab for lab, r in st["selectors"].items() if lab != "oracle" and "error" not in r]
            keys = [("spearman_within_bucket", "Spearman ρ within bucket"), ("top1", "top-1 per bucket"),
                    ("recovery", "recovery (τ, cover)")]
            width = 0.8 / len(keys)
            xs = np.arange(len(labels))
            for n_key, (key, name) in enumerate(keys):
                vals = [st["selectors"][lab].get(key) for lab in labels]
                errs = [st["selectors"][lab].get(f"{key}_seed_std", st["selectors"][lab].get(f"{key}_std")) or 0.0
                        for lab in labels]
                ax.bar(xs + (n_key - 1) * width, [np.nan if v is None else v for v in vals], width,
                       yerr=errs if any(errs) else None, capsize=2, label=name)
            chance = st["selectors"]["oracle"].get("top1_chance")
            if chance is not None:
                ax.axhline(chance, color="C1", ls=":", lw=1, label="top-1 by chance")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(-1, 1.05)
            ax.set_title(f"{st['name']}: agreement with the oracle (higher = better)", fontsize=10)
            ax.legend(fontsize=7, loc="lower left", ncol=4)
            ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(combined, dpi=100)
    return [str(p) for p in paths] + ([str(combined)] if studies else [])


def write_outputs(report: dict, opts) -> dict:
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["verdict"] = verdict(report)
    json_path, md_path = out / f"{opts.name}.json", out / f"{opts.name}.md"
    pngs = _plots(report, out)
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    md_path.write_text(markdown(report))
    summary = {"json": str(json_path), "markdown": str(md_path), "png": pngs, "wall_seconds": report["wall_seconds"],
               "verdict": report["verdict"], "studies": {}}
    for st in report["studies"]:
        summary["studies"][st["name"]] = {
            label: {k: r.get(k) for k in ("spearman", "spearman_within_bucket", "top1", "recovery", "regret", "auc",
                                          "auc_stitches")}
            for label, r in st["selectors"].items() if "error" not in r}
    return summary
