"""``pantheon status ADDRESS``: what a running teacher is doing, asked over the wire.

The command authenticates like a student (the token of ``--token`` or ``PANTHEON_TOKEN``),
sends one STATUS message and prints the STATUS_INFO answer (fields in ``docs/protocol.md``)
with ``rich``: the teacher's program and knowledge, its counters and throughput, and one row
per connected student. ``--watch`` asks again every ``--interval`` seconds and redraws in
place; ``--json`` prints the answer itself (one object per line with ``--watch``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import click

from .._errors import PantheonError

__all__ = ["register", "render_status"]


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _num(x: Any) -> float:
    """A number from the teacher's answer (anything else counts as 0)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0


def _map(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _text(x: Any, limit: int = 200) -> Any:
    """A cell of the view: the value as plain text (never rich markup), bounded."""
    from rich.text import Text

    value = str(x)
    return Text(value if len(value) <= limit else value[: limit - 3] + "...")


def _wait(student: Mapping[str, Any]) -> str:
    """What a student waits for, or what the teacher waits for from it."""
    if student.get("waiting") is True:
        return "gate"
    if _num(student.get("round")) < 0:
        return "-"
    if _num(student.get("credits")) == 0:
        return "credits"
    window = _num(student.get("window"))
    if window > 0 and _num(student.get("in_flight_bytes")) >= window:
        return "window"
    return "-"


def throughput(
    status: Mapping[str, Any], previous: Mapping[str, Any] | None, seconds: float
) -> float:
    """Samples per second: since ``previous`` (``seconds`` earlier), else since the teacher
    started."""
    samples = _num(_map(status.get("stats")).get("samples"))
    if previous is not None and seconds > 0:
        before = _num(_map(previous.get("stats")).get("samples"))
        return max(0.0, samples - before) / seconds
    uptime = _num(status.get("uptime_seconds"))
    return samples / uptime if uptime > 0 else 0.0


def _knowledge(status: Mapping[str, Any]) -> str:
    codecs = _map(status.get("codecs"))
    parts = []
    for key, field in _map(status.get("desc")).items():
        f = _map(field)
        codec = f" ({_map(codecs.get(key)).get('name')})" if key in codecs else ""
        parts.append(f"{key} {f.get('dtype')}{f.get('shape')}{codec}")
    return ", ".join(parts)


def render_status(
    status: Mapping[str, Any], previous: Mapping[str, Any] | None = None, seconds: float = 0.0
) -> Any:
    """A rich renderable of a teacher's status (``previous``: the answer ``seconds`` before,
    for the current throughput). Every value is shown as plain text: an odd answer cannot
    inject markup or break the view."""
    from rich.console import Group
    from rich.table import Table

    stats = _map(status.get("stats"))
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("teacher", _text(status.get("address", "?")))
    head.add_row("program", _text(status.get("program") or "-"))
    head.add_row("knowledge", _text(_knowledge(status) or "(not known yet)", 1000))
    mode = str(status.get("mode", "?"))
    if mode == "rounds":
        served = f"{_num(status.get('rounds_served')):.0f} of {_num(status.get('times')):.0f}"
        head.add_row("rounds served", _text(f"{served} (times)"))
    head.add_row("mode", _text(mode))
    rate = throughput(status, previous, seconds)
    head.add_row(
        "sent",
        f"{_num(stats.get('samples')):.0f} samples, {_num(stats.get('batches')):.0f} batches, "
        f"{_bytes(_num(stats.get('bytes')))}; {rate:,.1f} samples/s",
    )
    if status.get("failure"):
        failure = _text(status["failure"], 1000)
        failure.stylize("bold red")
        head.add_row("failure", failure)
    students = [_map(x) for x in status.get("students") or [] if isinstance(x, Mapping)]
    table = Table(title=f"{len(students)} student(s) connected", title_justify="left")
    for name in ("group", "rank", "round", "position", "lag", "wait", "peer"):
        table.add_column(
            name, justify="right" if name in ("rank", "round", "position", "lag") else "left"
        )
    for st in students:
        table.add_row(
            _text(st.get("group")),
            _text(f"{st.get('rank')}/{st.get('world_size')}"),
            *(_text(st.get(k)) for k in ("round", "position", "lag")),
            _wait(st),
            _text(st.get("peer")),
        )
    return Group(head, table)


def register(main: click.Group) -> None:
    """Add ``status`` to the ``pantheon`` command group."""

    @main.command()
    @click.argument("address")
    @click.option(
        "--token",
        default=None,
        help="The teacher's shared secret (default: the PANTHEON_TOKEN environment variable).",
    )
    @click.option("--watch", is_flag=True, help="Ask again every --interval seconds, in place.")
    @click.option(
        "--interval",
        type=click.FloatRange(min=0.1),
        default=2.0,
        show_default=True,
        help="Seconds between two answers with --watch.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the teacher's answer as JSON.")
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        help="Seconds to wait for the teacher's answer.",
    )
    def status(
        address: str,
        token: str | None,
        watch: bool,
        interval: float,
        as_json: bool,
        timeout: float,
    ) -> None:
        """Show what the teacher at ADDRESS (host:port) is doing: its program and knowledge,
        rounds served, throughput, and every connected student (group, rank, round,
        position, lag behind the teacher, what it waits for).

        Exits with status 1 if the teacher cannot be reached or refuses (a wrong token).
        """
        from .._online import fetch_status

        def ask() -> dict[str, Any]:
            try:
                return fetch_status(address, token=token, timeout=timeout)
            except PantheonError as exc:
                raise click.ClickException(str(exc)) from None

        if not watch:
            answer = ask()
            if as_json:
                click.echo(json.dumps(answer, default=str))
            else:
                from rich.console import Console

                Console().print(render_status(answer))
            return
        _watch(ask, interval, as_json)


def _watch(ask: Any, interval: float, as_json: bool) -> None:
    """Every ``interval`` seconds until Ctrl-C: redraw the status in place on a terminal
    (elsewhere print one view after the other; with ``as_json`` one JSON object per line); a
    teacher that cannot be reached is shown as such and asked again."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    previous: dict[str, Any] | None = None
    last = time.monotonic()
    try:
        if as_json:
            while True:
                try:
                    click.echo(json.dumps(ask(), default=str))
                except click.ClickException as exc:
                    click.echo(json.dumps({"error": exc.message}))
                time.sleep(interval)
        console = Console()
        with Live(console=console, auto_refresh=False) as live:
            while True:
                now = time.monotonic()
                try:
                    answer = ask()
                except click.ClickException as exc:
                    view: Any = Text(f"unreachable: {exc.message}", style="red")
                    previous = None
                else:
                    view = render_status(answer, previous, now - last)
                    previous, last = answer, now
                if console.is_terminal:
                    live.update(view, refresh=True)
                else:  # a pipe or a file: one view after the other
                    console.print(view)
                time.sleep(interval)
    except KeyboardInterrupt:
        return
