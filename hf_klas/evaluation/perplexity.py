"""Perplexity as exp(token-weighted mean NLL), so padding and batch composition cannot change it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import DataError
from ._util import model_device, tokenizer_padding

__all__ = ["perplexity", "pooled_perplexity", "text_nll"]


def _tensor_rows(input_ids, max_length: int | None) -> list[torch.Tensor]:
    """Pre-tokenised input: a 2-D LongTensor (rows of equal length) or a sequence of 1-D tensors/lists."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2:
            raise DataError(f"input_ids has shape {tuple(input_ids.shape)}; expected (batch, seq).",
                            "Pass a 2-D LongTensor or a list of 1-D token id tensors.")
        rows = list(input_ids)
    else:
        rows = [torch.as_tensor(r) for r in input_ids]
    out = []
    for r in rows:
        if r.dim() != 1 or r.dtype not in (torch.int64, torch.int32):
            raise DataError("Pre-tokenised input must be integer token ids, one 1-D sequence per text.",
                            "Pass tokenizer=None only with input_ids tensors (e.g. tokenizer(texts)['input_ids']).")
        out.append(r.long()[:max_length] if max_length else r.long())
    return out


def _pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: positions stay 0..len-1 without needing position_ids."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, :len(r)] = r
        mask[k, :len(r)] = 1
    return ids, mask


def perplexity(model, tokenizer, texts, max_length: int | None = 512, batch_size: int = 8,
               progress: bool = True) -> float:
    """exp( sum of next-token NLL over all real tokens / number of predicted tokens ).

    Why token-weighted: averaging per-batch or per-text means would weight short texts more and would change
    with ``batch_size``; summing NLL and counting only real target tokens (labels ``-100`` on padding) makes the
    result independent of batching. Each text contributes ``len - 1`` predictions (the first token has no
    context). ``texts`` are strings (with ``tokenizer``; truncated to ``max_length`` tokens, right padding), or,
    with ``tokenizer=None``, pre-tokenised ``input_ids``: a 2-D LongTensor or a list of 1-D tensors.
    """
    return pooled_perplexity(text_nll(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                      progress=progress))


def pooled_perplexity(per_text) -> float:
    """exp(summed NLL / predicted tokens) over :func:`text_nll`'s ``(nll, tokens)`` pairs: the pooling
    :func:`perplexity` does, for callers that keep the per-text values (e.g. for intervals)."""
    return math.exp(sum(n for n, _ in per_text) / max(1, sum(t for _, t in per_text)))


def text_nll(model, tokenizer, texts, max_length: int | None = 512, batch_size: int = 8,
             progress: bool = True) -> list[tuple[float, int]]:
    """``(summed next-token NLL, predicted tokens)`` per text, in order (``(0.0, 0)`` for a text under 2 tokens):
    what :func:`perplexity` pools, kept apart so a paired bootstrap over texts can put an interval on a
    perplexity ratio (:func:`hf_klas.evaluation.intervals.paired_perplexity_ratio`)."""
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be >= 1.", "Pass a positive batch_size.")
    if tokenizer is None:
        rows = _tensor_rows(texts, max_length)
        pad_id = 0
    else:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise DataError("perplexity got non-string texts together with a tokenizer.",
                            "Pass strings, or tokenizer=None with input_ids tensors.")
        with tokenizer_padding(tokenizer, "right"):
            pad_id = tokenizer.pad_token_id
            enc = tokenizer(texts, truncation=max_length is not None, max_length=max_length)
        rows = [torch.tensor(r, dtype=torch.long) for r in enc["input_ids"]]
    usable = [k for k, r in enumerate(rows) if len(r) >= 2]
    if not usable:
        raise DataError("No text has at least 2 tokens, so there is nothing to predict.",
                        "Pass longer texts (or a larger max_length).")
    out = [(0.0, 0)] * len(rows)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(usable), batch_size)
        for s in tqdm(starts, desc="perplexity", unit="batch", disable=not progress):
            index = usable[s:s + batch_size]
            ids, mask = _pad([rows[k] for k in index], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits
            labels = ids.masked_fill(mask == 0, -100)[:, 1:]
            nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                  ignore_index=-100, reduction="none").reshape(labels.shape).double().sum(1)
            counts = (labels != -100).sum(1)
            for k, n, c in zip(index, nll.tolist(), counts.tolist()):
                out[k] = (float(n), int(c))
    finally:
        model.train(was_training)
    return out
