#!/usr/bin/env python
"""Freeze this machine's Debian package descriptions into a new versioned data file for hf_klas.

The shipped file (hf_klas/data/debian_descriptions-<version>.jsonl.gz + manifest) is what every command reads by
default, so results do not depend on which packages a machine has installed. Making a new version is explicit:

    python scripts/freeze_debian_descriptions.py --version v3 [--status /var/lib/dpkg/status] [--out hf_klas/data]

Every version stores its train / validation / test split per record (source-package and near-duplicate groups;
see hf_klas/data/debian_descriptions.py). v2 was made from v1's text, re-split, with no text changed:

    python scripts/freeze_debian_descriptions.py --version v2 --from-version v1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hf_klas.data.debian_descriptions import (  # noqa: E402
    DEFAULT_STATUS_PATH,
    freeze_debian_descriptions,
    frozen_records,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", required=True, help="version tag of the new file, e.g. v2 (never reuse one)")
    p.add_argument("--status", default=DEFAULT_STATUS_PATH, help="dpkg status (or control) file to read")
    p.add_argument("--out", default=str(REPO / "hf_klas" / "data"), help="directory to write into")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file of that version")
    p.add_argument("--from-version", default=None,
                   help="re-split the text of this shipped frozen version instead of reading --status")
    args = p.parse_args(argv)
    records = frozen_records(args.from_version) if args.from_version else None
    info = freeze_debian_descriptions(args.out, args.status, version=args.version, overwrite=args.overwrite,
                                      records=records)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
