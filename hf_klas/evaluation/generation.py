"""Batched text generation that returns only the continuation (what ROUGE should score)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ._util import model_device, tokenizer_padding

__all__ = ["generate_texts", "first_lines"]


def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8,
                   progress: bool = True, **gen_kwargs) -> list[str]:
    """Generate a continuation for every prompt; returns the new text only, in the order of ``prompts``.

    Why left padding: a decoder-only model continues from the last position, so every prompt in a batch must
    end at the same column; ``generate`` derives position ids from the attention mask, so a left-padded batch
    gives the same tokens as one prompt at a time. ``tokenizer.padding_side`` (and ``pad_token``, set to eos if
    missing) are restored afterwards. Prompts are batched by length to waste less compute on padding.
    Greedy (``do_sample=False``) unless ``gen_kwargs`` say otherwise; special tokens are stripped.
    """
    prompts = list(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise DataError("generate_texts got prompts that are not strings.",
                        "Pass a list of str (e.g. dataset['prompt']).")
    if batch_size < 1 or max_new_tokens < 1:
        raise DataError(f"batch_size={batch_size} and max_new_tokens={max_new_tokens} must both be >= 1.",
                        "Pass positive values.")
    if not prompts:
        return []
    gen_kwargs.setdefault("do_sample", False)
    device = model_device(model)
    was_training = model.training
    model.eval()
    outputs: list[str | None] = [None] * len(prompts)
    with tokenizer_padding(tokenizer, "left"):
        lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
        gen_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
        try:
            for idx in tqdm(batches, desc="generate", unit="batch", disable=not progress):
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
                with torch.inference_mode():
                    out = model.generate(**enc, max_new_tokens=max_new_tokens, **gen_kwargs)
                new_tokens = out[:, enc["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for i, text in zip(idx, texts):
                    outputs[i] = text
        finally:
            model.train(was_training)
    return outputs  # type: ignore[return-value]


def first_lines(texts: Sequence[str]) -> list[str]:
    """The first non-blank line of each generation (stripped): what a one-line reference (a Debian synopsis)
    should be scored against; a model that goes on to write a long description is not penalised for it."""
    return [t.strip().split("\n")[0] for t in texts]
