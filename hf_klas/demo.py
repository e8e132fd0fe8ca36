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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments, set_seed

from .building import StitchedModel
from .console import quiet_console, stage
from .data.debian_descriptions import load_debian_descriptions
from .data.fashion_mnist import load_fashion_mnist, with_pixel_values
from .errors import HfKlasError
from .evaluation import (
    ParetoPoint,
    first_lines,
    front_auc,
    generate_texts,
    load_rouge,
    perplexity,
    plot_pareto,
    top1_accuracy,
    write_pareto_table,
)
from .families import family_of
from .flops import DEFAULT_SEQ_LEN, anchor_flops
from .loading import resolve_anchor
from .modeling_stitched import StitchedModelForCausalLM
from .selection.api import compute_plan, select_anchors, select_for_budget
from .selection.selectors import DEFAULT_METHOD
from .training.data import prepare_causal_lm_dataset, prepare_image_dataset
from .training.finetune import build_trainer
from .training.lora import merge_lora
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
    method: str = field(default=DEFAULT_METHOD, metadata={
        "help": "Stitch selector for both halves (the evidence-based default; 'klas' is the paper's Γ)."})
    skip_vit: bool = field(default=False, metadata={"help": "Skip the ViT half."})
    skip_llm: bool = field(default=False, metadata={"help": "Skip the LLM half."})
    vit_pair: str = field(default="vit-fmnist-tiny:vit-fmnist-base", metadata={
        "help": "front:back anchors of the ViT half (default: the zoo's cheapest and dearest, the whole FLOPs "
                "range, as SN-Net stitches its smallest and largest anchors), or 'auto': KLAS's anchor selection "
                "(lowest final-output KL; on this zoo that is the closest pair, tiny -> small). The anchor "
                "ranking is reported either way."})
    vit_stitches: int | None = field(default=None, metadata={
        "help": "Stitches to finetune, spread over the FLOPs range strictly between the anchors (default 6; "
                "quick 3)."})
    vit_finetune_steps: int | None = field(default=None, metadata={
        "help": "Finetuning steps per stitch, batch 64 (default 600; quick 60)."})
    vit_lr: float = field(default=1e-3, metadata={"help": "Peak learning rate of the stitches' finetuning."})
    vit_anchor_lr_scale: float = field(default=1.0, metadata={
        "help": "The anchors' blocks train at this fraction of vit_lr (1: the back blocks adapt as fast as the "
                "stitch, which a few hundred steps need; SN-Net's long runs use 0.1)."})
    vit_test_images: int | None = field(default=None, metadata={
        "help": "Test images for accuracy (default 5000; quick 1000)."})
    llm_budget: float = field(default=0.9, metadata={
        "help": "FLOPs budget for the SmolLM2 self-stitch, as a fraction of the full model (or absolute FLOPs)."})
    llm_finetune_steps: int | None = field(default=None, metadata={
        "help": "LoRA steps for the SmolLM2 stitch and, with the same recipe, the anchor (default 30; quick 4)."})
    llm_eval_examples: int | None = field(default=None, metadata={
        "help": "Debian test examples for ROUGE/perplexity (default 32; quick 8)."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)."})
    verbose: bool = field(default=False, metadata={
        "help": "Print everything the libraries say (by default it goes to <out_dir>/demo.log)."})


def _sizes(opts: DemoOptions) -> dict:
    q = opts.quick
    return {
        "vit_stitches": opts.vit_stitches or (3 if q else 6),
        "vit_finetune_steps": opts.vit_finetune_steps or (60 if q else 600),
        "vit_batch": 64,
        "vit_test_images": opts.vit_test_images or (1000 if q else 5000),
        "vit_calibration_images": 256,
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


def _training_args(out: str, steps: int, lr: float, batch: int, seed: int) -> TrainingArguments:
    return TrainingArguments(output_dir=out, max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch,
                             logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True, seed=seed,
                             data_seed=seed, lr_scheduler_type="cosine", warmup_steps=0.05,  # < 1: a ratio
                             dataloader_num_workers=0, disable_tqdm=True)


def spread(candidates: list, k: int, lo: float, hi: float) -> list:
    """Up to ``k`` candidates strictly between FLOPs ``lo`` and ``hi``, evenly spread over that range by cost."""
    inside = sorted((c for c in candidates if lo < c.flops < hi), key=lambda c: c.flops)
    if len(inside) <= k:
        return inside
    picks = [inside[round(x * (len(inside) - 1) / max(k - 1, 1))] for x in range(k)]
    return list({(c.front_blocks, c.back_start): c for c in picks}.values())


# --- (a) ViT -------------------------------------------------------------------------------------------------
def run_vit_demo(opts: DemoOptions, out: Path, sizes: dict) -> dict:
    anchors = {name: resolve_anchor(name) for name in VIT_ZOO}
    n_test, n_cal = sizes["vit_test_images"], sizes["vit_calibration_images"]
    test = with_pixel_values(load_fashion_mnist("test", limit=n_test + n_cal))
    calibration = [test.select(range(n_test, n_test + n_cal))[:]["pixel_values"].float()]  # disjoint from eval
    test = test.select(range(n_test)).rename_column("label", "labels")
    steps, batch = sizes["vit_finetune_steps"], sizes["vit_batch"]
    train = load_fashion_mnist("train").shuffle(seed=opts.seed).select(range(steps * batch))
    train = prepare_image_dataset(with_pixel_values(train), num_labels=10)

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
    plan, info = compute_plan(front, back, calibration=calibration, method=opts.method, progress=False, cache=False)
    plan.save(out / "vit_plan", overwrite=opts.overwrite)
    plan.plot_heatmap(out / "vit_score_heatmap.png")
    plan.plot_candidates(out / "vit_candidates.png")
    lo, hi = plan.anchor_flops
    picks = spread(plan.candidates, sizes["vit_stitches"], lo, hi)

    points, rows = [], []
    bar = stage(len(VIT_ZOO) + len(picks), "ViT: anchors, then stitches (fit, finetune, evaluate)", unit="model")
    for name, anchor in anchors.items():
        model = anchor.load_full().eval()
        acc = top1_accuracy(model, test, batch_size=500, label_key="labels", progress=False)
        fl = anchor_flops(model.config).total
        points.append(ParetoPoint(name=name, flops=fl, params=sum(p.numel() for p in model.parameters()),
                                  metric=acc, kind="anchor"))
        rows.append({"model": name, "kind": "anchor", "flops": fl, "accuracy": acc})
        bar.update()
    for c in picks:
        model = StitchedModel.from_anchors(front, back, front_blocks=c.front_blocks, back_start=c.back_start,
                                           calibration=calibration, progress=False)
        acc0 = top1_accuracy(model, test, batch_size=500, label_key="labels", progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(model, _training_args(tmp, steps, lr=opts.vit_lr, batch=batch, seed=opts.seed),
                                    train, mode="full", anchor_lr_scale=opts.vit_anchor_lr_scale, quiet=True)
            trainer.train()
        model.eval()
        acc1 = top1_accuracy(model, test, batch_size=500, label_key="labels", progress=False)
        name = f"stitch({c.front_blocks},{c.back_start})"
        points.append(ParetoPoint(name=name, flops=c.flops, params=model.config.stitch_info.get("params", 0),
                                  metric=acc1, kind="stitch", selector=plan.method,
                                  config={"front_blocks": c.front_blocks, "back_start": c.back_start}))
        rows.append({"model": name, "kind": "stitch", "flops": c.flops, "score": c.score,
                     "accuracy_init": acc0, "accuracy": acc1})
        bar.update()
    bar.close()
    pair = [p for p in points if p.kind == "stitch" or p.name in (front_name, back_name)]
    table = write_pareto_table(pair, out / "vit_pareto.json", flops_min=lo, flops_max=hi)
    anchors_only = [p for p in points if p.name in (front_name, back_name)]
    plot_pareto({f"{plan.method} stitches, finetuned": points}, out / "vit_pareto.png",
                metric_name="top-1 accuracy (Fashion-MNIST test)",
                title=f"{front_name} -> {back_name}: accuracy vs FLOPs")
    cheaper = min(anchors_only, key=lambda p: p.flops)
    above = [r["model"] for r in rows if r["kind"] == "stitch" and r["accuracy"] > cheaper.metric]
    return {"anchor_ranking": ranking, "pair": [front_name, back_name], "pair_rule": opts.vit_pair,
            "method": plan.method,
            "plan_seconds": info.get("seconds"), "rows": rows, "auc": table.get("auc"),
            "auc_anchors_only": front_auc(anchors_only, lo, hi),
            "stitches_above_cheaper_anchor": above, "test_images": n_test,
            "finetune": {"mode": "full", "steps": steps, "batch": batch, "learning_rate": opts.vit_lr,
                         "anchor_lr_scale": opts.vit_anchor_lr_scale, "train_images": len(train)}}


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
        ppl = perplexity(model, tok, texts, max_length=256, batch_size=8, progress=False)
        bar.update()
        return {"model": label, "perplexity": ppl, **{k: float(v) for k, v in scores.items()},
                "examples": [{"prompt_tail": p[-80:], "prediction": y, "reference": r}
                             for p, y, r in list(zip(test["prompt"], preds, test["target"]))[:3]]}

    ds = prepare_causal_lm_dataset(train, tok, prompt_column="prompt", target_column="target", max_length=256)

    def lora_finetune(model):
        """One recipe for the stitch and the anchor: LoRA r=16 (alpha 32) on the blocks' attention and MLP
        projections, lr 2e-4, batch 4, the same steps and data order; the stitch layer also trains."""
        set_seed(opts.seed)  # the LoRA matrices are drawn from the global RNG: the same draw for both
        with tempfile.TemporaryDirectory() as tmp:
            args = _training_args(tmp, steps=steps, lr=2e-4, batch=4, seed=opts.seed)
            if isinstance(model, StitchedModelForCausalLM):
                trainer = build_trainer(model, args, ds, mode="lora", lora_r=16, processing_class=tok, quiet=True)
                trainer.train()
                return merge_lora(trainer.model)
            targets = list(family_of(model.config).lora_targets)
            peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
            build_trainer(peft, args, ds, prepare=False, processing_class=tok, quiet=True).train()
            return peft.merge_and_unload()

    chosen, plan = select_for_budget(anchor, None, budget_flops=opts.llm_budget, calibration=calibration,
                                     method=opts.method, progress=False, max_samples=sizes["llm_calibration_samples"])
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
    return {"budget": opts.llm_budget, "method": plan.method,
            "chosen": {"front_blocks": chosen.front_blocks, "back_start": chosen.back_start, "flops": chosen.flops,
                       "flops_fraction": chosen.flops / full, "score": chosen.score},
            "rows": rows, "eval_examples": len(test), "finetune_steps": steps,
            "finetune": {"mode": "lora", "lora_r": 16, "learning_rate": 2e-4, "batch": 4,
                         "train_examples": len(train)}}


def _summary_md(report: dict) -> str:
    lines = ["# hf_klas demo report", "", f"Mode: {'quick' if report['options']['quick'] else 'full'}; "
             f"wall time {report['seconds']:.0f} s.", ""]
    vit = report.get("vit")
    if vit:
        ft = vit["finetune"]
        lines += [f"## ViT (Fashion-MNIST zoo): {vit['pair'][0]} -> {vit['pair'][1]}", "",
                  ("Anchor selection (lowest final-output KL) chose the pair" if vit["pair_rule"] == "auto" else
                   f"The pair comes from `--vit_pair` (default: the zoo's cheapest and dearest anchors, its whole "
                   f"FLOPs range; anchor selection's lowest-KL pair would be {vit['anchor_ranking'][0]['front']} -> "
                   f"{vit['anchor_ranking'][0]['back']})")
                  + f"; selector `{vit['method']}` picked the "
                  f"candidates, {len([r for r in vit['rows'] if r['kind'] == 'stitch'])} of them spread strictly "
                  f"between the anchors' FLOPs. Each stitch: least-squares init, then {ft['steps']} steps of "
                  f"{ft['mode']} finetuning (batch {ft['batch']}, lr {ft['learning_rate']:g}, anchors at "
                  f"{ft['anchor_lr_scale']:g}x) on {ft['train_images']:,} training images; top-1 on "
                  f"{vit['test_images']:,} test images.", "",
                  "| model | MFLOPs/image | score | top-1 init | top-1 finetuned |", "|---|---|---|---|---|"]
        for r in vit["rows"]:
            g = f"{r['score']:.3g}" if r.get("score") is not None else ""
            init = f"{r['accuracy_init']:.3f}" if "accuracy_init" in r else ""
            lines.append(f"| {r['model']} | {r['flops'] / 1e6:.2f} | {g} | {init} | {r['accuracy']:.3f} |")
        lines += ["", f"Stitches above the cheaper anchor: {len(vit['stitches_above_cheaper_anchor'])} "
                  f"({', '.join(vit['stitches_above_cheaper_anchor']) or 'none'}). AUC of the front (accuracy, "
                  f"FLOPs normalised between the pair's anchors): {vit['auc']:.4f} with the stitches, "
                  f"{vit['auc_anchors_only']:.4f} for the anchors alone.", "", "![pareto](vit_pareto.png)", ""]
    llm = report.get("llm")
    if llm:
        c, ft = llm["chosen"], llm["finetune"]
        lines += [f"## LLM: SmolLM2-135M self-stitch at budget {llm['budget']}", "",
                  f"Selector `{llm['method']}` chose front_blocks={c['front_blocks']}, back_start={c['back_start']} "
                  f"({c['flops_fraction']:.2%} of the full model's FLOPs). {llm['eval_examples']} Debian test "
                  f"packages (frozen task); the stitch and, as the fair baseline, the anchor get the same "
                  f"{llm['finetune_steps']} LoRA steps (r={ft['lora_r']}, lr {ft['learning_rate']:g}, batch "
                  f"{ft['batch']}, {ft['train_examples']} training packages).", "",
                  "| model | perplexity | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|---|"]
        for r in llm["rows"]:
            lines.append(f"| {r['model']} | {r['perplexity']:.2f} | {r['rouge1']:.3f} | {r['rouge2']:.3f} | "
                         f"{r['rougeL']:.3f} |")
        lines.append("")
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
