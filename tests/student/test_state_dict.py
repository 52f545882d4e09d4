"""Student.state_dict / load_state_dict: versions, validation, teachers recorded."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from pantheon import ConfigError, Student, Teacher


def _dump(path: Any, n: int = 60) -> Any:
    with Teacher(out_path=path) as t:
        for s in range(0, n, 10):
            t.dump({"x": np.arange(s, s + 10).reshape(-1, 1)})
    return path


def _student(*paths: Any) -> Student:
    s = Student()
    for p in paths:
        s.register_teacher(in_path=p)
    return s


def test_version_1_state_dicts_still_load(tmp_path) -> None:
    a = _dump(tmp_path / "a.arrow")
    with _student(a) as s:
        name = s.state_dict()["teachers"]
        s.load_state_dict({"version": 1, "round": 0, "position": 40, "teachers": name})
        xs = np.concatenate([b["x"].ravel() for b in s.get_knowledge_generator(16)()])
        assert xs.tolist() == list(range(40, 60))
        assert s.state_dict() == {
            "version": 3,
            "round": 1,
            "sample_in_round": 0,
            "teachers": name,
            "group": "default",
            "rank": 0,
            "world_size": 1,
            "fingerprints": [{}],
        }


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"version": 4}, "version 4 is not supported"),
        ({"version": True}, "not supported"),
        ({"round": 1.5}, r"state_dict\['round'\] must be an integer"),
        ({"round": True}, r"state_dict\['round'\] must be an integer"),
        ({"sample_in_round": -1}, r"must be an integer >= 0"),
        ({"sample_in_round": "7"}, "must be an integer"),
        ({"teachers": ["teacher 0 (a)", "teacher 1 (b)"]}, "saved with the teachers"),
        ({"teachers": "teacher 0"}, "saved with the teachers"),
        ({"rank": 1, "world_size": 2}, "saved by group 'default' rank 1 of 2"),
    ],
)
def test_bad_state_dicts_say_what_is_wrong(tmp_path, edit: dict[str, Any], match: str) -> None:
    with _student(_dump(tmp_path / "a.arrow")) as s:
        state = {**s.state_dict(), **edit}
        with pytest.raises(ConfigError, match=match):
            s.load_state_dict(state)
        with pytest.raises(ConfigError, match="lacks"):
            s.load_state_dict({"version": 2, "round": 0})
        with pytest.raises(ConfigError, match="expects the dict"):
            s.load_state_dict([1, 2])  # type: ignore[arg-type]


def test_a_moved_teacher_is_named_in_a_warning(tmp_path, caplog) -> None:
    a = _dump(tmp_path / "a.arrow")
    with _student(a) as s:
        state = s.state_dict()
    b = tmp_path / "b.arrow"
    a.rename(b)
    with _student(b) as s, caplog.at_level(logging.WARNING, logger="pantheon"):
        s.load_state_dict(state)
    assert any("b.arrow" in r.getMessage() and "a.arrow" in r.getMessage() for r in caplog.records)


def test_numpy_integers_are_accepted_where_ints_are(tmp_path) -> None:
    with _student(_dump(tmp_path / "a.arrow")) as s:
        gen = s.get_knowledge_generator(np.int64(32))
        assert [len(b["x"]) for b in gen()] == [32, 28]
        s.load_state_dict({**s.state_dict(), "sample_in_round": np.int32(10)})
        assert s.state_dict()["sample_in_round"] == 10
