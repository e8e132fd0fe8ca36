"""Single source of the package version (also written into every stitched config) and of the transformers
range CI tests. ``pyproject.toml`` and ``constraints*.txt`` must agree with it (a test checks)."""

__version__ = "0.2.0"

# Oldest and newest transformers CI runs the suite on (scripts/test.sh). Anything else is untested.
TRANSFORMERS_OLDEST = "5.0.0"
TRANSFORMERS_NEWEST = "5.24.0"
TRANSFORMERS_RANGE = f">={TRANSFORMERS_OLDEST},<={TRANSFORMERS_NEWEST}"


def transformers_is_tested(version: str) -> bool:
    """Whether ``version`` lies in the tested range (pre-releases and newer releases are untested)."""
    from packaging.version import Version

    return Version(TRANSFORMERS_OLDEST) <= Version(version) <= Version(TRANSFORMERS_NEWEST)
