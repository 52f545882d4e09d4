"""The session messages of the online protocol, validated at the edge.

Every header that arrives from a peer goes through :func:`parse` before any state machine
sees it: a field that is missing, of the wrong type or out of range is a
:class:`~pantheon.ProtocolError` naming the message, the field, what was expected and what
came. What comes out are small frozen events (:class:`Subscribe`, :class:`Credit`, ...), and
:func:`header` builds the header of an event to send. ``docs/protocol.md`` lists the same
fields; unknown header keys are ignored (newer peers may add some).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, KnowledgeError, ProtocolError
from .._knowledge import Description, check_desc
from .._util import check_int
from .._wire import MsgType

__all__ = [
    "MAX_CREDITS",
    "MAX_ID",
    "MAX_WINDOW",
    "NO_QUERIES",
    "NO_ROUNDS",
    "REPLACED",
    "Bye",
    "Credit",
    "Data",
    "Desc",
    "EndRound",
    "ErrorCode",
    "Event",
    "Fail",
    "Hello",
    "Query",
    "RoundDone",
    "StatusRequest",
    "Subscribe",
    "check_window",
    "header",
    "parse",
    "parse_hello",
]

MAX_ID = 2**62
"""Largest round, sample, subscription or query number a peer may name."""
MAX_CREDITS = 1 << 16
"""Most DATA messages a student may grant at once."""
MAX_WINDOW = 1 << 40
"""The largest byte window a SUBSCRIBE may ask for (1 TiB)."""


def check_window(window_bytes: Any) -> int:
    """A student's ``window_bytes`` as SUBSCRIBE's ``window`` (None: 0, no byte bound).

    Raises:
        ConfigError: not an integer in 1 .. :data:`MAX_WINDOW`.
    """
    if window_bytes is None:
        return 0
    window = check_int("window_bytes", window_bytes, unit="bytes")
    if window > MAX_WINDOW:
        raise ConfigError(
            f"window_bytes must be at most {MAX_WINDOW} (1 TiB), got {window}; pass None for "
            "no byte bound"
        )
    return window


class ErrorCode:
    """Values of ERROR's ``code``: why a teacher refuses or stops."""

    REPLACED = "replaced"  # a newer student of the same (group, rank) took over
    FULL = "full"  # max_students consumers are connected
    ROUNDS = "rounds"  # a round the teacher does not serve
    FAILED = "failed"  # the teacher's reader or program failed
    BAD_REQUEST = "bad_request"  # the request cannot be served (e.g. a query to a reader)
    GATE = "gate"  # the groups the teacher waits for did not all come


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Student -> teacher: stream round ``round`` from global sample ``start``."""

    sub: int
    round: int
    start: int
    credits: int
    window: int = 0  # bytes of knowledge in flight at most (0: credits alone bound it)


@dataclass(frozen=True, slots=True)
class Credit:
    """Student -> teacher: ``n`` more DATA messages of subscription ``sub`` may be sent."""

    sub: int
    n: int


@dataclass(frozen=True, slots=True)
class RoundDone:
    """Student -> teacher: the training loop consumed all of round ``round``."""

    round: int


@dataclass(frozen=True, slots=True)
class Query:
    """Student -> teacher: answer query ``qid`` (its feeds travel as the message's chunk)."""

    qid: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Anyone authenticated -> teacher: describe yourself (answered with STATUS_INFO)."""


@dataclass(frozen=True, slots=True)
class Bye:
    """Either side: an orderly close; ``reason`` says why (may be empty)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Desc:
    """Teacher -> student: the knowledge description, its codecs and the rounds served."""

    desc: Description
    codecs: dict[str, dict[str, Any]]
    times: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    """Teacher -> student: knowledge of round ``round`` for subscription ``sub``; ``upto`` is
    how many samples of the round the teacher has produced so far (all ranks together)."""

    sub: int
    round: int
    upto: int


@dataclass(frozen=True, slots=True)
class EndRound:
    """Teacher -> student: subscription ``sub`` is complete; the round has ``samples``
    samples in all (all ranks together)."""

    sub: int
    round: int
    samples: int


@dataclass(frozen=True, slots=True)
class Fail:
    """Teacher -> student (ERROR): the teacher refuses or stopped; ``code`` says why."""

    message: str
    code: str = ErrorCode.FAILED
    qid: int | None = None  # set when only that query failed


Event = Subscribe | Credit | RoundDone | Query | StatusRequest | Bye | Desc | Data | EndRound | Fail


def _bad(kind: str, name: str, want: str, got: Any) -> ProtocolError:
    return ProtocolError(f"{kind} message: field {name!r} must be {want}, got {got!r:.100}")


def _int(
    h: Mapping[str, Any], kind: str, name: str, lo: int = 0, hi: int = MAX_ID, default: Any = None
) -> int:
    value = h.get(name, default)
    if type(value) is not int or not lo <= value <= hi:
        raise _bad(kind, name, f"an integer in {lo}..{hi}", value)
    return value


def _str(h: Mapping[str, Any], kind: str, name: str, default: str | None = None) -> str:
    value = h.get(name, default)
    if not isinstance(value, str) or len(value) > 65536:
        raise _bad(kind, name, "a string (at most 64 KiB)", value)
    return value


def _desc(h: Mapping[str, Any]) -> Desc:
    raw, codecs = h.get("desc"), h.get("codecs", {})
    try:
        desc = check_desc(raw, "DESC")
    except KnowledgeError as exc:
        raise ProtocolError(f"DESC message: {exc}") from None
    if not isinstance(codecs, dict) or not all(
        isinstance(k, str) and k in desc and isinstance(v, dict) for k, v in codecs.items()
    ):
        raise _bad("DESC", "codecs", "a map of knowledge key -> codec spec map", codecs)
    known = {"desc", "codecs", "times"}
    extra = {k: v for k, v in h.items() if k not in known}
    return Desc(desc, dict(codecs), _int(h, "DESC", "times"), extra)


def parse(kind: int, h: Mapping[str, Any]) -> Event:
    """The event of a received session message; raises :class:`ProtocolError` if malformed.

    Only session-control messages are parsed here; DATA, QUERY and ANSWER carry a chunk
    (parsed by :func:`pantheon._wire.decode_parts`) beside the fields returned here.
    """
    if kind == MsgType.SUBSCRIBE:
        return Subscribe(
            _int(h, "SUBSCRIBE", "sub"),
            _int(h, "SUBSCRIBE", "round"),
            _int(h, "SUBSCRIBE", "start"),
            _int(h, "SUBSCRIBE", "credits", 1, MAX_CREDITS),
            _int(h, "SUBSCRIBE", "window", 0, MAX_WINDOW, default=0),
        )
    if kind == MsgType.CREDIT:
        return Credit(_int(h, "CREDIT", "sub"), _int(h, "CREDIT", "n", 1, MAX_CREDITS))
    if kind == MsgType.ROUND_DONE:
        return RoundDone(_int(h, "ROUND_DONE", "round"))
    if kind == MsgType.QUERY:
        return Query(_int(h, "QUERY", "qid"))
    if kind == MsgType.STATUS:
        return StatusRequest()
    if kind == MsgType.BYE:
        return Bye(_str(h, "BYE", "reason", ""))
    if kind == MsgType.DESC:
        return _desc(h)
    if kind == MsgType.DATA:
        return Data(_int(h, "DATA", "sub"), _int(h, "DATA", "round"), _int(h, "DATA", "upto"))
    if kind == MsgType.ANSWER:
        return Query(_int(h, "ANSWER", "qid"))
    if kind == MsgType.END_ROUND:
        return EndRound(
            _int(h, "END_ROUND", "sub"),
            _int(h, "END_ROUND", "round"),
            _int(h, "END_ROUND", "samples"),
        )
    if kind == MsgType.ERROR:
        qid = None if h.get("qid") is None else _int(h, "ERROR", "qid")
        message = _str(h, "ERROR", "message", "an error")
        return Fail(message, _str(h, "ERROR", "code", "failed"), qid)
    raise ProtocolError(f"unexpected message type {kind!r} in a session")


def header(event: Event) -> tuple[MsgType, dict[str, Any]]:
    """The message type and header of an event to send."""
    if isinstance(event, Subscribe):
        return MsgType.SUBSCRIBE, {
            "sub": event.sub,
            "round": event.round,
            "start": event.start,
            "credits": event.credits,
            **({"window": event.window} if event.window else {}),
        }
    if isinstance(event, Credit):
        return MsgType.CREDIT, {"sub": event.sub, "n": event.n}
    if isinstance(event, RoundDone):
        return MsgType.ROUND_DONE, {"round": event.round}
    if isinstance(event, Query):
        return MsgType.QUERY, {"qid": event.qid}
    if isinstance(event, StatusRequest):
        return MsgType.STATUS, {}
    if isinstance(event, Bye):
        return MsgType.BYE, {"reason": event.reason} if event.reason else {}
    if isinstance(event, Desc):
        return MsgType.DESC, {
            **event.extra,
            "desc": event.desc,
            "codecs": event.codecs,
            "times": event.times,
        }
    if isinstance(event, Data):
        return MsgType.DATA, {"sub": event.sub, "round": event.round, "upto": event.upto}
    if isinstance(event, EndRound):
        return MsgType.END_ROUND, {
            "sub": event.sub,
            "round": event.round,
            "samples": event.samples,
        }
    out: dict[str, Any] = {"message": event.message, "code": event.code}
    if event.qid is not None:
        out["qid"] = event.qid
    return MsgType.ERROR, out


@dataclass(frozen=True, slots=True)
class Hello:
    """What a client says of itself in the handshake (its ``hello`` map)."""

    client: str
    role: str  # "student" or "monitor" (pantheon status)
    group: str
    rank: int
    world_size: int


def parse_hello(h: Mapping[str, Any]) -> Hello:
    """The client's hello map, checked; raises :class:`ProtocolError` if malformed."""
    role = _str(h, "hello", "role", "student")
    if role not in ("student", "monitor"):
        raise _bad("hello", "role", "'student' or 'monitor'", role)
    group = _str(h, "hello", "group", "default")
    if not group or len(group) > 256:
        raise _bad("hello", "group", "a non-empty name of at most 256 characters", group)
    world = _int(h, "hello", "world_size", 1, 1 << 20, default=1)
    rank = _int(h, "hello", "rank", 0, world - 1, default=0)
    return Hello(_str(h, "hello", "client", ""), role, group, rank, world)


# refusals the teacher machine sends

REPLACED = "replaced by a newer student of the same group and rank"
NO_QUERIES = (
    "this teacher streams rounds from its reader; it answers no queries (serve it with "
    "reader_config=None for query mode)"
)
NO_ROUNDS = (
    "this teacher only answers queries (it has no reader); use "
    "get_knowledge_generator(batch_size, queries=...)"
)
