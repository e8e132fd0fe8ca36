#!/usr/bin/env python
"""Freeze a sample of WordNet 3.0 glosses (Debian package wordnet-base) into hf_klas's shipped data file.

    python scripts/freeze_wordnet_glosses.py [--wordnet /usr/share/wordnet] [--size 1500] [--out hf_klas/data]

The shipped file (hf_klas/data/wordnet_glosses-v1.jsonl.gz + manifest) is what the depth-pruning benchmark reads,
so its general-English perplexity does not depend on what a machine has installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hf_klas.data.wordnet_glosses import FROZEN_SIZE, WORDNET_DIR, freeze_wordnet_glosses  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wordnet", default=WORDNET_DIR, help="Directory with data.noun/verb/adj/adv.")
    p.add_argument("--size", type=int, default=FROZEN_SIZE, help="Synsets to sample.")
    p.add_argument("--out", default=str(REPO / "hf_klas" / "data"), help="Where the file and manifest go.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing file of this version.")
    args = p.parse_args(argv)
    info = freeze_wordnet_glosses(args.out, args.wordnet, args.size, overwrite=args.overwrite)
    print(json.dumps({k: info[k] for k in ("records", "splits", "sha256")}, indent=1))
    print(json.dumps(info["split_rule"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
