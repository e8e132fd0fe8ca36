"""Selection speed on SmolLM2-135M self-stitching (30 x 30 block pairs, vocabulary 49152), in ONE run:

1. selection wall time / its floor. The selection is ``hf_klas.selection.engine.KLEngine`` with the logit lens:
   one forward per batch, all 31 probe points' log-probs per token chunk, Θ + within-anchor KL + final KL.
   The floor is what no implementation can avoid, measured in the same process on the same batches: the
   anchor's forward pass (stopped after its last block, as the engine runs it) plus ONE unembedding matmul
   per probe point as plain batched matmuls (``torch.mm`` of the same [31 x chunk, 576] x [576, 49152] shapes
   into a reused output buffer). Floor and selection alternate ``--repeats`` times; the minimum of each is
   reported (the machine is shared).
2. speed-up over a naive implementation: a per-pair loop that recomputes both distributions of every pair
   (i, j) from cached hidden states (final norm + head + log-softmax per side, then the KL). It is timed on a
   subset of pairs and extrapolated to all 900 pairs (+ one forward pass); the subset's values are checked
   against the engine's Θ.
3. peak memory of the selection for two calibration sizes (1 batch vs ``--batches`` batches of the same shape):
   the resident set size is sampled every 2 ms while the engine runs; reported above the baseline with the
   model loaded (freed memory returned to the OS first with malloc_trim). It must not grow with the data.
4. the top-k approximation (``TopKKLMatrixAccumulator``) against exact Θ on one chunk of tokens.

Run: ``python benchmarks/selection_speed.py`` (about 4-5 min on 2 CPU cores) or ``--quick`` (about 1 min).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time

import torch

GOAL_RATIO = 1.3
GOAL_SPEEDUP = 10.0


class RSSPeak:
    """Sample this process's resident set size every ``interval`` seconds; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def make_batches(tokenizer, sequences: int, seq_len: int, batch_size: int) -> list[dict]:
    """Fixed-shape batches (no padding) cut from the offline default calibration text."""
    from hf_klas.calibration import default_calibration_texts

    text = " ".join(default_calibration_texts(limit=400))
    ids = torch.tensor(tokenizer(text)["input_ids"])
    need = sequences * seq_len
    if ids.numel() < need:
        ids = ids.repeat(need // ids.numel() + 1)
    rows = ids[:need].reshape(sequences, seq_len)
    return [{"input_ids": rows[k:k + batch_size], "attention_mask": torch.ones_like(rows[k:k + batch_size])}
            for k in range(0, sequences, batch_size)]


@torch.no_grad()
def floor_pass(model, probe, batches, chunk: int) -> tuple[float, float]:
    """(forward seconds, unembedding-matmul seconds) of the floor (see module docstring)."""
    from hf_klas.activations import run_prefix

    n = model.config.num_hidden_layers
    w = probe.head.weight
    t_fwd = t_mm = 0.0
    out = None
    for batch in batches:
        t0 = time.perf_counter()
        outs = run_prefix(model, batch, upto=n)
        t_fwd += time.perf_counter() - t0
        feats = torch.stack([h.reshape(-1, h.shape[-1]) for h in outs])  # [31, N, d] (not timed)
        N = feats.shape[1]
        t0 = time.perf_counter()
        for s in range(0, N, chunk):
            x = feats[:, s:s + chunk].reshape(-1, feats.shape[-1])
            if out is None or out.shape[0] < x.shape[0]:
                out = torch.empty(x.shape[0], w.shape[0])
            torch.mm(x, w.t(), out=out[: x.shape[0]])
        t_mm += time.perf_counter() - t0
    return t_fwd, t_mm


@torch.no_grad()
def naive_pairs(model, probe, batches, pairs) -> tuple[float, float, dict]:
    """Per-pair loop: for each (i, j), recompute P_i and P_j from cached hidden states and their KL.
    Returns (forward seconds, seconds per pair, {pair: Θ value})."""
    from hf_klas.activations import run_prefix

    n = model.config.num_hidden_layers
    t0 = time.perf_counter()
    cached = [[h.reshape(-1, h.shape[-1]) for h in run_prefix(model, b, upto=n)] for b in batches]
    t_fwd = time.perf_counter() - t0
    values = {}
    t0 = time.perf_counter()
    for i, j in pairs:
        total, count = 0.0, 0
        for hs in cached:
            lp = torch.log_softmax(probe.head(probe.norm(hs[i])).float(), -1)
            lq = torch.log_softmax(probe.head(probe.norm(hs[j])).float(), -1)
            total += float((lp.exp() * (lp - lq)).sum())
            count += lp.shape[0]
        values[(i, j)] = total / count
    per_pair = (time.perf_counter() - t0) / len(pairs)
    return t_fwd, per_pair, values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 1 min)")
    ap.add_argument("--batches", type=int, default=None, help="batches of the large calibration size")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--naive-pairs", type=int, default=None, help="pairs timed for the naive loop")
    ap.add_argument("--repeats", type=int, default=None, help="alternating floor/selection repetitions")
    ap.add_argument("--max-chunk-mb", type=int, default=256)
    args = ap.parse_args(argv)
    batches_n = args.batches or (2 if args.quick else 3)
    bs = args.batch_size or (4 if args.quick else 8)
    n_pairs = args.naive_pairs or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 2)

    from hf_klas.loading import resolve_anchor
    from hf_klas.probes import LogitLens
    from hf_klas.selection.divergence import topk_kl_error
    from hf_klas.selection.engine import KLEngine
    from hf_klas.selection.selectors.base import load_model

    t_load = time.perf_counter()
    anchor = resolve_anchor("smollm2-135m")
    model = load_model(anchor)
    tok = anchor.load_preprocessor()
    t_load = time.perf_counter() - t_load
    probe = LogitLens(model)
    n, V = model.config.num_hidden_layers, probe.num_classes
    big = make_batches(tok, batches_n * bs, args.seq_len, bs)
    small = big[:1]
    tokens = sum(int(b["attention_mask"].sum()) for b in big)
    engine = KLEngine(probe, None, max_chunk_bytes=args.max_chunk_mb * 2**20, progress=False)
    print(f"SmolLM2-135M self-stitch: {n} blocks -> Θ {n}x{n} ({n + 1} probe points), vocab {V}, "
          f"{tokens} calibration tokens ({len(big)} batches of {bs} x {args.seq_len}), chunk {engine.chunk_tokens} "
          f"tokens, torch threads {torch.get_num_threads()}, model load {t_load:.1f} s")

    # --- memory at two calibration sizes (the small run doubles as warm-up) ------------------------------
    mem = {}
    for name, data in (("small", small), ("large", big)):
        trim()
        with RSSPeak() as peak:
            base = peak.peak
            res = engine.run(data)
        mem[name] = (sum(int(b["attention_mask"].sum()) for b in data), peak.peak - base)
        if name == "large":
            result = res
    floor_pass(model, probe, small, engine.chunk_tokens)  # warm-up of the floor path

    # --- selection vs floor, alternating ----------------------------------------------------------------
    sel_times, floor_times = [], []
    for _ in range(repeats):
        f_fwd, f_mm = floor_pass(model, probe, big, engine.chunk_tokens)
        floor_times.append((f_fwd + f_mm, f_fwd, f_mm))
        t0 = time.perf_counter()
        result = engine.run(big)
        sel_times.append(time.perf_counter() - t0)
    sel = min(sel_times)
    flo = min(floor_times)
    ratio = sel / flo[0]
    print(f"selection (engine) wall time: {sel:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in sel_times)})")
    print(f"floor = forward + {n + 1} unembedding matmuls per chunk: {flo[0]:.2f} s  [forward {flo[1]:.2f} s, "
          f"matmuls {flo[2]:.2f} s]  (runs: {', '.join(f'{t[0]:.2f}' for t in floor_times)})")
    print(f"ratio selection / floor: {ratio:.3f}  (goal <= {GOAL_RATIO})  {'PASS' if ratio <= GOAL_RATIO else 'FAIL'}")

    # --- naive per-pair loop ----------------------------------------------------------------------------
    g = torch.Generator().manual_seed(0)
    all_pairs = [(i, j) for i in range(1, n + 1) for j in range(n)]
    pick = [all_pairs[k] for k in torch.randperm(len(all_pairs), generator=g)[:n_pairs].tolist()]
    nv_fwd, per_pair, values = naive_pairs(model, probe, big, pick)
    naive_total = nv_fwd + per_pair * len(all_pairs)
    err = max(abs(values[(i, j)] - float(result.theta[i - 1, j])) for i, j in pick)
    speedup = naive_total / sel
    print(f"naive per-pair loop: timed {len(pick)} of {len(all_pairs)} pairs, {per_pair:.2f} s/pair -> "
          f"extrapolated {naive_total:.0f} s (incl. forward {nv_fwd:.1f} s); |naive - engine Θ| max {err:.2e}")
    print(f"speed-up over naive: {speedup:.0f}x  (goal >= {GOAL_SPEEDUP:.0f}x)  "
          f"{'PASS' if speedup >= GOAL_SPEEDUP else 'FAIL'}  [extrapolated from the timed subset]")

    # --- memory ---------------------------------------------------------------------------------------------
    (t_s, m_s), (t_l, m_l) = mem["small"], mem["large"]
    growth = (m_l - m_s) / max(m_s, 1)
    print(f"peak RSS above the loaded model during selection: {t_s} tokens -> {m_s / 2**20:.0f} MB; "
          f"{t_l} tokens -> {m_l / 2**20:.0f} MB  (growth {100 * growth:+.1f}% for {t_l / t_s:.0f}x the data)  "
          f"{'PASS' if growth <= 0.10 else 'FAIL'}")
    import resource

    print(f"process max RSS (model + everything): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MB")

    # --- top-k approximation ------------------------------------------------------------------------------
    from hf_klas.activations import run_prefix

    with torch.no_grad():
        outs = run_prefix(model, {k: v[:1] for k, v in big[0].items()}, upto=n)
        lp = probe.block_log_probs([h[:, :32] for h in outs])  # [31, 32, V]
    for k in (16, 128, 1024):
        rep = topk_kl_error(lp[1:], lp[:-1], k)
        print(f"top-k Θ (k={k}, mean union {rep.mean_union_size:.0f} of {V} outputs) vs exact on 32 tokens: "
              f"max abs err {rep.max_abs_error:.3g} nats, max rel err {100 * rep.max_rel_error:.2f}%, "
              f"mean rel err {100 * rep.mean_rel_error:.3f}%")
    ok = ratio <= GOAL_RATIO and speedup >= GOAL_SPEEDUP and growth <= 0.10
    print("ALL GOALS MET" if ok else "SOME GOALS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
