"""``pantheon demo``: teachers and a student on real data, end to end, in about a minute."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["register"]


def register(main: click.Group) -> None:
    """Add ``demo`` to the ``pantheon`` command group."""

    @main.command()
    @click.option(
        "--out",
        "out_dir",
        type=click.Path(path_type=Path),
        default=Path("report"),
        show_default=True,
        help="Report folder (table, JSON, accuracy plot).",
    )
    @click.option(
        "--epochs",
        type=click.IntRange(min=1),
        default=None,
        help="Student epochs (default 30; 6 with --quick).",
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
    @click.option("--quick", is_flag=True, help="A small, fast run (distillation has little time).")
    @click.option(
        "--progress/--no-progress",
        default=None,
        help="Show progress bars on stderr (default: only when stderr is a terminal).",
    )
    def demo(
        out_dir: Path, epochs: int | None, seed: int, quick: bool, progress: bool | None
    ) -> None:
        """Distil two teachers into a small student on handwritten digits.

        Trains two teacher networks on scikit-learn's digits (shipped with the package, no
        download), serves one ONLINE from its own process over TCP and dumps the other
        OFFLINE to a knowledge file, then trains the same small student twice with the same
        seed: on the labels alone and distilled from both teachers' merged soft targets.
        Prints a table and writes it, with a plot of test accuracy per epoch, to --out.
        """
        try:
            from .demo import run_demo
        except ImportError as exc:
            raise click.ClickException(
                f"the demo needs its extra ({exc.name} is missing): pip install 'pantheon-kd[demo]'"
            ) from exc
        from .._errors import PantheonError

        try:
            result: Any = run_demo(
                out_dir,
                epochs=epochs,
                seed=seed,
                quick=quick,
                progress=sys.stderr.isatty() if progress is None else progress,
                echo=click.echo,
            )
        except PantheonError as exc:
            raise click.ClickException(str(exc)) from exc
        files = ", ".join(sorted(p.name for p in out_dir.glob("*.*")))
        click.echo(f"report written to {out_dir}/ ({files})")
        _ = result
