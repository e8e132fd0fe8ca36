"""Selection speed on SmolLM2-135M self-stitching (30 x 30 block pairs, vocabulary 49152), in ONE run:

1. selection wall time / its floor. The selection is ``hf_klas.selection.engine.KLEngine`` with the logit lens:
   one forward per batch, all 31 probe points' distributions per token chunk (online softmax over vocabulary
   tiles), Θ + within-anchor KL + final KL.
   The floor is what no implementation can avoid, measured in the same process on the same batches: the
   anchor's forward pass (stopped after its last block, as the engine runs it) plus ONE unembedding matmul
   per probe point as plain batched matmuls (``torch.mm`` of [31 x chunk, 576] x [576, 49152] into a reused
   output buffer; the fastest of: the engine's chunk, the largest chunk the memory bound allows, and the
   engine's own vocabulary tiles -- so the floor gets every layout advantage the engine has). Floor and
   selection are interleaved batch by batch, ``--repeats`` passes (the machine is shared: both see the same
   load); the ratio is total selection time / total floor time.
2. speed-up over a naive implementation: a per-pair loop that recomputes both distributions of every pair
   (i, j) from cached hidden states (final norm + head + log-softmax per side, then the KL). It is timed on a
   subset of pairs and extrapolated to all 900 pairs (+ one forward pass); the subset's values are checked
   against the engine's Θ.
3. peak memory of the selection for two calibration sizes: the resident set size is sampled every 2 ms while
   one engine is fed the batches; the peak after the first batch is compared with the peak after all of them
   (same batch shape, ``--batches`` times the data), above the baseline with the model loaded. glibc's mmap
   threshold is pinned at 1 MB for the measurement so RSS shows live memory, not allocator history.
4. the top-k approximation (``TopKKLMatrixAccumulator``) against exact Θ on one chunk of tokens.

Run: ``python benchmarks/selection_speed.py`` (2 x 8 x 128 tokens; about 2.5 min on an idle core, 4 min on a
busy shared one) or ``--quick`` (2 x 4 x 128 tokens). ``--threads 2`` uses both cores of the dev machine.

``--scale`` prints the scale table instead: the selection's cost (analytic FLOPs and measured time on this machine)
as calibration tokens, probe points and vocabulary grow, on random-weight Llama-shaped anchors (self-stitching), and
the projection for Llama-3.2-1B -> 3B from the analytic FLOPs at a stated device throughput (``--device-tflops``).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time

import torch

GOAL_RATIO = 1.15
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


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """glibc raises its mmap threshold after freeing large blocks, so later ones come from the heap and stay
    resident: RSS would then show allocator history, not live memory. Pin the threshold (measurement only)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def mem_ok(small: int, large: int) -> bool:
    """Memory does not grow with the data: at most 5% or 16 MB (allocator noise) more for more batches."""
    return large - small <= max(0.05 * small, 16 * 2**20)


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
def floor_batch(model, probe, batch, variants, out_box) -> tuple[float, float]:
    """Floor of one batch: (forward seconds, unembedding-matmul seconds of the fastest variant).

    ``variants``: ``(chunk_tokens, tile)`` -- ``tile=None`` is one plain ``[31 x chunk, d] x [d, V]`` matmul per
    chunk, an int splits it into vocabulary tiles of that width (the engine's own matmul shapes)."""
    from hf_klas.activations import run_prefix

    n = model.config.num_hidden_layers
    w = probe.head.weight
    V = w.shape[0]
    t0 = time.perf_counter()
    outs = run_prefix(model, batch, upto=n)
    t_fwd = time.perf_counter() - t0
    feats = torch.stack([h.reshape(-1, h.shape[-1]) for h in outs])  # [31, N, d] (not timed)
    N = feats.shape[1]
    best = float("inf")
    for chunk, tile in variants:
        width = V if tile is None else tile
        key = (chunk, width)
        if key not in out_box:
            out_box[key] = torch.empty(chunk * feats.shape[0] * width)
        buf = out_box[key]
        t0 = time.perf_counter()
        for s in range(0, N, chunk):
            x = feats[:, s:s + chunk].reshape(-1, feats.shape[-1])
            for v0 in range(0, V, width):
                v1 = min(V, v0 + width)
                torch.mm(x, w[v0:v1].t(), out=buf[: x.shape[0] * (v1 - v0)].view(x.shape[0], v1 - v0))
        best = min(best, time.perf_counter() - t0)
    return t_fwd, best


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
            # clamped like the engine (exp of underflowing log-probs takes a ~60x slower path in torch)
            total += float((lp.clamp_min(-80.0).exp() * (lp - lq)).sum())
            count += lp.shape[0]
        values[(i, j)] = total / count
    per_pair = (time.perf_counter() - t0) / len(pairs)
    return t_fwd, per_pair, values


def llama_config(vocab: int, hidden: int, layers: int, intermediate: int | None = None, heads: int = 8,
                 kv_heads: int = 8, head_dim: int = 64):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=head_dim, tie_word_embeddings=True, max_position_embeddings=2048)


#: Llama-3.2-1B and -3B: the shapes that matter for selection (the published configs)
LLAMA_1B = dict(vocab=128256, hidden=2048, layers=16, intermediate=8192, heads=32, kv_heads=8, head_dim=64)
LLAMA_3B = dict(vocab=128256, hidden=3072, layers=28, intermediate=8192, heads=24, kv_heads=8, head_dim=128)


def forward_flops(config, tokens: int, seq_len: int = 128) -> float:
    """The anchor's forward up to its last block (what the engine runs) for ``tokens`` tokens."""
    from hf_klas.flops import anchor_flops

    f = anchor_flops(config, seq_len=seq_len)
    return (f.embed + sum(f.blocks)) * tokens / seq_len


def scale_table(args) -> int:
    """Selection cost as tokens, points and vocabulary grow; projection for Llama-3.2-1B -> 3B."""
    from transformers import LlamaForCausalLM

    from hf_klas.probes import LogitLens
    from hf_klas.selection.engine import KLEngine

    base = {"tokens": 256, "layers": 16, "vocab": 32768, "hidden": 512}
    grid = [base] + [{**base, "tokens": t} for t in (512, 1024)] + [{**base, "layers": n} for n in (8, 32)] + \
        [{**base, "vocab": v} for v in (16384, 65536)]
    print("| tokens | probe points | vocabulary | hidden | FLOPs: forward | FLOPs: unembedding | FLOPs: products | "
          "measured here | GFLOP/s | s per 1k tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rates = []
    for row in grid:
        config = llama_config(row["vocab"], row["hidden"], row["layers"])
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, row["vocab"], (row["tokens"] // 128, 128), generator=g)
        batches = [{"input_ids": ids[k:k + 8], "attention_mask": torch.ones_like(ids[k:k + 8])}
                   for k in range(0, ids.shape[0], 8)]
        engine = KLEngine(LogitLens(model), None, progress=False)
        engine.run([{k: v[:1, :16] for k, v in batches[0].items()}])  # warm-up
        t0 = time.perf_counter()
        engine.run(batches)
        secs = time.perf_counter() - t0
        kf = engine.kernel_flops(row["tokens"])
        fwd = forward_flops(config, row["tokens"])
        total = fwd + kf["unembedding"] + kf["products"]
        rates.append(total / secs)
        print(f"| {row['tokens']} | {engine.num_points} | {row['vocab']} | {row['hidden']} | {fwd:.3g} | "
              f"{kf['unembedding']:.3g} | {kf['products']:.3g} | {secs:.2f} s | {total / secs / 1e9:.0f} | "
              f"{1000 * secs / row['tokens']:.2f} |", flush=True)
        del model, engine
    rate_here = sorted(rates)[len(rates) // 2]
    # Llama-3.2-1B -> 3B, cross-model: front points 1..16, back points 0..28; shapes only (meta device)
    with torch.device("meta"):
        front = LlamaForCausalLM(llama_config(**LLAMA_1B))
        back = LlamaForCausalLM(llama_config(**LLAMA_3B))
    engine = KLEngine(LogitLens(front), LogitLens(back), progress=False)
    tokens = args.scale_tokens
    kf = engine.kernel_flops(tokens)
    fwd = forward_flops(front.config, tokens) + forward_flops(back.config, tokens)
    # z written, e written/read 3x, both read by the products
    streamed = 4 * tokens * engine.num_points * engine.classes * 6
    t_dev = ((kf["unembedding"] + kf["products"]) / (args.device_tflops * 1e12)
             + fwd / (args.device_bf16_tflops * 1e12) + streamed / (args.device_tbps * 1e12))
    print(f"\nLlama-3.2-1B -> 3B ({len(engine.front_points)} + {len(engine.back_points)} probe points, vocabulary "
          f"{engine.classes}), {tokens} calibration tokens: forward {fwd:.3g} FLOPs, unembedding "
          f"{kf['unembedding']:.3g}, products {kf['products']:.3g} "
          f"(total {fwd + kf['unembedding'] + kf['products']:.3g})")
    print(f"  projected on one GPU at {args.device_tflops:g} TFLOP/s float32 (unembedding, products), "
          f"{args.device_bf16_tflops:g} TFLOP/s bf16 (forward), {args.device_tbps:g} TB/s (the {streamed / 1e9:.0f} GB "
          f"the elementwise passes stream): {t_dev:.1f} s")
    print(f"  projected here (1 core, the table's median {rate_here / 1e9:.0f} GFLOP/s): "
          f"{(fwd + kf['unembedding'] + kf['products']) / rate_here / 3600:.1f} h")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 1 min)")
    ap.add_argument("--batches", type=int, default=None, help="batches of the large calibration size")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--naive-pairs", type=int, default=None, help="pairs timed for the naive loop")
    ap.add_argument("--repeats", type=int, default=None, help="alternating floor/selection repetitions")
    ap.add_argument("--max-chunk-mb", type=int, default=256)
    ap.add_argument("--chunk-tokens", type=int, default=None, help="engine chunk (default: the engine's)")
    ap.add_argument("--tile-kb", type=int, default=None, help="engine vocabulary tile in KB (default: the engine's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, idle-waiting OpenMP threads make every "
                         "small op erratic; the ratio is a per-core property)")
    ap.add_argument("--scale", action="store_true", help="print the scale table and the Llama-3.2-1B -> 3B projection")
    ap.add_argument("--scale-tokens", type=int, default=8192, help="calibration tokens of the projection (64 x 128)")
    ap.add_argument("--device-tflops", type=float, default=45.0,
                    help="assumed sustained float32 TFLOP/s of the GPU (H100/H200 SXM: 67 peak without TF32)")
    ap.add_argument("--device-bf16-tflops", type=float, default=400.0,
                    help="assumed sustained bf16 TFLOP/s of the GPU for the anchors' forward (989 dense peak)")
    ap.add_argument("--device-tbps", type=float, default=4.0, help="assumed memory bandwidth, TB/s (H200: 4.8)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.scale:
        return scale_table(args)
    fixed_mmap_threshold()
    batches_n = args.batches or 2
    bs = args.batch_size or (4 if args.quick else 8)
    n_pairs = args.naive_pairs or (1 if args.quick else 3)
    repeats = args.repeats or 1

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
    def make_engine():
        kw = {} if args.chunk_tokens is None else {"chunk_tokens": args.chunk_tokens}
        if args.tile_kb:
            kw["tile_bytes"] = args.tile_kb * 1024
        return KLEngine(probe, None, max_chunk_bytes=args.max_chunk_mb * 2**20, progress=False, **kw)

    engine = make_engine()
    big_chunk = KLEngine(probe, None, max_chunk_bytes=args.max_chunk_mb * 2**20, chunk_tokens=None).chunk_tokens
    print(f"SmolLM2-135M self-stitch: {n} blocks -> Θ {n}x{n} ({n + 1} probe points), vocab {V}, "
          f"{tokens} calibration tokens ({len(big)} batches of {bs} x {args.seq_len}), chunk {engine.chunk_tokens} "
          f"tokens, torch threads {torch.get_num_threads()}, model load {t_load:.1f} s")

    # --- warm-up, then peak memory after the first batch vs after all batches (one fresh engine) ---------
    make_engine().run([{k: v[:1, :16] for k, v in small[0].items()}])
    trim()
    mem_engine = make_engine()
    mem_engine.reset()
    marks = []
    with RSSPeak() as peak:
        base = peak.peak
        for batch in big:
            mem_engine.feed(batch)
            marks.append((mem_engine.tokens, peak.peak - base))
    result = mem_engine.result()
    del mem_engine
    # --- selection vs floor, interleaved batch by batch (the machine is shared: both see the same load) ---
    chunks = sorted({engine.chunk_tokens, big_chunk})
    variants = [(c, None) for c in chunks] + [(engine.chunk_tokens, engine._tile_width(engine.chunk_tokens))]
    box: dict = {}
    floor_batch(model, probe, small[0], variants, box)  # warm-up of the floor path
    sel_tot, flo_tot, fwd_tot, per_batch = 0.0, 0.0, 0.0, []
    for r in range(repeats):
        engine.reset()
        for k, batch in enumerate(big):
            def run_floor():
                return floor_batch(model, probe, batch, variants, box)

            def run_sel():
                t0 = time.perf_counter()
                engine.feed(batch)
                return time.perf_counter() - t0

            if (r + k) % 2 == 0:
                (f_fwd, f_mm), t_sel = run_floor(), run_sel()
            else:
                t_sel = run_sel()
                f_fwd, f_mm = run_floor()
            sel_tot += t_sel
            flo_tot += f_fwd + f_mm
            fwd_tot += f_fwd
            per_batch.append(t_sel / (f_fwd + f_mm))
        result = engine.result()
    ratio = sel_tot / flo_tot
    per_batch.sort()
    median = per_batch[len(per_batch) // 2]
    print(f"selection (engine) wall time: {sel_tot / repeats:.2f} s per pass ({repeats} passes)")
    print(f"floor = forward + {n + 1} unembedding matmuls per chunk (fastest of (chunk, vocab tile) "
          f"{[(c, t or V) for c, t in variants]}): "
          f"{flo_tot / repeats:.2f} s per pass [forward {fwd_tot / repeats:.2f} s]")
    print(f"ratio selection / floor: {ratio:.3f} (total), per-batch median {median:.3f}, range "
          f"{per_batch[0]:.3f}..{per_batch[-1]:.3f}  (goal <= {GOAL_RATIO})  "
          f"{'PASS' if ratio <= GOAL_RATIO else 'FAIL'}")
    sel = sel_tot / repeats

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
    (t_s, m_s), (t_l, m_l) = marks[0], marks[-1]
    growth = (m_l - m_s) / max(m_s, 1)
    print(f"peak RSS above the loaded model during selection: after {t_s} tokens {m_s / 2**20:.0f} MB; after "
          f"{t_l} tokens {m_l / 2**20:.0f} MB  (growth {100 * growth:+.1f}% for {t_l / t_s:.0f}x the data)  "
          f"{'PASS' if mem_ok(m_s, m_l) else 'FAIL'}  [goal: <= 5% or <= 16 MB]")
    import resource

    print(f"process max RSS (model + everything): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MB")

    # --- top-k approximation ------------------------------------------------------------------------------
    from hf_klas.activations import run_prefix

    with torch.no_grad():
        outs = run_prefix(model, {k: v[:1] for k, v in big[0].items()}, upto=n)
        lp = probe.block_log_probs([h[:, :32] for h in outs])  # [31, 32, V]
    for k in (16, 128, 1024):
        rep = topk_kl_error(lp[1:], lp[:-1], k)
        big_entries = rep.exact > 0.05
        rel = ((rep.exact - rep.approx).abs() / rep.exact)[big_entries]
        fro = float((rep.exact - rep.approx).norm() / rep.exact.norm())
        print(f"top-k Θ (k={k}, mean union {rep.mean_union_size:.0f} of {V} outputs) vs exact on 32 tokens: "
              f"max abs err {rep.max_abs_error:.3g} nats, relative Frobenius err {100 * fro:.2f}%, "
              f"entries > 0.05 nats: mean rel err {100 * float(rel.mean()):.2f}%, max {100 * float(rel.max()):.2f}%")
    # --- fused kernel vs the divergence module's accumulator (reference kernel) ---------------------------
    part = [{k: v[:2] for k, v in big[0].items()}]
    fused = KLEngine(probe, None, progress=False).run(part)
    ref = KLEngine(probe, None, progress=False, kernel="reference").run(part)
    print(f"fused vs reference kernel on {fused.tokens} tokens: "
          f"max |ΔΘ| {float((fused.theta - ref.theta).abs().max()):.2e}"
          f" (Θ up to {float(ref.theta.max()):.2f} nats), max |Δ within-KL| "
          f"{float((fused.within_back - ref.within_back).abs().max()):.2e} (within-KL from "
          f"{float(ref.within_back.min()):.3f} nats)")
    ok = ratio <= GOAL_RATIO and speedup >= GOAL_SPEEDUP and mem_ok(m_s, m_l)
    print("ALL GOALS MET" if ok else "SOME GOALS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
