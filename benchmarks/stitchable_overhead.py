"""What switching costs and what one stitchable model saves, measured side by side in one run on real weights
(a SmolLM2-135M self-stitch with four configurations).

Prints
- the time of ``set_stitch`` (mean over many switches, cycling through every configuration) divided by one forward of
  the cheapest configuration (one sequence of 128 tokens) -- goal < 0.01;
- for every configuration, the forward and generate speed of the stitchable model with that configuration active
  divided by its extracted ``StitchedModelForCausalLM``'s (the time ratio extracted / stitchable) -- goal >= 0.97;
- the weights of the stitchable model divided by the sum of the extracted models' (what serving every budget from
  one model saves), next to the anchor's own size.
Machines here are noisy: only the ratios are meant to be read; each timing is a median over rounds in which every
measured function runs once, in turn, so drift hits all of them alike.

    python benchmarks/stitchable_overhead.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

CONFIGS = [(26, 28), (24, 27), (20, 26), (15, 24)]  # 28, 27, 24 and 21 of SmolLM2's 30 blocks


def medians_in_rounds(functions: dict, rounds: int) -> dict:
    """``{name: median seconds}``; each round calls every function once, in turn (one warm-up round first)."""
    times = {name: [] for name in functions}
    for k in range(rounds + 1):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            if k:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied tensors once


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from hf_klas import StitchableModelForCausalLM
    from hf_klas.loading import resolve_anchor

    anchor = resolve_anchor("smollm2-135m")
    model = StitchableModelForCausalLM.from_anchors(anchor, configs=CONFIGS, max_calibration_samples=16,
                                                    max_length=64, progress=False).eval()
    cheapest = min(model.config.stitch_configs, key=lambda e: e["flops"])
    x = torch.randint(100, 40000, (4, 128))
    one = x[:1]
    prompt = x[:1, :32]
    gen = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
    result = {}
    with torch.inference_mode():
        model.set_stitch(cheapest["front_blocks"], cheapest["back_start"])
        forward_cheapest = medians_in_rounds({"forward": lambda: model(one, use_cache=False)}, args.repeats)["forward"]
        switches = 200
        start = time.perf_counter()
        for k in range(switches * len(CONFIGS)):
            model.set_stitch(CONFIGS[k % len(CONFIGS)])
        switch = (time.perf_counter() - start) / (switches * len(CONFIGS))
        result["switch_seconds"] = switch
        result["switch_time_over_cheapest_forward"] = round(switch / forward_cheapest, 5)
        extracted_bytes = 0
        for c in CONFIGS:
            model.set_stitch(c)
            single = model.extract(*c).eval()
            extracted_bytes += weight_bytes(single)
            t = medians_in_rounds({"fwd_stitchable": lambda: model(x, use_cache=False),
                                   "fwd_extracted": lambda: single(x, use_cache=False),
                                   "gen_stitchable": lambda: model.generate(prompt, **gen),
                                   "gen_extracted": lambda: single.generate(prompt, **gen)}, args.repeats)
            name = f"({c[0]},{c[1]})"
            result[f"forward_speed_ratio_{name}_stitchable_over_extracted"] = round(
                t["fwd_extracted"] / t["fwd_stitchable"], 3)
            result[f"generate_speed_ratio_{name}_stitchable_over_extracted"] = round(
                t["gen_extracted"] / t["gen_stitchable"], 3)
    result["stitchable_weights_mb"] = round(weight_bytes(model) / 2**20, 1)
    result["sum_of_extracted_weights_mb"] = round(extracted_bytes / 2**20, 1)
    result["anchor_weights_mb"] = round(weight_bytes(anchor.load_full()) / 2**20, 1)
    result["memory_ratio_stitchable_over_sum_of_extracted"] = round(weight_bytes(model) / extracted_bytes, 3)
    for k, v in result.items():
        print(f"{k:58s} {v}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
