#!/usr/bin/env python
"""Depth pruning of SmolLM2-135M: hf_klas's default selection + least-squares stitch beside ShortGPT, ReplaceMe
and a grid oracle at 90%, 80% and 70% of the FLOPs, training-free and healed (LoRA with labels, LoRA with
distillation), on general English (WordNet glosses) and the Debian synopsis task.

Thin wrapper around :func:`hf_klas.study.depth_pruning.run_depth_pruning`; flags come from
:class:`~hf_klas.study.depth_pruning.DepthPruningOptions` through ``HfArgumentParser``. Results in
``benchmarks/results/depth_pruning.{json,md,png}`` (about 30 minutes on 2 cores; ``--heal none``: a few minutes).

    python benchmarks/depth_pruning.py
    python benchmarks/depth_pruning.py --heal none --budgets 0.8      # training-free, one budget
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hf_klas.study.depth_pruning import DepthPruningOptions, run_depth_pruning  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser([DepthPruningOptions], description=__doc__.splitlines()[1])
    (opts,) = parser.parse_args_into_dataclasses(args=argv)
    args = sys.argv[1:] if argv is None else list(argv)
    report = run_depth_pruning(opts, command=" ".join(["python benchmarks/depth_pruning.py"] + args))
    print((Path(opts.out_dir) / f"{opts.name}.md").read_text())
    return report


if __name__ == "__main__":
    main()
