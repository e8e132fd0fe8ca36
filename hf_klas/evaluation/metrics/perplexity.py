"""Perplexity of a causal LM on a text column (or pre-tokenised ids, or prompt + target)."""

from __future__ import annotations

import torch

from ...errors import DataError
from ...families import CAUSAL_LM
from ..perplexity import perplexity
from .base import Metric, check_columns


class Perplexity(Metric):
    name = "perplexity"
    task = CAUSAL_LM
    higher_is_better = False
    needs = ("logits",)
    auto_priority = 1  # after ROUGE: a summarisation set (prompt + target) is scored by what users read
    description = "perplexity (token-weighted)"

    @classmethod
    def compute(cls, model, preprocessor, ds, opts) -> dict:
        cols = ds.column_names
        if opts.text_column in cols:
            texts = list(ds[opts.text_column])
            if preprocessor is None and texts and not isinstance(texts[0], str):
                raise DataError("The text column is not text.", "Pass a text column, or a pre-tokenised input_ids one.")
        elif "input_ids" in cols:
            texts = [torch.tensor(r, dtype=torch.long) for r in ds["input_ids"]]
            preprocessor = None
        elif opts.prompt_column in cols and opts.target_column in cols:
            texts = [p + " " + t for p, t in zip(ds[opts.prompt_column], ds[opts.target_column])]
        else:
            check_columns(ds, [opts.text_column], "Perplexity")
        if preprocessor is None and texts and isinstance(texts[0], str):
            raise DataError("Perplexity on text needs a tokenizer, and none was found with the model or anchors.",
                            "Save the tokenizer with the model (or its anchors), or pass a pre-tokenised input_ids "
                            "column.")
        return {"value": perplexity(model, preprocessor, texts, max_length=opts.max_length,
                                    batch_size=opts.batch_size, progress=opts.progress)}
