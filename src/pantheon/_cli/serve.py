"""``pantheon serve`` and ``pantheon dump``: a teacher from the command line.

The program is ``package.module:callable`` (a Python callable ``program(**feeds)``, or a
``torch.nn.Module`` instance / zero-argument factory), a TorchScript ``.pt`` file or an
``.onnx`` file; the reader is ``package.module:callable``, a reader creator as in the seed.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._errors import ConfigError, PantheonError

__all__ = ["load_object", "parse_schema", "run_teacher"]

READER_KINDS = ("batch_generator", "sample_generator", "sample_list_generator")


def load_object(spec: str, what: str) -> Any:
    """Import ``package.module:attribute`` (the module must be importable from here)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} must look like 'package.module:name', got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` does
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for {what}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (for {what})")
        obj = getattr(obj, part)
    return obj


def load_program(spec: str) -> Any:
    """A program from a file (``.onnx``, ``.pt``) or ``package.module:callable``."""
    if spec.endswith(".onnx"):
        if not Path(spec).is_file():
            raise ConfigError(f"ONNX file {spec!r} does not exist")
        return spec
    if spec.endswith((".pt", ".pth")):
        if not Path(spec).is_file():
            raise ConfigError(f"TorchScript file {spec!r} does not exist")
        return spec
    obj = load_object(spec, "the program")
    if isinstance(obj, type):  # a class: build it (e.g. a torch.nn.Module with no arguments)
        obj = obj()
    return obj


def parse_schema(items: tuple[str, ...]) -> dict[str, str]:
    """``("logits=output", "x")`` -> ``{"logits": "output", "x": "x"}``."""
    schema: dict[str, str] = {}
    for item in items:
        name, _, source = item.partition("=")
        if not name:
            raise ConfigError(f"--schema entries look like NAME=SOURCE or NAME, got {item!r}")
        schema[name] = source or name
    return schema


def _exe(value: str | None) -> Any:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    devices = [d.strip() for d in value.split(",") if d.strip()]
    return devices if len(devices) > 1 else devices[0]


def run_teacher(
    *,
    program: str,
    reader: str | None,
    reader_kind: str,
    feeds: tuple[str, ...],
    schema: tuple[str, ...],
    batch_size: int | None,
    port: int | None,
    out: Path | None,
    host: str,
    token: str | None,
    times: int,
    exe: str | None,
    fp16: bool,
    compression: str | None,
    topk: tuple[str, ...],
    timeout: float,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Build a Teacher and run the knowledge service; returns the teacher's counters."""
    from .._codecs import TopK
    from .._teacher import Teacher

    if (port is None) == (out is None):
        raise click.UsageError("give exactly one of --port (online) or --out (offline)")
    if not feeds:
        raise click.UsageError(
            "give the reader's input names with --feed (once per input, in order)"
        )
    codecs: dict[str, Any] = {}
    for item in topk:
        key, _, k = item.partition("=")
        if not key or not k.isdigit():
            raise click.UsageError(f"--topk looks like KEY=K (e.g. logits=20), got {item!r}")
        codecs[key] = TopK(int(k))
    reader_config: dict[str, Any] | None = None
    if reader is not None:
        reader_config = {reader_kind: load_object(reader, "the reader")}
        if reader_kind == "sample_generator":
            if batch_size is None:
                raise click.UsageError("--reader-kind sample_generator needs --batch-size")
            reader_config.update(batch_size=batch_size, drop_last=False)
    teacher = Teacher(
        out_path=out,
        out_port=port,
        host=host,
        token=token,
        compression=compression,
        use_fp16=fp16,
        codecs=codecs,
        timeout=timeout,
    )
    with teacher:
        if port is not None:
            echo(f"teacher listening on {teacher.address}")
        teacher.start()
        teacher.start_knowledge_service(
            feed_list=list(feeds),
            schema=parse_schema(schema) or {"output": "output"},
            program=load_program(program),
            reader_config=reader_config,
            exe=_exe(exe),
            times=times,
            progress=True,
        )
        return teacher.stats()


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("program"),
        click.option(
            "--reader",
            help="The data: package.module:callable returning a fresh iterator "
            "(a reader creator, as in the seed). Omit to answer queries only (online).",
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
            help="Knowledge to serve: NAME taken from the program output or feed SOURCE "
            "(repeat; default: output=output).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=None,
            help="Samples per batch for --reader-kind sample_generator.",
        ),
        click.option(
            "--times",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Online: rounds (passes over the reader) to serve.",
        ),
        click.option(
            "--exe",
            default=None,
            metavar="DEVICES",
            help="Where to predict: cpu, cuda:0, a comma-separated list of devices, or a "
            "number of CPU workers (default: one CPU worker).",
        ),
        click.option("--fp16", is_flag=True, help="Send / store float knowledge as float16."),
        click.option(
            "--topk",
            multiple=True,
            metavar="KEY=K",
            help="Keep only the K largest entries of KEY (e.g. logits=20).",
        ),
        click.option(
            "--host",
            default="127.0.0.1",
            show_default=True,
            help="Online: interface to listen on (anything but loopback needs a token).",
        ),
        click.option(
            "--token",
            envvar="PANTHEON_TOKEN",
            default=None,
            help="Shared secret students must know (default: $PANTHEON_TOKEN).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=300.0,
            show_default=True,
            help="Seconds to wait for a student.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run(echo: Callable[[str], None], **kwargs: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or kill: close cleanly
        signal.signal(sig, signal.default_int_handler)
    try:
        stats = run_teacher(echo=echo, **kwargs)
    except KeyboardInterrupt:
        echo("interrupted: the teacher closed what it had written (files stay readable)")
        raise SystemExit(130) from None
    except ConfigError as exc:  # bad arguments: usage error, exit code 2
        raise click.UsageError(str(exc)) from exc
    except PantheonError as exc:
        raise click.ClickException(str(exc)) from exc
    echo(
        f"done: {stats.get('samples', 0)} samples in {stats.get('batches', 0)} batches"
        + (
            f", {stats['bytes'] / max(1, stats.get('samples', 0)):.1f} bytes per sample"
            if stats.get("bytes")
            else ""
        )
    )


def register(main: click.Group) -> None:
    """Add ``serve`` and ``dump`` to the ``pantheon`` command group."""

    @main.command()
    @_options
    @click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve online on this TCP port (0: any free port, printed).",
    )
    @click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=None,
        help="Dump to this knowledge file instead (offline).",
    )
    @click.option(
        "--compression",
        type=click.Choice(["lz4", "zstd"]),
        default=None,
        help="Offline: compress the file.",
    )
    def serve(**kwargs: Any) -> None:
        """Run a teacher model over a reader and serve its knowledge (online) or dump it.

        PROGRAM is package.module:callable (called as program(**feeds)), a torch.nn.Module
        class or instance given the same way, a TorchScript .pt file or an .onnx file.

        \b
        Example (online, one round, port picked for you):
          pantheon serve mymodels:teacher --reader mydata:batches --feed x --schema logits=output --port 0
        """
        _run(click.echo, **kwargs)

    @main.command()
    @_options
    @click.option(
        "--out", type=click.Path(path_type=Path), required=True, help="The knowledge file to write."
    )
    @click.option(
        "--compression", type=click.Choice(["lz4", "zstd"]), default=None, help="Compress the file."
    )
    def dump(**kwargs: Any) -> None:
        """Run a teacher model over a reader and dump its knowledge to a file (serve --out).

        \b
        Example:
          pantheon dump mymodels:teacher --reader mydata:batches --feed x --schema logits=output --out k.arrow
        """
        kwargs["port"] = None
        _run(click.echo, **kwargs)
