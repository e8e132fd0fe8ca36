"""What a metric is to hf_klas: a name, the task it applies to, its direction, what it needs from the model and
the data, and how to compute it on a loaded model and dataset. Every metric registers itself by subclassing
:class:`Metric` (as probes and selectors do); ``hf-klas evaluate``, ``hf-klas pareto`` and the studies read
:data:`METRICS`, so a new metric is one module in this package plus its test."""

from __future__ import annotations

from typing import ClassVar

from ...errors import DataError

__all__ = ["METRICS", "Metric", "check_columns"]

#: Every metric by name (filled by :class:`Metric` subclasses as their modules are imported).
METRICS: dict[str, type[Metric]] = {}


class Metric:
    """Subclasses set the class attributes and implement :meth:`compute`.

    ``needs``: what the metric asks of the model and data, shown in ``--help`` and checked before any model
    runs -- ``"logits"`` (one forward), ``"generation"`` (greedy decoding: a tokenizer and prompts), ``"labels"``
    (a label column). ``auto_priority``: with ``metric="auto"`` the applicable metric of the model's task with the
    lowest priority whose :meth:`applies` holds is used (None: never chosen automatically)."""

    name: ClassVar[str] = "base"
    task: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()
    auto_priority: ClassVar[int | None] = None
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            METRICS[cls.name] = cls

    @classmethod
    def applies(cls, columns: list[str], opts) -> bool:
        """Whether the data has what :meth:`compute` reads (only consulted by ``metric="auto"``)."""
        return True

    @classmethod
    def compute(cls, model, preprocessor, ds, opts) -> dict:  # pragma: no cover - abstract
        """``{"value": float, ...extra numbers}`` of ``model`` on ``ds`` (``opts``: the evaluation options:
        columns, batch size, lengths, progress)."""
        raise NotImplementedError


def check_columns(ds, wanted: list[str], what: str) -> None:
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(f"{what} needs column(s) {missing}; the dataset has {ds.column_names}.",
                        "Pass --text_column / --prompt_column / --target_column naming your columns.")
