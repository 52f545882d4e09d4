"""The ``pantheon`` command line tool.

``pantheon`` is a :func:`click.group`; each subcommand is a small function that parses its
arguments and calls a helper that does the work (and that tests and other code can call).

    pantheon inspect PATH [--json] [--no-stats]
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._errors import PantheonError
from .._version import __version__
from .inspect_file import format_report, inspect_report

__all__ = ["format_report", "inspect_report", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pantheon")
def main() -> None:
    """Pantheon: knowledge distillation with teachers and students in separate processes.

    Teachers predict knowledge (logits, features, ...) and either stream it to a student
    over TCP or dump it to a knowledge file; the student reads, merges and re-batches it.
    Run `pantheon COMMAND --help` for the options of a command.
    """


# --------------------------------------------------------------------------- inspect


@main.command()
@click.argument("path", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@click.option(
    "--no-stats",
    is_flag=True,
    help="Skip the per-key min/max/mean (they read every value; slow on big files).",
)
def inspect(path: Path, as_json: bool, no_stats: bool) -> None:
    """Show what the knowledge file PATH holds.

    PATH is a knowledge file a teacher dumped (or a directory of its shards). Prints the
    description (name, shape, dtype, lod_level of every key), the numbers of samples and
    batches, bytes on disk and per sample (and per token for token knowledge), compression,
    codecs, the teacher's and the dataset's fingerprints, per key min/max/mean, stored bytes
    per token (or per sample), what a knowledge codec's values hold (logits, logprobs or
    samples) at which temperature T and the share of probability mass top-k entries keep,
    and whether the file was cut short (its teacher stopped before closing it) and where.
    Exits with status 1 if PATH is not a readable knowledge file.
    """
    try:
        report = inspect_report(path, stats=not no_stats)
    except PantheonError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_report(report))


def _register_commands() -> None:
    from . import bench, demo_cmd, serve, status_cmd

    demo_cmd.register(main)
    serve.register(main)
    bench.register(main)
    status_cmd.register(main)


_register_commands()

if __name__ == "__main__":
    main()
