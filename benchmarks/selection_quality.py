#!/usr/bin/env python
"""Selection-quality study: does KLAS (or any baseline) pick the stitches that finetune best?

Thin wrapper around :func:`hf_klas.study.run_quality`; flags come from :class:`hf_klas.study.QualityOptions`
through ``HfArgumentParser`` (same as ``hf-klas quality``). Defaults: the zoo's ViT pairs on Fashion-MNIST (full
and stitch-only finetuning oracles, 2 seeds) and SmolLM2-135M self-stitching on the frozen Debian task
(training-free and LoRA oracles); results in ``benchmarks/results/selection_quality.{json,md,png}``.

    python benchmarks/selection_quality.py                 # the default study
    python benchmarks/selection_quality.py --quick         # smoke test (seconds; meaningless numbers)
    python benchmarks/selection_quality.py --from_json benchmarks/results/selection_quality.json  # re-analyse
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hf_klas.study import QualityOptions, run_quality  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser([QualityOptions], description=__doc__.splitlines()[1])
    (opts,) = parser.parse_args_into_dataclasses(args=argv)
    args = sys.argv[1:] if argv is None else list(argv)
    summary = run_quality(opts, command=" ".join(["python benchmarks/selection_quality.py"] + args))
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
