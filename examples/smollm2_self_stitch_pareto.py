#!/usr/bin/env python
"""SmolLM2-135M self-stitches on a real offline task: Debian package description -> one-line synopsis.

The whole KLAS loop on real weights, offline, in minutes on 2 CPU cores:

1. ``select``: KLAS scores every (i, j) of SmolLM2 stitched to itself on Debian training descriptions and keeps the
   best few configurations per FLOPs bucket (the plan);
2. ``pareto`` of the plan: each candidate built with a least-squares stitch, ROUGE on held-out packages;
3. ``finetune --plan``: one SN-Net supernet trains every candidate's stitch at once (each step one sampled
   configuration; the anchor blocks are shared), then every candidate is extracted as its own stitched model;
4. ``pareto`` again, the finetuned stitches overlaid on the least-squares front.

Outputs under ``--out_dir``: ``plan/`` (plan.json, heatmap), ``pareto/pareto.{json,md,png}`` (the ROUGE table
and the plot), ``supernet/stitch_i*_j*/`` (the finetuned models) and ``summary.json``.

    python examples/smollm2_self_stitch_pareto.py --out_dir runs/smollm2_pareto
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_klas.data.debian_descriptions import load_debian_descriptions
from hf_klas.errors import HfKlasError
from hf_klas.evaluation.api import run_pareto
from hf_klas.selection.api import compute_plan
from hf_klas.training.api import run_finetune


@dataclass
class ExampleArguments:
    out_dir: str = field(default="runs/smollm2_pareto", metadata={"help": "Output folder (must not exist)."})
    anchor: str = field(default="smollm2-135m", metadata={"help": "Causal LM stitched to itself."})
    num_buckets: int = field(default=8, metadata={"help": "KLAS FLOPs buckets (candidates per bucket: tau rule)."})
    tau: float = field(default=0.0, metadata={"help": "KLAS tau: keep configurations within (1+tau) x a bucket's best."})
    cover_back_blocks: bool = field(default=False, metadata={
        "help": "KLAS: also keep the best configuration of every back block j (self-stitching: ~n more)."})
    calibration_samples: int = field(default=64, metadata={
        "help": "Debian training descriptions for KLAS and the least-squares init."})
    eval_samples: int = field(default=48, metadata={"help": "Debian test packages for ROUGE."})
    max_new_tokens: int = field(default=24, metadata={"help": "Generated tokens per synopsis (first line scored)."})
    metric: str = field(default="rougeL", metadata={"help": "Plotted metric: rouge1, rouge2, rougeL or rougeLsum."})
    mode: str = field(default="stitch", metadata={"help": "Supernet finetuning mode: stitch or full."})
    max_steps: int = field(default=96, metadata={"help": "Supernet steps in all (each trains one configuration)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the stitch layers."})
    batch_size: int = field(default=8, metadata={"help": "Training batch size."})
    max_train_samples: int = field(default=1024, metadata={"help": "Debian training examples (prompt + synopsis)."})
    seed: int = field(default=0, metadata={"help": "Seed of training and sampling."})


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(ExampleArguments).parse_args_into_dataclasses(args=argv)
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise HfKlasError(f"{out} exists and is not empty.", "Pass a new --out_dir (nothing is overwritten).")
    t0 = time.perf_counter()
    timings = {}
    # calibration: the last training descriptions (the finetune uses the first ones)
    train = load_debian_descriptions("train")
    calibration = list(train["description"])[-args.calibration_samples:]

    t = time.perf_counter()
    plan, _ = compute_plan(args.anchor, None, calibration, "klas", cache=False, num_buckets=args.num_buckets,
                           tau=args.tau, cover_back_blocks=args.cover_back_blocks,
                           max_samples=args.calibration_samples)
    plan.save(out / "plan")
    plan.plot_heatmap(out / "plan" / "heatmap.png")
    timings["select"] = time.perf_counter() - t
    print(f"KLAS kept {len(plan.candidates)} configurations: "
          + ", ".join(f"({c.front_blocks},{c.back_start})" for c in plan.candidates))

    t = time.perf_counter()
    run_finetune(plan=str(out / "plan"), front=args.anchor, mode=args.mode, calibration=calibration,
                 dataset="debian_descriptions", prompt_column="prompt", target_column="target",
                 max_train_samples=args.max_train_samples, max_steps=args.max_steps,
                 learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size, seed=args.seed,
                 output_dir=str(out / "supernet"))
    timings["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    pareto = run_pareto(plan=str(out / "plan"), models_dir=str(out / "supernet"), front=args.anchor,
                        calibration=calibration, metric=args.metric, dataset="debian_descriptions", split="test",
                        max_samples=args.eval_samples, max_new_tokens=args.max_new_tokens,
                        series_name=f"klas + supernet ({args.mode}, {args.max_steps} steps)",
                        title=f"{args.anchor} self-stitches: Debian description -> synopsis",
                        out_dir=str(out / "pareto"))
    timings["pareto"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    summary = {"options": asdict(args), "seconds": timings, "candidates": [c.to_dict() for c in plan.candidates],
               "series": pareto["series"], "points": pareto["points"], "files": pareto["files"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print((out / "pareto" / "pareto.md").read_text())
    print(f"Total {timings['total'] / 60:.1f} min: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()
                                                                   if k != "total"))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
