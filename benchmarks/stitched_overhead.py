"""Stitched-model overhead, measured side by side in one run on real weights (SmolLM2-135M).

Prints
- forward and generate speed of a stitched model that runs exactly the anchor's computation (self-stitch at
  (i, i) with an identity stitch, plus one 576x576 matmul) divided by the native model's -- the cost of the
  composition itself;
- peak memory (increase of a fresh process's RSS high-water mark over its post-import level) of building a
  stitched model with lazy reads vs loading both anchors whole, next to the size of the weights each holds.
Machines here are noisy: only the ratios are meant to be read, and each timing is the median of repeats.

    python benchmarks/stitched_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

BUILD = """
import resource, sys, json, torch, gc
from transformers import AutoModelForCausalLM
from hf_klas.loading import resolve_anchor
from hf_klas.building import build_stitched
mode = sys.argv[1]
a = resolve_anchor("smollm2-135m")
def rss():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
base = rss()  # high-water mark after imports: what every mode pays anyway
if mode == "stitched":
    m = build_stitched(a, a, 8, 26)
    size = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
else:
    f = AutoModelForCausalLM.from_pretrained(a.directory)
    b = AutoModelForCausalLM.from_pretrained(a.directory)
    # transformers memory-maps safetensors: pages count once touched, which any use of the anchors does
    touched = sum(float(p.sum()) for m in (f, b) for p in m.parameters())
    size = sum(p.numel() * p.element_size() for m in (f, b) for p in m.parameters()) / 2**20
print(json.dumps({"peak_increase_mb": rss() - base, "weights_mb": size}))
"""


def _interleaved(fn_a, fn_b, repeats):
    """Median times of two functions run alternately (drift on a noisy machine hits both alike)."""
    fn_a(), fn_b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times_a), statistics.median(times_b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    from hf_klas import StitchedModel
    from hf_klas.loading import resolve_anchor

    anchor = resolve_anchor("smollm2-135m")
    native = anchor.load_full().eval()
    stitched = StitchedModel.from_anchors(anchor, front_blocks=15, back_start=15, stitch_init="identity").eval()
    x = torch.randint(100, 40000, (4, 128))
    p = x[:1, :32]
    gen = dict(max_new_tokens=32, do_sample=False, min_new_tokens=32)
    with torch.inference_mode():
        fwd_native, fwd_stitched = _interleaved(lambda: native(x, use_cache=False),
                                                lambda: stitched(x, use_cache=False), args.repeats)
        gen_native, gen_stitched = _interleaved(lambda: native.generate(p, **gen),
                                                lambda: stitched.generate(p, **gen), args.repeats)
    mem = {}
    for mode in ("stitched", "both_anchors"):
        out = subprocess.run([sys.executable, "-c", BUILD, mode], capture_output=True, text=True, check=True)
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    result = {
        "forward_time_ratio_stitched_over_native": round(fwd_stitched / fwd_native, 3),
        "generate_time_ratio_stitched_over_native": round(gen_stitched / gen_native, 3),
        "build_stitched_(8,26)_peak_increase_mb": round(mem["stitched"]["peak_increase_mb"]),
        "build_stitched_(8,26)_weights_mb": round(mem["stitched"]["weights_mb"]),
        "load_both_anchors_peak_increase_mb": round(mem["both_anchors"]["peak_increase_mb"]),
        "load_both_anchors_weights_mb": round(mem["both_anchors"]["weights_mb"]),
        "peak_memory_ratio_stitched_over_both": round(mem["stitched"]["peak_increase_mb"]
                                                      / mem["both_anchors"]["peak_increase_mb"], 3),
    }
    for k, v in result.items():
        print(f"{k:45s} {v}")
    return result


if __name__ == "__main__":
    main()
