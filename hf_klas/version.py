"""Single source of the package version (also written into every stitched config)."""

__version__ = "0.1.0"
