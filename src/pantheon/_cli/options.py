"""The options of ``pantheon serve`` and ``pantheon dump``, grouped by where they apply.

``serve`` takes every group; ``dump`` takes the common and offline ones, and has the online
ones as hidden options that refuse any value with a message pointing at ``serve`` (so
``dump --help`` lists only what applies to dumping, and ``dump --port 0`` says why not).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = [
    "ONLINE_OPTIONS",
    "READER_KINDS",
    "common_options",
    "offline_options",
    "online_options",
    "refused_online_options",
]

READER_KINDS = ("batch_generator", "sample_generator", "sample_list_generator")

ONLINE_OPTIONS = ("port", "host", "token", "times", "timeout")
"""Parameter names of the options that apply only to an online teacher (``serve --port``)."""

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(options: list[Decorator]) -> Decorator:
    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return wrap


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """PROGRAM and the options both ``serve`` and ``dump`` take."""
    return _apply(
        [
            click.argument("program"),
            click.option(
                "--reader",
                help="The data: package.module:callable returning a fresh iterator "
                "(a reader creator, as in the seed).",
            ),
            click.option(
                "--reader-kind",
                type=click.Choice(READER_KINDS),
                default="batch_generator",
                show_default=True,
                help="What the reader yields.",
            ),
            click.option(
                "--feed",
                "feeds",
                multiple=True,
                metavar="NAME",
                help="Name of a reader field, in order (repeat for each).",
            ),
            click.option(
                "--schema",
                multiple=True,
                metavar="NAME[=SOURCE]",
                help="Knowledge to produce: NAME taken from the program output or feed SOURCE "
                "(repeat; default: output=output).",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=None,
                help="Samples per batch; only with --reader-kind sample_generator.",
            ),
            click.option(
                "--weights",
                type=click.Path(path_type=Path),
                default=None,
                help="A torch checkpoint (state dict) to load into PROGRAM, a torch.nn.Module "
                "class or instance; read with torch.load(weights_only=True), which builds "
                "tensors only.",
            ),
            click.option(
                "--exe",
                default=None,
                metavar="DEVICES",
                help="Where to predict: cpu, cuda:0, a comma-separated list of devices, or a "
                "number of CPU workers (default: one CPU worker).",
            ),
            click.option("--fp16", is_flag=True, help="Store / send float knowledge as float16."),
            click.option(
                "--topk",
                multiple=True,
                metavar="KEY=K",
                help="Keep only the K largest entries of KEY (e.g. logits=20).",
            ),
            click.option(
                "--progress/--no-progress",
                default=None,
                help="Show a progress bar on stderr (default: only when stderr is a terminal).",
            ),
        ]
    )(func)


def online_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of an online teacher (``serve``)."""
    return _apply(
        [
            click.option(
                "--port",
                type=click.IntRange(0, 65535),
                default=None,
                help="Serve online on this TCP port (0: any free port, printed).",
            ),
            click.option(
                "--host",
                default="127.0.0.1",
                show_default=True,
                help="Online: interface to listen on (anything but loopback needs --token).",
            ),
            click.option(
                "--token",
                envvar="PANTHEON_TOKEN",
                default=None,
                help="Online: shared secret students must know (default: $PANTHEON_TOKEN).",
            ),
            click.option(
                "--times",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Online: rounds (passes over the reader) to serve.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                default=300.0,
                show_default=True,
                help="Online: seconds any wait may last (for a student to connect, to read).",
            ),
        ]
    )(func)


def offline_options(*, required: bool) -> Decorator:
    """``--out`` (required for ``dump``, the alternative to ``--port`` for ``serve``) and
    ``--compression``."""
    out_help = (
        "The knowledge file to write."
        if required
        else "Dump to this knowledge file instead of serving (offline; `pantheon dump`)."
    )
    return _apply(
        [
            click.option(
                "--out", type=click.Path(path_type=Path), required=required, help=out_help
            ),
            click.option(
                "--compression",
                type=click.Choice(["lz4", "zstd"]),
                default=None,
                help="Offline: compress the file (default: none).",
            ),
        ]
    )


def _refuse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        flag = param.opts[0]
        raise click.UsageError(
            f"{flag} applies to an online teacher: `pantheon dump` writes the knowledge file "
            f"given by --out. To serve online, run `pantheon serve ... {flag} ...` instead.",
            ctx=ctx,
        )
    return value


def refused_online_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The online options as hidden ones that refuse any value (for ``dump``)."""
    return _apply(
        [
            click.option(f"--{name}", hidden=True, expose_value=False, callback=_refuse)
            for name in ONLINE_OPTIONS
        ]
    )(func)
