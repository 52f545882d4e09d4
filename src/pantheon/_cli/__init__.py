"""The ``pantheon`` command line (click): inspect, serve, dump, demo, bench."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
