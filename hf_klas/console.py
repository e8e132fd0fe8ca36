"""What long commands (``hf-klas demo``, ``hf-klas quality``) print: one progress bar per stage and a summary.

Everything else the libraries underneath say -- transformers' "Loading weights" bars and warnings, the Trainer's
per-step loss dicts, datasets' map bars, Python warnings -- goes to a log file in the report folder instead of
the terminal. ``verbose=True`` leaves it all on the terminal as well.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import datasets
import transformers
from tqdm.auto import tqdm

LIBRARIES = ("transformers", "datasets", "peft", "accelerate", "hf_klas", "py.warnings")


@contextlib.contextmanager
def quiet_console(log_file: str | Path, verbose: bool = False):
    """Route library logs and warnings into ``log_file`` (and hide library progress bars) unless ``verbose``."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    hf_verbosity = transformers.logging.get_verbosity()
    logging.captureWarnings(True)
    try:
        for lg in loggers:
            lg.addHandler(handler)
            if not verbose:
                lg.setLevel(logging.INFO)
                lg.propagate = False
                for h in list(lg.handlers):
                    if h is not handler:
                        lg.removeHandler(h)
        if not verbose:
            transformers.logging.disable_progress_bar()
            datasets.disable_progress_bars()
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield handler
    finally:
        logging.captureWarnings(False)
        for lg, level, propagate, handlers in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
            for h in handlers:
                if h not in lg.handlers:
                    lg.addHandler(h)
        transformers.logging.set_verbosity(hf_verbosity)
        transformers.logging.enable_progress_bar()
        datasets.enable_progress_bars()
        handler.close()


def stage(total: int, desc: str, unit: str = "step"):
    """The one progress bar of a stage (goes to the terminal even when the libraries are quiet)."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
