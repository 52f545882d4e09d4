"""Prometheus metrics of teachers and students, scraped over real HTTP (urllib) and parsed
with prometheus-client's own parser; counters checked exactly against what was sent."""

from __future__ import annotations

import socket
import sys
import urllib.request
from typing import Any

import numpy as np
import pytest

from pantheon import ConfigError, MissingDependencyError, Student, Teacher, TopK
from pantheon._metrics import Histogram
from pantheon._util import Deadline
from tests.helpers import Runner

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families


def scrape(address: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of ``http://address/metrics``."""
    assert address is not None
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[Any, float], metric: str, /, **labels: str) -> float:
    return metrics[(metric, tuple(sorted(labels.items())))]


def reader():
    for start in range(0, 100, 10):  # 10 batches of 10 samples
        yield {"x": np.arange(start, start + 10).reshape(-1, 1)}


def test_counters_are_exact_on_both_sides_after_a_round() -> None:
    with Teacher(out_port=0, timeout=30, metrics_port=0) as teacher:
        runner = Runner(lambda: teacher.serve(reader, times=2))
        with Student(timeout=30, metrics_port=0) as student:
            student.register_teacher(in_address=teacher.address)
            gen = student.get_knowledge_generator(32)
            sizes = [len(b["x"]) for b in gen()]
            assert sizes == [32, 32, 32, 4]
            t = scrape(teacher.metrics_address)
            deadline = Deadline(20)  # the acknowledgement of round 0 is on its way
            while value(t, "pantheon_teacher_rounds_served") < 1 and not deadline.expired:
                t = scrape(teacher.metrics_address)
            s = scrape(student.metrics_address)
            sent = teacher.stats()
            assert value(t, "pantheon_teacher_samples_total") == 100 == sent["samples"]
            # 10 reader batches: the teacher may merge the last ones of a fast reader
            assert value(t, "pantheon_teacher_batches_total") == sent["batches"]
            assert 8 <= sent["batches"] <= 10
            assert (
                value(t, "pantheon_teacher_bytes_total") == sent["bytes"] == 100 * (8 + 8)
            )  # x, ids
            assert value(t, "pantheon_teacher_students", group="default") == 1
            assert value(t, "pantheon_teacher_rounds_served") == 1
            assert value(s, "pantheon_student_samples_total") == 100
            assert value(s, "pantheon_student_batches_total") == 4
            assert value(s, "pantheon_student_rounds_total") == 1
            assert value(s, "pantheon_student_wait_seconds_count") == 4  # one per batch
            assert value(s, "pantheon_student_received_samples_total", teacher="0") == 100
            messages = value(t, "pantheon_teacher_messages_total")
            assert value(s, "pantheon_student_received_batches_total", teacher="0") == messages
            assert value(s, "pantheon_student_bytes_total", teacher="0") == sent["bytes"]
            assert value(s, "pantheon_student_reconnects_total", teacher="0") == 0
            name = f"teacher 0 ({teacher.address})"
            assert value(s, "pantheon_student_teacher_info", teacher="0", name=name) == 1
            assert student.stats()["teachers"][name]["samples"] == 100
            assert len(list(gen())) == 4  # round 1
            s = scrape(student.metrics_address)
            assert value(s, "pantheon_student_samples_total") == 200
            assert value(s, "pantheon_student_batches_total") == 8
        runner.join(30)
        t = scrape(teacher.metrics_address)  # the endpoint outlives the serve call
        assert value(t, "pantheon_teacher_samples_total") == 200


def _program(x: np.ndarray) -> dict[str, np.ndarray]:
    rows = np.arange(len(x), dtype=np.float32)[:, None]
    logits = np.sin(rows * 0.37 + np.arange(50, dtype=np.float32)[None, :]) * 4
    return {"logits": logits.astype(np.float32)}


def _batches():
    for start in range(0, 100, 20):  # 5 reader batches: 5 program calls
        yield (np.arange(start, start + 20).reshape(-1, 1),)


def test_two_teachers_in_one_process_keep_their_own_metrics_with_topk_mass() -> None:
    topk = Teacher(
        out_port=0, timeout=30, metrics_port=0, codecs={"logits": TopK(5, log_softmax=True)}
    )
    plain = Teacher(out_port=0, timeout=30)
    try:
        served = [
            Runner(
                lambda t=t, key=key: t.start_knowledge_service(
                    ["x"], {key: "logits"}, _program, {"batch_generator": _batches},
                    metrics_port=0 if t is plain else None,
                )
            )
            for t, key in ((topk, "logits"), (plain, "dense"))
        ]  # fmt: skip
        with Student(timeout=30) as student:
            student.register_teacher(in_address=topk.address)
            student.register_teacher(in_address=plain.address)
            assert sum(len(b["dense"]) for b in student.get_knowledge_generator(25)()) == 100
        for runner in served:
            runner.join(30)
        a, b = scrape(topk.metrics_address), scrape(plain.metrics_address)
        assert topk.metrics_address != plain.metrics_address
        for m in (a, b):
            assert value(m, "pantheon_teacher_predict_seconds_count") == 5
            assert value(m, "pantheon_teacher_samples_total") == 100
        assert value(a, "pantheon_teacher_topk_mass_count", key="logits") == 100
        assert not [k for k in b if k[0].startswith("pantheon_teacher_topk_mass")]
        x = _program(np.zeros((20, 1)))["logits"].astype(np.float64)
        p = np.exp(x - x.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        expected = np.sort(p, axis=1)[:, -5:].sum() * 5  # 5 batches of the same 20 rows
        got = value(a, "pantheon_teacher_topk_mass_sum", key="logits")
        assert got == pytest.approx(expected, rel=1e-2)  # float16 values on the wire
        assert value(a, "pantheon_teacher_topk_mass_bucket", key="logits", le="+Inf") == 100
    finally:
        topk.close()
        plain.close()


def test_an_offline_teacher_counts_what_it_dumped(tmp_path) -> None:
    codecs = {"logits": TopK(50, log_softmax=True)}  # every entry kept: the whole mass
    with Teacher(out_path=tmp_path / "k.arrow", metrics_port=0, codecs=codecs) as teacher:
        teacher.start_knowledge_service(
            ["x"], {"logits": "logits"}, _program, {"batch_generator": _batches}
        )
        m = scrape(teacher.metrics_address)
        assert value(m, "pantheon_teacher_samples_total") == 100
        assert value(m, "pantheon_teacher_batches_total") == 5
        assert value(m, "pantheon_teacher_predict_seconds_count") == 5
        assert value(m, "pantheon_teacher_topk_mass_count", key="logits") == 100
        mass = value(m, "pantheon_teacher_topk_mass_sum", key="logits")
        assert mass == pytest.approx(100, rel=1e-2)


def test_metrics_ports_are_checked_and_a_taken_port_is_named() -> None:
    with pytest.raises(ConfigError, match=r"metrics_port must be an integer in 0\.\.65535"):
        Teacher(out_port=0, metrics_port=-1)
    with pytest.raises(ConfigError, match=r"out_port must be an integer in 0\.\.65535"):
        Teacher(out_port=True)
    with Teacher(out_port=np.int64(0), metrics_port=np.int64(0)) as teacher:  # numpy ints
        assert teacher.metrics_address is not None
    with pytest.raises(ConfigError, match="metrics_host"):
        Student(metrics_port=0, metrics_host="")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}"):
            Student(metrics_port=port)
        with pytest.raises(ConfigError, match="choose another metrics_port"):
            Teacher(out_port=0, metrics_port=port)


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if absent
    with pytest.raises(MissingDependencyError, match=r"pantheon-kd\[metrics\]"):
        Student(metrics_port=0)
    assert Student().metrics_address is None  # no port: nothing imported


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    h.observe_many(np.array([0.01, 2.0]))
    buckets, total = h.snapshot()
    assert buckets == [("0.1", 3), ("1.0", 4), ("+Inf", 6)]
    assert total == pytest.approx(5.66)
    assert h.count == 6
