"""What ``import hf_klas`` and ``hf-klas --help`` cost next to the libraries they stand on, side by side in one run.

Each command runs in a fresh interpreter, the commands interleaved round by round (A B C D A B C D ...) so a
change in machine load hits all of them alike; each figure is the median over rounds. Prints the ratios

- ``import hf_klas`` / ``import torch, transformers`` (goal <= 1.15),
- ``import hf_klas`` / ``import torch, transformers`` + ``transformers.PreTrainedModel`` (the floor for any
  package that registers model classes with the Auto classes at import, as ``import hf_klas`` does),
- ``hf-klas --help`` / ``import torch, transformers`` (goal <= 1.3),

and which heavy modules ``import hf_klas`` leaves unloaded (the Trainer, PEFT, datasets, the selection engine).
Only the ratios are meant to be read: machines here are noisy.

    python benchmarks/import_time.py [--rounds 7] [--out benchmarks/results/import_time.txt]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "torch+transformers": [sys.executable, "-c", "import torch, transformers"],
    "torch+transformers+PreTrainedModel": [sys.executable, "-c",
                                           "import torch, transformers; from transformers import PreTrainedModel"],
    "import hf_klas": [sys.executable, "-c", "import hf_klas"],
    "hf-klas --help": [sys.executable, "-m", "hf_klas.cli", "--help"],
}
HEAVY = ("transformers.trainer", "peft", "datasets", "hf_klas.selection", "hf_klas.building", "hf_klas.training",
         "hf_klas.evaluation", "matplotlib")
LOADED = "import sys, json, hf_klas; print(json.dumps({m: m in sys.modules for m in %r}))" % (HEAVY,)


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=None, help="Also write the report to this text file.")
    args = ap.parse_args()
    for cmd in COMMANDS.values():  # warm the file cache once, not timed
        timed(cmd)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            times[name].append(timed(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    base, floor = med["torch+transformers"], med["torch+transformers+PreTrainedModel"]
    loaded = json.loads(subprocess.run([sys.executable, "-c", LOADED], check=True, capture_output=True,
                                       text=True).stdout.strip().splitlines()[-1])
    lines = [f"median of {args.rounds} interleaved rounds, each a fresh interpreter (python {sys.version.split()[0]})"]
    lines += [f"  {k:<36} {v:6.2f} s" for k, v in med.items()]
    lines += [
        f"import hf_klas / import torch, transformers          = {med['import hf_klas'] / base:.2f}x (goal <= 1.15)",
        f"import hf_klas / ... + transformers.PreTrainedModel  = {med['import hf_klas'] / floor:.2f}x",
        f"hf-klas --help / import torch, transformers          = {med['hf-klas --help'] / base:.2f}x (goal <= 1.3)",
        "loaded by `import hf_klas`: " + ", ".join(f"{m}={'yes' if v else 'no'}" for m, v in loaded.items()),
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
