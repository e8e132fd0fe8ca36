"""Probes: one distribution over outputs after every block of an anchor (KLAS step 0).

``logit_lens`` (default for LLMs; no training), ``tuned_lens`` (per-block affine translators trained to the
anchor's final distribution) and ``probenet`` (the paper's vision probes: a linear classifier per block on
frozen pooled features). All share :class:`~hf_klas.probes.base.Probe`; see its module docstring for the
token conventions and the saved-folder layout.
"""

from __future__ import annotations

from dataclasses import fields, replace

from ..errors import CalibrationError, HfKlasError
from ..identity import model_identity as anchor_identity
from ..identity import weights_digest
from .base import PROBES, Probe, ProbeConfig
from .logit_lens import LogitLens, LogitLensConfig
from .probenet import ProbeNet, ProbeNetConfig
from .tuned_lens import TunedLens, TunedLensConfig


def probe_class(name: str) -> type[Probe]:
    if name not in PROBES:
        raise HfKlasError(f"Unknown probe {name!r}.", f"Use one of {sorted(PROBES)}.")
    return PROBES[name]


def build_probe(name: str, model, batches: list[dict] | None = None, config: ProbeConfig | None = None,
                progress: bool = True, **options) -> Probe:
    """Build probe ``name`` for ``model`` and train it on ``batches`` when it is a trained probe.

    ``options`` override fields of the probe's config dataclass (e.g. ``max_steps=20``); unknown ones fail.
    """
    cls = probe_class(name)
    config = config if config is not None else cls.config_class()
    known = {f.name for f in fields(cls.config_class)}
    bad = sorted(set(options) - known)
    if bad:
        raise HfKlasError(f"{name} probes have no option(s) {bad}.", f"Known options: {sorted(known)}.")
    if options:
        config = replace(config, **options)
    probe = cls(model, config)
    if cls.trainable:
        if not batches:
            raise CalibrationError(f"The {name} probe must be trained and no calibration batches were given.",
                                   "Pass calibration data, or use probe='logit_lens' (no training).")
        probe.fit_stats = probe.fit(batches, progress=progress)
    return probe


def load_probe(directory, anchor) -> Probe:
    """Load any saved probe for ``anchor`` (refuses another anchor with ProbeMismatchError)."""
    return Probe.load(directory, anchor)


__all__ = [
    "PROBES", "Probe", "ProbeConfig", "LogitLens", "LogitLensConfig", "TunedLens", "TunedLensConfig",
    "ProbeNet", "ProbeNetConfig", "anchor_identity", "weights_digest", "build_probe", "load_probe", "probe_class",
]
