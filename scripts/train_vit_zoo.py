#!/usr/bin/env python
"""Train the shipped Fashion-MNIST ViT zoo (vit-fmnist-tiny / -small / -base) on CPU, offline.

``transformers.ViTForImageClassification`` models of increasing width *and* depth that share the token layout
(28x28 images, 7x7 patches -> 16 patches + CLS = 17 tokens) so any pair can be stitched. The grayscale image is
fed as three equal channels, as every Hub ViT takes RGB: the saved ``ViTImageProcessor`` converts any PIL image
to RGB, so ``pipeline("image-classification")`` works on grayscale images as on colour ones. Data comes from the
Debian ``dataset-fashion-mnist`` IDX files (:mod:`hf_klas.data.fashion_mnist`); nothing is downloaded.

Recipe (identical for every model): the first ``--train-limit`` images of the *train* split (rows 0..54,999 of the
training file; the last 5,000 rows are the validation split, see :mod:`hf_klas.data.fashion_mnist`), ``--epochs``
passes in a seeded random order, batch ``--batch-size``, AdamW (lr ``--lr``, betas 0.9/0.999, weight decay 0.05 on
matrices only), linear warmup over the first 5% of steps then cosine decay to 0, gradient clipping at 1.0,
cross-entropy with label smoothing ``--label-smoothing``, random translations by up to ``--translate`` pixels
and random horizontal flips (``--hflip``), no dropout. *Validation* accuracy (5,000 images) is recorded after
every epoch, and every choice (epochs, the plateau rule) is read from it: a model counts as *converged* when the
last fifth of its training moved validation accuracy by less than ``--plateau-points`` (0.5) points -- most of
which is the cosine schedule's final annealing (recorded as ``plateau``). The test split (10,000 images) is read
once, after training, for the final number only.
Everything is seeded (``--seed``: weight init, data order, flips) and
``torch.use_deterministic_algorithms(True)`` is on, so a run with the same seed, thread count and torch build
gives the same weights. Each model trains in its own process (``--jobs`` at once, default 2, each with
``--threads`` torch threads, default 1): on a shared, oversubscribed 2-core machine two single-threaded
processes are several times faster than one process with ``torch.set_num_threads(2)``, whose OpenMP barriers
stall whenever one of its threads is descheduled. Models are independent, so parallelism does not change
the weights. Accuracy is measured through the saved image processor's arithmetic
(:func:`hf_klas.data.fashion_mnist.preprocess`, checked equal to ``ViTImageProcessor`` on a sample before training).

Writes, under ``--out`` (default ``hf_klas/zoo/weights``)::

    vit-fmnist-{tiny,small,base}/{config.json, model.safetensors, preprocessor_config.json, README.md}
    vit-fmnist-zoo.json   (name, path, hidden, layers, heads, params, flops, validation and test accuracy, the
                           per-epoch validation curve, train seconds, recipe)

Usage::

    python scripts/train_vit_zoo.py                    # the shipped zoo (defaults below)
    python scripts/train_vit_zoo.py --models tiny --train-limit 5000 --epochs 1 --out /tmp/zoo   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import transformers  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

from hf_klas.data.fashion_mnist import (  # noqa: E402
    FASHION_MNIST_LABELS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist_arrays,
    make_image_processor,
    preprocess,
)

IMAGE_SIZE, PATCH_SIZE, NUM_CHANNELS = 28, 7, 3

#: name -> (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size). MLP ratio 2. Patch 7 (16
#: patches + CLS): on Fashion-MNIST it reaches the accuracy of patch 4 in about a third of the compute (a 64 x 6
#: model: 87.5% in 8 epochs at patch 7 vs 87.4% in 15 at patch 4); the spread in accuracy comes from a very small
#: cheapest anchor and a wider, deeper dearest one, each trained long enough to plateau.
ZOO = {
    "tiny": (16, 4, 2, 32),
    "small": (32, 4, 2, 64),
    "base": (64, 6, 4, 128),
}


def vit_config(name: str) -> ViTConfig:
    hidden, layers, heads, mlp = ZOO[name]
    return ViTConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=NUM_CHANNELS,
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True,
        layer_norm_eps=1e-6, num_labels=len(FASHION_MNIST_LABELS),
        id2label=dict(enumerate(FASHION_MNIST_LABELS)),
        label2id={name: i for i, name in enumerate(FASHION_MNIST_LABELS)},
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--out", default=str(REPO / "hf_klas" / "zoo" / "weights"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=55000, help="first N images of the train split (55,000)")
    p.add_argument("--epochs", type=int, default=45, help="passes over the training subset")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05, help="warmup share of the steps")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (p=0.5)")
    p.add_argument("--translate", type=int, default=2, help="random shifts by up to this many pixels (0: none)")
    p.add_argument("--plateau-points", type=float, default=0.5,
                   help="converged = the last fifth of training moved validation accuracy by less than this "
                        "(points)")
    p.add_argument("--device", default="cpu", help="torch device (cpu; cuda when a GPU is available)")
    p.add_argument("--recard", action="store_true",
                   help="no training: rewrite the model cards and the summary's convergence fields of the zoo in "
                        "--out from its vit-fmnist-zoo.json (e.g. with another --plateau-points)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    p.add_argument("--jobs", type=int, default=2,
                   help="models trained at once, one process each (2 jobs x 1 thread keep both cores busy without "
                        "the OpenMP barrier stalls that 2 threads suffer on a shared, oversubscribed CPU)")
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--license", default="apache-2.0")
    return p.parse_args(argv)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(config) -> int | None:
    try:
        from hf_klas.flops import anchor_flops
        return int(anchor_flops(config).total)
    except Exception:  # pragma: no cover - flops module is optional for training
        return None


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Top-1 on preprocessed ``images`` (already on the model's device)."""
    was_training = model.training
    model.eval()
    correct = 0
    for s in range(0, len(images), batch_size):
        logits = model(pixel_values=images[s:s + batch_size]).logits
        correct += int((logits.argmax(-1) == labels[s:s + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)


def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator, background: float) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift], filling with background."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=background)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def plateau_delta(curve: list[float]) -> float:
    """Validation-accuracy change (points) over the last fifth of training: final minus the value at 80%."""
    k = max(0, int(round(0.8 * len(curve))) - 1)
    return 100 * (curve[-1] - curve[k])


def make_optimizer(model, lr: float, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embeddings" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999))


def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_one(name: str, args, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
              val_y: torch.Tensor, position: int = 0):
    torch.manual_seed(args.seed)
    config = vit_config(name)
    model = ViTForImageClassification(config).to(args.device)
    model.train()
    opt = make_optimizer(model, args.lr, args.weight_decay)
    n = len(train_x)
    steps_per_epoch = n // args.batch_size  # drop the ragged last batch
    total = args.epochs * steps_per_epoch
    warmup = max(1, int(args.warmup * total))
    gen = torch.Generator().manual_seed(args.seed)
    background = float(preprocess(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8))[0, 0, 0, 0])
    curve = []
    t0 = time.time()
    bar = tqdm(range(total), desc=f"train vit-fmnist-{name}", unit="step", dynamic_ncols=True, position=position,
               mininterval=5.0)
    running = None
    for step in bar:
        if step % steps_per_epoch == 0:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        x, y = train_x[idx].to(args.device), train_y[idx].to(args.device)
        if args.hflip:
            flip = (torch.rand(len(x), generator=gen) < 0.5).to(args.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = shift(x, args.translate, gen, background)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, warmup, args.lr)
        logits = model(pixel_values=x).logits
        loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % steps_per_epoch == 0:
            curve.append(evaluate(model, val_x, val_y, args.eval_batch_size))
            bar.set_postfix(loss=f"{running:.3f}", val=f"{curve[-1]:.4f}")
    bar.close()
    model.eval()
    return model.cpu(), time.time() - t0, total, curve


def model_card(name: str, config, params: int, flops, acc: float, args, train_seconds: float, steps: int,
               command: str, curve: list[float], val_acc: float) -> str:
    hidden, layers, heads, mlp = ZOO[name]
    others = ", ".join(f"`vit-fmnist-{o}`" for o in ZOO if o != name)
    gflops = f"{flops / 1e6:.1f} MFLOPs" if flops else "n/a"
    return f"""---
library_name: transformers
license: {args.license}
pipeline_tag: image-classification
datasets:
- fashion_mnist
tags:
- vit
- hf_klas
- model-stitching
metrics:
- accuracy
model-index:
- name: vit-fmnist-{name}
  results:
  - task:
      type: image-classification
    dataset:
      name: Fashion-MNIST
      type: fashion_mnist
      split: test
    metrics:
    - type: accuracy
      value: {acc:.4f}
---

# vit-fmnist-{name}

A small Vision Transformer (`ViTForImageClassification`) trained from scratch on Fashion-MNIST, shipped with
hf_klas as an offline stitching anchor. It shares its token layout with {others} (28x28 input, the gray value on
three channels; 7x7 patches: 16 patches + CLS = 17 tokens), so blocks of any two zoo models can be stitched.

**Test accuracy (full 10,000-image Fashion-MNIST test split, measured once after training): {acc * 100:.2f}%**
(validation accuracy, 5,000 images held out of the training file: {val_acc * 100:.2f}%)

## Architecture

| | |
|---|---|
| image size / patch / channels | {IMAGE_SIZE} / {PATCH_SIZE} / {NUM_CHANNELS} |
| tokens | {(IMAGE_SIZE // PATCH_SIZE) ** 2} patches + CLS |
| hidden size | {hidden} |
| layers | {layers} |
| attention heads | {heads} (head dim {hidden // heads}) |
| MLP size | {mlp} |
| parameters | {params:,} |
| forward FLOPs per image | {gflops} (matmuls, 2 per multiply-add, `hf_klas.flops.anchor_flops`) |

Labels (`id2label`): {", ".join(f"{i}={n}" for i, n in enumerate(FASHION_MNIST_LABELS))}.

## Preprocessing

`preprocessor_config.json` is a `ViTImageProcessor`: no resize (images are already 28x28), rescale by 1/255,
normalise with mean {FASHION_MNIST_MEAN} / std {FASHION_MNIST_STD} (the training-set pixel statistics). It converts
any PIL image to RGB, so 28x28 grayscale images (mode `L`) work as they are, in `pipeline("image-classification")`
too, e.g. `hf_klas.data.fashion_mnist.load_fashion_mnist("test")[:8]["image"]` (a list).

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification
from hf_klas.data.fashion_mnist import load_fashion_mnist

path = "hf_klas/zoo/weights/vit-fmnist-{name}"
processor = AutoImageProcessor.from_pretrained(path)
model = AutoModelForImageClassification.from_pretrained(path)
ds = load_fashion_mnist("test", limit=8)
logits = model(**processor(images=ds[:8]["image"], return_tensors="pt")).logits
print([model.config.id2label[i] for i in logits.argmax(-1).tolist()])
```

## Training

- data: the first {args.train_limit:,} images of the Fashion-MNIST train split (rows 0..54,999 of the Debian
  `dataset-fashion-mnist` training file; rows 55,000..59,999 are the validation split), {args.epochs:g} epoch(s) =
  {steps:,} steps of batch {args.batch_size}
- optimiser: AdamW, lr {args.lr:g}, betas (0.9, 0.999), weight decay {args.weight_decay:g} (matrices only),
  {args.warmup:.0%} linear warmup then cosine decay to 0, gradient clipping 1.0
- loss: cross-entropy, label smoothing {args.label_smoothing:g}; augmentation: random shifts by up to
  {args.translate} px{", random horizontal flips" if args.hflip else ""}; dropout 0
- validation accuracy after each epoch: {", ".join(f"{a * 100:.1f}" for a in curve)}
- convergence (read on validation): the last fifth of training moved validation accuracy by
  {plateau_delta(curve):+.2f} points (converged: {"yes" if abs(plateau_delta(curve)) < args.plateau_points else "no"},
  criterion < {args.plateau_points:g}; one validation standard error is about
  {100 * (val_acc * (1 - val_acc) / 5000) ** 0.5:.2f} points)
- seed: {args.seed} (`torch.use_deterministic_algorithms(True)`, {args.threads} torch thread(s) per model process,
  up to {args.jobs} models trained at once)
- hardware: {args.device} ({platform.machine()}), {train_seconds / 60:.1f} min of training for this model
- software: torch {torch.__version__}, transformers {transformers.__version__}
- command (trains the zoo in one run):

```bash
{command}
```

## Limitations

A toy-scale model for demonstrating and testing model stitching offline; it is not a competitive
Fashion-MNIST classifier and was trained on a short CPU budget.
"""


def train_and_save(name: str, args, command: str, position: int = 0) -> dict:
    """Train one zoo model (validation curve per epoch), then measure it once on the full test split, write its
    folder; returns its summary row."""
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train_images, train_labels = load_fashion_mnist_arrays("train", limit=args.train_limit)
    val_images, val_labels = load_fashion_mnist_arrays("validation")
    # one channel in memory, three for the model (the same gray value: expand is a view)
    train_x = preprocess(train_images, channels=1).expand(-1, NUM_CHANNELS, -1, -1)
    val_x = preprocess(val_images).to(args.device)
    model, seconds, steps, curve = train_one(name, args, train_x, torch.from_numpy(train_labels), val_x,
                                             torch.from_numpy(val_labels).to(args.device), position)
    val_acc = curve[-1]
    test_images, test_labels = load_fashion_mnist_arrays("test")  # read once, after every choice is made
    acc = evaluate(model.to(args.device), preprocess(test_images).to(args.device),
                   torch.from_numpy(test_labels).to(args.device), args.eval_batch_size)
    model.cpu()
    params = count_params(model)
    flops = forward_flops(model.config)
    target = Path(args.out) / f"vit-fmnist-{name}"
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    make_image_processor().save_pretrained(target)
    (target / "README.md").write_text(model_card(name, model.config, params, flops, acc, args, seconds, steps,
                                                 command, curve, val_acc))
    hidden, layers, heads, mlp = ZOO[name]
    tqdm.write(f"vit-fmnist-{name}: hidden {hidden}, layers {layers}, params {params:,}, "
               f"validation {val_acc * 100:.2f}%, test {acc * 100:.2f}% ({seconds / 60:.1f} min training; last fifth "
               f"{plateau_delta(curve):+.2f} points)")
    return {
        "name": f"vit-fmnist-{name}", "path": f"vit-fmnist-{name}", "hidden": hidden, "layers": layers,
        "heads": heads, "intermediate_size": mlp, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
        "num_channels": NUM_CHANNELS, "params": params, "forward_flops": flops,
        "validation_accuracy": round(val_acc, 4), "validation_examples": int(len(val_images)),
        "test_accuracy": round(acc, 4), "test_examples": int(len(test_images)),
        "validation_accuracy_per_epoch": [round(a, 4) for a in curve],
        "last_fifth_change_points": round(plateau_delta(curve), 2),
        "plateau": abs(plateau_delta(curve)) < args.plateau_points,
        "train_seconds": round(seconds, 1), "train_steps": steps, "device": args.device,
    }


def recard(args) -> dict:
    """Model cards and convergence fields from the recorded curves (no model is trained or run)."""
    out = Path(args.out)
    summary = json.loads((out / "vit-fmnist-zoo.json").read_text())
    recipe = argparse.Namespace(**dict(summary["recipe"], plateau_points=args.plateau_points))
    summary["recipe"]["plateau_points"] = args.plateau_points
    for m in summary["models"]:
        name = m["name"].removeprefix("vit-fmnist-")
        curve = m["validation_accuracy_per_epoch"]
        m["last_fifth_change_points"] = round(plateau_delta(curve), 2)
        m["plateau"] = abs(plateau_delta(curve)) < args.plateau_points
        recipe.device = m.get("device", "cpu")
        (out / m["path"] / "README.md").write_text(model_card(
            name, None, m["params"], m["forward_flops"], m["test_accuracy"], recipe, m["train_seconds"],
            m["train_steps"], summary["command"], curve, m["validation_accuracy"]))
    (out / "vit-fmnist-zoo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.recard:
        return recard(args)
    command = "python scripts/train_vit_zoo.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                       else sys.argv[1:]))
    command = command.strip()
    t_start = time.time()

    # The fast path (preprocess) must match what users get from the saved processor.
    from PIL import Image
    sample, _ = load_fashion_mnist_arrays("train", limit=32)
    ref = make_image_processor()(images=[Image.fromarray(im) for im in sample], return_tensors="pt")
    assert torch.allclose(ref["pixel_values"], preprocess(sample), atol=1e-5), "preprocess != ViTImageProcessor"
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the same arithmetic as on CPU, up to reduction order

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "vit-fmnist-zoo.json"
    previous = {}
    if summary_path.exists():
        try:
            previous = {m["name"]: m for m in json.loads(summary_path.read_text())["models"]}
        except (ValueError, KeyError):
            previous = {}

    # Most expensive first, so with 2 jobs "base" runs beside "small" then "tiny".
    names = sorted(args.models, key=lambda n: -ZOO[n][0] * ZOO[n][1])
    results = {}
    if args.jobs <= 1 or len(names) == 1:
        for name in names:
            results[name] = train_and_save(name, args, command)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        jobs = min(args.jobs, len(names))
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {name: pool.submit(train_and_save, name, args, command, k % jobs)
                       for k, name in enumerate(names)}
            for name, fut in futures.items():
                results[name] = fut.result()

    merged = {**{k.removeprefix("vit-fmnist-"): v for k, v in previous.items()}, **results}
    ordered = [merged[k] for k in ZOO if k in merged]
    total = time.time() - t_start
    summary = {
        "description": "hf_klas offline ViT zoo: Fashion-MNIST, 28x28 (gray on 3 channels), patch 7 (17 tokens). "
                       "'path' is relative to this file's directory. Trained on the train split (55,000 images); "
                       "validation_accuracy (per epoch and final) on the validation split (5,000 images held out of "
                       "the training file), from which every choice is made; test_accuracy on the full 10k test "
                       "split, measured once after training.",
        "splits": {"train": "training file rows 0..54,999", "validation": "training file rows 55,000..59,999",
                   "test": "t10k file, all 10,000 rows"},
        "dataset": "fashion_mnist (Debian dataset-fashion-mnist)",
        "command": command,
        "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "models")},
        "wall_seconds": round(total, 1),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "models": ordered,
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    tqdm.write(f"wrote {summary_path} ({total / 60:.1f} min wall)")
    accs = [m["validation_accuracy"] for m in ordered]
    if len(ordered) == len(ZOO) and not all(a < b for a, b in zip(accs, accs[1:])):
        tqdm.write(f"WARNING: validation accuracies do not increase with size: {accs}")
    return summary


if __name__ == "__main__":
    main()
