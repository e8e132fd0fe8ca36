"""The selection-quality study: does a selector's score predict the quality of the stitch after finetuning?

* :mod:`~hf_klas.study.options` -- :class:`QualityOptions` (API and ``hf-klas quality``), selector specs;
* :mod:`~hf_klas.study.oracles` -- the ground truth: every configuration of a pool finetuned (or not) and measured;
* :mod:`~hf_klas.study.statistics` -- correlations, top-1 per bucket, regret, the paper's recovery, AUC;
* :mod:`~hf_klas.study.report` -- JSON, Markdown (with a verdict across studies) and plots;
* :mod:`~hf_klas.study.vit` / :mod:`~hf_klas.study.lm` -- the ViT and SmolLM2 studies (data, protocols, oracles);
* :mod:`~hf_klas.study.selector_runs` -- every selector on a pair, a study's metrics from its oracle and scores;
* :mod:`~hf_klas.study.runner` -- :func:`run_quality`: the studies end to end, and re-analysis from a JSON.
"""

from .options import LM_SELECTORS, VIT_SELECTORS, QualityOptions, parse_selector
from .runner import run_quality
from .statistics import DEFINITIONS, analyze_selector, kendall_tau_b, rankdata, spearman

__all__ = ["DEFINITIONS", "LM_SELECTORS", "VIT_SELECTORS", "QualityOptions", "analyze_selector", "kendall_tau_b",
           "parse_selector", "rankdata", "run_quality", "spearman"]
