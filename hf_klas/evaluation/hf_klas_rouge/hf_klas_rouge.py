"""Offline ROUGE for ``evaluate.load(<this folder>)``; the implementation lives in hf_klas.evaluation.rouge.

``evaluate`` copies this script into its module cache and imports it, so it must only use absolute imports of
installed libraries (hf_klas is one). The first EvaluationModule subclass found in this module is the metric.
"""

from hf_klas.evaluation.rouge import Rouge  # noqa: F401

__all__ = ["Rouge"]
