"""ROUGE as an ``evaluate`` metric that needs no network.

``evaluate.load("rouge")`` downloads its script from the Hub, so it fails on an offline machine. This module
re-implements the canonical Hub ``rouge`` metric on top of ``rouge_score`` with the same inputs, options and
outputs (rouge1/rouge2/rougeL/rougeLsum; the bootstrap *mid* F-measure when aggregating, per-example
F-measure lists otherwise; rougeLsum splits summaries on ``"\\n"``), so numbers are comparable with papers that
used the Hub metric. Use :func:`load_rouge`, or ``evaluate.load(ROUGE_METRIC_DIR)`` for code that insists on
``evaluate.load``.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import evaluate
from rouge_score import rouge_scorer, scoring

from ..errors import DataError

__all__ = ["Rouge", "load_rouge", "ROUGE_METRIC_DIR"]

#: Local metric folder accepted by ``evaluate.load`` offline (its script imports :class:`Rouge` from here).
ROUGE_METRIC_DIR = str(Path(__file__).resolve().parent / "hf_klas_rouge")

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
ROUGE (Recall-Oriented Understudy for Gisting Evaluation), computed with Google Research's rouge-score package.
Offline drop-in for the Hub `rouge` metric of `evaluate`: same arguments, same outputs. Case-insensitive.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted strings.
    references: list of reference strings, or list of lists of strings (several references per prediction;
        the best-matching reference is scored, as ``rouge_score``'s ``score_multi``).
    rouge_types: list of types, default ``["rouge1", "rouge2", "rougeL", "rougeLsum"]``; ``rouge{n}`` for
        n-grams, ``rougeL`` for longest common subsequence, ``rougeLsum`` for summary-level LCS over lines
        split on ``"\\n"``.
    use_aggregator: if True, return the bootstrap (1000 resamples, 95% CI) *mid* F-measure per type;
        otherwise a list of per-example F-measures per type.
    use_stemmer: use the Porter stemmer to strip word suffixes.
    tokenizer: optional callable ``str -> list[str]`` replacing rouge_score's default tokenizer.
Returns:
    dict with one entry per rouge type (float, or list of floats when ``use_aggregator=False``).
Examples:
    >>> rouge = load_rouge()
    >>> rouge.compute(predictions=["hello there"], references=["hello there"])
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0, 'rougeLsum': 1.0}
"""


class _CallableTokenizer:
    """Adapts a plain callable to the ``.tokenize`` interface rouge_score expects."""

    def __init__(self, fn):
        self.fn = fn

    def tokenize(self, text):
        return self.fn(text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    """Offline ``rouge``; the class name keeps ``metric.name == "rouge"`` like the Hub metric."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Same two accepted input layouts as the Hub metric: several references, or one.
            features=[
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                }),
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://en.wikipedia.org/wiki/ROUGE_(metric)"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False,
                 tokenizer=None):
        if len(predictions) == 0:
            raise DataError("ROUGE got no predictions.", "Pass at least one prediction/reference pair.")
        if rouge_types is None:
            rouge_types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        multi_ref = isinstance(references[0], (list, tuple))
        if tokenizer is not None:
            tokenizer = _CallableTokenizer(tokenizer)
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer, tokenizer=tokenizer)
        scores = [scorer.score_multi(ref, pred) if multi_ref else scorer.score(ref, pred)
                  for ref, pred in zip(references, predictions)]
        if not use_aggregator:
            return {key: [s[key].fmeasure for s in scores] for key in scores[0]}
        aggregator = scoring.BootstrapAggregator()
        for s in scores:
            aggregator.add_scores(s)
        result = aggregator.aggregate()
        return {key: float(value.mid.fmeasure) for key, value in result.items()}


def load_rouge(**kwargs) -> Rouge:
    """The offline ROUGE metric instance; kwargs go to ``evaluate.Metric`` (as with ``evaluate.load``).

    The aggregated score is a bootstrap median, so it depends on a random seed. As for every ``evaluate``
    metric, ``compute`` runs under ``temp_seed(self.seed)`` (global NumPy RNG restored afterwards) with the
    seed drawn from NumPy's global state when the instance is created; pass ``seed=`` here (or to
    ``evaluate.load(ROUGE_METRIC_DIR, seed=...)``) to make reported numbers reproducible across runs.
    """
    return Rouge(**kwargs)
