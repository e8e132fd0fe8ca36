"""Evaluation: offline ROUGE, generation, perplexity, top-1 accuracy, and Pareto fronts with their AUC."""

from .accuracy import top1_accuracy, top1_correct
from .generation import first_lines, generate_texts
from .intervals import (
    auc_difference,
    paired_bootstrap_difference,
    paired_difference,
    paired_perplexity_ratio,
    wilson_interval,
)
from .pareto import (
    AUC_DEFINITION,
    ParetoPoint,
    attainment_curve,
    front_auc,
    pareto_front,
    plot_pareto,
    write_pareto_table,
)
from .perplexity import perplexity, pooled_perplexity, text_nll
from .rouge import ROUGE_METRIC_DIR, Rouge, load_rouge

__all__ = [
    "AUC_DEFINITION",
    "ParetoPoint",
    "ROUGE_METRIC_DIR",
    "Rouge",
    "attainment_curve",
    "auc_difference",
    "front_auc",
    "first_lines",
    "generate_texts",
    "load_rouge",
    "paired_bootstrap_difference",
    "paired_difference",
    "paired_perplexity_ratio",
    "pareto_front",
    "perplexity",
    "pooled_perplexity",
    "text_nll",
    "plot_pareto",
    "top1_accuracy",
    "top1_correct",
    "wilson_interval",
    "write_pareto_table",
]
