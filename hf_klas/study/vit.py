"""The ViT half of the selection-quality study: fixed data subsets outside the test split, the protocols, and
one pair's studies (oracle per protocol and seed, anchors finetuned the same way, every selector).
"""


import copy
import math
import time
from dataclasses import asdict

import numpy as np
import torch

from ..data.fashion_mnist import fashion_mnist_root, load_fashion_mnist_arrays, preprocess
from ..errors import HfKlasError
from ..loading import resolve_anchor
from ..selection.scoring import assign_buckets, bucket_edges
from ..selection.selectors.base import grids
from ..training.recipes import VIT_RECIPE
from .options import QualityOptions
from .oracles import (
    PixelDataset,
    VitProtocol,
    vit_anchor_oracle,
    vit_oracle,
)
from .selector_runs import analyze_study, run_selectors, sha256_of


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
              "files_sha256": {p.name: sha256_of(p) for p in sorted(root.glob("*-ubyte.gz"))},
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


def difference_vs(quality: float, rival: float, n: int) -> dict:
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
        above = [c["name"] for c in configs if difference_vs(c["quality"], cheap["metric"], n_eval)["verdict"]
                 == "above"]
        study = {
            "name": f"{front_name}->{back_name} [{protocol.name}]", "kind": "vit", "protocol": protocol.name,
            "front": front_name, "back": back_name, "metric": "top1_accuracy", "higher_is_better": True,
            "flops_unit": "per image", "flops_range": [lo, hi], "bucket_edges": edges, "anchors": anchors,
            "evaluation_images": n_eval,
            "versus_cheaper_anchor": {
                "anchor": cheap["name"], "anchor_metric": cheap["metric"], "anchor_finetuned": cheap["finetuned"],
                "best_config": best["name"], "best_quality": best["quality"],
                **difference_vs(best["quality"], cheap["metric"], n_eval),
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


def vit_pool_size(front: str, back: str, opts: QualityOptions) -> int:
    fa, ba = resolve_anchor(front), resolve_anchor(back)
    flops_grid, _, a_flops = grids(fa.config, ba.config)
    edges = bucket_edges(min(a_flops), max(a_flops), opts.num_buckets)
    return int((assign_buckets(flops_grid, edges) >= 0).sum())
