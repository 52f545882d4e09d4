"""start_knowledge_service through the public Teacher, offline and online, with codecs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pantheon import KnowledgeFile, SparseTopK, Student, Teacher, TopK

torch = pytest.importorskip("torch")

VOCAB = 300
N = 96


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, VOCAB)
        )

    def forward(self, x):
        return {"logits": self.body(x) * 3, "hidden": torch.tanh(x)}


def _data() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((N, 8)).astype(np.float32)


def _reader():
    data = _data()

    def batches():
        for s in range(0, N, 10):
            yield (data[s : s + 10],)

    return {"batch_generator": batches}


def _reference(model) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = model(torch.from_numpy(_data()))
    return {k: v.numpy() for k, v in out.items()}


def test_offline_service_with_fp16_topk_and_workers(tmp_path):
    model = Net()
    ref = _reference(model)
    path = tmp_path / "k.arrow"
    with Teacher(out_path=path, codecs={"logits": TopK(20)}) as teacher:
        teacher.start()
        teacher.start_knowledge_service(
            feed_list=["x"],
            schema={"x": "x", "logits": "logits", "hidden": "hidden"},
            program=model,
            reader_config=_reader(),
            exe=2,
            use_fp16=True,
        )
    kf = KnowledgeFile(path)
    assert kf.desc["logits"] == {"shape": [-1, VOCAB], "dtype": "float32", "lod_level": 0}
    assert kf.codecs["hidden"]["dtype"] == "float16"
    with Student() as dense:
        dense.register_teacher(in_path=path)
        dense.start()
        batches = list(dense.get_knowledge_generator(32)())
    logits = np.concatenate([b["logits"] for b in batches])
    hidden = np.concatenate([b["hidden"] for b in batches])
    assert np.allclose(np.concatenate([b["x"] for b in batches]), _data(), atol=2e-3)
    assert np.allclose(hidden, ref["hidden"], atol=2e-3)  # float16 storage
    top = np.argsort(-ref["logits"], axis=1)[:, :20]
    kept = np.take_along_axis(logits, top, axis=1)
    assert np.allclose(kept, np.take_along_axis(ref["logits"], top, axis=1), atol=2e-2)
    assert np.isneginf(logits).sum(axis=1).tolist() == [VOCAB - 20] * N
    with Student(sparse_topk=True) as sparse:
        sparse.register_teacher(in_path=path)
        sparse.start()
        first = next(iter(sparse.get_knowledge_generator(32)()))
    assert isinstance(first["logits"], SparseTopK)
    assert first["logits"].k == 20 and len(first["logits"]) == 32
    assert np.array_equal(np.sort(first["logits"].indices, axis=1), np.sort(top[:32], axis=1))


def test_online_service_two_rounds_torch_module():
    model = Net()
    ref = _reference(model)
    teacher = Teacher(out_port=0, timeout=60)
    errors: list[BaseException] = []

    def serve():
        try:
            teacher.start(timeout=60)
            teacher.start_knowledge_service(
                feed_list=["x"],
                schema={"logits": "logits"},
                program=model,
                reader_config=_reader(),
                exe=["cpu", "cpu"],
                times=2,
            )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    with Student(timeout=60) as student:
        student.register_teacher(in_address=teacher.address)
        student.start()
        for _ in range(2):
            logits = np.concatenate([b["logits"] for b in student.get_knowledge_generator(40)()])
            assert np.allclose(logits, ref["logits"], atol=1e-5)
    thread.join(60)
    assert not thread.is_alive()
    assert errors == []
    stats = teacher.stats()
    assert stats["samples"] == 2 * N
    assert stats["bytes"] >= 2 * N * VOCAB * 4
    teacher.close()
