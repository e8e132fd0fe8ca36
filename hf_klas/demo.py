"""``hf-klas demo``: the whole job, offline, on real pretrained weights.

(a) ViT: KLAS anchor selection over the zoo's three Fashion-MNIST ViTs, KLAS block selection for the chosen
    pair, least-squares stitches for the candidate set, a short finetune of each, top-1 accuracy, and the
    accuracy/FLOPs Pareto front against the anchors.
(b) LLM: SmolLM2-135M-Instruct self-stitched to a FLOPs budget (depth pruning with a learned bridge); perplexity
    and ROUGE on Debian package descriptions -> one-line synopsis, before and after a short finetune.

Writes a report folder: ``report.json``, ``summary.md`` and PNG plots. ``--quick`` shrinks every size so the
whole demo runs in about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .building import StitchedModel
from .data.debian_descriptions import load_debian_descriptions
from .data.fashion_mnist import load_fashion_mnist, with_pixel_values
from .errors import HfKlasError
from .evaluation import (
    ParetoPoint,
    first_lines,
    generate_texts,
    load_rouge,
    perplexity,
    plot_pareto,
    top1_accuracy,
    write_pareto_table,
)
from .flops import DEFAULT_SEQ_LEN, anchor_flops
from .loading import resolve_anchor
from .selection.api import compute_plan, select_anchors, select_for_budget
from .training.data import prepare_causal_lm_dataset, prepare_image_dataset
from .training.finetune import build_trainer
from .training.lora import merge_lora

logger = logging.getLogger(__name__)

VIT_ZOO = ["vit-fmnist-tiny", "vit-fmnist-small", "vit-fmnist-base"]


@dataclass
class DemoOptions:
    out_dir: str | None = field(default=None, metadata={
        "help": "Report folder (default: hf_klas_report/<timestamp>). An existing non-empty folder is refused "
                "unless --overwrite."})
    overwrite: bool = field(default=False, metadata={"help": "Allow writing into an existing report folder."})
    quick: bool = field(default=False, metadata={"help": "Small sizes everywhere (about 3 minutes on 2 cores)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, training and evaluation subsets."})
    skip_vit: bool = field(default=False, metadata={"help": "Skip the ViT half."})
    skip_llm: bool = field(default=False, metadata={"help": "Skip the LLM half."})
    vit_candidates: int | None = field(default=None, metadata={
        "help": "How many KLAS candidates to finetune (default 4; quick 2), spread over the FLOPs range."})
    vit_train_images: int | None = field(default=None, metadata={
        "help": "Training images per stitch finetune (default 1536; quick 256)."})
    vit_test_images: int | None = field(default=None, metadata={
        "help": "Test images for accuracy (default 2000; quick 300)."})
    llm_budget: float = field(default=0.9, metadata={
        "help": "FLOPs budget for the SmolLM2 self-stitch, as a fraction of the full model (or absolute FLOPs)."})
    llm_finetune_steps: int | None = field(default=None, metadata={
        "help": "Finetuning steps for the SmolLM2 stitch (default 40; quick 4)."})
    llm_eval_examples: int | None = field(default=None, metadata={
        "help": "Debian test examples for ROUGE/perplexity (default 48; quick 8)."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)."})


def _sizes(opts: DemoOptions) -> dict:
    q = opts.quick
    return {
        "vit_candidates": opts.vit_candidates or (2 if q else 4),
        "vit_train_images": opts.vit_train_images or (256 if q else 1536),
        "vit_test_images": opts.vit_test_images or (300 if q else 2000),
        "vit_calibration_images": 128 if q else 256,
        "llm_finetune_steps": opts.llm_finetune_steps or (4 if q else 40),
        "llm_eval_examples": opts.llm_eval_examples or (8 if q else 48),
        "llm_calibration_samples": 8 if q else 48,
        "llm_train_examples": 64 if q else 320,
    }


def _report_dir(opts: DemoOptions) -> Path:
    out = Path(opts.out_dir) if opts.out_dir else Path("hf_klas_report") / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise HfKlasError(f"The report folder {out} already exists and is not empty; the demo never overwrites "
                          "results silently.", "Pass another --out_dir, or --overwrite to replace its files.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _training_args(out: str, steps: int, lr: float, batch: int, seed: int):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=out, max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch,
                             logging_steps=max(1, steps // 4), save_strategy="no", report_to=[], use_cpu=True,
                             seed=seed, data_seed=seed, lr_scheduler_type="cosine", warmup_steps=0,
                             dataloader_num_workers=0, disable_tqdm=False)


# --- (a) ViT -------------------------------------------------------------------------------------------------
def run_vit_demo(opts: DemoOptions, out: Path, sizes: dict) -> dict:
    anchors = {name: resolve_anchor(name) for name in VIT_ZOO}
    test = with_pixel_values(load_fashion_mnist("test", limit=sizes["vit_test_images"] + sizes["vit_calibration_images"]))
    calib_ds = test.select(range(sizes["vit_test_images"], len(test)))  # disjoint from the evaluation images
    test = test.select(range(sizes["vit_test_images"]))
    calibration = [calib_ds.with_format("torch")[:]["pixel_values"].float()]
    train = load_fashion_mnist("train").shuffle(seed=opts.seed).select(range(sizes["vit_train_images"]))
    train = prepare_image_dataset(with_pixel_values(train), num_labels=10)
    test_eval = test.rename_column("label", "labels")

    ranking = select_anchors([anchors[n] for n in VIT_ZOO], calibration=calibration, progress=True)
    by_path = {str(a.name_or_path): name for name, a in anchors.items()}
    best = ranking[0]
    front_name = by_path.get(str(best["front"]), str(best["front"]))
    back_name = by_path.get(str(best["back"]), str(best["back"]))
    for r in ranking:
        r["front"], r["back"] = by_path.get(str(r["front"]), r["front"]), by_path.get(str(r["back"]), r["back"])
    front, back = anchors[front_name], anchors[back_name]
    plan, info = compute_plan(front, back, calibration=calibration, method="klas", progress=True, cache=False)
    plan.save(out / "vit_plan", overwrite=opts.overwrite)
    plan.plot_heatmap(out / "vit_gamma_heatmap.png")
    plan.plot_candidates(out / "vit_candidates.png")

    cands = sorted(plan.candidates, key=lambda c: c.flops)
    k = min(sizes["vit_candidates"], len(cands))
    picks = [cands[round(x * (len(cands) - 1) / max(k - 1, 1))] for x in range(k)] if k else []
    picks = list({(c.front_blocks, c.back_start): c for c in picks}.values())

    points, rows = [], []
    for name in VIT_ZOO:
        model = anchors[name].load_full().eval()
        acc = top1_accuracy(model, test_eval, batch_size=256, label_key="labels")
        fl = anchor_flops(model.config).total
        points.append(ParetoPoint(name=name, flops=fl, params=sum(p.numel() for p in model.parameters()),
                                  metric=acc, kind="anchor"))
        rows.append({"model": name, "kind": "anchor", "flops": fl, "accuracy": acc})
    for c in tqdm(picks, desc="ViT stitches: fit, finetune, evaluate"):
        model = StitchedModel.from_anchors(front, back, front_blocks=c.front_blocks, back_start=c.back_start,
                                           calibration=calibration, progress=False)
        acc0 = top1_accuracy(model, test_eval, batch_size=256, label_key="labels")
        with tempfile.TemporaryDirectory() as tmp:
            args = _training_args(tmp, steps=max(1, len(train) // 32), lr=5e-4, batch=32, seed=opts.seed)
            trainer = build_trainer(model, args, train, mode="full", anchor_lr_scale=0.1)
            trainer.train()
        model.eval()
        acc1 = top1_accuracy(model, test_eval, batch_size=256, label_key="labels")
        name = f"stitch({c.front_blocks},{c.back_start})"
        points.append(ParetoPoint(name=name, flops=c.flops, params=model.config.stitch_info.get("params", 0),
                                  metric=acc1, kind="stitch", selector="klas",
                                  config={"front_blocks": c.front_blocks, "back_start": c.back_start}))
        rows.append({"model": name, "kind": "stitch", "flops": c.flops, "gamma": c.score,
                     "accuracy_init": acc0, "accuracy": acc1})
    fmin = min(p.flops for p in points if p.name == front_name)
    fmax = min(p.flops for p in points if p.name == back_name)
    pair_points = [p for p in points if p.kind == "stitch" or p.name in (front_name, back_name)]
    table = write_pareto_table(pair_points, out / "vit_pareto.json", flops_min=fmin, flops_max=fmax)
    plot_pareto({"KLAS stitches": points}, out / "vit_pareto.png", metric_name="top-1 accuracy (Fashion-MNIST)",
                title=f"{front_name} -> {back_name}: accuracy vs FLOPs")
    return {"anchor_ranking": ranking, "pair": [front_name, back_name], "plan_seconds": info.get("seconds"),
            "rows": rows, "auc": table.get("auc") if isinstance(table, dict) else None,
            "test_images": sizes["vit_test_images"], "train_images_per_stitch": sizes["vit_train_images"]}


# --- (b) LLM -------------------------------------------------------------------------------------------------
def run_llm_demo(opts: DemoOptions, out: Path, sizes: dict) -> dict:
    anchor = resolve_anchor("smollm2-135m")
    tok = anchor.load_preprocessor()
    test = load_debian_descriptions("test", limit=sizes["llm_eval_examples"])
    train = load_debian_descriptions("train").shuffle(seed=opts.seed).select(range(sizes["llm_train_examples"]))
    calibration = list(load_debian_descriptions("train")["description"])[-sizes["llm_calibration_samples"]:]
    rouge = load_rouge(seed=opts.seed)
    texts = [p + " " + t for p, t in zip(test["prompt"], test["target"])]

    def evaluate(model, label):
        model.eval()
        preds = generate_texts(model, tok, list(test["prompt"]), max_new_tokens=24, batch_size=8)
        preds = first_lines(preds)
        scores = rouge.compute(predictions=preds, references=list(test["target"]))
        ppl = perplexity(model, tok, texts, max_length=256, batch_size=8)
        return {"model": label, "perplexity": ppl, **{k: float(v) for k, v in scores.items()},
                "examples": [{"prompt_tail": p[-80:], "prediction": y, "reference": r}
                             for p, y, r in list(zip(test["prompt"], preds, test["target"]))[:3]]}

    chosen, plan = select_for_budget(anchor, None, budget_flops=opts.llm_budget, calibration=calibration,
                                     method="klas", progress=True, max_samples=sizes["llm_calibration_samples"])
    plan.plot_heatmap(out / "llm_gamma_heatmap.png")
    rows = [evaluate(anchor.load_full(), "SmolLM2-135M (anchor)")]
    model = StitchedModel.from_anchors(anchor, front_blocks=chosen.front_blocks, back_start=chosen.back_start,
                                       calibration=calibration, max_calibration_samples=sizes["llm_calibration_samples"],
                                       progress=True)
    label = f"stitch({chosen.front_blocks},{chosen.back_start})"
    rows.append(evaluate(model, f"{label} least-squares init"))
    ds = prepare_causal_lm_dataset(train, tok, prompt_column="prompt", target_column="target", max_length=256)
    with tempfile.TemporaryDirectory() as tmp:
        args = _training_args(tmp, steps=sizes["llm_finetune_steps"], lr=2e-4, batch=4, seed=opts.seed)
        trainer = build_trainer(model, args, ds, mode="lora", lora_r=16, processing_class=tok)
        trainer.train()
        model = merge_lora(trainer.model)
    rows.append(evaluate(model, f"{label} after {sizes['llm_finetune_steps']} LoRA steps"))
    full = anchor_flops(anchor.config, seq_len=DEFAULT_SEQ_LEN).total
    return {"budget": opts.llm_budget, "chosen": {"front_blocks": chosen.front_blocks, "back_start": chosen.back_start,
                                                   "flops": chosen.flops, "flops_fraction": chosen.flops / full,
                                                   "gamma": chosen.score},
            "rows": rows, "eval_examples": len(test), "finetune_steps": sizes["llm_finetune_steps"]}


def _summary_md(report: dict) -> str:
    lines = ["# hf_klas demo report", "", f"Mode: {'quick' if report['options']['quick'] else 'full'}; "
             f"wall time {report['seconds']:.0f} s.", ""]
    vit = report.get("vit")
    if vit:
        lines += [f"## ViT (Fashion-MNIST zoo): KLAS chose the pair {vit['pair'][0]} -> {vit['pair'][1]}", "",
                  "| model | GFLOPs/image | Γ | top-1 init | top-1 finetuned |", "|---|---|---|---|---|"]
        for r in vit["rows"]:
            g = f"{r['gamma']:.3g}" if r.get("gamma") is not None else ""
            init = f"{r['accuracy_init']:.3f}" if "accuracy_init" in r else ""
            lines.append(f"| {r['model']} | {r['flops'] / 1e9:.4f} | {g} | {init} | {r['accuracy']:.3f} |")
        if vit.get("auc") is not None:
            lines += ["", f"AUC of the front (accuracy, FLOPs normalised between the pair's anchors): {vit['auc']:.4f}"]
        lines += ["", "![pareto](vit_pareto.png)", ""]
    llm = report.get("llm")
    if llm:
        c = llm["chosen"]
        lines += [f"## LLM: SmolLM2-135M self-stitch at budget {llm['budget']}", "",
                  f"KLAS chose front_blocks={c['front_blocks']}, back_start={c['back_start']} "
                  f"({c['flops_fraction']:.2%} of the full model's FLOPs).", "",
                  "| model | perplexity | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|---|"]
        for r in llm["rows"]:
            lines.append(f"| {r['model']} | {r['perplexity']:.2f} | {r['rouge1']:.3f} | {r['rouge2']:.3f} | "
                         f"{r['rougeL']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def run_demo(opts: DemoOptions | None = None, **kwargs) -> dict:
    """Run the demo; returns the report dict (also written to ``<out_dir>/report.json``)."""
    opts = opts or DemoOptions(**kwargs)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    out = _report_dir(opts)
    sizes = _sizes(opts)
    t0 = time.perf_counter()
    report = {"options": asdict(opts), "sizes": sizes}
    if not opts.skip_vit:
        report["vit"] = run_vit_demo(opts, out, sizes)
    if not opts.skip_llm:
        report["llm"] = run_llm_demo(opts, out, sizes)
    report["seconds"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "summary.md").write_text(_summary_md(report))
    print(_summary_md(report))
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
