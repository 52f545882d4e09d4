"""``pantheon serve`` and ``pantheon dump``: a teacher from the command line.

The program is ``package.module:callable`` (a Python callable ``program(**feeds)``, or a
``torch.nn.Module`` class, built without arguments, or instance; ``--weights`` loads a torch
checkpoint into it), a TorchScript ``.pt`` file or an ``.onnx`` file; the reader is
``package.module:callable``, a reader creator as in the seed.

Exit status: 0 on success; 2 when the command line is wrong (the message names the option);
1 when the teacher fails while running (the message says why, no usage text); 130 on Ctrl-C or
SIGTERM, after the teacher closed what it wrote.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .._errors import ConfigError, PantheonError
from .errors import run_error, usage_error
from .inspect_file import inspect_report, size_line
from .options import common_options, offline_options, online_options, refused_online_options

__all__ = ["load_object", "load_program", "parse_schema", "register", "run_teacher"]


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
    """A program from a file (``.onnx``, ``.pt``) or ``package.module:callable``.

    A class is built without arguments (e.g. a ``torch.nn.Module``).
    """
    if spec.endswith((".onnx", ".pt", ".pth")):
        kind = "ONNX" if spec.endswith(".onnx") else "TorchScript"
        if not Path(spec).is_file():
            raise ConfigError(f"{kind} file {spec!r} does not exist")
        return spec
    obj = load_object(spec, "the program")
    if isinstance(obj, type):  # a class: build it (e.g. a torch.nn.Module with no arguments)
        try:
            obj = obj()
        except TypeError as exc:
            raise ConfigError(
                f"cannot build the program class {spec!r} without arguments: {exc}; give a "
                "class whose constructor needs no arguments, or a module-level instance"
            ) from None
    return obj


def _program(spec: str, weights: Path | None) -> Any:
    """:func:`load_program`, then ``--weights`` loaded into it; errors name the culprit."""
    try:
        program = load_program(spec)
    except ConfigError as exc:
        raise usage_error(exc, "'PROGRAM'") from None
    if weights is None:
        return program
    from .weights import load_weights

    if isinstance(program, str):
        raise click.BadParameter(
            f"applies to a torch.nn.Module class or instance given as package.module:name; "
            f"the file {program!r} holds its weights already",
            param_hint="'--weights'",
        )
    try:
        return load_weights(program, weights)
    except ConfigError as exc:
        raise usage_error(exc, "'--weights'") from None


def parse_schema(items: tuple[str, ...]) -> dict[str, str]:
    """``("logits=output", "x")`` -> ``{"logits": "output", "x": "x"}``."""
    schema: dict[str, str] = {}
    for item in items:
        name, _, source = item.partition("=")
        if not name:
            raise click.BadParameter(
                f"entries look like NAME=SOURCE or NAME, got {item!r}", param_hint="'--schema'"
            )
        schema[name] = source or name
    return schema


def _exe(value: str | None) -> Any:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    devices = [d.strip() for d in value.split(",") if d.strip()]
    if not devices:
        raise click.BadParameter(
            f"expected devices or a number, got {value!r}", param_hint="'--exe'"
        )
    return devices if len(devices) > 1 else devices[0]


def _codecs(topk: tuple[str, ...]) -> dict[str, Any]:
    from .._codecs import TopK

    codecs: dict[str, Any] = {}
    for item in topk:
        key, _, k = item.partition("=")
        if not key or not k.isdigit() or int(k) < 1:
            raise click.BadParameter(
                f"entries look like KEY=K with K >= 1 (e.g. logits=20), got {item!r}",
                param_hint="'--topk'",
            )
        codecs[key] = TopK(int(k))
    return codecs


def _reader_config(reader: str | None, kind: str, batch_size: int | None) -> Any:
    if batch_size is not None and kind != "sample_generator":
        raise click.BadParameter(
            f"applies to --reader-kind sample_generator (samples grouped into batches); a "
            f"{kind} yields its own batches",
            param_hint="'--batch-size'",
        )
    if reader is None:
        return None
    try:
        config: dict[str, Any] = {kind: load_object(reader, "the reader")}
    except ConfigError as exc:
        raise usage_error(exc, "'--reader'") from None
    if kind == "sample_generator":
        if batch_size is None:
            raise click.UsageError("--reader-kind sample_generator needs --batch-size")
        config.update(batch_size=batch_size, drop_last=False)
    return config


def _check(port: int | None, out: Path | None, feeds: tuple[str, ...], **given: Any) -> None:
    """Refuse what does not fit together, before anything runs."""
    if (port is None) == (out is None):
        raise click.UsageError("give exactly one of --port (online) or --out (offline)")
    if not feeds:
        raise click.UsageError(
            "give the reader's input names with --feed (once per input, in order)"
        )
    if out is not None and given["reader"] is None:
        raise click.UsageError(
            "an offline teacher (--out) needs --reader: without one a teacher only answers "
            "queries, online (--port)"
        )
    if port is not None and given["compression"] is not None:
        raise click.UsageError("--compression applies to a knowledge file (--out), not to --port")


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
    host: str = "127.0.0.1",
    token: str | None = None,
    times: int = 1,
    exe: str | None = None,
    fp16: bool = False,
    compression: str | None = None,
    topk: tuple[str, ...] = (),
    timeout: float = 300.0,
    weights: Path | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] = click.echo,
) -> dict[str, Any]:
    """Build a Teacher and run the knowledge service; returns the teacher's counters.

    Raises:
        click.UsageError: the command line is wrong (exit status 2), the option named.
        click.ClickException: the teacher failed while running (exit status 1).
    """
    from .._service import ServiceSpec
    from .._teacher import Teacher

    _check(port, out, feeds, reader=reader, compression=compression)
    codecs = _codecs(topk)
    reader_config = _reader_config(reader, reader_kind, batch_size)
    service: dict[str, Any] = {
        "program": _program(program, weights),
        "feed_list": list(feeds),
        "schema": parse_schema(schema) or {"output": "output"},
        "exe": _exe(exe),
        "times": times,
        "progress": progress,
        "reader_config": reader_config,
    }
    try:  # what can be checked before anything runs is a usage error
        ServiceSpec(
            tuple(service["feed_list"]), service["schema"], service["program"],
            reader_config, service["exe"],
        )  # fmt: skip
    except ConfigError as exc:
        raise usage_error(exc) from None
    try:
        teacher = Teacher(
            out_path=out, out_port=port, host=host, token=token, compression=compression,
            use_fp16=fp16, codecs=codecs, timeout=timeout,
        )  # fmt: skip
    except ConfigError as exc:
        raise usage_error(exc) from None
    try:
        with teacher:
            if port is not None:
                echo(f"teacher listening on {teacher.address}")
            teacher.start()
            teacher.start_knowledge_service(**service)
            return teacher.stats()
    except (PantheonError, OSError) as exc:
        raise run_error(exc) from None


def _run(echo: Callable[[str], None], **kwargs: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or kill: close cleanly
        signal.signal(sig, signal.default_int_handler)
    try:
        stats = run_teacher(echo=echo, **kwargs)
    except KeyboardInterrupt:
        echo("interrupted: the teacher closed what it had written (files stay readable)")
        raise SystemExit(130) from None
    out: Path | None = kwargs.get("out")
    if out is not None:  # the file's own figures, as `pantheon inspect` shows them
        try:
            echo(f"done: {size_line(inspect_report(out, stats=False))}")
        except PantheonError as exc:
            raise run_error(exc) from None
        return
    echo(
        f"done: {stats.get('samples', 0):,} samples in {stats.get('batches', 0):,} batches, "
        f"{stats.get('bytes', 0):,} bytes sent"
    )


def register(main: click.Group) -> None:
    """Add ``serve`` and ``dump`` to the ``pantheon`` command group."""

    @main.command()
    @common_options
    @online_options
    @offline_options(required=False)
    def serve(**kwargs: Any) -> None:
        """Run a teacher model over a reader and serve its knowledge online (or dump it).

        PROGRAM is package.module:callable (called as program(**feeds)), a torch.nn.Module
        class or instance given the same way (--weights loads a checkpoint into it), a
        TorchScript .pt file or an .onnx file. Omit --reader to answer queries only.

        \b
        Example (online, one round, port picked for you):
          pantheon serve mymodels:teacher --reader mydata:batches --feed x --schema logits=output --port 0
        """
        if kwargs["out"] is not None:
            ctx = click.get_current_context()
            for name in ("host", "times", "timeout"):
                if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
                    raise click.UsageError(
                        f"--{name} applies to an online teacher (--port), not to --out"
                    )
        _run(click.echo, **kwargs)

    @main.command()
    @common_options
    @offline_options(required=True)
    @refused_online_options
    def dump(**kwargs: Any) -> None:
        """Run a teacher model over a reader and dump its knowledge to a file.

        PROGRAM is package.module:callable (called as program(**feeds)), a torch.nn.Module
        class or instance given the same way (--weights loads a checkpoint into it), a
        TorchScript .pt file or an .onnx file. Prints the file's size as `pantheon inspect`
        does.

        \b
        Example:
          pantheon dump mymodels:teacher --reader mydata:batches --feed x --schema logits=output --out k.arrow
        """
        _run(click.echo, port=None, **kwargs)
