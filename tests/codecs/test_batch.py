"""The one codec seam: stored parts of a batch, the clash check, files and wire alike."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pantheon import KnowledgeError, Student, Teacher, TeacherError, TopK
from pantheon._codecs import decode_batch, encode_batch, resolve_codecs
from pantheon._knowledge import describe


def _clashing_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "logits": rng.normal(size=(4, 16)).astype(np.float32),
        "logits@values": np.full((4, 3), 7.0, np.float16),  # a raw key shaped like a part
    }


def test_parts_are_key_part_pairs_and_round_trip() -> None:
    batch = {"x": np.arange(4).reshape(-1, 1), "logits": np.eye(4, 16, dtype=np.float32)}
    desc = describe(batch)
    codecs = resolve_codecs(desc, {"logits": TopK(3)}, use_fp16=False)
    parts = encode_batch(batch, codecs)
    assert list(parts) == [("x", ""), ("logits", "values"), ("logits", "indices")]
    back = decode_batch(parts, desc, codecs)
    assert list(back) == ["x", "logits"]
    np.testing.assert_array_equal(back["logits"].argmax(1), batch["logits"].argmax(1))


def test_missing_parts_are_named() -> None:
    batch = {"x": np.arange(4).reshape(-1, 1)}
    with pytest.raises(KnowledgeError, match="'x' is missing"):
        decode_batch({}, describe(batch), {})


def test_a_clash_is_refused_by_the_seam() -> None:
    batch = _clashing_batch()
    codecs = resolve_codecs(describe(batch), {"logits": TopK(3)}, use_fp16=False)
    with pytest.raises(KnowledgeError, match="clashes"):
        encode_batch(batch, codecs)


def test_a_clash_is_refused_offline(tmp_path) -> None:
    with (
        Teacher(out_path=tmp_path / "k.arrow", codecs={"logits": TopK(3)}) as t,
        pytest.raises(KnowledgeError, match="clashes"),
    ):
        t.dump(_clashing_batch())


def test_a_clash_is_refused_online_and_the_student_is_told() -> None:
    """Online the student used to receive wrong top-k values silently; now the teacher refuses
    the batch and the student's wait ends with the teacher's reason."""
    teacher = Teacher(out_port=0, timeout=30, codecs={"logits": TopK(3)})
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            teacher.serve(lambda: iter([_clashing_batch()]))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address)
            student.start()
            with pytest.raises(TeacherError, match="clashes"):
                for _ in student.get_knowledge_generator(4)():
                    pass
        thread.join(30)
        assert not thread.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], KnowledgeError)
    finally:
        teacher.close()
