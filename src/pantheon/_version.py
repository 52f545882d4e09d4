"""The package version, in one place (the package root and the file writer read it here)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
