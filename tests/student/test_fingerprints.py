"""Teacher and dataset fingerprints: derived, carried by files and streams, checked by students."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pantheon import (
    AlignmentError,
    ConfigError,
    KnowledgeFile,
    Student,
    Teacher,
    TeacherError,
)
from pantheon._cli.main import format_report, inspect_report
from pantheon._service import fingerprint_of
from tests.helpers import Runner

BATCHES = [{"x": np.arange(s, s + 10).reshape(-1, 1)} for s in range(0, 40, 10)]


def dump(path: Path, **kwargs: Any) -> Path:
    with Teacher(out_path=path, **kwargs) as t:
        for b in BATCHES:
            t.dump(b)
    return path


def test_a_fingerprint_says_what_the_program_is(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from pantheon.onnx import OnnxProgram
    from pantheon.torch import TorchProgram

    def model(seed: int) -> Any:
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))

    a, same, other = model(0), model(0), model(1)
    fa = fingerprint_of(a)
    assert fa is not None and fa.startswith("sha256:") and len(fa) == 7 + 64
    assert fingerprint_of(same) == fa == fingerprint_of(TorchProgram(same, ["x"]))
    assert fingerprint_of(other) != fa
    with torch.no_grad():
        same[0].weight[0, 0] += 1e-6
    assert fingerprint_of(same) != fa
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not really a graph")
    digest = "sha256:" + hashlib.sha256(b"not really a graph").hexdigest()
    assert fingerprint_of(onnx_file) == digest == fingerprint_of(str(onnx_file))
    assert OnnxProgram(onnx_file).fingerprint() == digest
    assert fingerprint_of(lambda x: x) is None
    assert fingerprint_of(None) is None


def test_the_service_derives_the_fingerprint_and_files_carry_it(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(1, 2)
    cfg = {"batch_generator": lambda: ((b["x"].astype(np.float32),) for b in BATCHES)}
    with Teacher(out_path=tmp_path / "k.arrow", dataset_fingerprint="numbers-0-40") as t:
        t.start_knowledge_service(["x"], {"y": "output"}, module, cfg)
        assert t.fingerprint == fingerprint_of(module)
    with KnowledgeFile(tmp_path / "k.arrow") as kf:
        assert kf.fingerprints == {
            "fingerprint": fingerprint_of(module),
            "dataset_fingerprint": "numbers-0-40",
        }
    report = inspect_report(tmp_path / "k.arrow", stats=False)
    assert report["fingerprint"] == fingerprint_of(module)
    assert report["dataset_fingerprint"] == "numbers-0-40"
    assert "numbers-0-40" in format_report(report)
    given = dump(tmp_path / "g.arrow", fingerprint=module)  # a model given to derive it from
    with KnowledgeFile(given) as kf:
        assert kf.fingerprint == fingerprint_of(module)
    with pytest.raises(ConfigError, match="cannot derive a fingerprint"):
        Teacher(out_path=tmp_path / "x.arrow", fingerprint=object())
    with pytest.raises(ConfigError, match="dataset_fingerprint"):
        Teacher(out_path=tmp_path / "x.arrow", dataset_fingerprint=7)  # type: ignore[arg-type]


def test_resuming_against_another_teacher_is_refused_naming_both(tmp_path: Path) -> None:
    path = dump(tmp_path / "k.arrow", fingerprint="bert-v1")
    with Student() as s:
        s.register_teacher(in_path=path)
        next(iter(s.get_knowledge_generator(8)()))
        state = s.state_dict()
    assert state["version"] == 3
    assert state["fingerprints"] == [{"fingerprint": "bert-v1"}]
    with Student() as s:  # the same teacher: resumes
        s.register_teacher(in_path=path)
        s.load_state_dict(state)
        assert len(np.concatenate([b["x"] for b in s.get_knowledge_generator(8)()])) == 32
    dump(path, fingerprint="bert-v2")  # the teacher changed
    with Student() as s:
        s.register_teacher(in_path=path)
        s.load_state_dict(state)  # not started: the fingerprint is not known yet
        with pytest.raises(ConfigError, match=r"'bert-v2'.*saved with 'bert-v1'"):
            s.get_knowledge_generator(8)
    with Student() as s:
        s.register_teacher(in_path=path)
        s.start()
        with pytest.raises(ConfigError, match=r"teacher 0 .* fingerprint 'bert-v2'"):
            s.load_state_dict(state)
    v2 = {k: v for k, v in state.items() if k != "fingerprints"} | {"version": 2}
    with Student() as s:  # older state dicts recorded none: nothing to compare
        s.register_teacher(in_path=path)
        s.load_state_dict(v2)
        assert len(list(s.get_knowledge_generator(8)())) == 4
    with Student() as s, pytest.raises(ConfigError, match="one dict per teacher"):
        s.register_teacher(in_path=path)
        s.load_state_dict({**state, "fingerprints": [{"fingerprint": 3}]})


def test_teachers_that_read_different_data_are_not_merged(tmp_path: Path) -> None:
    a = dump(tmp_path / "a.arrow", dataset_fingerprint="cifar10-train")
    b = dump(tmp_path / "b.arrow", dataset_fingerprint="cifar10-test")
    c = dump(tmp_path / "c.arrow")  # no dataset fingerprint: not compared
    with Student(merge_strategy={"x": "sum"}) as s:
        s.register_teacher(in_path=a)
        s.register_teacher(in_path=c)
        s.register_teacher(in_path=b)
        with pytest.raises(AlignmentError, match=r"teacher 2 .*'cifar10-test' but teacher 0"):
            s.get_knowledge_desc()
    with Student(merge_strategy={"x": "sum"}) as s:
        for p in (a, c, a):
            s.register_teacher(in_path=p)
        assert [len(x["x"]) for x in s.get_knowledge_generator(16)()] == [16, 16, 8]


def test_online_the_description_carries_the_fingerprints(tmp_path: Path) -> None:
    offline = dump(tmp_path / "a.arrow", dataset_fingerprint="other-data")
    teacher = Teacher(out_port=0, timeout=30, fingerprint="gpt-7", dataset_fingerprint="numbers")
    served = Runner(lambda: teacher.serve(lambda: iter(BATCHES), times=2))
    with Student(timeout=30) as s:
        s.register_teacher(in_address=teacher.address)
        assert len(list(s.get_knowledge_generator(10)())) == 4
        state = s.state_dict()
        assert state["fingerprints"] == [{"fingerprint": "gpt-7", "dataset_fingerprint": "numbers"}]
        assert len(list(s.get_knowledge_generator(10)())) == 4
    served.join()
    teacher.close()
    other = Teacher(out_port=0, timeout=3, fingerprint="gpt-8")
    stuck = Runner(lambda: other.serve(lambda: iter(BATCHES), times=2))
    with Student(timeout=30) as s:
        s.register_teacher(in_address=other.address)
        s.load_state_dict(state)
        with pytest.raises(ConfigError, match=r"'gpt-8'.*saved with 'gpt-7'"):
            s.get_knowledge_generator(10)
    with pytest.raises(TeacherError, match="no student connected"):
        stuck.join()  # the refused student asked for no round: the teacher waits for another
    other.close()
    hybrid = Teacher(out_port=0, timeout=3, dataset_fingerprint="numbers")
    served = Runner(lambda: hybrid.serve(lambda: iter(BATCHES)))
    with Student(timeout=30, merge_strategy={"x": "sum"}) as s:
        s.register_teacher(in_address=hybrid.address)
        s.register_teacher(in_path=offline)
        with pytest.raises(AlignmentError, match=r"'other-data' but teacher 0 .* 'numbers'"):
            s.get_knowledge_desc()
    with pytest.raises(TeacherError, match="no student connected"):
        served.join()  # the student left before reading: the teacher waits for another
    hybrid.close()
