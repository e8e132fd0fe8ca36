"""``hf-klas demo``: the whole job, offline, on real pretrained weights -- stitches that fill the gap between
two anchors on the accuracy/FLOPs curve.

(a) ViT: the anchor ranking over the Fashion-MNIST zoo (lowest final-output KL), the pair of its cheapest and
    dearest anchors (``--vit_pair``; ``auto``: the ranking's first), stitch selection for the pair,
    least-squares stitches for candidates spread strictly between the anchors' FLOPs, each finetuned the
    way a user would (``mode="full"``: the back blocks adapt, every weight at the same learning rate), top-1
    accuracy, and the Pareto front against the anchors (AUC with the stitches vs the anchors alone).
(b) LLM: SmolLM2-135M-Instruct self-stitched to a FLOPs budget (depth pruning with a learned bridge), LoRA-
    finetuned on the frozen Debian description -> synopsis task, next to the anchor finetuned with the same
    recipe (the fair baseline); ROUGE and perplexity on the task's test split.

Writes a report folder: ``report.json``, ``summary.md``, PNG plots and ``demo.log`` (everything the libraries
printed). The terminal shows one progress bar per stage and the summary; ``--verbose`` shows everything.
``--quick`` shrinks every size (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .building import StitchedModel
from .console import quiet_console, stage
from .data.debian_descriptions import load_debian_descriptions
from .data.fashion_mnist import load_fashion_mnist, with_pixel_values
from .errors import HfKlasError
from .evaluation import (
    AUC_DEFINITION,
    ParetoPoint,
    auc_difference,
    first_lines,
    front_auc,
    generate_texts,
    load_rouge,
    paired_bootstrap_difference,
    paired_difference,
    perplexity,
    plot_pareto,
    top1_accuracy,
    top1_correct,
    wilson_interval,
    write_pareto_table,
)
from .families import CAUSAL_LM, family_of
from .flops import DEFAULT_SEQ_LEN, anchor_flops
from .loading import resolve_anchor
from .selection.api import compute_plan, select_anchors, select_for_budget
from .selection.scoring import spread_candidates
from .selection.selectors import default_method
from .training.data import prepare_causal_lm_dataset, prepare_image_dataset
from .training.recipes import LM_HEAL_RECIPE, VIT_RECIPE, finetune_arguments, finetune_full, heal_lora
from .zoo import VIT_ZOO


@dataclass
class DemoOptions:
    """Options of ``hf-klas demo`` / :func:`run_demo`."""

    out_dir: str | None = field(default=None, metadata={
        "help": "Report folder (default: hf_klas_report/<timestamp>). An existing non-empty folder is refused "
                "unless --overwrite."})
    overwrite: bool = field(default=False, metadata={"help": "Allow writing into an existing report folder."})
    quick: bool = field(default=False, metadata={"help": "Small sizes everywhere (about a minute on 2 cores)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, training and evaluation subsets."})
    method: str | None = field(default=None, metadata={
        "help": "Stitch selector for both halves (default: the task-aware rule hf_klas.selection.selectors."
                "TASK_DEFAULTS: theta for the SmolLM2 self-stitch, snnet for the ViT pair; 'klas' is the paper's "
                "Γ)."})
    skip_vit: bool = field(default=False, metadata={"help": "Skip the ViT half."})
    skip_llm: bool = field(default=False, metadata={"help": "Skip the LLM half."})
    vit_pair: str = field(default="vit-fmnist-tiny:vit-fmnist-base", metadata={
        "help": "front:back anchors of the ViT half (default: the zoo's cheapest and dearest, the whole FLOPs "
                "range, as SN-Net stitches its smallest and largest anchors), or 'auto': KLAS's anchor selection "
                "(lowest final-output KL; on this zoo that is the closest pair, tiny -> small). The anchor "
                "ranking is reported either way."})
    vit_stitches: int | None = field(default=None, metadata={
        "help": "Stitches to finetune, spread over the FLOPs range strictly between the anchors (default 4; "
                "quick 3)."})
    vit_finetune_steps: int | None = field(default=None, metadata={
        "help": "Finetuning steps per anchor and stitch, batch 64 (default 600; quick 60)."})
    vit_lr: float = field(default=VIT_RECIPE.learning_rate, metadata={
        "help": "Peak learning rate of the ViT finetuning (hf_klas.training.recipes.VIT_RECIPE, the selection "
                "study's primary oracle)."})
    vit_anchor_lr_scale: float = field(default=VIT_RECIPE.anchor_lr_scale, metadata={
        "help": "The anchors' blocks train at this fraction of vit_lr (1: the back blocks adapt as fast as the "
                "stitch, which a few hundred steps need; SN-Net's long runs use 0.1)."})
    vit_seeds: int | None = field(default=None, metadata={
        "help": "Finetuning seeds (data order, stitch init draws): every anchor and stitch is finetuned once per "
                "seed (default 2; quick 1)."})
    vit_test_images: int | None = field(default=None, metadata={
        "help": "Test images for the final accuracies (default: all 10000; quick 2000). Read once, at the end."})
    vit_validation_images: int | None = field(default=None, metadata={
        "help": "Validation images (held out of the training file) for every look during the run (default 5000; "
                "quick 1000)."})
    llm_budget: float = field(default=0.9, metadata={
        "help": "FLOPs budget for the SmolLM2 self-stitch, as a fraction of the full model (or absolute FLOPs)."})
    llm_finetune_steps: int | None = field(default=None, metadata={
        "help": "LoRA steps for the SmolLM2 stitch and, with the same recipe, the anchor (default 30; quick 4)."})
    llm_eval_examples: int | None = field(default=None, metadata={
        "help": "Debian test examples for ROUGE/perplexity (default 32; quick 8): the first N of the v2 test "
                "split."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)."})
    verbose: bool = field(default=False, metadata={
        "help": "Print everything the libraries say (by default it goes to <out_dir>/demo.log)."})


def _sizes(opts: DemoOptions) -> dict:
    q = opts.quick
    return {
        "vit_stitches": opts.vit_stitches or (3 if q else 4),
        "vit_finetune_steps": opts.vit_finetune_steps or (60 if q else VIT_RECIPE.steps),
        "vit_batch": VIT_RECIPE.batch_size,
        "vit_seeds": opts.vit_seeds or (1 if q else 2),
        "vit_test_images": opts.vit_test_images or (2000 if q else 10000),
        "vit_validation_images": opts.vit_validation_images or (1000 if q else 5000),
        "vit_calibration_images": 256,
        "bootstrap_samples": 200 if q else 1000,
        "llm_finetune_steps": opts.llm_finetune_steps or (4 if q else 30),
        "llm_eval_examples": opts.llm_eval_examples or (8 if q else 32),
        "llm_calibration_samples": 8 if q else 32,
        "llm_train_examples": 64 if q else 320,
    }


def _report_dir(opts: DemoOptions) -> Path:
    out = Path(opts.out_dir) if opts.out_dir else Path("hf_klas_report") / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise HfKlasError(f"The report folder {out} already exists and is not empty; the demo never overwrites "
                          "results silently.", "Pass another --out_dir, or --overwrite to replace its files.")
    out.mkdir(parents=True, exist_ok=True)
    return out


# --- (a) ViT -------------------------------------------------------------------------------------------------
def _interval(correct: torch.Tensor) -> dict:
    k, n = int(correct.sum()), correct.numel()
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n, "low": lo, "high": hi}


def _finetune_vit(model, train, steps: int, batch: int, seed: int, opts: DemoOptions):
    """The one extra-training recipe every ViT of the demo gets, anchors and stitches alike
    (:data:`~hf_klas.training.recipes.VIT_RECIPE`): every weight trains, the anchors' weights at
    ``vit_anchor_lr_scale`` x ``vit_lr``, cosine schedule, the same steps, batch, data and data order per seed."""
    with tempfile.TemporaryDirectory() as tmp:
        args = finetune_arguments(tmp, steps, opts.vit_lr, batch, seed,
                                  lr_scheduler_type=VIT_RECIPE.lr_scheduler_type, warmup_ratio=VIT_RECIPE.warmup_ratio)
        return finetune_full(model, args, train, anchor_lr_scale=opts.vit_anchor_lr_scale)


def run_vit_demo(opts: DemoOptions, out: Path, sizes: dict) -> dict:
    anchors = {name: resolve_anchor(name) for name in VIT_ZOO}
    n_test, n_val = sizes["vit_test_images"], sizes["vit_validation_images"]
    # calibration = the library's default (the first training images); validation for every look during work;
    # the test split is read once, for the final numbers
    calibration = [with_pixel_values(load_fashion_mnist("train", limit=sizes["vit_calibration_images"]))[:][
        "pixel_values"].float()]
    test = with_pixel_values(load_fashion_mnist("test", limit=n_test)).rename_column("label", "labels")
    validation = with_pixel_values(load_fashion_mnist("validation", limit=n_val)).rename_column("label", "labels")
    steps, batch, seeds = sizes["vit_finetune_steps"], sizes["vit_batch"], list(range(opts.seed,
                                                                                    opts.seed + sizes["vit_seeds"]))
    train_all = load_fashion_mnist("train")

    ranking = select_anchors(list(anchors.values()), calibration=calibration, progress=False)
    for r in ranking:  # aliases, not the shipped folders' paths
        r["front"], r["back"] = VIT_ZOO[r["front_index"]], VIT_ZOO[r["back_index"]]
    if opts.vit_pair == "auto":
        front_name, back_name = ranking[0]["front"], ranking[0]["back"]
    else:
        front_name, _, back_name = opts.vit_pair.partition(":")
        if front_name not in anchors or back_name not in anchors or front_name == back_name:
            raise HfKlasError(f"vit_pair {opts.vit_pair!r} does not name two different zoo anchors.",
                              f"Use 'auto' or front:back with two of {', '.join(VIT_ZOO)}.")
    front, back = anchors[front_name], anchors[back_name]
    method = opts.method or default_method(family_of(front.config).task, self_stitch=False)
    plan, info = compute_plan(front, back, calibration=calibration, method=method, progress=False, cache=False)
    plan.save(out / "vit_plan", overwrite=opts.overwrite)
    plan.plot_heatmap(out / "vit_score_heatmap.png")
    plan.plot_candidates(out / "vit_candidates.png")
    lo, hi = plan.anchor_flops
    picks = spread_candidates(plan.candidates, sizes["vit_stitches"], lo, hi)
    in_range = [n for n, a in anchors.items() if lo <= anchor_flops(a.config).total <= hi]

    rows, correct = [], {}  # correct[(model, seed or None)] = per-test-image correctness
    bar = stage(len(anchors) * (1 + len(seeds)) + len(picks) * len(seeds),
                f"ViT: {len(anchors)} anchors as shipped, then per seed ({len(seeds)}) every anchor and "
                f"{len(picks)} stitches finetuned the same way", unit="model")

    def measure(model, name, kind, seed, **extra):
        hits = top1_correct(model, test, batch_size=500, progress=False)
        correct[(name, seed)] = hits
        val = top1_accuracy(model, validation, batch_size=500, progress=False)
        rows.append({"model": name, "kind": kind, "seed": seed, "flops": extra.pop("flops"),
                     "validation_accuracy": val, **_interval(hits), **extra})
        bar.update()

    for name, anchor in anchors.items():
        model = anchor.load_full().eval()
        measure(model, f"{name} (shipped)", "anchor (shipped)", None, flops=anchor_flops(model.config).total,
                anchor=name)
    for seed in seeds:
        train = train_all.shuffle(seed=seed).select(range(steps * batch))
        train = prepare_image_dataset(with_pixel_values(train), num_labels=10)
        for name, anchor in anchors.items():
            model = _finetune_vit(anchor.load_full(), train, steps, batch, seed, opts)
            measure(model, name, "anchor", seed, flops=anchor_flops(model.config).total, anchor=name)
        for c in picks:
            model = StitchedModel.from_anchors(front, back, front_blocks=c.front_blocks, back_start=c.back_start,
                                               calibration=calibration, progress=False)
            acc0 = top1_accuracy(model, validation, batch_size=500, progress=False)
            model = _finetune_vit(model, train, steps, batch, seed, opts)
            measure(model, f"stitch({c.front_blocks},{c.back_start})", "stitch", seed, flops=c.flops,
                    score=c.score, validation_accuracy_init=acc0,
                    config={"front_blocks": c.front_blocks, "back_start": c.back_start})
    bar.close()
    return _vit_report(opts, out, sizes, rows, correct, seeds, ranking, plan, info, front_name, back_name,
                       in_range, steps, batch)


def _points(rows, seed, kinds) -> list[ParetoPoint]:
    """The models of one seed's run (the shipped anchors belong to every run: they need no seed)."""
    return [ParetoPoint(name=r["model"], flops=r["flops"], params=0.0, metric=r["accuracy"],
                        kind="stitch" if r["kind"] == "stitch" else "anchor", config=r.get("config"))
            for r in rows if r["seed"] in (seed, None) and r["kind"] in kinds]


def _mean_points(rows, seeds, kinds) -> list[ParetoPoint]:
    """One point per model with its accuracy averaged over the seeds (what the plot and the mean AUC use)."""
    by_name: dict[str, list] = {}
    for seed in seeds:
        for p in _points(rows, seed, kinds):
            by_name.setdefault(p.name, []).append(p)
    return [ParetoPoint(name=n, flops=ps[0].flops, params=0.0, kind=ps[0].kind, config=ps[0].config,
                        metric=sum(p.metric for p in ps) / len(ps)) for n, ps in by_name.items()]


def _vit_report(opts, out, sizes, rows, correct, seeds, ranking, plan, info, front_name, back_name, in_range,
                steps, batch) -> dict:
    """Fronts, AUCs and every comparison with its interval. "Anchors only" = every zoo anchor inside the pair's
    FLOPs range, both as shipped and finetuned with the stitches' recipe (a user has both, and the extra training
    can hurt an anchor); "with stitches" = those anchors + the stitches."""
    lo, hi = plan.anchor_flops
    anchors_only = ("anchor", "anchor (shipped)")
    with_stitches = (*anchors_only, "stitch")
    in_range_rows = [r for r in rows if r["kind"] == "stitch" or r["anchor"] in in_range]

    def correct_of(seed):
        return {r["model"]: correct[(r["model"], r["seed"])] for r in in_range_rows if r["seed"] in (seed, None)}

    runs = [(_points(in_range_rows, s, with_stitches), _points(in_range_rows, s, anchors_only), correct_of(s))
            for s in seeds]
    auc = auc_difference(runs, lo, hi, samples=sizes["bootstrap_samples"], seed=opts.seed)
    shipped = [r for r in in_range_rows if r["kind"] == "anchor (shipped)"]
    auc_shipped = front_auc([ParetoPoint(name=r["model"], flops=r["flops"], params=0.0, metric=r["accuracy"],
                                         kind="anchor") for r in shipped], lo, hi)
    # every stitch against the anchors-only front at its cost: the best anchor (shipped or this seed's finetuned
    # one) no dearer than it
    comparisons = []
    for r in rows:
        if r["kind"] != "stitch":
            continue
        rivals = [a for a in in_range_rows if a["kind"] != "stitch" and a["seed"] in (r["seed"], None)
                  and a["flops"] <= r["flops"]]
        rival = max(rivals, key=lambda a: a["accuracy"])
        diff = paired_difference(correct[(r["model"], r["seed"])], correct[(rival["model"], rival["seed"])])
        comparisons.append({"stitch": r["model"], "seed": r["seed"], "anchor": rival["model"],
                            **{k: diff[k] for k in ("difference", "low", "high")},
                            "verdict": {"A": "stitch better", "B": "anchor better", "tie": "tie"}[diff["verdict"]]})
    mean_with = _mean_points(in_range_rows, seeds, with_stitches)
    mean_anchors = _mean_points(in_range_rows, seeds, anchors_only)
    plot_pareto({f"{len(in_range)} anchors only (shipped + finetuned)": mean_anchors,
                 f"anchors + {plan.method} stitches": mean_with}, out / "vit_pareto.png",
                metric_name=f"test top-1 ({sizes['vit_test_images']:,} images, {len(seeds)}-seed mean)",
                title=f"{front_name} -> {back_name} (AUC over the pair's FLOPs range)", flops_min=lo, flops_max=hi)
    write_pareto_table(mean_with, out / "vit_pareto.json", flops_min=lo, flops_max=hi,
                       metric_name="top-1 accuracy (test, mean over seeds)")
    names = {r["model"] for r in rows if r["kind"] == "stitch"}
    per_stitch = {n: sorted({c["verdict"] for c in comparisons if c["stitch"] == n}) for n in sorted(names)}
    beats = [n for n, v in per_stitch.items() if v == ["stitch better"]]
    return {"anchor_ranking": ranking, "pair": [front_name, back_name], "pair_rule": opts.vit_pair,
            "method": plan.method, "plan_seconds": info.get("seconds"), "rows": rows, "seeds": seeds,
            "anchors_in_range": in_range, "test_images": sizes["vit_test_images"],
            "validation_images": sizes["vit_validation_images"],
            "auc": auc, "auc_shipped_anchors": auc_shipped, "auc_definition": AUC_DEFINITION,
            "stitch_vs_anchor_front": comparisons, "stitches_above_anchor_front_every_seed": beats,
            "finetune": {"mode": "full", "steps": steps, "batch": batch, "learning_rate": opts.vit_lr,
                         "anchor_lr_scale": opts.vit_anchor_lr_scale, "train_images": steps * batch,
                         "applies_to": "every anchor and every stitch, per seed"}}


# --- (b) LLM -------------------------------------------------------------------------------------------------
def run_llm_demo(opts: DemoOptions, out: Path, sizes: dict) -> dict:
    anchor = resolve_anchor("smollm2-135m")
    tok = anchor.load_preprocessor()
    test = load_debian_descriptions("test", limit=sizes["llm_eval_examples"])
    train_all = load_debian_descriptions("train")
    train = train_all.shuffle(seed=opts.seed).select(range(sizes["llm_train_examples"]))
    calibration = list(train_all["description"])[-sizes["llm_calibration_samples"]:]
    rouge = load_rouge(seed=opts.seed)
    texts = [p + " " + t for p, t in zip(test["prompt"], test["target"])]
    steps = sizes["llm_finetune_steps"]
    bar = stage(6, "LLM: select, anchor, stitch init, finetune stitch, finetune anchor", unit="stage")

    def evaluate(model, label):
        model.eval()
        preds = first_lines(generate_texts(model, tok, list(test["prompt"]), max_new_tokens=24, batch_size=8,
                                           progress=False))
        scores = rouge.compute(predictions=preds, references=list(test["target"]))
        per_example = rouge.compute(predictions=preds, references=list(test["target"]), rouge_types=["rougeL"],
                                    use_aggregator=False)["rougeL"]
        ppl = perplexity(model, tok, texts, max_length=256, batch_size=8, progress=False)
        bar.update()
        return {"model": label, "perplexity": ppl, **{k: float(v) for k, v in scores.items()},
                "rougeL_per_example": [float(x) for x in per_example],
                "examples": [{"prompt_tail": p[-80:], "prediction": y, "reference": r}
                             for p, y, r in list(zip(test["prompt"], preds, test["target"]))[:3]]}

    ds = prepare_causal_lm_dataset(train, tok, prompt_column="prompt", target_column="target", max_length=256)

    recipe = replace(LM_HEAL_RECIPE, steps=steps)

    def lora_finetune(model):
        """One recipe for the stitch and the anchor (:data:`LM_HEAL_RECIPE`): the same steps and data order."""
        return heal_lora(model, recipe, ds, tok, opts.seed)

    method = opts.method or default_method(CAUSAL_LM, self_stitch=True)
    chosen, plan = select_for_budget(anchor, None, budget_flops=opts.llm_budget, calibration=calibration,
                                     method=method, progress=False, max_samples=sizes["llm_calibration_samples"])
    plan.plot_heatmap(out / "llm_score_heatmap.png")
    bar.update()
    rows = [evaluate(anchor.load_full(), "SmolLM2-135M (anchor)")]
    model = StitchedModel.from_anchors(anchor, front_blocks=chosen.front_blocks, back_start=chosen.back_start,
                                       calibration=calibration,
                                       max_calibration_samples=sizes["llm_calibration_samples"], progress=False)
    label = f"stitch({chosen.front_blocks},{chosen.back_start})"
    rows.append(evaluate(model, f"{label} least-squares init"))
    rows.append(evaluate(lora_finetune(model), f"{label} after {steps} LoRA steps"))
    rows.append(evaluate(lora_finetune(resolve_anchor("smollm2-135m").load_full()),
                         f"SmolLM2-135M (anchor) after the same {steps} LoRA steps"))
    bar.close()
    full = anchor_flops(anchor.config, seq_len=DEFAULT_SEQ_LEN).total
    diff = paired_bootstrap_difference(rows[2]["rougeL_per_example"], rows[3]["rougeL_per_example"],
                                       samples=sizes["bootstrap_samples"], seed=opts.seed)
    diff["verdict"] = {"A": "stitch better", "B": "anchor better", "tie": "tie"}[diff["verdict"]]
    return {"budget": opts.llm_budget, "method": plan.method, "rougeL_stitch_minus_anchor": diff,
            "chosen": {"front_blocks": chosen.front_blocks, "back_start": chosen.back_start, "flops": chosen.flops,
                       "flops_fraction": chosen.flops / full, "score": chosen.score},
            "rows": rows, "eval_examples": len(test), "finetune_steps": steps,
            "finetune": {"mode": "lora", "lora_r": recipe.lora_r, "learning_rate": recipe.learning_rate,
                         "batch": recipe.batch_size,
                         "train_examples": len(train)}}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _vit_summary(vit: dict) -> list[str]:
    ft, auc = vit["finetune"], vit["auc"]
    seeds = vit["seeds"]
    stitch_rows = [r for r in vit["rows"] if r["kind"] == "stitch"]
    n_stitches = len({r["model"] for r in stitch_rows})
    verdict = {"A": "**the stitched front is better**", "B": "**the anchors-only front is better**",
               "tie": "**a tie** (the interval contains 0)"}[auc["mean"]["verdict"]]
    lines = [f"## ViT (Fashion-MNIST zoo): {vit['pair'][0]} -> {vit['pair'][1]}", "",
             ("Anchor selection (lowest final-output KL) chose the pair" if vit["pair_rule"] == "auto" else
              f"The pair comes from `--vit_pair` (default: the zoo's cheapest and dearest anchors, its whole FLOPs "
              f"range; anchor selection's lowest-KL pair would be {vit['anchor_ranking'][0]['front']} -> "
              f"{vit['anchor_ranking'][0]['back']})")
             + f"; selector `{vit['method']}` picked {n_stitches} candidates spread strictly between the anchors' "
             f"FLOPs. **Every model gets the same extra training**: each of the {len(vit['anchors_in_range'])} zoo "
             f"anchors in the pair's FLOPs range ({', '.join(vit['anchors_in_range'])}) and each stitch "
             f"(least-squares init first) gets {ft['steps']} steps of {ft['mode']} finetuning (batch {ft['batch']}, "
             f"lr {ft['learning_rate']:g}, anchors' weights at {ft['anchor_lr_scale']:g}x, cosine) on the same "
             f"{ft['train_images']:,} training images in the same order, once per seed ({len(seeds)} seed(s): "
             f"{', '.join(map(str, seeds))}). Top-1 on all {vit['test_images']:,} test images (read once, at the "
             f"end) with 95% Wilson intervals; validation accuracy ({vit['validation_images']:,} images held out of "
             f"the training file) beside it.", "",
             "| model | seed | MFLOPs/image | score | val. top-1 | test top-1 [95% interval] |",
             "|---|---|---|---|---|---|"]
    for r in vit["rows"]:
        g = f"{r['score']:.3g}" if r.get("score") is not None else ""
        seed = "" if r["seed"] is None else str(r["seed"])
        lines.append(f"| {r['model']} | {seed} | "
                     f"{r['flops'] / 1e6:.2f} | {g} | {_pct(r['validation_accuracy'])} | {_pct(r['accuracy'])} "
                     f"[{_pct(r['low'])}, {_pct(r['high'])}] |")
    m = auc["mean"]
    per_seed = "; ".join(f"seed {s}: {_pct(r['difference'])} [{_pct(r['low'])}, {_pct(r['high'])}]"
                         for s, r in zip(seeds, auc["runs"]))
    lines += ["", f"**Fronts** (AUC as defined in report.json's auc_definition, the same number as in the plot's "
              f"legend; accuracy in points; the anchors-only front holds every anchor in range, as shipped and "
              f"finetuned): anchors only {_pct(m['auc_b'])}, anchors + stitches {_pct(m['auc_a'])} (mean of "
              f"{len(seeds)} seed(s); the shipped anchors alone: {_pct(vit['auc_shipped_anchors'])}). Difference "
              f"{_pct(m['difference'])} points, 95% paired bootstrap interval over test images "
              f"[{_pct(m['low'])}, {_pct(m['high'])}]: {verdict}. "
              f"Per seed: {per_seed}"
              + (f"; seed-to-seed std {_pct(auc['seed_std'])} points (not inside the bootstrap interval)."
                 if auc["seed_std"] is not None else "; one seed only: seed-to-seed variation is not measured."),
              "", "Each stitch against the anchors-only front at its cost (the best anchor, shipped or finetuned "
              "in the same seed, no dearer than it), paired 95% interval of the accuracy difference in points:", "",
              "| stitch | seed | vs anchor | difference [95%] | verdict |", "|---|---|---|---|---|"]
    for c in vit["stitch_vs_anchor_front"]:
        lines.append(f"| {c['stitch']} | {c['seed']} | {c['anchor']} | {_pct(c['difference'])} "
                     f"[{_pct(c['low'])}, {_pct(c['high'])}] | {c['verdict']} |")
    beats = vit["stitches_above_anchor_front_every_seed"]
    lines += ["", f"Stitches above the anchors-only front in every seed (interval above 0): {len(beats)} of "
              f"{n_stitches} ({', '.join(beats) or 'none'}).", "", "![pareto](vit_pareto.png)", ""]
    return lines


def _summary_md(report: dict) -> str:
    lines = ["# hf_klas demo report", "", f"Mode: {'quick' if report['options']['quick'] else 'full'}; "
             f"wall time {report['seconds']:.0f} s.", ""]
    vit = report.get("vit")
    if vit:
        lines += _vit_summary(vit)
    llm = report.get("llm")
    if llm:
        c, ft = llm["chosen"], llm["finetune"]
        lines += [f"## LLM: SmolLM2-135M self-stitch at budget {llm['budget']}", "",
                  f"Selector `{llm['method']}` (the task-aware default for a self-stitched causal LM unless "
                  f"--method names one) chose front_blocks={c['front_blocks']}, back_start={c['back_start']} "
                  f"({c['flops_fraction']:.2%} of the full model's FLOPs). {llm['eval_examples']} Debian test "
                  f"packages (frozen task); the stitch and, as the fair baseline, the anchor get the same "
                  f"{llm['finetune_steps']} LoRA steps (r={ft['lora_r']}, lr {ft['learning_rate']:g}, batch "
                  f"{ft['batch']}, {ft['train_examples']} training packages).", "",
                  "| model | perplexity | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|---|"]
        for r in llm["rows"]:
            lines.append(f"| {r['model']} | {r['perplexity']:.2f} | {r['rouge1']:.3f} | {r['rouge2']:.3f} | "
                         f"{r['rougeL']:.3f} |")
        d = llm["rougeL_stitch_minus_anchor"]
        lines += ["", f"ROUGE-L of the finetuned stitch minus the equally finetuned anchor: {d['difference']:+.3f}, "
                  f"95% paired bootstrap interval over the {d['examples']} test prompts [{d['low']:+.3f}, "
                  f"{d['high']:+.3f}]: {d['verdict']}. One seed, {d['examples']} prompts: thin support.", ""]
    return "\n".join(lines)


def run_demo(opts: DemoOptions | None = None, **kwargs) -> dict:
    """Run the demo; returns where the report went (``report.json``, ``summary.md``, plots, ``demo.log``)."""
    opts = opts or DemoOptions(**kwargs)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    out = _report_dir(opts)
    sizes = _sizes(opts)
    t0 = time.perf_counter()
    report = {"options": asdict(opts), "sizes": sizes}
    with quiet_console(out / "demo.log", verbose=opts.verbose):
        if not opts.skip_vit:
            report["vit"] = run_vit_demo(opts, out, sizes)
        if not opts.skip_llm:
            report["llm"] = run_llm_demo(opts, out, sizes)
    report["seconds"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    summary = _summary_md(report)
    (out / "summary.md").write_text(summary)
    print(summary)
    return {"report_dir": str(out), "seconds": round(report["seconds"], 1)}


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


def cli_options(run_name: str, argv: list[str]) -> list[type]:
    """The dataclasses whose fields are ``hf-klas demo``'s flags."""
    return [DemoOptions]
