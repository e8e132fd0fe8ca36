"""A stitchable model under load: one SmolLM2-135M self-stitch serving a mixed stream of requests with random
budgets from several threads, against the same stream served by one extracted model per configuration --
measured side by side in one run, each server in its own process (clean peak-memory figures), in the order
A B B A so drift hits both alike.

Prints
- throughput (generated tokens per second) of the stitchable server / the extracted-per-configuration server, on
  the same request stream with the same number of request threads, and their peak RSS ratio (whole process, and
  above the process's RSS after imports); both servers must give the same tokens for every request;
- latency per generated token of every configuration (one request at a time, medians over interleaved rounds) next
  to its relative FLOPs: the cheap configurations must be faster per token, roughly in proportion to their FLOPs.

Each request asks for ``budget_flops=<FLOPs>`` (uniform from the cheapest configuration to 1.2 x the anchor); the
stitchable server passes it to ``generate()``, the other resolves it with the same rule
(``StitchableConfig.budget_stitch``) and calls that configuration's extracted model. Greedy decoding, a fixed
number of new tokens per request.

    python benchmarks/stitchable_load.py [--requests 32] [--new_tokens 16] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# 30, 24, 18 and 12 of SmolLM2's 30 blocks (self-stitch: blocks 0..i-1, the stitch, blocks j..29)
CONFIGS = [(15, 15), (20, 26), (12, 24), (8, 26)]
TEXTS = ["Debian is a free operating system for your computer.",
         "The package provides a command line tool to convert images between formats.",
         "This library implements fast Fourier transforms in C.",
         "A simple text editor for the terminal, with syntax highlighting.",
         "Utilities for managing the system clock and time zones.",
         "Python bindings for the GTK widget toolkit.",
         "A daemon that watches a directory and runs a command when files change.",
         "Fonts for the Latin, Greek and Cyrillic alphabets, designed for screens."]
RESULTS = Path(__file__).resolve().parent / "results" / "stitchable_load.txt"


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image (``ru_maxrss`` would carry the
    parent's peak across fork + exec); ``ru_maxrss`` where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(directory: Path) -> dict:
    """The stitchable model (saved), one extracted model per configuration (saved), the request stream."""
    import torch

    from hf_klas import StitchableModelForCausalLM
    from hf_klas.loading import resolve_anchor

    torch.manual_seed(0)
    anchor = resolve_anchor("smollm2-135m")
    tok = anchor.load_preprocessor()
    model = StitchableModelForCausalLM.from_anchors(anchor, configs=CONFIGS, max_calibration_samples=16,
                                                    max_length=64, progress=False).eval()
    model.save_pretrained(directory / "stitchable")
    for i, j in CONFIGS:
        model.extract(i, j).save_pretrained(directory / f"extracted_{i}_{j}")
    return {"prompts": [tok(t)["input_ids"] for t in TEXTS],
            "flops": {f"{i},{j}": model.config.entry(i, j)["flops"] for i, j in CONFIGS},
            "anchor_flops": model.config.budget_flops_of(1.0)}


def stream(info: dict, n: int, seed: int) -> list[dict]:
    """``n`` requests: a prompt and a budget in FLOPs, uniform between the cheapest configuration's FLOPs and
    1.2 x the anchor's (a budget above the dearest configuration gets the dearest; it runs every block plus the
    stitch, so it costs a little more than the anchor and a budget fraction <= 1 would never pick it)."""
    rng = random.Random(seed)
    lo, hi = min(info["flops"].values()), 1.2 * info["anchor_flops"]
    return [{"prompt": rng.choice(info["prompts"]), "budget": float(round(rng.uniform(lo, hi)))}
            for _ in range(n)]


# ---- one server, in its own process -------------------------------------------------------------------------------
def serve(kind: str, directory: Path, requests: list[dict], new_tokens: int, threads: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import hf_klas  # noqa: F401  (registers the Auto classes)

    torch.set_num_threads(1)  # one core per request thread
    base_rss = peak_rss_mb()
    table = AutoConfig.from_pretrained(directory / "stitchable")  # the budget rule of both servers
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if kind == "stitchable":
        model = AutoModelForCausalLM.from_pretrained(directory / "stitchable").eval()

        def generate(ids, budget):
            return model.generate(ids, budget_flops=budget, **gen)
    else:
        models = {c: AutoModelForCausalLM.from_pretrained(directory / f"extracted_{c[0]}_{c[1]}").eval()
                  for c in CONFIGS}

        def generate(ids, budget):
            return models[table.budget_stitch(budget)].generate(ids, **gen)
    load_rss = peak_rss_mb()
    outputs = [None] * len(requests)
    with torch.inference_mode():
        generate(torch.tensor([requests[0]["prompt"]]), requests[0]["budget"])  # warm-up
        queue = iter(range(len(requests)))
        lock = threading.Lock()

        def worker():
            with torch.inference_mode():
                while True:
                    with lock:
                        k = next(queue, None)
                    if k is None:
                        return
                    r = requests[k]
                    outputs[k] = generate(torch.tensor([r["prompt"]]), r["budget"])[0].tolist()

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(worker) for _ in range(threads)]:
                f.result()
        seconds = time.perf_counter() - start
    held = [model] if kind == "stitchable" else list(models.values())
    weights = sum(p.numel() * p.element_size() for m in held for p in m.parameters()) / 2**20  # tied tensors once
    return {"kind": kind, "seconds": seconds, "tokens_per_second": len(requests) * new_tokens / seconds,
            "weights_mb": weights,
            "rss_after_imports_mb": base_rss, "rss_after_load_mb": load_rss, "peak_rss_mb": peak_rss_mb(),
            "outputs": outputs}


def latency(directory: Path, prompt: list[int], new_tokens: int, rounds: int) -> dict:
    """Seconds per generated token of each configuration (one request at a time): the time of ``new_tokens + 1``
    tokens minus that of 1 token (the prefill), over ``new_tokens``; medians over rounds visiting every
    configuration in turn."""
    import torch
    from transformers import AutoModelForCausalLM

    import hf_klas  # noqa: F401

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(directory / "stitchable").eval()
    ids = torch.tensor([prompt])
    times = {c: {"long": [], "short": []} for c in CONFIGS}
    with torch.inference_mode():
        for k in range(rounds + 1):
            for c in CONFIGS:
                for name, n in (("long", new_tokens + 1), ("short", 1)):
                    start = time.perf_counter()
                    model.generate(ids, stitch=c, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                    if k:
                        times[c][name].append(time.perf_counter() - start)
    return {f"{c[0]},{c[1]}": (statistics.median(t["long"]) - statistics.median(t["short"])) / new_tokens
            for c, t in times.items()}


def worker_main(args) -> None:
    spec = json.loads(Path(args.worker).read_text())
    directory = Path(spec["directory"])
    if spec["task"] == "latency":
        out = latency(directory, spec["prompt"], spec["new_tokens"], spec["rounds"])
    else:
        out = serve(spec["task"], directory, spec["requests"], spec["new_tokens"], spec["threads"])
    Path(spec["out"]).write_text(json.dumps(out))


def run_worker(directory: Path, spec: dict) -> dict:
    """``spec`` in a fresh Python process; its result."""
    path = directory / f"spec_{time.monotonic_ns()}.json"
    spec = {**spec, "directory": str(directory), "out": str(path.with_suffix(".out.json"))}
    path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--worker", str(path)], check=True)
    return json.loads(Path(spec["out"]).read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--new_tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="request threads of each server (one core each)")
    ap.add_argument("--latency_rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS), help="where the printed report is also written ('' = nowhere)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args)
    started = time.perf_counter()
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="stitchable_load_") as tmp:
        directory = Path(tmp)
        print("[stitchable_load] building the stitchable model and the extracted ones ...", flush=True)
        info = build(directory)
        requests = stream(info, args.requests, args.seed)
        picks = {}
        print("[stitchable_load] serving: stitchable, extracted, extracted, stitchable ...", flush=True)
        runs = []
        for kind in ("stitchable", "extracted", "extracted", "stitchable"):
            runs.append(run_worker(directory, {"task": kind, "requests": requests, "new_tokens": args.new_tokens,
                                               "threads": args.threads}))
            print(f"[stitchable_load]   {kind}: {runs[-1]['tokens_per_second']:.1f} tokens/s", flush=True)
        print("[stitchable_load] latency per token of every configuration ...", flush=True)
        lat = run_worker(directory, {"task": "latency", "prompt": info["prompts"][0], "new_tokens": 32,
                                     "rounds": args.latency_rounds})
        from transformers import AutoConfig

        import hf_klas  # noqa: F401

        table = AutoConfig.from_pretrained(directory / "stitchable")
        for r in requests:
            c = table.budget_stitch(r["budget"])
            picks[c] = picks.get(c, 0) + 1

    by = {k: [r for r in runs if r["kind"] == k] for k in ("stitchable", "extracted")}
    same = all(a["outputs"] == b["outputs"] for a in by["stitchable"] for b in by["extracted"])
    tps = {k: statistics.mean(r["tokens_per_second"] for r in v) for k, v in by.items()}
    peak = {k: max(r["peak_rss_mb"] for r in v) for k, v in by.items()}
    base = {k: max(r["rss_after_imports_mb"] for r in v) for k, v in by.items()}
    lo, hi = min(info["flops"].values()) / info["anchor_flops"], 1.2
    say(f"SmolLM2-135M self-stitch, configurations {CONFIGS}; {args.requests} requests x {args.new_tokens} new "
        f"tokens, budgets uniform in [{lo:.3f}, {hi:.3f}] x the anchor's FLOPs, {args.threads} request threads, "
        "1 torch thread each; each server in its own process, run A B B A")
    say("requests per configuration: " + ", ".join(f"{c}: {picks.get(c, 0)}" for c in CONFIGS))
    say(f"same tokens for every request from both servers: {same}")
    say()
    say(f"{'':44s} {'stitchable':>12s} {'extracted':>12s} {'ratio':>8s}")
    say(f"{'throughput (tokens/s, mean of 2 runs)':44s} {tps['stitchable']:12.1f} {tps['extracted']:12.1f} "
        f"{tps['stitchable'] / tps['extracted']:8.3f}")
    weights = {k: v[0]["weights_mb"] for k, v in by.items()}
    say(f"{'weights held (MB)':44s} {weights['stitchable']:12.0f} {weights['extracted']:12.0f} "
        f"{weights['stitchable'] / weights['extracted']:8.3f}")
    say(f"{'peak RSS (MB)':44s} {peak['stitchable']:12.0f} {peak['extracted']:12.0f} "
        f"{peak['stitchable'] / peak['extracted']:8.3f}")
    above = {k: peak[k] - base[k] for k in peak}
    say(f"{'peak RSS above the RSS after imports (MB)':44s} {above['stitchable']:12.0f} {above['extracted']:12.0f} "
        f"{above['stitchable'] / above['extracted']:8.3f}")
    say()
    flops = info["flops"]
    dearest = max(flops, key=flops.get)
    say("latency per generated token vs budget (one request at a time, 32 new tokens, medians over "
        f"{args.latency_rounds} interleaved rounds; relative to {tuple(map(int, dearest.split(',')))})")
    say(f"{'configuration':>14s} {'blocks':>7s} {'rel. FLOPs':>11s} {'ms/token':>9s} {'rel. latency':>13s} "
        f"{'latency/FLOPs':>14s}")
    for c in CONFIGS:
        key = f"{c[0]},{c[1]}"
        rel_f, rel_t = flops[key] / flops[dearest], lat[key] / lat[dearest]
        say(f"{str(c):>14s} {c[0] + 30 - c[1]:7d} {rel_f:11.3f} {lat[key] * 1e3:9.2f} {rel_t:13.3f} "
            f"{rel_t / rel_f:14.3f}")
    cheapest = min(flops, key=flops.get)
    faster = lat[cheapest] < lat[dearest]
    say()
    say(f"cheapest configuration faster per token than the dearest: {faster}")
    say(f"total time {time.perf_counter() - started:.0f} s")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if not (same and faster):
        sys.exit("stitchable_load: the servers disagree or the cheapest configuration is not faster")


if __name__ == "__main__":
    main()
