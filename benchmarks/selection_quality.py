#!/usr/bin/env python
"""Selection-quality study: does KLAS (or any baseline) pick the stitches that finetune best?

Thin wrapper around :func:`hf_klas.quality.run_quality`; flags come from :class:`hf_klas.quality.QualityOptions`
through ``HfArgumentParser`` (same as ``hf-klas quality``). Defaults: the zoo's ViT pairs on Fashion-MNIST and
SmolLM2-135M self-stitching on Debian descriptions, about an hour on 2 CPU cores; results in
``benchmarks/results/selection_quality.{json,md,png}``.

    python benchmarks/selection_quality.py                 # the default study
    python benchmarks/selection_quality.py --quick         # smoke test (seconds; meaningless numbers)
    python benchmarks/selection_quality.py --studies vit --vit_pairs vit-fmnist-tiny:vit-fmnist-base
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> dict:
    import logging

    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hf_klas.quality").setLevel(logging.INFO)

    from hf_klas.quality import QualityOptions, run_quality

    parser = HfArgumentParser([QualityOptions], description=__doc__.splitlines()[1])
    (opts,) = parser.parse_args_into_dataclasses(args=argv)
    args = sys.argv[1:] if argv is None else list(argv)
    summary = run_quality(opts, command=" ".join(["python benchmarks/selection_quality.py"] + args))
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
