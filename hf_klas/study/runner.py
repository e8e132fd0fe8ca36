"""Selection-quality study: does a selector's score predict the quality of the stitch after finetuning?

``hf-klas quality`` / :func:`run_quality` (``benchmarks/selection_quality.py`` is a thin script around it).

For each anchor pair:

1. **Oracle** (:mod:`hf_klas.study.oracles`). ViT pairs: every valid configuration between the anchors' FLOPs,
   least-squares init, then the same finetune per protocol and seed: ``full`` (every weight adapts, anchors at
   0.1x the LR: the way users finetune a stitch, and what Γ's capacity denominator assumes) and ``stitch`` (the
   stitch layer alone), each reported as its own study. SmolLM2 self-stitching: a training-free oracle
   (least-squares stitch, no finetune) over every configuration skipping ``lm_min_skip..lm_max_skip`` blocks
   (perplexity and ROUGE-L), and a LoRA-finetuned oracle over every configuration of a stride grid in three
   FLOPs buckets (perplexity and ROUGE-L, per seed).
2. **Selectors**: every selector scores the whole grid once per pair on the same calibration data
   (``compute_plan``); the studies of one pair share those scores.
3. **Metrics** (:mod:`hf_klas.study.statistics`): correlation (global and within FLOPs bucket), top-1 per
   bucket with regret, the paper's configuration recovery (KLAS's own candidate set, τ and back-block cover on),
   AUC; every definition is written into the JSON.
4. **Outputs** (:mod:`hf_klas.study.report`): ``<name>.json`` (everything, including which data was used),
   ``<name>.md``, ``<name>.png`` and one PNG per study. ``from_json`` re-analyses a stored run without models.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..calibration import calibration_batches
from ..console import quiet_console, stage
from ..data.debian_descriptions import FROZEN_MANIFEST, load_debian_descriptions
from ..data.fashion_mnist import fashion_mnist_root, load_fashion_mnist_arrays, preprocess
from ..errors import HfKlasError
from ..evaluation import first_lines, generate_texts, load_rouge, perplexity
from ..evaluation.pareto import ParetoPoint
from ..flops import DEFAULT_SEQ_LEN
from ..loading import resolve_anchor
from ..selection.api import compute_plan
from ..selection.scoring import assign_buckets, bucket_edges
from ..selection.selectors import SELECTORS
from ..selection.selectors.base import grids, valid_mask
from ..training.recipes import VIT_RECIPE
from ..version import __version__
from . import report as reporting
from .options import QualityOptions, parse_selector, quick
from .oracles import (
    PixelDataset,
    VitProtocol,
    block_outputs,
    lm_lora_oracle,
    lm_self_stitch_oracle,
    self_stitch_fits,
    vit_anchor_oracle,
    vit_oracle,
)
from .parts import PartStore, pair_key, parse_pair_key
from .statistics import AUC_DEFINITION, DEFINITIONS, analyze_selector

__all__ = ["run_quality", "cli_options"]

FORMAT = "hf_klas.selection_quality"


# ------------------------------------------------------------------------------------------------------------
# selectors
# ------------------------------------------------------------------------------------------------------------
def _selector_options(method: str, extra: dict, opts: QualityOptions, seed: int = 0) -> dict:
    known = {f.name for f in fields(SELECTORS[method].config_class)}
    out = dict(extra)
    if "seed" in known:
        out["seed"] = seed
    if extra.get("probe") == "tuned_lens":
        out["probe_options"] = {"max_steps": int(opts.tuned_lens_steps)}
    return out


def run_selectors(specs, front, back, calibration, opts: QualityOptions, pool, *, compute_kw: dict,
                  flops_grid: np.ndarray, bar=None) -> dict:
    """``{label: {"score": [N], "seconds", "method", "options"}}`` (random: ``"scores"``, one list per seed)."""
    out = {}
    for spec in specs:
        label, method, extra = parse_selector(spec)
        seeds = list(range(opts.random_repeats)) if method == "random" else [0]
        scores, secs, info = [], 0.0, {}
        for seed in seeds:
            sel_opts = _selector_options(method, extra, opts, seed)
            t0 = time.perf_counter()
            try:
                plan, info = compute_plan(front, back, calibration, method, cache=opts.use_cache, progress=False,
                                          **compute_kw, **sel_opts)
            except HfKlasError as err:
                out[label] = {"method": method, "options": _json_safe(sel_opts), "error": str(err)}
                break
            secs += time.perf_counter() - t0
            if not np.allclose(plan.flops.numpy(), flops_grid, rtol=1e-9):
                raise HfKlasError(f"Selector {label} counted FLOPs differently from the study.",
                                  "Report this: every plan must use hf_klas.flops.")
            sc = plan.score.numpy()
            scores.append([float(sc[c["front_blocks"] - 1, c["back_start"]]) for c in pool])
        else:
            entry = {"method": method, "options": _json_safe(sel_opts), "seconds": secs / len(seeds),
                     "cached": bool(info.get("cached", False))}
            entry["scores" if method == "random" else "score"] = scores if method == "random" else scores[0]
            out[label] = entry
        if bar is not None:
            bar.update()
    return out


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return _json_safe(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _num(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def analyze_study(study: dict, selectors: dict, opts: QualityOptions) -> dict:
    """Fill ``study["selectors"]`` with every metric per selector, plus the oracle's own row (an upper bound)."""
    pool = study["oracle"]["configs"]
    qps = np.array([c["quality_per_seed"] for c in pool], dtype=np.float64).T  # [S, N]
    buckets = np.array([c["bucket"] for c in pool])
    higher = study["higher_is_better"]
    anchors = [ParetoPoint(name=a["name"], flops=a["flops"], params=0.0, metric=a["metric"], kind="anchor")
               for a in study["anchors"]]
    qinit = [c["quality_init"] for c in pool] if all(c.get("quality_init") is not None for c in pool) else None
    common = dict(higher_is_better=higher, tie_rank=np.random.default_rng(opts.subset_seed).permutation(len(pool)),
                  anchor_points=anchors, flops_range=tuple(study["flops_range"]), edges=study["bucket_edges"],
                  grid=study["oracle"]["grid"], tau=opts.tau, quality_init=qinit)
    sign = 1.0 if higher else -1.0
    orc = analyze_selector(-sign * qps.mean(0), qps, pool, buckets, **common)
    results = {"oracle": {"method": "oracle", "seconds": None,
                          **{k: orc[k] for k in ("top1", "top1_chance", "regret", "auc", "auc_stitches",
                                                 "candidates", "buckets_nontrivial", "recovery_k")}}}
    for label, entry in selectors.items():
        if "error" in entry:
            results[label] = entry
            continue
        if "scores" in entry:  # random: mean and std over seeds
            runs = [analyze_selector(s, qps, pool, buckets, **common) for s in entry["scores"]]
            agg = {"method": entry["method"], "seconds": entry["seconds"], "repeats": len(runs)}
            for key in ("spearman", "kendall", "spearman_within_bucket", "kendall_within_bucket", "spearman_init",
                        "top1", "top1_chance", "regret", "recovery", "recovery_chance", "set_size", "recovery_k",
                        "auc", "auc_stitches", "buckets_nontrivial"):
                vals = [r.get(key) for r in runs if r.get(key) is not None]
                agg[key] = float(np.mean(vals)) if vals else None
                agg[f"{key}_std"] = float(np.std(vals)) if len(vals) > 1 else None
            agg["candidates"] = runs[0]["candidates"]
            agg["scores"] = [[_num(x) for x in sc] for sc in entry["scores"]]
            results[label] = agg
        else:
            res = analyze_selector(entry["score"], qps, pool, buckets, **common)
            results[label] = {"method": entry["method"], "options": entry["options"], "seconds": entry["seconds"],
                              "cached": entry.get("cached", False), **res}
            for c, s in zip(pool, entry["score"]):
                c.setdefault("scores", {})[label] = _num(s)
    study["selectors"] = results
    return study


# ------------------------------------------------------------------------------------------------------------
# ViT pairs
# ------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vit_data(opts: QualityOptions):
    """Fixed subsets, all outside the test split: finetuning = the first N images of the train split, calibration =
    the first M of them (the library's default calibration; with labels for ProbeNet), evaluation = the first K
    images of the validation split. Returns the data and a record of exactly which."""
    tr_img, tr_lab = load_fashion_mnist_arrays("train")
    va_img, va_lab = load_fashion_mnist_arrays("validation", limit=opts.vit_eval_samples)
    n, nc = opts.vit_train_samples, opts.vit_calibration_samples
    if n > len(tr_img) or nc > len(tr_img):
        raise HfKlasError(f"vit_train_samples={n} / vit_calibration_samples={nc}: the train split has "
                          f"{len(tr_img)} images.", f"Use at most {len(tr_img)}.")
    train = PixelDataset(preprocess(tr_img[:n], channels=1).expand(-1, 3, -1, -1), torch.as_tensor(tr_lab[:n]))
    evaluation = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(preprocess(va_img), torch.as_tensor(va_lab)), batch_size=500)
    cal_px, cal_lab = preprocess(tr_img[:nc]), torch.as_tensor(tr_lab[:nc])
    calib_sel = [{"pixel_values": cal_px[k:k + 64], "labels": cal_lab[k:k + 64]} for k in range(0, nc, 64)]
    calib_ls = [{"pixel_values": cal_px[k:k + 64]} for k in range(0, nc, 64)]
    root = fashion_mnist_root()
    record = {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist IDX files)",
              "files_sha256": {p.name: _sha256(p) for p in sorted(root.glob("*-ubyte.gz"))},
              "finetune": f"train split images 0..{n - 1}", "calibration": f"train split images 0..{nc - 1}",
              "evaluation": f"validation split images 0..{len(va_img) - 1} (training-file rows 55,000..)",
              "test": "not read"}
    return (train, evaluation, calib_sel, calib_ls), record


def vit_protocols(opts: QualityOptions) -> list[VitProtocol]:
    """The oracle protocols of ``opts.vit_protocols``: ``demo`` = the demo's recipe (VIT_RECIPE), the others v2's."""
    out = []
    for name in opts.vit_protocols:
        if name == "demo":
            r = VIT_RECIPE
            out.append(VitProtocol("demo", "full", opts.vit_demo_steps, r.batch_size, r.learning_rate,
                                   r.anchor_lr_scale, r.lr_scheduler_type, r.warmup_ratio))
        else:
            out.append(VitProtocol(name, name, opts.vit_steps, opts.vit_batch_size, opts.vit_lr,
                                   opts.vit_anchor_lr_scale if name == "full" else 1.0))
    return out


def _difference_vs(quality: float, rival: float, n: int) -> dict:
    """Accuracy difference with a 95% normal interval for two independent binomial proportions on ``n`` images
    each (conservative for the paired case; seeds averaged before)."""
    half = 1.96 * math.sqrt((quality * (1 - quality) + rival * (1 - rival)) / n)
    d = quality - rival
    return {"difference": d, "low": d - half, "high": d + half,
            "verdict": "above" if d - half > 0 else ("below" if d + half < 0 else "tie")}


def vit_studies(pair: str, opts: QualityOptions, data, bar, anchor_cache: dict | None = None) -> list[dict]:
    """One study per protocol for ``front:back``: the same pool, oracle LS init and selector scores; the anchors as
    shipped and, where the protocol trains anchors, after the same finetune per seed."""
    front_name, back_name = pair.split(":", 1)
    t_start = time.perf_counter()
    front, back = resolve_anchor(front_name), resolve_anchor(back_name)
    protocols = vit_protocols(opts)
    flops_grid, _, a_flops = grids(front.config, back.config)
    flops_grid = flops_grid.numpy()
    lo, hi = min(a_flops), max(a_flops)
    edges = bucket_edges(lo, hi, opts.num_buckets)
    bgrid = assign_buckets(torch.as_tensor(flops_grid), edges).numpy()
    m, n = flops_grid.shape
    pool = [{"name": f"({i},{j})", "front_blocks": i, "back_start": j, "flops": float(flops_grid[i - 1, j]),
             "bucket": int(bgrid[i - 1, j])} for i in range(1, m + 1) for j in range(n) if bgrid[i - 1, j] >= 0]
    anchor_cache = {} if anchor_cache is None else anchor_cache
    anchor_runs = {}
    for name, anc in ((front_name, front), (back_name, back)):
        if name not in anchor_cache:
            anchor_cache[name] = vit_anchor_oracle(anc, data, protocols=protocols, seeds=opts.vit_seeds)
        anchor_runs[name] = anchor_cache[name]
    t_oracle = time.perf_counter()
    vit_oracle(front, back, pool, data, protocols=protocols, seeds=opts.vit_seeds, ridge=opts.ridge,
               on_config=lambda c: bar.update(len(protocols) * len(opts.vit_seeds)))
    oracle_seconds = time.perf_counter() - t_oracle
    t_sel = time.perf_counter()
    selectors = run_selectors(opts.vit_selectors, front, back, data[2], opts, pool,
                              compute_kw=dict(max_samples=None, batch_size=64), flops_grid=flops_grid, bar=bar)
    selection_seconds = time.perf_counter() - t_sel
    n_eval = len(data[1].dataset)
    studies = []
    for protocol in protocols:
        configs = []
        for c in pool:
            q = c["quality_per_seed"][protocol.name]
            configs.append({k: v for k, v in c.items() if k != "quality_per_seed"} |
                           {"quality_per_seed": q, "quality": float(np.mean(q)),
                            "quality_std": float(np.std(q)) if len(q) > 1 else None})
        stds = [c["quality_std"] for c in configs if c["quality_std"] is not None]
        anchors = []
        for name, fl in ((front_name, a_flops[0]), (back_name, a_flops[1])):
            run = anchor_runs[name]
            per_seed = run["per_seed"].get(protocol.name)
            anchors.append({"name": name, "flops": float(fl),
                            "metric": float(np.mean(per_seed)) if per_seed else run["shipped"],
                            "metric_shipped": run["shipped"], "metric_per_seed": per_seed,
                            "finetuned": per_seed is not None})
        cheap = min(anchors, key=lambda a: a["flops"])
        best = max(configs, key=lambda c: c["quality"])
        above = [c["name"] for c in configs if _difference_vs(c["quality"], cheap["metric"], n_eval)["verdict"]
                 == "above"]
        study = {
            "name": f"{front_name}->{back_name} [{protocol.name}]", "kind": "vit", "protocol": protocol.name,
            "front": front_name, "back": back_name, "metric": "top1_accuracy", "higher_is_better": True,
            "flops_unit": "per image", "flops_range": [lo, hi], "bucket_edges": edges, "anchors": anchors,
            "evaluation_images": n_eval,
            "versus_cheaper_anchor": {
                "anchor": cheap["name"], "anchor_metric": cheap["metric"], "anchor_finetuned": cheap["finetuned"],
                "best_config": best["name"], "best_quality": best["quality"],
                **_difference_vs(best["quality"], cheap["metric"], n_eval),
                "configs_above": above, "configs_at_least": sum(c["quality"] >= cheap["metric"] for c in configs),
                "note": "seed-mean accuracies on the evaluation images; 95% normal interval of two independent "
                        "proportions (conservative for these paired measurements)"},
            "oracle": {
                "description": (f"every valid configuration with FLOPs between the anchors ({len(pool)} of {m * n}); "
                                f"least-squares init on {opts.vit_calibration_samples} calibration images (train "
                                f"split), then {protocol.describe()}, on the first {opts.vit_train_samples} "
                                f"train-split images, per seed {opts.vit_seeds} (seed = data order); top-1 on the "
                                f"first {n_eval} validation images (the test split is not read). Anchors: "
                                + ("the same finetune per seed (shipped accuracy kept beside it)."
                                   if protocol.trains_anchors else "as shipped.")
                                + " quality_init = accuracy after the LS init."),
                "finetuned": protocol.steps > 0, "protocol": protocol.name, "recipe": asdict(protocol),
                "seeds": list(opts.vit_seeds), "grid": [m, n], "configs": configs,
                "quality_seed_std_mean": float(np.mean(stds)) if stds else None,
                "quality_seed_std_max": float(np.max(stds)) if stds else None,
                "binomial_se": float(math.sqrt(0.25 / n_eval)),
                "seconds": oracle_seconds / len(protocols),
            },
            "selection_seconds": selection_seconds, "seconds": time.perf_counter() - t_start,
        }
        studies.append(analyze_study(study, copy.deepcopy(selectors), opts))
    return studies


# ------------------------------------------------------------------------------------------------------------
# LM self-stitching
# ------------------------------------------------------------------------------------------------------------
def _subset(n: int, max_configs: int, seed: int) -> list[int]:
    if not max_configs or max_configs >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=max_configs, replace=False).tolist())


def lm_part_names(opts: QualityOptions) -> list[str]:
    """Every part of the LM study, in the order one process computes them."""
    return ["free", "selectors"] + [f"lora@{s}" for s in opts.lm_lora_seeds]


def lm_store(opts: QualityOptions, anchor) -> PartStore:
    """Where this LM study's parts go: keyed by every option and version that decides their numbers."""
    import transformers

    key = {name: value for name, value in asdict(opts).items()
           if name.startswith("lm_") and name != "lm_parts"}
    key.update(ridge=opts.ridge, subset_seed=opts.subset_seed, tuned_lens_steps=opts.tuned_lens_steps,
               num_buckets=opts.num_buckets, random_repeats=opts.random_repeats, hf_klas=__version__,
               transformers=transformers.__version__, torch=torch.__version__, anchor=anchor.provenance,
               anchor_config_sha256=hashlib.sha256(anchor.config.to_json_string().encode()).hexdigest())
    return PartStore(Path(opts.parts_dir) if opts.parts_dir else Path(opts.out_dir) / f"{opts.name}.parts", key)


class LMStudy:
    """SmolLM2 self-stitching: training-free oracle (perplexity, ROUGE-L) over the pool, LoRA oracle over a grid in
    three FLOPs buckets, one selector pass -- each a part stored as it grows (:mod:`hf_klas.study.parts`), so
    :meth:`compute` can be split over processes and resumed, and :meth:`assemble` reads them back."""

    def __init__(self, opts: QualityOptions):
        self.opts = opts
        self.anchor = resolve_anchor(opts.lm_anchor)
        self.tok = self.anchor.load_preprocessor()
        if self.tok is None:
            raise HfKlasError(f"The LM anchor {opts.lm_anchor} has no tokenizer.", "Save the tokenizer with it.")
        self.store = lm_store(opts, self.anchor)
        if not opts.resume:
            self.store.remove()
        cut = opts.lm_description_chars
        train_all = load_debian_descriptions("train", max_description_chars=cut).shuffle(seed=opts.subset_seed)
        # the oracle is measured on validation: the study picks defaults, so the test split stays unread
        held_out = load_debian_descriptions("validation", max_description_chars=cut).shuffle(seed=opts.subset_seed)
        cal_ds = train_all.select(range(min(opts.lm_calibration_texts, len(train_all))))
        self.lora_train = train_all.select(range(len(cal_ds), min(len(cal_ds) + opts.lm_train_texts,
                                                                 len(train_all))))
        eval_ds = held_out.select(range(min(opts.lm_eval_texts, len(held_out))))
        rouge_ds = held_out.select(range(min(opts.lm_rouge_texts, len(held_out))))
        self.cal_texts = [p + " " + t for p, t in zip(cal_ds["prompt"], cal_ds["target"])]
        self.eval_texts = [p + " " + t for p, t in zip(eval_ds["prompt"], eval_ds["target"])]
        self.prompts, self.refs = list(rouge_ds["prompt"]), list(rouge_ds["target"])
        manifest = json.loads(FROZEN_MANIFEST.read_text())
        self.record = {
            "dataset": f"debian_descriptions {manifest['version']} (frozen, sha256 {manifest['sha256'][:16]}...), "
                       f"descriptions cut to {cut} characters",
            "calibration_packages": list(cal_ds["package"]), "lora_train_packages": list(self.lora_train["package"]),
            "eval_packages": list(eval_ds["package"]), "rouge_packages": list(rouge_ds["package"])}

        flops_grid, _, a_flops = grids(self.anchor.config, self.anchor.config, DEFAULT_SEQ_LEN, same=True)
        self.flops_grid, self.anchor_flops = flops_grid.numpy(), float(a_flops[1])
        m = n = int(self.anchor.config.num_hidden_layers)
        self.grid = [m, n]
        valid = valid_mask(m, n, True).numpy()
        self.eligible = [(i, j) for i in range(1, m + 1) for j in range(n)
                         if valid[i - 1, j] and opts.lm_min_skip <= j - i <= opts.lm_max_skip]
        if not self.eligible:
            raise HfKlasError(f"No self-stitch configuration skips {opts.lm_min_skip}..{opts.lm_max_skip} blocks of "
                              f"a {n}-block model.", "Lower lm_min_skip / lm_max_skip.")
        self.chosen = [self.eligible[k] for k in _subset(len(self.eligible), opts.lm_max_configs, opts.subset_seed)]
        lo = float(min(self.flops_grid[i - 1, j] for i, j in self.chosen))
        self.flops_range = [lo, self.anchor_flops]
        self.edges = bucket_edges(lo, self.anchor_flops, opts.num_buckets)
        self.bucket_of = {(i, j): int(assign_buckets(torch.tensor([float(self.flops_grid[i - 1, j])],
                                                                  dtype=torch.float64), self.edges)[0])
                          for i, j in self.chosen}
        # the LoRA grid: back_start = n-1, n-1-k, ... (the last block included), in the cheapest, a middle and the
        # dearest bucket
        by_bucket: dict[int, list] = {}
        for i, j in self.chosen:
            if (n - 1 - j) % opts.lm_lora_stride == 0:
                by_bucket.setdefault(self.bucket_of[(i, j)], []).append((i, j))
        nonempty = sorted(b for b, cs in by_bucket.items() if len(cs) > 1)
        self.lora_buckets = sorted({nonempty[round(x * (len(nonempty) - 1) / max(opts.lm_lora_buckets - 1, 1))]
                                    for x in range(opts.lm_lora_buckets)}) if nonempty and opts.lm_lora_buckets else []
        self.lora_configs = [c for b in self.lora_buckets for c in by_bucket[b]] if self.prompts else []
        self._model = None
        self._rouge = None
        self._cal_batches = None

    # ---- shared pieces, built on first use --------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            self._model = self.anchor.load_full(dtype=torch.float32).eval()
        return self._model

    @property
    def rouge(self):
        if self._rouge is None:
            self._rouge = load_rouge()
        return self._rouge

    def batches(self, texts) -> list[dict]:
        return calibration_batches(texts, self.anchor.config, self.tok, batch_size=8,
                                   max_length=self.opts.lm_max_length)

    def rouge_l(self, preds) -> float:
        """Mean per-example ROUGE-L F of the first generated lines (no bootstrap: cheap and deterministic)."""
        return float(np.mean(self.rouge.compute(predictions=first_lines(preds), references=self.refs,
                                                use_aggregator=False)["rougeL"]))

    def pool(self) -> list[dict]:
        return [{"name": f"({i},{j})", "front_blocks": i, "back_start": j, "skip": j - i,
                 "flops": float(self.flops_grid[i - 1, j]), "bucket": self.bucket_of[(i, j)]} for i, j in self.chosen]

    def missing(self) -> list[str]:
        """The parts not (completely) stored yet."""
        out = []
        for part in lm_part_names(self.opts):
            data = self.store.load(part)
            if data is None or not data.get("complete"):
                out.append(part)
        return out

    # ---- the parts --------------------------------------------------------------------------------------------
    def compute(self, parts, bar_factory) -> None:
        """Compute the named parts that are not stored yet (stored ones are read, partial ones continued)."""
        for part in parts:
            stored = self.store.load(part) or {}
            if stored.get("complete"):
                continue
            if part == "free":
                self._free(stored, bar_factory)
            elif part == "selectors":
                self._selectors(bar_factory)
            else:
                self._lora(int(part.split("@", 1)[1]), stored, bar_factory)

    def _free(self, stored: dict, bar_factory) -> None:
        opts, t0 = self.opts, time.perf_counter()
        spent = float(stored.get("seconds", 0.0))
        state = {"anchor": stored.get("anchor"), "results": dict(stored.get("results", {})), "complete": False}
        if state["anchor"] is None:
            state["anchor"] = {"perplexity": perplexity(self.model, self.tok, self.eval_texts,
                                                        max_length=opts.lm_max_length, batch_size=8, progress=False),
                               "rougeL": self.rouge_l(generate_texts(self.model, self.tok, self.prompts,
                                                                     max_new_tokens=opts.lm_max_new_tokens,
                                                                     batch_size=16, progress=False))
                               if self.prompts else None}
        done = {parse_pair_key(k): v for k, v in state["results"].items()}
        bar = bar_factory(len(self.chosen), "LM oracle: least-squares stitches, perplexity + generation")
        bar.update(len([c for c in self.chosen if c in done]))

        def save(key, result):
            state["results"][pair_key(*key)] = result
            self.store.save("free", dict(state, seconds=spent + time.perf_counter() - t0))
            bar.update()

        lm_self_stitch_oracle(self.model, self.chosen, self.batches(self.cal_texts), self.batches(self.eval_texts),
                              ridge=opts.ridge, tokenizer=self.tok, prompts=self.prompts or None,
                              max_new_tokens=opts.lm_max_new_tokens, done=done, on_config=save)
        bar.close()
        self.store.save("free", dict(state, complete=True, seconds=spent + time.perf_counter() - t0))

    def _selectors(self, bar_factory) -> None:
        opts, t0 = self.opts, time.perf_counter()
        bar = bar_factory(len(opts.lm_selectors), "LM selectors")
        selectors = run_selectors(opts.lm_selectors, self.anchor, None, self.cal_texts, opts, self.pool(),
                                  compute_kw=dict(max_samples=opts.lm_selector_texts, max_length=opts.lm_max_length,
                                                  batch_size=8), flops_grid=self.flops_grid, bar=bar)
        bar.close()
        self.store.save("selectors", {"selectors": _json_safe(selectors), "complete": True,
                                      "seconds": time.perf_counter() - t0})

    def _lora(self, seed: int, stored: dict, bar_factory) -> None:
        opts, t0 = self.opts, time.perf_counter()
        spent = float(stored.get("seconds", 0.0))
        state = {"results": dict(stored.get("results", {})), "complete": False}
        done = {(*parse_pair_key(k), seed): v for k, v in state["results"].items()}
        bar = bar_factory(len(self.lora_configs), f"LM oracle: LoRA-finetuned stitches, seed {seed}")
        bar.update(len(done))
        todo = [c for c in self.lora_configs if (*c, seed) not in done]
        fits = {}
        if todo:
            cal_b = self.batches(self.cal_texts)
            fits = {key: (w, b) for key, w, b in self_stitch_fits(block_outputs(self.model, cal_b), cal_b, todo,
                                                                  ridge=opts.ridge)}

        def save(key, result):
            state["results"][pair_key(key[0], key[1])] = result
            self.store.save(f"lora@{seed}", dict(state, seconds=spent + time.perf_counter() - t0))
            bar.update()

        lm_lora_oracle(self.anchor, fits, tokenizer=self.tok, train=self.lora_train, eval_texts=self.eval_texts,
                       rouge_prompts=self.prompts, rouge_refs=self.refs, rouge=self.rouge, seeds=[seed],
                       steps=opts.lm_lora_steps, batch=opts.lm_lora_batch_size, lr=opts.lm_lora_lr, r=opts.lm_lora_r,
                       max_length=opts.lm_max_length, max_new_tokens=opts.lm_max_new_tokens, ridge=opts.ridge,
                       done=done, on_run=save)
        bar.close()
        self.store.save(f"lora@{seed}", dict(state, complete=True, seconds=spent + time.perf_counter() - t0))

    # ---- the studies ------------------------------------------------------------------------------------------
    def assemble(self) -> list[dict]:
        """The four LM studies (perplexity and ROUGE-L, training-free and LoRA) from the stored parts."""
        opts = self.opts
        missing = self.missing()
        if missing:
            raise HfKlasError(f"The LM study's parts {missing} are not stored in {self.store.dir}.",
                              "Compute them first (run without --lm_parts, or with --lm_parts naming them).")
        free = self.store.load("free")
        selector_part = self.store.load("selectors")
        lora_parts = {s: self.store.load(f"lora@{s}") for s in opts.lm_lora_seeds}
        selectors = selector_part
        for entry in selectors["selectors"].values():
            if "score" in entry:
                entry["score"] = [math.nan if x is None else x for x in entry["score"]]
            if "scores" in entry:
                entry["scores"] = [[math.nan if x is None else x for x in sc] for sc in entry["scores"]]
        selectors = selectors["selectors"]
        lora = {}
        for seed in opts.lm_lora_seeds:
            for key, res in lora_parts[seed]["results"].items():
                lora.setdefault(parse_pair_key(key), []).append(res)
        lora_seconds = sum(part["seconds"] for part in lora_parts.values())
        res = {parse_pair_key(k): v for k, v in free["results"].items()}
        pool = self.pool()
        base = {"kind": "lm_self_stitch", "front": opts.lm_anchor, "back": opts.lm_anchor,
                "flops_unit": f"per sequence of {DEFAULT_SEQ_LEN} tokens", "flops_range": self.flops_range,
                "bucket_edges": self.edges,
                "selector_calibration": f"the first {opts.lm_selector_texts} of the {len(self.cal_texts)} "
                                        f"calibration texts",
                "selection_seconds": selector_part["seconds"],
                "seconds": free["seconds"] + lora_seconds + selector_part["seconds"]}
        ntok = int(sum(int(b["attention_mask"].sum()) for b in self.batches(self.cal_texts)))
        free_text = (f"configurations skipping {opts.lm_min_skip}..{opts.lm_max_skip} blocks, "
                     + (f"a seeded random {len(self.chosen)} of {len(self.eligible)}"
                        if len(self.chosen) < len(self.eligible) else f"all {len(self.chosen)}")
                     + f"; NOT finetuned: the least-squares stitch (fit on {len(self.cal_texts)} Debian descriptions, "
                     f"{ntok} tokens)")
        skips = sorted({j - i for i, j in self.lora_configs})
        lora_text = (f"every configuration of the stride-{opts.lm_lora_stride} grid (back_start = {self.grid[1] - 1}, "
                     f"{self.grid[1] - 1 - opts.lm_lora_stride}, ...) in {len(self.lora_buckets)} FLOPs buckets "
                     f"({len(self.lora_configs)} configurations, skipping {', '.join(map(str, skips))} blocks); "
                     f"the training-free least-squares stitch, then {opts.lm_lora_steps} LoRA steps "
                     f"(r={opts.lm_lora_r}, lr {opts.lm_lora_lr:g}, batch {opts.lm_lora_batch_size}, stitch layer "
                     f"trained too) on "
                     f"{len(self.lora_train)} Debian training packages (prompt + synopsis, loss on the synopsis), "
                     f"per seed {opts.lm_lora_seeds}")
        anchor_name = Path(opts.lm_anchor).name
        studies = []
        for metric, higher, what in (
                ("perplexity", False, f"perplexity on {len(self.eval_texts)} Debian descriptions (test split)"),
                ("rougeL", True, f"ROUGE-L (mean per-example F) of the first generated line "
                                 f"({opts.lm_max_new_tokens} greedy tokens) on {len(self.refs)} test packages")):
            anchor_value = free["anchor"][metric]
            if anchor_value is None:
                continue
            anchors = [{"name": anchor_name, "flops": self.anchor_flops, "metric": anchor_value}]
            free_pool = []
            for c in pool:
                r = res[(c["front_blocks"], c["back_start"])]
                q = r["perplexity"] if metric == "perplexity" else self.rouge_l(r["generations"])
                free_pool.append(dict(c, quality_per_seed=[q], quality=q))
            studies.append(dict(copy.deepcopy(base), name=f"{anchor_name} self-stitch {metric} [training-free]",
                                protocol="training-free", metric=metric, higher_is_better=higher, anchors=anchors,
                                oracle={"description": free_text + "; " + what, "finetuned": False, "seeds": [None],
                                        "grid": self.grid, "configs": free_pool, "seconds": free["seconds"]}))
            if lora:
                lpool = [dict(c, quality_per_seed=[r[metric] for r in lora[(c["front_blocks"], c["back_start"])]])
                         for c in pool if (c["front_blocks"], c["back_start"]) in lora]
                for c in lpool:
                    c["quality"] = float(np.mean(c["quality_per_seed"]))
                    c["quality_std"] = float(np.std(c["quality_per_seed"])) if len(c["quality_per_seed"]) > 1 else None
                stds = [c["quality_std"] for c in lpool if c.get("quality_std") is not None]
                studies.append(dict(copy.deepcopy(base), name=f"{anchor_name} self-stitch {metric} [LoRA]",
                                    protocol="lora", metric=metric, higher_is_better=higher, anchors=anchors,
                                    oracle={"description": lora_text + "; " + what, "finetuned": True,
                                            "seeds": list(opts.lm_lora_seeds), "grid": self.grid, "configs": lpool,
                                            "quality_seed_std_mean": float(np.mean(stds)) if stds else None,
                                            "quality_seed_std_max": float(np.max(stds)) if stds else None,
                                            "seconds": lora_seconds}))
        index = {(c["front_blocks"], c["back_start"]): k for k, c in enumerate(pool)}

        def scores_on(configs) -> dict:  # the selectors' scores restricted to a study's pool (the LoRA grid)
            idx = [index[(c["front_blocks"], c["back_start"])] for c in configs]
            out = copy.deepcopy(selectors)
            for entry in out.values():
                if "score" in entry:
                    entry["score"] = [entry["score"][k] for k in idx]
                if "scores" in entry:
                    entry["scores"] = [[sc[k] for k in idx] for sc in entry["scores"]]
            return out

        return [analyze_study(st, scores_on(st["oracle"]["configs"]), opts) for st in studies]


# ------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------
def run_quality(opts: QualityOptions | None = None, *, command: str | None = None, **kwargs) -> dict:
    """Run the study (module docstring) and write ``<out_dir>/<name>.json/.md/.png``; returns a summary.
    ``command``: the command line recorded in the report (default: ``sys.argv``)."""
    opts = replace(opts, **kwargs) if opts is not None else QualityOptions(**kwargs)
    if opts.from_json:
        return reanalyze(opts, command)
    if opts.jobs > 1 and "lm" in opts.studies and opts.lm_parts == ["all"]:
        return run_side_by_side(opts, command)
    given = opts
    if opts.quick:
        opts = quick(opts)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies, data_used, lm = [], {}, None

    def bar_factory(total, desc):
        return stage(total, desc, unit="run") if opts.progress else _NoBar()

    with quiet_console(out / f"{opts.name}.log", verbose=opts.verbose):
        if "vit" in opts.studies:
            data, data_used["vit"] = vit_data(opts)
            anchor_cache: dict = {}
            for pair in opts.vit_pairs:
                front, back = pair.split(":", 1)
                total = _vit_pool_size(front, back, opts) * len(opts.vit_protocols) * len(opts.vit_seeds)
                bar = bar_factory(total + len(opts.vit_selectors), f"ViT {front}->{back}: oracle runs + selectors")
                studies += vit_studies(pair, opts, data, bar, anchor_cache)
                bar.close()
        if "lm" in opts.studies:
            lm = LMStudy(opts)
            if opts.lm_parts != ["all"]:  # a share of the work: stored, assembled by a later call
                lm.compute(opts.lm_parts, bar_factory)
                return {"parts": list(opts.lm_parts), "parts_dir": str(lm.store.dir),
                        "seconds": time.perf_counter() - t0}
            lm.compute(lm_part_names(opts), bar_factory)
            studies += lm.assemble()
            data_used["lm"] = lm.record
    report = {
        "format": FORMAT, "hf_klas_version": __version__, "name": opts.name,
        "command": command or (" ".join(sys.argv) if sys.argv and sys.argv[0] else "run_quality(...)"),
        "options": asdict(opts), "options_given": asdict(given), "definitions": dict(DEFINITIONS,
                                                                                     auc_pareto=AUC_DEFINITION),
        "data": data_used,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "studies": studies,
    }
    report["wall_seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - cpu0
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    summary = reporting.write_outputs(_json_safe(report), opts)
    if lm is not None:  # everything is in the report now
        lm.store.remove()
    return summary


def _run_units(units: list[QualityOptions], command: str) -> list[str]:
    """One process's share of :func:`run_side_by_side`, one call after another; returns the reports written."""
    paths = []
    for unit in units:
        part = unit.studies[0] if unit.lm_parts == ["all"] else " ".join(unit.lm_parts)
        result = run_quality(unit, command=f"{command}  [part: --studies {unit.studies[0]}"
                                           + ("" if unit.lm_parts == ["all"] else f" --lm_parts {part}") + "]")
        if "json" in result:
            paths.append(result["json"])
    return paths


def side_by_side_units(opts: QualityOptions, tmp: Path) -> list[list[QualityOptions]]:
    """The two processes' work: vit and the LoRA oracle of every other seed / the LM training-free oracle, the
    selectors and the other seeds (lm alone: the same, without vit). Each unit stores what it computes."""
    seeds = list((quick(opts) if opts.quick else opts).lm_lora_seeds)
    parts_dir = opts.parts_dir or str(Path(opts.out_dir) / f"{opts.name}.parts")

    def lm(parts, k):
        return replace(opts, studies=["lm"], jobs=1, lm_parts=parts, resume=True, parts_dir=parts_dir,
                       out_dir=str(tmp / f"process{k}"))

    shares: list[list[str]] = [[], ["free", "selectors"]]
    for k, seed in enumerate(seeds):
        shares[(k + 1) % 2].append(f"lora@{seed}")
    units: list[list[QualityOptions]] = [[], []]
    if "vit" in opts.studies:
        units[0].append(replace(opts, studies=["vit"], jobs=1, out_dir=str(tmp / "vit")))
    for k, share in enumerate(shares):
        if share:
            units[k].append(lm(share, k))
    return [u for u in units if u]


def run_side_by_side(opts: QualityOptions, command: str | None) -> dict:
    """The work in two processes (:func:`side_by_side_units`), then the LM parts assembled here and one report
    combined from the studies' JSONs. Every piece is seeded and runs alone in its process, so the numbers equal
    a ``jobs=1`` run's."""
    import multiprocessing as mp
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    command = command or (" ".join(sys.argv) if sys.argv and sys.argv[0] else "run_quality(...)")
    if not opts.resume:  # start over: the children always resume
        effective = quick(opts) if opts.quick else opts
        lm_store(effective, resolve_anchor(effective.lm_anchor)).remove()
    with tempfile.TemporaryDirectory(prefix="hf_klas_quality_") as tmp:
        tmp = Path(tmp)
        units = side_by_side_units(opts, tmp)
        with ProcessPoolExecutor(len(units), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_units, share, command) for share in units]
            paths = [p for fut in futures for p in fut.result()]
        assembled = replace(opts, studies=["lm"], jobs=1, resume=True, out_dir=str(tmp / "lm"),
                            parts_dir=opts.parts_dir or str(Path(opts.out_dir) / f"{opts.name}.parts"))
        paths.append(run_quality(assembled, command=f"{command}  [part: --studies lm, assembled]")["json"])
        Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
        logs = sorted(tmp.glob(f"*/{opts.name}.log"))  # the processes' console logs, one after the other
        (Path(opts.out_dir) / f"{opts.name}.log").write_text("".join(
            f"===== {log.parent.name} =====\n{log.read_text()}\n" for log in logs))
        return reanalyze(replace(opts, from_json=paths), command, wall_seconds=time.perf_counter() - t0,
                         side_by_side=True)


class _NoBar:
    def update(self, n: int = 1):
        pass

    def close(self):
        pass


def _vit_pool_size(front: str, back: str, opts: QualityOptions) -> int:
    fa, ba = resolve_anchor(front), resolve_anchor(back)
    flops_grid, _, a_flops = grids(fa.config, ba.config)
    edges = bucket_edges(min(a_flops), max(a_flops), opts.num_buckets)
    return int((assign_buckets(flops_grid, edges) >= 0).sum())


def _random_scores(st: dict, pool: list[dict], repeats: int) -> list[list[float]]:
    """The random selector's pool scores for seeds 0..repeats-1 (data-free: no model runs)."""
    back = None if st["kind"] == "lm_self_stitch" else st["back"]
    scores = []
    for seed in range(repeats):
        plan, _ = compute_plan(st["front"], back, None, "random", cache=False, progress=False, seed=seed)
        sc = plan.score.numpy()
        scores.append([float(sc[c["front_blocks"] - 1, c["back_start"]]) for c in pool])
    return scores


def _read_report(path: Path) -> dict:
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HfKlasError(f"Cannot read the previous report {path}: {err}.",
                          "Pass the selection_quality JSON written by run_quality / benchmarks/selection_quality.py.")
    if old.get("format") != FORMAT:
        raise HfKlasError(f"{path} is not a selection-quality report (format={old.get('format')!r}).",
                          "Pass the selection_quality JSON written by run_quality.")
    return old


def combine_reports(paths: list[Path]) -> dict:
    """One report from runs of different studies (same hf_klas version): studies, data and times added up."""
    reports = [_read_report(p) for p in paths]
    if len(reports) == 1:
        return reports[0]
    versions = {r["hf_klas_version"] for r in reports}
    if len(versions) > 1:
        raise HfKlasError(f"The reports come from different hf_klas versions {sorted(versions)}.",
                          "Combine runs of one version (rerun the older study).")
    names = [st["name"] for r in reports for st in r["studies"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HfKlasError(f"Studies {dupes} appear in more than one report.",
                          "Combine runs of different studies (e.g. --studies vit and --studies lm).")
    first = reports[0]
    studies_run = [s for r in reports for s in r["options"]["studies"]]
    options = dict(first["options"], studies=studies_run)
    for r in reports[1:]:  # each study's own options (vit_* from the vit run, lm_* from the lm run)
        for key, value in r["options"].items():
            if key.startswith(tuple(f"{s}_" for s in r["options"]["studies"])):
                options[key] = value
    first = {k: v for k, v in first.items() if k != "jobs"}  # a combination, not one side-by-side run
    return dict(first, options=options, studies=[st for r in reports for st in r["studies"]],
                data={k: v for r in reports for k, v in r.get("data", {}).items()},
                command=" + ".join(r["command"] for r in reports),
                wall_seconds=sum(r["wall_seconds"] for r in reports),
                cpu_seconds=sum(r.get("cpu_seconds", math.nan) for r in reports),
                parts=[{"command": r["command"], "wall_seconds": r["wall_seconds"], "machine": r["machine"]}
                       for r in reports])


def reanalyze(opts: QualityOptions, command: str | None, *, wall_seconds: float | None = None,
              side_by_side: bool = False) -> dict:
    """``from_json``: metrics, tables and plots recomputed from previous reports (see the option's help).
    ``side_by_side``: the reports are the parts of one :func:`run_side_by_side` run that took ``wall_seconds``."""
    t0 = time.perf_counter()
    paths = [Path(p) for p in opts.from_json]
    old = combine_reports(paths)
    if side_by_side:
        old = dict(old, command=command, wall_seconds=wall_seconds, jobs=opts.jobs)
    known = {f.name for f in fields(QualityOptions)}
    orig = QualityOptions(**{k: v for k, v in old["options"].items() if k in known and k != "from_json"})
    if side_by_side:  # the parts' own tau / random_repeats (after --quick), as one process would have used
        new_opts = replace(orig, out_dir=opts.out_dir, name=opts.name, progress=opts.progress,
                           from_json=[str(p) for p in paths])
    else:
        new_opts = replace(orig, tau=opts.tau, random_repeats=opts.random_repeats, out_dir=opts.out_dir,
                           name=opts.name, progress=opts.progress, from_json=[str(p) for p in paths])
    studies = []
    for old_st in old["studies"]:
        st = {k: v for k, v in old_st.items() if k != "selectors"}
        pool = st["oracle"]["configs"]
        selectors = {}
        for label, r in old_st["selectors"].items():
            if label == "oracle":
                continue
            if "error" in r:
                selectors[label] = r
                continue
            entry = {"method": r["method"], "options": r.get("options", {}), "seconds": r.get("seconds"),
                     "cached": r.get("cached", False)}
            if r["method"] == "random":
                stored = r.get("scores") or []
                entry["scores"] = (stored[:new_opts.random_repeats] if len(stored) >= new_opts.random_repeats
                                   else _random_scores(st, pool, new_opts.random_repeats))
                entry["scores"] = [[math.nan if x is None else x for x in sc] for sc in entry["scores"]]
            else:
                entry["score"] = [math.nan if c.get("scores", {}).get(label) is None else c["scores"][label]
                                  for c in pool]
            selectors[label] = entry
        for c in pool:
            c.pop("scores", None)
        studies.append(analyze_study(st, selectors, new_opts))
    if side_by_side:
        report = dict(old, name=new_opts.name, options=asdict(replace(new_opts, from_json=[], jobs=opts.jobs)),
                      definitions=dict(DEFINITIONS, auc_pareto=AUC_DEFINITION), studies=studies)
        return reporting.write_outputs(_json_safe(report), new_opts)
    report = dict(old, name=new_opts.name, options=asdict(new_opts),
                  definitions=dict(DEFINITIONS, auc_pareto=AUC_DEFINITION), studies=studies,
                  reanalysis={"from": [str(p) for p in paths], "command": command or " ".join(sys.argv),
                              "seconds": time.perf_counter() - t0,
                              "note": "metrics recomputed from the stored oracle qualities and selector scores; "
                                      "wall_seconds / cpu_seconds are the original run's"})
    return reporting.write_outputs(_json_safe(report), new_opts)


def cli_options(run_name: str, argv: list[str]) -> list[type]:
    """The dataclasses whose fields are ``hf-klas quality``'s flags."""
    return [QualityOptions]
