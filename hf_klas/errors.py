"""Errors that name the cause and the fix.

Every user-facing failure in hf_klas raises a subclass of :class:`HfKlasError`, built from a *cause* and a
*fix* so the message always tells the user what to do next. They subclass ``ValueError`` so code that
already catches transformers' configuration errors keeps working.
"""

from __future__ import annotations


class HfKlasError(ValueError):
    """Base error: ``str(err)`` is ``"<cause>\\nHow to fix: <fix>"``."""

    def __init__(self, cause: str, fix: str):
        self.cause = cause
        self.fix = fix
        super().__init__(f"{cause}\nHow to fix: {fix}")


class UnknownFamilyError(HfKlasError):
    """The anchor's architecture has no entry in the family registry."""


class IncompatibleAnchorsError(HfKlasError):
    """Front and back anchors cannot be stitched (tasks, vocabularies, token layouts differ)."""


class StitchPointError(HfKlasError):
    """A stitch configuration (front blocks, back start) is out of range or runs no back block."""


class BudgetError(HfKlasError):
    """A FLOPs budget that no configuration can meet."""


class CalibrationError(HfKlasError):
    """Calibration data that is empty, malformed or in an unsupported form."""


class ProbeMismatchError(HfKlasError):
    """Saved probes were trained on a different anchor than the one given."""


class NumericalError(HfKlasError):
    """NaN/inf in anchor outputs or probe distributions."""


class DataError(HfKlasError):
    """Datasets without the required column, labels outside the model's classes, and similar."""


class CheckpointError(HfKlasError):
    """A training checkpoint that does not belong to the run being resumed."""


class VersionError(HfKlasError):
    """A file written by a newer hf_klas than the one reading it."""


class UnsupportedTransformersError(HfKlasError):
    """The installed transformers has an interface hf_klas does not know (e.g. a renamed cache argument)."""
