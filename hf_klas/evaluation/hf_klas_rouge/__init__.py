"""Local ``evaluate`` metric folder: ``evaluate.load(hf_klas.evaluation.ROUGE_METRIC_DIR)`` works offline.

This ``__init__`` only makes setuptools ship the folder with the package; ``evaluate`` loads
``hf_klas_rouge.py`` from here by path.
"""
