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


def _wait(student: Mapping[str, Any]) -> str:
    """What a student waits for, or what the teacher waits for from it."""
    if student.get("waiting"):
        return "gate"
    if int(student.get("credits", 0)) == 0 and int(student.get("round", -1)) >= 0:
        return "credits"
    return "-"


def throughput(
    status: Mapping[str, Any], previous: Mapping[str, Any] | None, seconds: float
) -> float:
    """Samples per second: since ``previous`` (``seconds`` earlier), else since the teacher
    started."""
    samples = float(status.get("stats", {}).get("samples", 0))
    if previous is not None and seconds > 0:
        before = float(previous.get("stats", {}).get("samples", 0))
        return max(0.0, samples - before) / seconds
    uptime = float(status.get("uptime_seconds", 0.0))
    return samples / uptime if uptime > 0 else 0.0


def render_status(
    status: Mapping[str, Any], previous: Mapping[str, Any] | None = None, seconds: float = 0.0
) -> Any:
    """A rich renderable of a teacher's status (``previous``: the answer ``seconds`` before,
    for the current throughput)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stats = status.get("stats", {})
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("teacher", str(status.get("address", "?")))
    head.add_row("program", str(status.get("program") or "-"))
    desc = status.get("desc") or {}
    codecs = status.get("codecs") or {}
    knowledge = ", ".join(
        f"{k} {v.get('dtype')}{v.get('shape')}"
        + (f" [{codecs[k].get('name')}]" if k in codecs else "")
        for k, v in desc.items()
    )
    head.add_row("knowledge", knowledge or "(not known yet)")
    mode = str(status.get("mode", "?"))
    if mode == "rounds":
        served = f"{status.get('rounds_served', 0)} of {status.get('times', '?')} (times)"
        head.add_row("rounds served", served)
    head.add_row("mode", mode)
    rate = throughput(status, previous, seconds)
    head.add_row(
        "sent",
        f"{stats.get('samples', 0)} samples, {stats.get('batches', 0)} batches, "
        f"{_bytes(float(stats.get('bytes', 0)))}; {rate:,.1f} samples/s",
    )
    if status.get("failure"):
        head.add_row("failure", Text(str(status["failure"]), style="bold red"))
    students = list(status.get("students") or [])
    table = Table(title=f"{len(students)} student(s) connected", title_justify="left")
    for name in ("group", "rank", "round", "position", "lag", "wait", "peer"):
        table.add_column(
            name, justify="right" if name in ("rank", "round", "position", "lag") else "left"
        )
    for s in students:
        rank = f"{s.get('rank')}/{s.get('world_size')}"
        table.add_row(
            str(s.get("group")),
            rank,
            str(s.get("round")),
            str(s.get("position")),
            str(s.get("lag")),
            _wait(s),
            str(s.get("peer")),
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
