"""Stitch initialisation: the one list of choices, identity, and the one least-squares fit (SN-Net's) that every
built model's stitches get -- front block-``i`` output -> what back block ``j`` receives, streamed over calibration
batches (``X^T X``, ``X^T Y``: :mod:`hf_klas.stitch_init`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import calibration_batches
from ..errors import HfKlasError
from ..stitch_init import LeastSquaresAccumulator

#: ``stitch_init=`` choices of every builder and command: SN-Net's least-squares fit, or identity.
STITCH_INITS = ("least_squares", "identity")


def check_stitch_init(stitch_init: str) -> str:
    if stitch_init not in STITCH_INITS:
        raise HfKlasError(f"Unknown stitch_init {stitch_init!r}.", f"Use one of {', '.join(STITCH_INITS)}.")
    return stitch_init


def calibration_for(front, back, calibration, max_samples: int, max_length: int) -> tuple[list[dict], str]:
    """The batches a fit runs on (prepared by the front anchor's tokenizer / image processor, else the back's) and
    what the recipe records of them."""
    preprocessor = front.load_preprocessor() or back.load_preprocessor()
    batches = calibration_batches(calibration, front.config, preprocessor, max_samples=max_samples,
                                  max_length=max_length)
    return batches, "default (hf_klas.calibration)" if calibration is None else "user"


@torch.no_grad()
def init_identity(stitches) -> None:
    """Identity on the shared dimensions, zero bias (before any least-squares fit)."""
    for lin in stitches:
        nn.init.eye_(lin.weight)
        if lin.bias is not None:
            lin.bias.zero_()


@torch.no_grad()
def fit_least_squares(stitches: dict[tuple[int, int], nn.Linear], batches: list[dict], front_outputs: Callable,
                      back_outputs: Callable, *, ridge: float = 1e-4, progress: bool = True, desc: str = "fit stitch",
                      held_out: bool = False) -> tuple[dict, dict]:
    """Fit every ``{(i, j): stitch}`` by least squares in one pass over ``batches``.

    ``front_outputs(batch)[i]`` is the front anchor's block-``i`` output, ``back_outputs(batch)[j]`` what back block
    ``j`` receives (each computed once per batch for all stitches). Returns ``({"tokens", "ridge"}, errors)``:
    with ``held_out`` and more than one batch, each stitch's relative error on the last batch."""
    accs = {c: LeastSquaresAccumulator(lin.in_features, lin.out_features, ridge=ridge) for c, lin in stitches.items()}
    last = None
    for k, batch in enumerate(tqdm(batches, desc=desc, disable=not progress)):
        xs, ys = front_outputs(batch), back_outputs(batch)
        mask = batch.get("attention_mask")
        for (i, j), acc in accs.items():
            acc.update(xs[i], ys[j], mask)
        if held_out and k == len(batches) - 1 and len(batches) > 1:
            last = (xs, ys, mask)
    errors = {}
    for (i, j), acc in accs.items():
        weight, bias = acc.solve()
        lin = stitches[(i, j)]
        lin.weight.copy_(weight.to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_(bias.to(lin.bias.dtype))
        if last is not None:
            xs, ys, mask = last
            x, y = xs[i], ys[j]
            if mask is not None:
                keep = mask.bool()
                x, y = x[keep], y[keep]
            errors[(i, j)] = acc.relative_error(weight, bias, x, y)
    return {"tokens": next(iter(accs.values())).count, "ridge": ridge}, errors
