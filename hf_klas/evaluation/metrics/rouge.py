"""ROUGE of greedy generations against a reference column (offline scorer: :mod:`hf_klas.evaluation.rouge`).
One computation gives every ROUGE type, so each result carries all four; the metric named picks the value."""

from __future__ import annotations

from ...errors import DataError
from ...families import CAUSAL_LM
from ..generation import first_lines, generate_texts
from ..rouge import load_rouge
from .base import Metric, check_columns

__all__ = ["ROUGE_TYPES", "Rouge1", "Rouge2", "RougeL", "RougeLsum"]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class RougeMetric(Metric):
    task = CAUSAL_LM
    higher_is_better = True
    needs = ("generation",)

    @classmethod
    def applies(cls, columns, opts) -> bool:
        return opts.prompt_column in columns and opts.target_column in columns

    @classmethod
    def compute(cls, model, preprocessor, ds, opts) -> dict:
        check_columns(ds, [opts.prompt_column, opts.target_column], "ROUGE")
        if preprocessor is None:
            raise DataError("ROUGE needs generated text, hence a tokenizer; none was found with the model or anchors.",
                            "Save the tokenizer with the model (or its anchors).")
        preds = generate_texts(model, preprocessor, list(ds[opts.prompt_column]), max_new_tokens=opts.max_new_tokens,
                               batch_size=opts.batch_size, progress=opts.progress)
        if opts.first_line_only:
            preds = first_lines(preds)
        scores = load_rouge(seed=opts.seed).compute(predictions=preds, references=list(ds[opts.target_column]))
        out = {k: float(v) for k, v in scores.items()}
        out["value"] = float(scores[cls.name])
        out["examples"] = [{"prediction": p, "reference": r} for p, r in list(zip(preds, ds[opts.target_column]))[:3]]
        return out


class Rouge1(RougeMetric):
    name = "rouge1"
    auto_priority = 0  # prompt + target columns: a generation task
    description = "ROUGE-1 F of greedy generations"


class Rouge2(RougeMetric):
    name = "rouge2"
    description = "ROUGE-2 F of greedy generations"


class RougeL(RougeMetric):
    name = "rougeL"
    description = "ROUGE-L F of greedy generations"


class RougeLsum(RougeMetric):
    name = "rougeLsum"
    description = "ROUGE-Lsum F of greedy generations"
