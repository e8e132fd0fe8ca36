"""The LM study's intermediate results on disk, so an interrupted run resumes and two processes share the work.

The LM study is an hour of CPU in pieces (the training-free oracle, the selectors, one LoRA oracle per seed).
Each piece is written here as it grows -- every configuration as soon as it is measured -- under a directory
named by a hash of everything that decides the numbers (the LM options, the anchor, the library versions), so
a result is reused only by a run that would have computed the same thing. ``run_quality`` deletes the directory
once the report holding it all is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

__all__ = ["PartStore", "pair_key", "parse_pair_key"]


def pair_key(i: int, j: int) -> str:
    """``(i, j)`` as a JSON object key."""
    return f"{int(i)},{int(j)}"


def parse_pair_key(key: str) -> tuple[int, int]:
    i, j = key.split(",")
    return int(i), int(j)


class PartStore:
    """``<root>/<hash of key>/<part>.json``, written atomically (a killed process leaves the previous version)."""

    def __init__(self, root: str | Path, key: dict):
        text = json.dumps(key, sort_keys=True, default=str)
        self.key = key
        self.dir = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]

    def _path(self, part: str) -> Path:
        return self.dir / f"{part}.json"

    def load(self, part: str) -> dict | None:
        """The stored part, or None when there is none (or it was left half-written by an older format)."""
        path = self._path(part)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def save(self, part: str, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.is_file():  # what the hash stands for, for whoever finds the directory
            key_file.write_text(json.dumps(self.key, indent=1, sort_keys=True, default=str))
        tmp = self._path(part).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._path(part))

    def remove(self) -> None:
        """Delete this run's directory (and the root, if nothing else is left in it)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()
        except OSError:
            pass
