"""``python -m pantheon._cli``: the ``pantheon`` command without its console script."""

from __future__ import annotations

from .main import main

if __name__ == "__main__":
    main(prog_name="pantheon")
