"""Depth pruning of a causal LM, hf_klas beside the peers users pick: ShortGPT, ReplaceMe and a grid oracle.

Self-stitching an LM at a FLOPs budget removes one run of blocks ``i..j-1`` and bridges it with a linear map --
the same surgery the depth-pruning papers do. Each budget fixes the cut: the fewest removed blocks whose FLOPs
fit (every method removes the same number of blocks, only *where* differs). The methods:

* **ShortGPT** (Men et al. 2024): the run with the lowest summed block influence (1 - cos(input, output) per
  block; hf_klas's ``block_influence`` selector), removed with no bridge (identity);
* **ReplaceMe** (Shopkhoev et al. 2025): the run whose input and output hidden states are closest in cosine
  distance, bridged by a least-squares linear map fitted on calibration data (training-free);
* **hf_klas default**: the task default selector (``compute_plan(anchor, None, method=None)``) with the
  least-squares stitch -- what ``from_anchors(anchor, budget_flops=...)`` builds;
* **oracle**: the run with the best perplexity on the *validation* texts, least-squares stitch (an upper bound on
  what any training-free criterion can pick under this bridge).

Every criterion and stitch sees the same calibration texts (Debian training descriptions). Each pruned model is
scored training-free and after healing with the same LoRA budget (:func:`~hf_klas.training.recipes.heal_lora`),
with labels and with distillation from the dense model; the dense model gets the same healing as a baseline.
Metrics: perplexity on frozen WordNet glosses (general English, not the finetuning task) and ROUGE-L on the Debian
synopsis task; choices (the oracle's run, the healing recipe) read only validation data, the test splits give the
final numbers, with paired bootstrap intervals against hf_klas's default.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..building import StitchedModel
from ..calibration import calibration_batches
from ..data.debian_descriptions import load_debian_descriptions
from ..data.wordnet_glosses import FROZEN_MANIFEST as WORDNET_MANIFEST
from ..data.wordnet_glosses import load_wordnet_glosses
from ..errors import HfKlasError
from ..evaluation import (
    first_lines,
    generate_texts,
    load_rouge,
    paired_bootstrap_difference,
    paired_perplexity_ratio,
    pooled_perplexity,
    text_nll,
)
from ..flops import DEFAULT_SEQ_LEN
from ..loading import resolve_anchor
from ..selection.api import compute_plan
from ..selection.selectors.base import grids, valid_mask
from ..training.data import prepare_causal_lm_dataset
from ..training.recipes import LM_HEAL_RECIPE, heal_lora
from ..version import __version__
from .oracles import block_outputs, lm_self_stitch_oracle, self_stitch_fits

__all__ = ["DepthPruningOptions", "METHODS", "cosine_run_distance", "run_depth_pruning"]

#: Method label -> (how the run is chosen, bridge).
METHODS = {"ShortGPT": ("block_influence", "identity"), "ReplaceMe": ("cosine", "least_squares"),
           "hf_klas default": ("default", "least_squares"), "oracle": ("validation perplexity", "least_squares")}


@dataclass
class DepthPruningOptions:
    """What ``benchmarks/depth_pruning.py`` runs (``HfArgumentParser`` flags)."""

    anchor: str = field(default="smollm2-135m", metadata={"help": "The causal LM to prune."})
    budgets: list[float] = field(default_factory=lambda: [0.9, 0.8, 0.7], metadata={
        "help": "FLOPs budgets as fractions of the dense model's (per sequence of the default length)."})
    calibration_texts: int = field(default=64, metadata={
        "help": "Debian training descriptions every criterion and least-squares stitch sees."})
    validation_texts: int = field(default=128, metadata={
        "help": "WordNet validation glosses: the oracle's choice and the healing recipe's."})
    test_texts: int = field(default=0, metadata={"help": "WordNet test glosses for the final perplexity (0: all)."})
    rouge_test_texts: int = field(default=64, metadata={"help": "Debian test packages for the final ROUGE-L."})
    rouge_validation_texts: int = field(default=32, metadata={
        "help": "Debian validation packages for the healing recipe's choice."})
    train_texts: int = field(default=96, metadata={"help": "Debian training packages the healing trains on."})
    max_length: int = field(default=160, metadata={"help": "Tokens per text (truncation)."})
    description_chars: int = field(default=250, metadata={"help": "Debian descriptions cut to this many characters."})
    max_new_tokens: int = field(default=16, metadata={"help": "Greedy tokens per generated synopsis."})
    heal: list[str] = field(default_factory=lambda: ["labels", "distill"], metadata={
        "help": "Healing recipes to run (labels, distill; none: training-free only)."})
    heal_steps: int = field(default=LM_HEAL_RECIPE.steps, metadata={"help": "LoRA steps per healed model."})
    seed: int = field(default=0, metadata={"help": "Data order, LoRA draws and bootstrap seed."})
    ridge: float = field(default=1e-4, metadata={"help": "Relative ridge of the least-squares stitches."})
    bootstrap_samples: int = field(default=1000, metadata={"help": "Paired bootstrap replicates."})
    out_dir: str = field(default="benchmarks/results", metadata={"help": "Where JSON, Markdown and PNG go."})
    name: str = field(default="depth_pruning", metadata={"help": "File stem of the outputs."})
    resume: bool = field(default=True, metadata={
        "help": "Reuse results stored by an interrupted run with the same options."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if not self.budgets or not all(0.0 < b < 1.0 for b in self.budgets):
            raise HfKlasError(f"budgets={self.budgets}.", "Pass fractions of the dense FLOPs in (0, 1), e.g. 0.8.")
        self.heal = [h for h in self.heal if h != "none"]
        bad = [h for h in self.heal if h not in ("labels", "distill")]
        if bad:
            raise HfKlasError(f"Unknown healing recipe(s) {bad}.", "Use labels, distill, or none.")


@torch.no_grad()
def cosine_run_distance(hidden, batches) -> torch.Tensor:
    """ReplaceMe's criterion, ``[L+1, L+1]``: mean over real tokens of ``1 - cos(h_i, h_j)`` between the hidden
    state entering block ``i`` and the one entering block ``j`` (``hidden``: :func:`block_outputs`)."""
    total, count = None, 0
    for h, b in zip(hidden, batches):
        mask = b.get("attention_mask")
        keep = mask.reshape(-1).bool() if mask is not None else torch.ones(h.shape[1] * h.shape[2], dtype=torch.bool)
        x = torch.nn.functional.normalize(h.reshape(h.shape[0], -1, h.shape[-1])[:, keep].double(), dim=-1)
        sims = torch.einsum("itd,jtd->ij", x, x)
        total = sims if total is None else total + sims
        count += int(keep.sum())
    return 1.0 - total / count


class _Store:
    """Results by key, written after each one, so an interrupted run continues (only with the same options)."""

    def __init__(self, path: Path, key: dict, resume: bool):
        self.path, self.key = path, key
        stored = json.loads(path.read_text()) if resume and path.is_file() else {}
        self.data = stored.get("results", {}) if stored.get("key") == key else {}

    def get(self, name, compute):
        if name not in self.data:
            self.data[name] = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": self.key, "results": self.data}))
            tmp.replace(self.path)
        return self.data[name]


def run_depth_pruning(opts: DepthPruningOptions, command: str | None = None) -> dict:
    """Run the benchmark; writes ``<out_dir>/<name>.{json,md,png}`` and returns the report."""
    t_start = time.perf_counter()
    anchor = resolve_anchor(opts.anchor)
    tok = anchor.load_preprocessor()
    if tok is None:
        raise HfKlasError(f"The anchor {opts.anchor} has no tokenizer.", "Save the tokenizer with it.")
    dense = anchor.load_full(dtype=torch.float32).eval()
    cut = opts.description_chars
    train_all = load_debian_descriptions("train", max_description_chars=cut).shuffle(seed=opts.seed)
    cal = train_all.select(range(min(opts.calibration_texts, len(train_all))))
    heal_train = train_all.select(range(len(cal), min(len(cal) + opts.train_texts, len(train_all))))
    cal_texts = [p + " " + t for p, t in zip(cal["prompt"], cal["target"])]
    wn_val = list(load_wordnet_glosses("validation", limit=opts.validation_texts)["text"])
    wn_test = list(load_wordnet_glosses("test", limit=opts.test_texts or None)["text"])
    deb_val = load_debian_descriptions("validation", max_description_chars=cut,
                                       limit=opts.rouge_validation_texts)
    deb_test = load_debian_descriptions("test", max_description_chars=cut, limit=opts.rouge_test_texts)
    rouge = load_rouge()
    batches = calibration_batches(cal_texts, anchor.config, tok, batch_size=8, max_length=opts.max_length)
    val_batches = calibration_batches(wn_val, anchor.config, tok, batch_size=8, max_length=opts.max_length)
    heal_data = prepare_causal_lm_dataset(heal_train, tok, prompt_column="prompt", target_column="target",
                                          max_length=opts.max_length)

    import transformers

    key = dict(asdict(opts), hf_klas=__version__, transformers=transformers.__version__, torch=torch.__version__,
               anchor=anchor.provenance)
    for k in ("out_dir", "name", "resume", "progress"):
        key.pop(k)
    store = _Store(Path(opts.out_dir) / f"{opts.name}.parts.json", json.loads(json.dumps(key, default=str)),
                   opts.resume)

    # ---- the cut per budget -----------------------------------------------------------------------------------
    n = int(anchor.config.num_hidden_layers)
    flops_grid, _, a_flops = grids(anchor.config, anchor.config, DEFAULT_SEQ_LEN, same=True)
    flops_grid, dense_flops = flops_grid.numpy(), float(a_flops[1])
    valid = valid_mask(n, n, True).numpy()
    cuts = {}
    for budget in opts.budgets:
        for k in range(1, n):
            cands = [(i, i + k) for i in range(1, n) if i + k <= n - 1 and valid[i - 1, i + k]]
            if cands and all(flops_grid[i - 1, j] <= budget * dense_flops for i, j in cands):
                cuts[budget] = {"removed_blocks": k, "candidates": cands,
                                "flops_fraction": float(flops_grid[cands[0][0] - 1, cands[0][1]] / dense_flops)}
                break
        else:
            raise HfKlasError(f"No run of blocks fits budget {budget:g} of a {n}-block model.", "Raise the budget.")

    # ---- criteria (all on the calibration texts) --------------------------------------------------------------
    def plan_scores(method):
        plan, info = compute_plan(anchor, None, cal_texts, method, cache=False, progress=False,
                                  max_samples=len(cal_texts), max_length=opts.max_length, batch_size=8)
        return {"method": plan.method, "source": info.get("method_source"), "score": plan.score.tolist()}

    default = store.get("criterion:default", lambda: plan_scores(None))
    shortgpt = store.get("criterion:block_influence", lambda: plan_scores("block_influence"))
    hidden = block_outputs(dense, batches)
    cos = cosine_run_distance(hidden, batches)
    def oracle_search():
        configs = sorted({c for cut_ in cuts.values() for c in cut_["candidates"]})
        with tqdm(total=len(configs), desc="depth pruning: oracle search (validation perplexity)", unit="config",
                  disable=not opts.progress) as obar:
            found = lm_self_stitch_oracle(dense, configs, batches, val_batches, ridge=opts.ridge,
                                          on_config=lambda *_: obar.update())
        return {f"{i},{j}": r["perplexity"] for (i, j), r in found.items()}

    oracle_val = store.get("oracle:validation", oracle_search)

    def pick(budget, label) -> tuple[int, int]:
        cands = cuts[budget]["candidates"]
        rule = METHODS[label][0]
        if rule == "cosine":
            value = {c: float(cos[c[0], c[1]]) for c in cands}
        elif rule == "validation perplexity":
            value = {c: oracle_val[f"{c[0]},{c[1]}"] for c in cands}
        else:
            score = np.asarray((shortgpt if rule == "block_influence" else default)["score"], dtype=float)
            value = {c: float(score[c[0] - 1, c[1]]) for c in cands}
        return min(cands, key=lambda c: (value[c], c))

    picks = {b: {label: pick(b, label) for label in METHODS} for b in opts.budgets}
    fits = {key_: (w, b_) for key_, w, b_ in self_stitch_fits(
        hidden, batches, sorted({c for p in picks.values() for c in p.values()}), ridge=opts.ridge)}
    del hidden

    # ---- evaluation -------------------------------------------------------------------------------------------
    def measure(model) -> dict:
        """Test numbers (the results) and validation numbers (the healing recipe's choice) of one model."""
        out = {"wordnet_test_nll": text_nll(model, tok, wn_test, max_length=opts.max_length, progress=False)}
        preds = first_lines(generate_texts(model, tok, list(deb_test["prompt"]), max_new_tokens=opts.max_new_tokens,
                                           batch_size=16, progress=False))
        out["rougeL_test"] = [float(x) for x in rouge.compute(predictions=preds, references=list(deb_test["target"]),
                                                              use_aggregator=False)["rougeL"]]
        out["examples"] = [{"reference": r, "prediction": y} for r, y in list(zip(deb_test["target"], preds))[:2]]
        out["wordnet_validation_perplexity"] = pooled_perplexity(text_nll(model, tok, wn_val,
                                                                          max_length=opts.max_length, progress=False))
        vp = first_lines(generate_texts(model, tok, list(deb_val["prompt"]), max_new_tokens=opts.max_new_tokens,
                                        batch_size=16, progress=False))
        out["rougeL_validation"] = float(np.mean(rouge.compute(predictions=vp, references=list(deb_val["target"]),
                                                               use_aggregator=False)["rougeL"]))
        return out

    def pruned(i, j, bridge):
        model = StitchedModel.from_anchors(anchor, front_blocks=i, back_start=j, stitch_init="identity",
                                           progress=False)
        if bridge == "least_squares":
            w, b_ = fits[(i, j)]
            with torch.no_grad():
                model.stitch.weight.copy_(w)
                model.stitch.bias.copy_(b_)
            model.config.recipe.update(stitch_init="least_squares", ridge=opts.ridge)
        return model.eval()

    models = sorted({(c, METHODS[label][1]) for p in picks.values() for label, c in p.items()})
    recipes = {"labels": replace(LM_HEAL_RECIPE, steps=opts.heal_steps)}
    if "distill" in opts.heal:
        recipes["distill"] = recipes["labels"].with_distillation()
    recipes = {name: r for name, r in recipes.items() if name in opts.heal}
    total = (1 + len(models)) * (1 + len(recipes))
    bar = tqdm(total=total, desc="depth pruning: models measured", unit="model", disable=not opts.progress)

    def timed(fn):
        def run():
            t0 = time.perf_counter()
            res = fn()
            res["seconds"] = time.perf_counter() - t0
            return res
        return run

    results = {"dense": {"free": store.get("dense:free", timed(lambda: measure(dense)))}}
    bar.update()
    for (i, j), bridge in models:
        name = f"{i},{j},{bridge}"
        results[name] = {"free": store.get(f"{name}:free", timed(lambda: measure(pruned(i, j, bridge))))}
        bar.update()
    for rname, recipe in recipes.items():
        teacher = dense if recipe.distill else None
        results["dense"][rname] = store.get(f"dense:{rname}", timed(lambda: measure(heal_lora(
            copy.deepcopy(dense), recipe, heal_data, tok, opts.seed, teacher=teacher))))
        bar.update()
        for (i, j), bridge in models:
            name = f"{i},{j},{bridge}"
            results[name][rname] = store.get(f"{name}:{rname}", timed(lambda: measure(heal_lora(
                pruned(i, j, bridge), recipe, heal_data, tok, opts.seed, teacher=teacher))))
            bar.update()
    bar.close()

    report = _report(opts, cuts, picks, results, recipes, default, dense_flops, n)
    report.update(
        command=command, seconds=time.perf_counter() - t_start, hf_klas=__version__,
        transformers=transformers.__version__, torch=torch.__version__, anchor=anchor.provenance,
        data={"calibration": f"{len(cal_texts)} Debian training descriptions (prompt + synopsis, cut to {cut} "
                             "characters)",
              "healing": f"{len(heal_train)} other Debian training packages (loss on the synopsis)",
              "general_english": f"WordNet glosses v1 (sha256 "
                                 f"{json.loads(WORDNET_MANIFEST.read_text())['sha256'][:16]}...): "
                                 f"{len(wn_val)} validation texts (choices), {len(wn_test)} test texts (results)",
              "task": f"Debian synopsis task v2: {len(deb_val)} validation packages (choices), {len(deb_test)} test "
                      "packages (results)"},
        recipes={name: r.describe() for name, r in recipes.items()})
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{opts.name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{opts.name}.md").write_text(render_markdown(report))
    plot_depth_pruning(report, out / f"{opts.name}.png")
    return report


def _report(opts, cuts, picks, results, recipes, default, dense_flops, n) -> dict:
    dense = results["dense"]
    stages = ["free", *recipes]
    rows = []
    for budget in opts.budgets:
        for label in METHODS:
            (i, j), bridge = picks[budget][label], METHODS[label][1]
            res = results[f"{i},{j},{bridge}"]
            ours = results[_name(picks[budget]["hf_klas default"], "least_squares")]
            row = {"budget": budget, "method": label, "front_blocks": i, "back_start": j, "removed": f"{i}..{j - 1}",
                   "bridge": bridge, "flops_fraction": cuts[budget]["flops_fraction"]}
            for stage in stages:
                r, ref, base = res[stage], ours[stage], dense[stage]
                ppl, dppl = pooled_perplexity(r["wordnet_test_nll"]), pooled_perplexity(base["wordnet_test_nll"])
                rl, drl = float(np.mean(r["rougeL_test"])), float(np.mean(base["rougeL_test"]))
                entry = {"wordnet_ppl": ppl, "ppl_retention": dppl / ppl, "rougeL": rl,
                         "rougeL_retention": rl / drl if drl else None,
                         "wordnet_validation_ppl": r.get("wordnet_validation_perplexity"),
                         "rougeL_validation": r.get("rougeL_validation")}
                if label != "hf_klas default":
                    entry["ppl_ratio_default_vs_this"] = paired_perplexity_ratio(
                        ref["wordnet_test_nll"], r["wordnet_test_nll"], samples=opts.bootstrap_samples, seed=opts.seed)
                    entry["rougeL_default_minus_this"] = paired_bootstrap_difference(
                        ref["rougeL_test"], r["rougeL_test"], samples=opts.bootstrap_samples, seed=opts.seed)
                row[stage] = entry
            rows.append(row)
    dense_rows = {stage: {"wordnet_ppl": pooled_perplexity(dense[stage]["wordnet_test_nll"]),
                          "rougeL": float(np.mean(dense[stage]["rougeL_test"])),
                          "wordnet_validation_ppl": dense[stage].get("wordnet_validation_perplexity"),
                          "rougeL_validation": dense[stage].get("rougeL_validation")} for stage in stages}
    choice = None
    if len(recipes) > 1:  # the healing recipe, chosen on validation only: mean log-perplexity, then ROUGE-L
        scores = {}
        for stage in recipes:
            vals = [row[stage] for row in rows]
            scores[stage] = {"mean_log_wordnet_validation_ppl": float(np.mean([math.log(v["wordnet_validation_ppl"])
                                                                               for v in vals])),
                             "mean_rougeL_validation": float(np.mean([v["rougeL_validation"] for v in vals]))}
        best = min(scores, key=lambda s: (scores[s]["mean_log_wordnet_validation_ppl"],
                                          -scores[s]["mean_rougeL_validation"]))
        choice = {"rule": "lowest mean log WordNet validation perplexity over every pruned model (Debian "
                          "validation ROUGE-L reported beside it)", "scores": scores, "chosen": best}
    return {"kind": "depth_pruning", "blocks": n, "dense_flops": dense_flops,
            "flops_unit": f"per sequence of {DEFAULT_SEQ_LEN} tokens", "default_selector": default["method"],
            "cuts": {str(b): {k: v for k, v in c.items() if k != "candidates"} | {"positions": len(c["candidates"])}
                     for b, c in cuts.items()},
            "methods": {label: {"criterion": m[0], "bridge": m[1]} for label, m in METHODS.items()},
            "stages": stages, "rows": rows, "dense": dense_rows, "healing_choice": choice,
            "raw": {name: {stage: {k: v for k, v in r.items() if k != "wordnet_test_nll"} for stage, r in res.items()}
                    for name, res in results.items()}}


def _name(config, bridge) -> str:
    return f"{config[0]},{config[1]},{bridge}"


STAGE_TITLES = {"free": "training-free", "labels": "healed: LoRA with labels",
                "distill": "healed: LoRA with distillation from the dense model"}


def _interval(entry, key) -> str:
    if key == "ppl":
        r = entry["ppl_ratio_default_vs_this"]
        return f"{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
    r = entry["rougeL_default_minus_this"]
    return f"{r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"


def _pct(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def render_markdown(report: dict) -> str:
    anchor = report["anchor"]
    name = anchor.get("hub_id") or anchor.get("name_or_path") if isinstance(anchor, dict) else anchor
    lines = [f"# Depth pruning: {name}, {report['blocks']} blocks", "",
             f"Default selector: `{report['default_selector']}`. FLOPs {report['flops_unit']}. "
             f"{report.get('data', {}).get('general_english', '')}; {report.get('data', {}).get('task', '')}.", ""]
    for stage in report["stages"]:
        d = report["dense"][stage]
        lines += [f"## {STAGE_TITLES[stage]}", "",
                  f"Dense model ({'as shipped' if stage == 'free' else 'same healing'}): WordNet perplexity "
                  f"{d['wordnet_ppl']:.2f}, ROUGE-L {d['rougeL']:.3f}.", "",
                  "| budget | method | removed blocks | bridge | FLOPs | WordNet ppl | retention | ROUGE-L | retention "
                  "| ppl default/this [95%] | ROUGE-L default-this [95%] |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in report["rows"]:
            e = row[stage]
            other = row["method"] != "hf_klas default"
            lines.append(f"| {row['budget']:.0%} | {row['method']} | {row['removed']} | {row['bridge']} | "
                         f"{row['flops_fraction']:.1%} | {e['wordnet_ppl']:.2f} | {e['ppl_retention']:.1%} | "
                         f"{e['rougeL']:.3f} | {_pct(e['rougeL_retention'])} | "
                         f"{_interval(e, 'ppl') if other else '—'} | {_interval(e, 'rouge') if other else '—'} |")
        lines.append("")
    if report.get("healing_choice"):
        c = report["healing_choice"]
        lines += ["## Healing recipe (chosen on validation)", "", f"Rule: {c['rule']}. Chosen: **{c['chosen']}**.", ""]
        for stage, s in c["scores"].items():
            lines.append(f"- {stage}: mean WordNet validation perplexity "
                         f"{math.exp(s['mean_log_wordnet_validation_ppl']):.2f}, mean Debian validation ROUGE-L "
                         f"{s['mean_rougeL_validation']:.3f}")
        lines.append("")
    lines += ["Retention: dense perplexity / pruned perplexity, pruned ROUGE-L / dense ROUGE-L (as in the pruning "
              "papers' tables). Intervals: paired bootstrap over test texts; a ratio interval containing 1 or a "
              "difference interval containing 0 is a tie. One healing seed.", ""]
    return "\n".join(lines)


def plot_depth_pruning(report: dict, path) -> None:
    """WordNet test perplexity against FLOPs, one line per method, one panel per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False, sharey=True)
    for ax, stage in zip(axes[0], stages):
        for label in METHODS:
            rows = sorted((r for r in report["rows"] if r["method"] == label), key=lambda r: r["flops_fraction"])
            ax.plot([r["flops_fraction"] for r in rows], [r[stage]["wordnet_ppl"] for r in rows], "o-", label=label)
        ax.axhline(report["dense"][stage]["wordnet_ppl"], color="k", ls="--", lw=1, label="dense")
        ax.set_title(STAGE_TITLES[stage], fontsize=9)
        ax.set_xlabel("FLOPs / dense FLOPs")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("WordNet test perplexity (log)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
