"""The thread-less read of one online teacher's round: re-batching in the caller's thread,
ends, errors and a stop from another thread (a real stream of a real round is in
tests/online; here an in-memory stream with the ``RoundStream`` interface)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pantheon._errors import TeacherError
from pantheon._knowledge import Chunk
from pantheon._student.assembler import AssemblerStopped
from pantheon._student.passthrough import PassThroughRound, passes_through


class Stream:
    """Chunks of the given sizes, then the end (or ``error``); ``next_chunk`` blocks while
    ``hold`` is set, until ``close``."""

    received_ahead = True

    def __init__(self, sizes: list[int], error: Exception | None = None) -> None:
        self._sizes = list(sizes)
        self._next = 0
        self._error = error
        self.closed = threading.Event()
        self.hold = False
        self.calls = 0

    def next_chunk(self, timeout: float) -> Chunk | None:
        self.calls += 1
        if self.hold:
            if not self.closed.wait(timeout):
                raise TimeoutError("held")
            raise RuntimeError("the round was abandoned")
        if not self._sizes:
            if self._error is not None:
                raise self._error
            return None
        n = self._sizes.pop(0)
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        self.last = Chunk(ids, {"x": ids.astype(np.float32)})
        return self.last

    def known_samples(self) -> int:
        return self._next

    def close(self) -> None:
        self.closed.set()


def drain(reader: PassThroughRound) -> list[np.ndarray]:
    out = []
    while (batch := reader.get(5.0)) is not None:
        np.testing.assert_array_equal(batch.data["x"], batch.ids)
        out.append(batch.ids)
    return out


def test_chunks_are_cut_into_batches_in_order_and_whole_batches_pass_as_they_are() -> None:
    stream = Stream([4, 3, 5, 4, 2])
    reader = PassThroughRound(stream, batch_size=4, drop_last=False)
    got = drain(reader)
    assert [len(b) for b in got] == [4, 4, 4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), np.arange(18))
    assert reader.get(5.0) is None and reader.get(5.0) is None  # the end, again
    assert reader.qsize() == 0


def test_a_whole_chunk_on_a_batch_boundary_is_the_batch_itself() -> None:
    stream = Stream([4, 2, 2, 4])
    reader = PassThroughRound(stream, batch_size=4, drop_last=False)
    assert reader.get(5.0) is stream.last  # no slicing, no copy
    second = reader.get(5.0)  # cut from two chunks
    assert second is not None and second is not stream.last
    assert reader.get(5.0) is stream.last
    assert reader.get(5.0) is None


def test_drop_last_drops_the_short_tail_only() -> None:
    reader = PassThroughRound(Stream([3, 3, 3]), batch_size=4, drop_last=True)
    assert [len(b) for b in drain(reader)] == [4, 4]


def test_a_teachers_error_is_raised_and_raised_again() -> None:
    reader = PassThroughRound(Stream([4], TeacherError("teacher 0 failed")), batch_size=4,
                              drop_last=False)  # fmt: skip
    assert reader.get(5.0) is not None
    for _ in range(2):
        with pytest.raises(TeacherError, match="teacher 0 failed"):
            reader.get(5.0)


def test_a_stop_from_another_thread_wakes_the_waiting_reader() -> None:
    stream = Stream([])
    stream.hold = True
    reader = PassThroughRound(stream, batch_size=4, drop_last=False)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            reader.get(30.0)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    while stream.calls == 0:
        time.sleep(0.001)
    reader.stop()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], AssemblerStopped)
    reader.stop()  # idempotent
    with pytest.raises(AssemblerStopped):
        reader.get(1.0)


def test_only_one_received_ahead_stream_with_nothing_to_merge_passes_through() -> None:
    online, offline = Stream([]), Stream([])
    offline.received_ahead = False  # type: ignore[misc]
    assert passes_through([online], merges=False, equalize=False)
    assert not passes_through([offline], merges=False, equalize=False)
    assert not passes_through([online, online], merges=False, equalize=False)
    assert not passes_through([online], merges=True, equalize=False)
    assert not passes_through([online], merges=False, equalize=True)
