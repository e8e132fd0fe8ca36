"""Does stitching pay off on the vision zoo? Four fronts over a pair's FLOPs range, at equal extra training.

Per pair and seed, every model gets the demo's recipe (:data:`~hf_klas.training.recipes.VIT_RECIPE`):

(a) **anchors only**: every zoo anchor inside the pair's FLOPs range, as shipped and finetuned as long as a stitch;
(b) **stitches**: the default selector's candidates spread over the range (as the demo picks them), each built with
    the least-squares stitch and finetuned with labels;
(c) **stitches + distillation**: the same, the loss mixing labels with the KL to the (shipped) back anchor;
(d) **supernet**: one stitchable model over the same configurations trained jointly (SN-Net: one configuration
    sampled per step) for as many steps as (b) spends on all its stitches together, then every configuration
    measured.

Each stitched front is the anchors-only front plus its stitches; its AUC over the pair's range is compared with
the anchors-only front's on the test images (paired bootstrap over images, seeds averaged; the seed spread
beside it). Only the final accuracies read test images; nothing here is chosen on them.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..building import StitchedModel, build_stitchable
from ..data.fashion_mnist import load_fashion_mnist, with_pixel_values
from ..errors import HfKlasError
from ..evaluation import (
    AUC_DEFINITION,
    ParetoPoint,
    auc_difference,
    plot_pareto,
    top1_correct,
    wilson_interval,
)
from ..flops import anchor_flops
from ..loading import resolve_anchor
from ..selection.api import compute_plan
from ..selection.scoring import spread_candidates
from ..training.data import prepare_image_dataset
from ..training.finetune import build_trainer
from ..training.recipes import VIT_RECIPE, finetune_arguments, finetune_full
from ..version import __version__
from ..zoo import VIT_ZOO

__all__ = ["FrontPayoffOptions", "RECIPES", "run_front_payoff"]

#: Front label -> what the stitches of that front get.
RECIPES = {"stitches": "labels", "stitches + distillation": "labels + KL to the back anchor",
           "supernet": "one stitchable model, configurations trained jointly"}


@dataclass
class FrontPayoffOptions:
    """What ``benchmarks/front_payoff.py`` runs (``HfArgumentParser`` flags)."""

    pairs: list[str] = field(default_factory=lambda: ["vit-fmnist-tiny:vit-fmnist-base",
                                                      "vit-fmnist-small:vit-fmnist-base"], metadata={
        "help": "front:back zoo pairs (the demo's pair first)."})
    stitches: int = field(default=4, metadata={"help": "Configurations per pair, spread over the FLOPs range."})
    steps: int = field(default=VIT_RECIPE.steps, metadata={"help": "Finetuning steps per anchor and stitch."})
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "Training seeds."})
    method: str | None = field(default=None, metadata={"help": "Selector (default: the task default)."})
    distill_alpha: float = field(default=0.5, metadata={"help": "Weight of the KL term in (c)."})
    distill_temperature: float = field(default=2.0, metadata={"help": "Temperature of the KL term in (c)."})
    test_images: int = field(default=10000, metadata={"help": "Test images for the final accuracies."})
    calibration_images: int = field(default=256, metadata={"help": "Train images for selection and the LS fit."})
    bootstrap_samples: int = field(default=1000, metadata={"help": "Paired bootstrap replicates."})
    out_dir: str = field(default="benchmarks/results", metadata={"help": "Where JSON, Markdown and PNGs go."})
    name: str = field(default="front_payoff", metadata={"help": "File stem of the outputs."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        for pair in self.pairs:
            front, _, back = pair.partition(":")
            if front not in VIT_ZOO or back not in VIT_ZOO or front == back:
                raise HfKlasError(f"pair {pair!r} does not name two different zoo anchors.",
                                  f"Use front:back with two of {', '.join(VIT_ZOO)}.")
        if not self.seeds or self.stitches < 1 or self.steps < 1:
            raise HfKlasError(f"seeds={self.seeds}, stitches={self.stitches}, steps={self.steps}.",
                              "Pass at least one seed, one stitch and one step.")


def _args(tmp, steps, seed):
    return finetune_arguments(tmp, steps, VIT_RECIPE.learning_rate, VIT_RECIPE.batch_size, seed,
                              lr_scheduler_type=VIT_RECIPE.lr_scheduler_type, warmup_ratio=VIT_RECIPE.warmup_ratio)


def _train(model, train, steps, seed, teacher=None, opts=None):
    with tempfile.TemporaryDirectory() as tmp:
        if teacher is None:
            return finetune_full(model, _args(tmp, steps, seed), train, anchor_lr_scale=VIT_RECIPE.anchor_lr_scale)
        trainer = build_trainer(model, _args(tmp, steps, seed), train, mode="full",
                                anchor_lr_scale=VIT_RECIPE.anchor_lr_scale, teacher=teacher,
                                distill_alpha=opts.distill_alpha, distill_temperature=opts.distill_temperature,
                                quiet=True)
        trainer.train()
        return trainer.model.eval()


def run_front_payoff(opts: FrontPayoffOptions, command: str | None = None) -> dict:
    """Run every pair; writes ``<out_dir>/<name>.{json,md}`` and one PNG per pair; returns the report."""
    t0 = time.perf_counter()
    anchors = {name: resolve_anchor(name) for name in VIT_ZOO}
    calibration = [with_pixel_values(load_fashion_mnist("train", limit=opts.calibration_images))[:][
        "pixel_values"].float()]
    test = with_pixel_values(load_fashion_mnist("test", limit=opts.test_images)).rename_column("label", "labels")
    train_all = load_fashion_mnist("train")
    batch = VIT_RECIPE.batch_size
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = {}
    for pair in opts.pairs:
        front_name, _, back_name = pair.partition(":")
        plan, _ = compute_plan(anchors[front_name], anchors[back_name], calibration=calibration, method=opts.method,
                               progress=False, cache=False)
        lo, hi = plan.anchor_flops
        plans[pair] = (plan, spread_candidates(plan.candidates, opts.stitches, lo, hi),
                       [n for n, a in anchors.items() if lo <= anchor_flops(a.config).total <= hi])
    total = sum(len(inr) + len(opts.seeds) * (len(inr) + 2 * len(picks) + 1) for _, picks, inr in plans.values())
    bar = tqdm(total=total, desc="front payoff: models trained and measured", unit="model",
               disable=not opts.progress)
    report = {"pairs": {}, "recipe": VIT_RECIPE.describe(opts.steps), "auc_definition": AUC_DEFINITION,
              "test_images": len(test), "seeds": list(opts.seeds), "fronts": RECIPES}
    for pair, (plan, picks, in_range) in plans.items():
        front_name, _, back_name = pair.partition(":")
        front, back = anchors[front_name], anchors[back_name]
        correct, rows = {}, []

        def measure(model, name, kind, seed, flops, **extra):
            hits = top1_correct(model, test, batch_size=500, progress=False)
            correct[(f"{kind}:{name}", seed)] = hits  # a stitch's name is shared by three fronts: kind tells them
            k, n = int(hits.sum()), hits.numel()
            low, high = wilson_interval(k, n)
            rows.append({"model": name, "kind": kind, "seed": seed, "flops": float(flops), "accuracy": k / n,
                         "low": low, "high": high, **extra})
            bar.update()

        for name in in_range:
            measure(anchors[name].load_full().eval(), f"{name} (shipped)", "anchor (shipped)", None,
                    anchor_flops(anchors[name].config).total)
        teacher = back.load_full().eval()
        for seed in opts.seeds:
            train = prepare_image_dataset(with_pixel_values(train_all.shuffle(seed=seed).select(
                range(min(len(train_all), opts.steps * batch)))), num_labels=10)
            for name in in_range:
                measure(_train(anchors[name].load_full(), train, opts.steps, seed), name, "anchor", seed,
                        anchor_flops(anchors[name].config).total)
            for c in picks:
                label = f"stitch({c.front_blocks},{c.back_start})"
                for kind, distil in (("stitches", None), ("stitches + distillation", teacher)):
                    model = StitchedModel.from_anchors(front, back, front_blocks=c.front_blocks,
                                                       back_start=c.back_start, calibration=calibration,
                                                       progress=False)
                    measure(_train(model, train, opts.steps, seed, teacher=distil, opts=opts), label, kind, seed,
                            c.flops, config=[c.front_blocks, c.back_start])
            # (d) the same configurations in one model, trained jointly for as many steps as (b) spent in all
            joint_steps = opts.steps * len(picks)
            joint_train = prepare_image_dataset(with_pixel_values(train_all.shuffle(seed=seed)), num_labels=10)
            supernet = build_stitchable(front, back, [(c.front_blocks, c.back_start) for c in picks],
                                        calibration=calibration, sampling="uniform", seed=seed, progress=False)
            supernet = _train(supernet, joint_train, joint_steps, seed)
            for c in picks:
                measure(supernet.extract(c.front_blocks, c.back_start).eval(),
                        f"stitch({c.front_blocks},{c.back_start})", "supernet", seed, c.flops,
                        config=[c.front_blocks, c.back_start])
            bar.update()  # the supernet's training counts as one model
        report["pairs"][pair] = _pair_report(opts, pair, plan, picks, in_range, rows, correct, out)
    bar.close()
    report.update(command=command, seconds=time.perf_counter() - t0, hf_klas=__version__,
                  options=asdict(opts))
    (out / f"{opts.name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{opts.name}.md").write_text(render_markdown(report))
    return report


def _points(rows, seed, kinds) -> list[ParetoPoint]:
    """One seed's models of ``kinds`` (the shipped anchors belong to every seed), named ``kind:model``."""
    return [ParetoPoint(name=f"{r['kind']}:{r['model']}", flops=r["flops"], params=0.0, metric=r["accuracy"],
                        kind="stitch" if r["kind"] in RECIPES else "anchor")
            for r in rows if r["seed"] in (seed, None) and r["kind"] in kinds]


def _correct(rows, correct, seed, kinds) -> dict:
    return {f"{r['kind']}:{r['model']}": correct[(f"{r['kind']}:{r['model']}", r["seed"])]
            for r in rows if r["seed"] in (seed, None) and r["kind"] in kinds}


def _pair_report(opts, pair, plan, picks, in_range, rows, correct, out) -> dict:
    lo, hi = plan.anchor_flops
    anchors_only = ("anchor", "anchor (shipped)")
    fronts = {}
    for label in RECIPES:
        kinds = (*anchors_only, label)
        runs = [(_points(rows, seed, kinds), _points(rows, seed, anchors_only), _correct(rows, correct, seed, kinds))
                for seed in opts.seeds]
        fronts[label] = auc_difference(runs, lo, hi, samples=opts.bootstrap_samples, seed=opts.seeds[0])
    series = {}
    for label in ("anchors only", *RECIPES):
        kinds = anchors_only if label == "anchors only" else (*anchors_only, label)
        mean: dict[str, list] = {}
        for seed in opts.seeds:
            for p in _points(rows, seed, kinds):
                mean.setdefault(p.name, []).append(p)
        series[label] = [ParetoPoint(name=n.split(":", 1)[1], flops=ps[0].flops, params=0.0, kind=ps[0].kind,
                                     metric=sum(p.metric for p in ps) / len(ps)) for n, ps in mean.items()]
    png = out / f"{opts.name}_{pair.replace(':', '_to_')}.png"
    plot_pareto(series, png, metric_name=f"test top-1 ({len(next(iter(correct.values()))):,} images, "
                f"{len(opts.seeds)}-seed mean)", title=f"{pair}: fronts at equal extra training",
                flops_min=lo, flops_max=hi)
    return {"method": plan.method, "configs": [[c.front_blocks, c.back_start] for c in picks],
            "anchors_in_range": in_range, "flops_range": [lo, hi], "rows": rows,
            "auc_vs_anchors_only": {k: v["mean"] | {"seed_std": v["seed_std"]} for k, v in fronts.items()},
            "auc_per_seed": {k: v["runs"] for k, v in fronts.items()}, "plot": png.name}


def render_markdown(report: dict) -> str:
    lines = ["# Front payoff: do stitches beat the anchors' front at equal extra training?", "",
             f"Recipe (every model): {report['recipe']}. Test images: {report['test_images']:,}; seeds "
             f"{report['seeds']}. {report['auc_definition']}", ""]
    for pair, p in report["pairs"].items():
        lines += [f"## {pair} (selector `{p['method']}`, configurations {p['configs']}, anchors in range "
                  f"{', '.join(p['anchors_in_range'])})", "",
                  "| front | AUC | anchors-only AUC | difference [95%] | seed std | verdict |",
                  "|---|---|---|---|---|---|"]
        for label, d in p["auc_vs_anchors_only"].items():
            verdict = {"A": "above", "B": "below", "tie": "tie"}[d["verdict"]]
            std = "—" if d.get("seed_std") is None else f"{d['seed_std']:.4f}"
            lines.append(f"| anchors + {label} | {d['auc_a']:.4f} | {d['auc_b']:.4f} | {d['difference']:+.4f} "
                         f"[{d['low']:+.4f}, {d['high']:+.4f}] | {std} | {verdict} |")
        lines += ["", "| model | kind | seed | FLOPs | test top-1 [95%] |", "|---|---|---|---|---|"]
        for r in sorted(p["rows"], key=lambda r: (r["kind"], r["flops"], str(r["seed"]))):
            lines.append(f"| {r['model']} | {r['kind']} | {r['seed']} | {r['flops']:.3g} | "
                         f"{100 * r['accuracy']:.2f} [{100 * r['low']:.2f}, {100 * r['high']:.2f}] |")
        lines += ["", f"![fronts]({p['plot']})", ""]
    return "\n".join(lines)
