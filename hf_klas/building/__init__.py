"""Building models from anchors, in one room: stitched models (:class:`StitchedModel`, :func:`build_stitched`) and
stitchable ones (:func:`build_stitchable`), their anchors' tensors read lazily and their stitches fitted by streamed
least squares. Training (``hf_klas.training``) only trains what is built here."""

from .stitchable import (
    STITCH_INITS,
    STITCHABLE_CLASSES,
    build_stitchable,
    fit_stitches,
    init_stitches_identity,
    load_anchor_parts,
)
from .stitched import StitchedModel, build_stitched, fit_stitch
from .weights import copy_tensors, load_anchor_weights

__all__ = ["STITCH_INITS", "STITCHABLE_CLASSES", "StitchedModel", "build_stitchable", "build_stitched", "copy_tensors",
           "fit_stitch", "fit_stitches", "init_stitches_identity", "load_anchor_parts", "load_anchor_weights"]
