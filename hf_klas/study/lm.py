"""The LM half of the selection-quality study: SmolLM2 self-stitching, training-free and LoRA oracles, stored
configuration by configuration (:mod:`.parts`) so an interrupted run continues where it stopped.
"""


import copy
import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..calibration import calibration_batches
from ..data.debian_descriptions import FROZEN_MANIFEST, load_debian_descriptions
from ..errors import HfKlasError
from ..evaluation import first_lines, generate_texts, load_rouge, perplexity
from ..evaluation.metrics import METRICS
from ..flops import DEFAULT_SEQ_LEN
from ..loading import resolve_anchor
from ..selection.scoring import assign_buckets, bucket_edges
from ..selection.selectors.base import grids, valid_mask
from ..version import __version__
from .options import QualityOptions
from .oracles import (
    block_outputs,
    lm_lora_oracle,
    lm_self_stitch_oracle,
    self_stitch_fits,
)
from .parts import PartStore, pair_key, parse_pair_key
from .selector_runs import analyze_study, json_safe, run_selectors


# ------------------------------------------------------------------------------------------------------------
# LM self-stitching
# ------------------------------------------------------------------------------------------------------------
def spread_subset(n: int, max_configs: int, seed: int) -> list[int]:
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
        picks = spread_subset(len(self.eligible), opts.lm_max_configs, opts.subset_seed)
        self.chosen = [self.eligible[k] for k in picks]
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
        self.store.save("selectors", {"selectors": json_safe(selectors), "complete": True,
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
        for metric, what in (
                ("perplexity", f"perplexity on {len(self.eval_texts)} Debian descriptions (validation split)"),
                ("rougeL", f"ROUGE-L (mean per-example F) of the first generated line "
                 f"({opts.lm_max_new_tokens} greedy tokens) on {len(self.refs)} validation packages")):
            higher = METRICS[metric].higher_is_better
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
