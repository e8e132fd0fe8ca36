"""The metric registry (:data:`METRICS`): one module per metric, each registering by subclassing
:class:`~hf_klas.evaluation.metrics.base.Metric` when imported here."""

from .accuracy import Accuracy
from .base import METRICS, Metric, check_columns
from .perplexity import Perplexity
from .rouge import ROUGE_TYPES, Rouge1, Rouge2, RougeL, RougeLsum

__all__ = ["METRICS", "Metric", "check_columns", "ROUGE_TYPES", "Perplexity", "Rouge1", "Rouge2", "RougeL",
           "RougeLsum", "Accuracy"]
