"""The transformers range hf_klas claims is the range CI tests, written the same way everywhere."""

from __future__ import annotations

import re
from pathlib import Path

from hf_klas.version import TRANSFORMERS_NEWEST, TRANSFORMERS_OLDEST, TRANSFORMERS_RANGE, transformers_is_tested

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_pyproject_claims_exactly_the_tested_range():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"transformers{TRANSFORMERS_RANGE}"' in text


def test_constraint_files_pin_both_ends_and_every_runtime_dependency():
    newest, oldest = pins(ROOT / "constraints.txt"), pins(ROOT / "constraints-oldest.txt")
    assert newest["transformers"] == TRANSFORMERS_NEWEST and oldest["transformers"] == TRANSFORMERS_OLDEST
    declared = re.findall(r'^\s+"([A-Za-z0-9_-]+)[<>=]', (ROOT / "pyproject.toml").read_text(), re.M)
    for name in declared + ["tokenizers", "huggingface-hub", "pytest"]:
        name = name.lower().replace("_", "-")
        assert name in newest and name in oldest, f"{name} is not pinned in both constraint files"
    assert newest["torch"] == oldest["torch"] == "2.13.0"  # the CPU build; unpinned pulls CUDA wheels


def test_the_test_command_runs_the_oldest_set_too():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "constraints-oldest.txt" in script and "latest)" in script


def test_range_check():
    assert transformers_is_tested(TRANSFORMERS_OLDEST) and transformers_is_tested(TRANSFORMERS_NEWEST)
    assert not transformers_is_tested("4.57.0") and not transformers_is_tested("5.99.0")
