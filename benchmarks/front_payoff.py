#!/usr/bin/env python
"""Front payoff (vision): the anchors-only front vs stitched fronts at equal extra training -- stitches finetuned
with labels, with distillation from the back anchor, and trained jointly as one stitchable model (SN-Net's
supernet) -- on the zoo's pairs, 10,000 test images, 2 seeds.

Thin wrapper around :func:`hf_klas.study.front_payoff.run_front_payoff`; flags come from
:class:`~hf_klas.study.front_payoff.FrontPayoffOptions` through ``HfArgumentParser``. Results in
``benchmarks/results/front_payoff.{json,md}`` and one PNG per pair.

    python benchmarks/front_payoff.py
    python benchmarks/front_payoff.py --pairs vit-fmnist-tiny:vit-fmnist-base --seeds 0   # the demo's pair, 1 seed
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hf_klas.study.front_payoff import FrontPayoffOptions, run_front_payoff  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser([FrontPayoffOptions], description=__doc__.splitlines()[1])
    (opts,) = parser.parse_args_into_dataclasses(args=argv)
    args = sys.argv[1:] if argv is None else list(argv)
    report = run_front_payoff(opts, command=" ".join(["python benchmarks/front_payoff.py"] + args))
    print((Path(opts.out_dir) / f"{opts.name}.md").read_text())
    return report


if __name__ == "__main__":
    main()
