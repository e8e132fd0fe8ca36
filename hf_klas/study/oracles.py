"""The study's ground truth: every configuration of a pool given the same treatment, and its quality measured.

* :func:`vit_oracle` -- least-squares init, then per protocol (:class:`VitProtocol`) and seed an identical finetune
  (``demo``: the demo's recipe, every weight; ``full``: every weight, anchors at a lower LR; ``lora``; ``stitch``:
  the stitch layer alone), top-1 on a fixed validation subset. The LS init is built once per configuration.
  :func:`vit_anchor_oracle` gives the anchors the same finetune where that means the same thing.
* :func:`lm_self_stitch_oracle` -- training-free, for many self-stitch configurations at once: the anchor runs once
  and every block's output is cached, so a configuration costs only its back blocks (perplexity) and, with
  prompts, a greedy generation through the anchor's own ``generate`` with the block list swapped.
* :func:`lm_lora_oracle` -- the stitched model built as a user would (``StitchedModel.from_anchors``, starting
  from the training-free oracle's least-squares stitch), LoRA-finetuned per seed with hf_klas's trainer, then
  perplexity and ROUGE-L.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments

from ..activations import run_prefix
from ..anatomy import find_block_path, find_blocks
from ..building import StitchedModel
from ..errors import HfKlasError
from ..evaluation import first_lines, generate_texts, perplexity, top1_accuracy
from ..stitch_init import LeastSquaresAccumulator
from ..training.data import prepare_causal_lm_dataset
from ..training.finetune import build_trainer
from ..training.lora import merge_lora
from ..training.recipes import finetune_arguments, finetune_full

__all__ = ["PixelDataset", "VitProtocol", "vit_oracle", "vit_anchor_oracle", "block_outputs", "self_stitch_fits",
           "lm_self_stitch_oracle",
           "lm_lora_oracle", "training_arguments"]


class PixelDataset(torch.utils.data.Dataset):
    """In-memory ``{"pixel_values", "labels"}`` rows (no Arrow round trip per step)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, k):
        return {"pixel_values": self.pixels[k], "labels": self.labels[k]}


def training_arguments(out: str, steps: int, batch: int, lr: float, seed: int, *, lr_scheduler_type: str = "linear",
                       warmup_ratio: float = 0.0) -> TrainingArguments:
    """The oracle's finetuning: identical for every configuration; the seed sets the data order."""
    return finetune_arguments(out, steps, lr, batch, seed, lr_scheduler_type=lr_scheduler_type,
                              warmup_ratio=warmup_ratio)


@dataclass(frozen=True)
class VitProtocol:
    """One oracle finetuning protocol: how every configuration (and, where it means the same thing, every anchor)
    is trained before its accuracy is measured."""

    name: str
    mode: str  # build_trainer's mode: full | lora | stitch
    steps: int
    batch_size: int
    learning_rate: float
    anchor_lr_scale: float
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0

    @property
    def trains_anchors(self) -> bool:
        """Full finetuning means the same for a plain anchor (every weight at ``anchor_lr_scale``); LoRA and
        stitch-only training have no anchor counterpart, so their anchors are compared as shipped."""
        return self.mode == "full" and self.steps > 0

    def arguments(self, out: str, seed: int) -> TrainingArguments:
        return training_arguments(out, self.steps, self.batch_size, self.learning_rate, seed,
                                  lr_scheduler_type=self.lr_scheduler_type, warmup_ratio=self.warmup_ratio)

    def describe(self) -> str:
        what = {"full": f"full finetuning (every weight; stitch at lr {self.learning_rate:g}, anchors at "
                        f"{self.anchor_lr_scale:g}x)",
                "lora": f"LoRA on the blocks + the stitch (lr {self.learning_rate:g})",
                "stitch": f"the stitch layer alone (lr {self.learning_rate:g}; back blocks frozen)"}[self.mode]
        warm = f" after {self.warmup_ratio:.0%} warm-up" if self.warmup_ratio else ""
        return (f"{self.steps} steps of {what}, AdamW, {self.lr_scheduler_type} schedule{warm}, batch "
                f"{self.batch_size}")


def _train(model, protocol: VitProtocol, train, seed: int, tmp: str):
    if protocol.steps <= 0:
        return model
    if protocol.mode == "full":
        return finetune_full(model, protocol.arguments(tmp, seed), train, anchor_lr_scale=protocol.anchor_lr_scale)
    trainer = build_trainer(model, protocol.arguments(tmp, seed), train, mode=protocol.mode,
                            anchor_lr_scale=protocol.anchor_lr_scale, quiet=True)
    trainer.train()
    return trainer.model


def vit_oracle(front, back, pool: list[dict], data, *, protocols: list[VitProtocol], seeds, ridge: float,
               on_config=None) -> None:
    """Fill every pool entry with ``quality_init`` and ``quality_per_seed[protocol]`` (top-1 on the evaluation
    data, the validation split by default)."""
    train, evaluation, _calib_sel, calib_ls = data
    with tempfile.TemporaryDirectory(prefix="hf_klas_study_") as tmp:
        for c in pool:
            init = StitchedModel.from_anchors(front, back, front_blocks=c["front_blocks"], back_start=c["back_start"],
                                              calibration=calib_ls, ridge=ridge, progress=False)
            c["quality_init"] = top1_accuracy(init, evaluation, progress=False)
            c["quality_per_seed"] = {}
            for protocol in protocols:
                accs = []
                for seed in seeds:
                    model = _train(copy.deepcopy(init), protocol, train, seed, tmp)
                    accs.append(top1_accuracy(model.eval(), evaluation, progress=False))
                    del model
                c["quality_per_seed"][protocol.name] = accs
            del init
            if on_config is not None:
                on_config(c)


def vit_anchor_oracle(anchor, data, *, protocols: list[VitProtocol], seeds) -> dict:
    """An anchor measured as shipped and, under each protocol that trains anchors, after the same finetune as
    the stitches per seed: ``{"shipped": acc, "per_seed": {protocol: [acc per seed]}}``."""
    train, evaluation = data[0], data[1]
    shipped = anchor.load_full(dtype=torch.float32).eval()
    out = {"shipped": top1_accuracy(shipped, evaluation, progress=False), "per_seed": {}}
    with tempfile.TemporaryDirectory(prefix="hf_klas_study_") as tmp:
        for protocol in protocols:
            if protocol.trains_anchors:
                out["per_seed"][protocol.name] = [
                    top1_accuracy(_train(copy.deepcopy(shipped), protocol, train, seed, tmp).eval(), evaluation,
                                  progress=False) for seed in seeds]
    return out


def _swap_blocks(model, blocks):
    path = find_block_path(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList(blocks))
    return parent, attr, old


@torch.no_grad()
def block_outputs(model, batches) -> list[torch.Tensor]:
    """Every block's output per batch (``[num_blocks + 1, B, T, d]``, index 0 = embeddings), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return [torch.stack(run_prefix(model, b)) for b in batches]
    finally:
        model.train(was_training)


@torch.no_grad()
def self_stitch_fits(hidden, batches, configs, ridge: float = 1e-4):
    """Least-squares stitches of self-stitch configurations ``(i, j)``, yielded as ``((i, j), weight, bias)``.

    ``hidden``: :func:`block_outputs` of the anchor on ``batches`` (their masks select the tokens). ``X^T X`` is
    accumulated once per ``i`` and ``X^T Y`` per configuration -- the fit of ``StitchedModel.from_anchors(model,
    front_blocks=i, back_start=j, calibration=batches)`` (output of block ``i-1`` -> input of block ``j``)
    without an anchor forward per configuration.
    """
    d = int(hidden[0].shape[-1])
    masks = [b.get("attention_mask") for b in batches]
    by_i: dict[int, list[int]] = {}
    for i, j in configs:
        by_i.setdefault(int(i), []).append(int(j))
    for i, js in sorted(by_i.items()):
        xa, keep = [], []
        A = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        count = 0
        for h, mask in zip(hidden, masks):
            x = h[i].reshape(-1, d).double()
            k = mask.reshape(-1).bool() if mask is not None else torch.ones(len(x), dtype=torch.bool)
            x = torch.cat([x[k], torch.ones(int(k.sum()), 1, dtype=torch.float64)], 1)
            A += x.T @ x
            count += len(x)
            xa.append(x)
            keep.append(k)
        for j in sorted(js):
            acc = LeastSquaresAccumulator(d, d, ridge=ridge)
            acc.A, acc.count = A, count
            acc.B = sum(x.T @ h[j].reshape(-1, d)[k].double() for x, h, k in zip(xa, hidden, keep))
            weight, bias = acc.solve()
            yield (i, j), weight.float(), bias.float()


@torch.no_grad()
def lm_self_stitch_oracle(model, configs, calib_batches, eval_batches, ridge: float = 1e-4, *, tokenizer=None,
                          prompts=None, max_new_tokens: int = 24, batch_size: int = 16, done=None,
                          on_config=None) -> dict:
    """Perplexity (and greedy generations) of every self-stitch configuration ``(i, j)`` with a least-squares stitch.

    Same network as ``StitchedModel.from_anchors(model, None, front_blocks=i, back_start=j,
    calibration=calib_batches)``: the stitch ``T`` is fitted by :func:`self_stitch_fits` from the output of block
    ``i-1`` to the input of block ``j``; then blocks ``j..n-1``, the final norm and the head run on ``T(h_i)``
    (cached ``h_i``). With ``prompts``, each configuration also continues every prompt greedily through the
    anchor's own ``generate`` with its block list swapped for ``blocks[:i] + blocks[j:]`` and ``T`` applied by a
    pre-hook on block ``j`` (blocks keep their layer index, so the cache leaves the skipped layers empty). Both
    checked against the built stitched model in the tests. ``done``: results already measured (not redone);
    ``on_config(key, result)`` after each new one. Returns ``{(i, j): {"perplexity": float, "generations":
    list[str] | None}}``.
    """
    if prompts is not None and tokenizer is None:
        raise HfKlasError("lm_self_stitch_oracle got prompts but no tokenizer.", "Pass tokenizer= as well.")
    out = dict(done or {})
    todo = [(int(i), int(j)) for i, j in configs if (int(i), int(j)) not in out]
    if not todo:
        return out
    was_training = model.training
    model.eval()
    blocks = list(find_blocks(model))
    try:
        cal_h = block_outputs(model, calib_batches)
        ev_h = block_outputs(model, eval_batches)
        for (i, j), weight, bias in self_stitch_fits(cal_h, calib_batches, todo, ridge=ridge):
            parent, attr, old = _swap_blocks(model, blocks[j:])
            nll, tokens = 0.0, 0
            try:
                for h, b in zip(ev_h, eval_batches):
                    emb = h[i] @ weight.T + bias
                    mask = b.get("attention_mask")
                    logits = model(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits
                    ids = b["input_ids"]
                    labels = (ids.masked_fill(mask == 0, -100) if mask is not None else ids)[:, 1:]
                    nll += float(F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 labels.reshape(-1), ignore_index=-100, reduction="sum"))
                    tokens += int((labels != -100).sum())
            finally:
                setattr(parent, attr, old)
            gens = None
            if prompts is not None:
                gens = _generate_self_stitched(model, blocks, i, j, weight, bias, tokenizer, prompts,
                                               max_new_tokens, batch_size)
            out[(i, j)] = {"perplexity": math.exp(nll / tokens), "generations": gens}
            if on_config is not None:
                on_config((i, j), out[(i, j)])
    finally:
        model.train(was_training)
    return out


def _generate_self_stitched(model, blocks, i, j, weight, bias, tokenizer, prompts, max_new_tokens,
                            batch_size) -> list[str]:
    """Greedy continuations of ``prompts`` by ``blocks[:i] -> T -> blocks[j:]`` (see lm_self_stitch_oracle)."""

    def stitch(_module, args, kwargs):
        if args:
            return (args[0] @ weight.T + bias, *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"] @ weight.T + bias
        return args, kwargs

    parent, attr, old = _swap_blocks(model, blocks[:i] + blocks[j:])
    handle = blocks[j].register_forward_pre_hook(stitch, with_kwargs=True)
    try:
        return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=False)
    finally:
        handle.remove()
        setattr(parent, attr, old)


def lm_lora_oracle(anchor, fits: dict, *, tokenizer, train, eval_texts, rouge_prompts, rouge_refs, rouge, seeds,
                   steps: int, batch: int, lr: float, r: int, max_length: int, max_new_tokens: int, ridge: float,
                   done=None, on_run=None) -> dict:
    """``{(i, j, seed): {"perplexity": float, "rougeL": float}}``: each configuration of ``fits`` (``{(i, j):
    (weight, bias)}`` from :func:`self_stitch_fits`: the training-free oracle's least-squares stitch) built from
    the anchor, LoRA-finetuned per seed on ``train`` (prompt + synopsis, prompt tokens without loss) with hf_klas's
    trainer as ``hf-klas finetune --mode lora`` does, merged, then measured. ``done``: runs already measured (not
    redone); ``on_run(key, result)`` after each new one."""
    out = dict(done or {})
    todo = [(i, j, seed) for (i, j) in fits for seed in seeds if (i, j, seed) not in out]
    if not todo:
        return out
    data = prepare_causal_lm_dataset(train, tokenizer, prompt_column="prompt", target_column="target",
                                     max_length=max_length)
    with tempfile.TemporaryDirectory(prefix="hf_klas_study_lm_") as tmp:
        for (i, j), (weight, bias) in fits.items():
            seeds_left = [s for s in seeds if (i, j, s) not in out]
            if not seeds_left:
                continue
            init = StitchedModel.from_anchors(anchor, front_blocks=i, back_start=j, stitch_init="identity",
                                              progress=False)
            with torch.no_grad():
                init.stitch.weight.copy_(weight)
                init.stitch.bias.copy_(bias)
            init.config.recipe.update(stitch_init="least_squares", ridge=ridge)
            for seed in seeds_left:
                trainer = build_trainer(copy.deepcopy(init), training_arguments(tmp, steps, batch, lr, seed), data,
                                        mode="lora", lora_r=r, processing_class=tokenizer, quiet=True)
                trainer.train()
                model = merge_lora(trainer.model).eval()
                res = {"perplexity": perplexity(model, tokenizer, eval_texts, max_length=max_length, batch_size=8,
                                                progress=False)}
                preds = first_lines(generate_texts(model, tokenizer, rouge_prompts, max_new_tokens=max_new_tokens,
                                                   batch_size=16, progress=False))
                scores = rouge.compute(predictions=preds, references=rouge_refs, use_aggregator=False)
                res["rougeL"] = float(np.mean(scores["rougeL"]))
                out[(i, j, seed)] = res
                del trainer, model
                if on_run is not None:
                    on_run((i, j, seed), res)
            del init
    return out
