"""``load_state_dict`` validates what it loads (finding 12): each bad field is a ConfigError
that says what is wrong, and a position past the end of a round is refused with that reason,
from a knowledge file and from a live teacher alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pantheon import ConfigError, Student, Teacher
from tests.faults.common import LiveTeacher, reader


def _file(path: Any, n: int = 60) -> Any:
    with Teacher(out_path=path) as t:
        for s in range(0, n, 10):
            t.dump({"x": np.arange(s, s + 10).reshape(-1, 1)})
    return path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"sample_in_round": 2.0}, r"state_dict\['sample_in_round'\] must be an integer"),
        ({"sample_in_round": True}, r"state_dict\['sample_in_round'\] must be an integer"),
        ({"sample_in_round": 2**70}, r"sample_in_round"),
        ({"round": -1}, r"state_dict\['round'\] must be an integer >= 0"),
        ({"round": None}, r"state_dict\['round'\] must be an integer"),
        ({"version": 99}, "version 99 is not supported.*upgrade"),
        ({"version": "3"}, "not supported"),
        ({"teachers": []}, "saved with the teachers"),
        ({"teachers": ["teacher 0 (a)", "teacher 1 (b)"]}, "saved with the teachers"),
        ({"teachers": None}, "saved with the teachers"),
        ({"world_size": 0}, "saved by group"),
        ({"group": ["x"]}, "saved by group"),
    ],
)
def test_finding_12_each_bad_field_is_a_config_error(tmp_path, edit: dict, match: str) -> None:
    """Finding 12: a float, a bool, a list of teachers that does not match, a future version
    were loaded without a word. Each is a ConfigError naming the field, and the student's
    position is left as it was."""
    with Student() as s:
        s.register_teacher(in_path=_file(tmp_path / "a.arrow"))
        before = s.state_dict()
        with pytest.raises(ConfigError, match=match):
            s.load_state_dict({**before, **edit})
        assert s.state_dict() == before


def test_finding_12_a_position_past_the_end_of_a_file_is_a_config_error(tmp_path) -> None:
    """Finding 12: a position past the end of the round was taken as it came. From a file of
    60 samples, position 61 is a ConfigError that names the round's size; 60 (the end) is an
    empty rest of the round, as a checkpoint taken after the last batch has."""
    with Student() as s:
        s.register_teacher(in_path=_file(tmp_path / "a.arrow"))
        state = s.state_dict()
        with pytest.raises(ConfigError, match="60 samples"):
            s.load_state_dict({**state, "sample_in_round": 61})
            list(s.get_knowledge_generator(16)())
    with Student() as s:
        s.register_teacher(in_path=tmp_path / "a.arrow")
        s.load_state_dict({**state, "sample_in_round": 60})
        assert list(s.get_knowledge_generator(16)()) == []
        assert s.state_dict()["round"] == 1


def test_finding_12_a_position_past_the_end_of_an_online_round_says_so() -> None:
    """Finding 12, online: a student resumed past the end of a 100-sample round got a
    ProtocolError blaming the teacher ("sent sample 999"). Now the error is a ConfigError
    that says the position lies past the round's end."""
    live = LiveTeacher(reader(100, 10))
    try:
        with Student(timeout=30, transport="tcp") as s:
            s.register_teacher(in_address=live.address)
            s.load_state_dict({**s.state_dict(), "sample_in_round": 1000})
            s.start()
            with pytest.raises(ConfigError, match="past the end"):
                list(s.get_knowledge_generator(16)())
    finally:
        live.close()
