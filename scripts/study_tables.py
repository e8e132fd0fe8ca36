#!/usr/bin/env python
"""The README's selection-study tables from a stored report (no model runs):

    python scripts/study_tables.py [benchmarks/results/selection_quality.json]

Per study one column, per selector one row; each cell: top-1 / recovery / regret / Spearman rho +- seed std.
The primary oracles (hf_klas.study.report.PRIMARY: the demo's ViT recipe, LoRA for LLMs) first, every other
protocol second, then the verdict over the primary studies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hf_klas.study.report import PRIMARY


def _short(st: dict) -> str:
    if st["kind"] == "vit":
        front, back = (name.replace("vit-fmnist-", "") for name in (st["front"], st["back"]))
        return f"{front}→{back} [{st['protocol']}]"
    metric = {"perplexity": "ppl", "rougeL": "ROUGE-L"}[st["metric"]]
    return f"SmolLM2 {metric} [{st['protocol']}]"


def _regret(st: dict, value: float) -> str:
    if st["metric"] == "top1_accuracy":
        return f"{100 * value:.2f} pt"
    if st["metric"] == "rougeL":
        return f"{value:.3f}"
    return f"{value:.1f}"


def _cell(st: dict, r: dict | None) -> str:
    if r is None or "error" in r:
        return "—"
    parts = [f"{r['top1']:.2f}" if r.get("top1") is not None else "—",
             f"{r['recovery']:.2f}" if r.get("recovery") is not None else "—",
             _regret(st, r["regret"]) if r.get("regret") is not None else "—"]
    rho = r.get("spearman")
    if rho is None:
        parts.append("—")
    else:
        std = r.get("spearman_seed_std")
        parts.append(f"{rho:.2f}" + (f"±{std:.2f}" if std is not None else ""))
    return " / ".join(parts)


def table(studies: list[dict]) -> str:
    labels: list[str] = []
    for st in studies:
        labels += [k for k in st["selectors"] if k != "oracle" and k not in labels]
    labels = [k for k in labels if k != "random"] + ["random"]
    lines = ["| selector | " + " | ".join(_short(st) for st in studies) + " |",
             "|---|" + "---|" * len(studies)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(_cell(st, st["selectors"].get(label)) for st in studies) + " |")
    chance = []
    for st in studies:
        r = next(iter(v for k, v in st["selectors"].items() if k != "oracle"))
        chance.append(f"{r.get('top1_chance', 0):.2f} / {r.get('recovery_chance', 0):.2f}"
                      if r.get("top1_chance") is not None else "—")
    lines.append("| *chance (top-1 / recovery)* | " + " | ".join(chance) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    path = Path(argv[0] if argv else "benchmarks/results/selection_quality.json")
    report = json.loads(path.read_text())
    studies = report["studies"]
    primary = [st for st in studies if st.get("protocol") in PRIMARY]
    secondary = [st for st in studies if st.get("protocol") not in PRIMARY]
    print(f"Primary oracles (the recipes users run: {', '.join(PRIMARY)}); each cell: top-1 / recovery / regret / "
          "ρ±seed std:\n")
    print(table(primary))
    if secondary:
        names = sorted({st["protocol"] for st in secondary})
        print(f"\nSecondary protocols ({', '.join(names)}; each column names its own):\n")
        print(table(secondary))
    print("\nVerdict (mean rank over the primary studies; tied selectors share a rank):\n")
    print("| rank | selector | mean regret rank | mean regret | mean top-1 (chance) | studies (buckets) |\n"
          "|---|---|---|---|---|---|")
    for k, row in enumerate(report["verdict"], 1):
        chance = f" ({row['mean_top1_chance']:.2f})" if row.get("mean_top1_chance") is not None else ""
        buckets = f" ({row['buckets']})" if row.get("buckets") is not None else ""
        print(f"| {k} | {row['selector']} | {row['mean_regret_rank']:.1f} | {row['mean_regret']:.4g} | "
              f"{row['mean_top1']:.2f}{chance} | {row['studies']}{buckets} |")


if __name__ == "__main__":
    main(sys.argv[1:])
