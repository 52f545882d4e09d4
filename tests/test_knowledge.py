import numpy as np
import pytest

from pantheon import KnowledgeError, Ragged
from pantheon._knowledge import (
    DTYPE_NAMES,
    check_batch,
    describe,
    dtype_name,
    normalize_batch,
    to_dtype,
)


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_every_contract_dtype_round_trips_its_name(name):
    assert dtype_name(to_dtype(name)) == name
    batch, n = normalize_batch({"x": np.zeros((3, 2), dtype=to_dtype(name))})
    assert n == 3
    assert describe(batch) == {"x": {"shape": [-1, 2], "dtype": name, "lod_level": 0}}


def test_description_has_exactly_the_seed_shape_and_order():
    batch, _ = normalize_batch(
        {"b": np.zeros((4, 1), np.int64), "a": np.zeros((4, 3, 5), np.float32)}
    )
    desc = describe(batch)
    assert list(desc) == ["b", "a"]
    assert desc["a"] == {"shape": [-1, 3, 5], "dtype": "float32", "lod_level": 0}


def test_list_of_samples_becomes_a_ragged_field_without_padding():
    batch, n = normalize_batch({"tok": [np.arange(3), np.arange(5), np.arange(1)]})
    rag = batch["tok"]
    assert isinstance(rag, Ragged)
    assert n == 3
    assert rag.values.shape == (9,)
    assert describe(batch)["tok"] == {"shape": [-1, -1], "dtype": "int64", "lod_level": 1}
    padded, lengths = rag.padded(fill=-1)
    assert padded.shape == (3, 5)
    assert lengths.tolist() == [3, 5, 1]
    assert padded[2].tolist() == [0, -1, -1, -1, -1]
    assert [s.tolist() for s in rag.to_list()] == [[0, 1, 2], [0, 1, 2, 3, 4], [0]]


def test_ragged_with_inner_dims_and_slicing_are_views():
    rag = Ragged.from_list([np.ones((2, 4), np.float32), np.zeros((3, 4), np.float32)])
    assert rag.inner_shape == (4,)
    part = rag.slice(1, 2)
    assert np.shares_memory(part.values, rag.values)
    assert part.lengths.tolist() == [3]
    assert describe({"h": rag})["h"]["shape"] == [-1, -1, 4]


def test_torch_tensors_are_accepted_and_converted():
    torch = pytest.importorskip("torch")
    batch, _ = normalize_batch({"x": torch.ones(2, 3), "b": torch.ones(2, 1, dtype=torch.bfloat16)})
    assert isinstance(batch["x"], np.ndarray)
    assert describe(batch)["b"]["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, "'a': 2, 'b': 3"),
        ({"a": 5}, "expected a numpy array"),
        ({"a": np.float32(1.0)}, "0-d array"),
        ({"a": np.zeros((2,), dtype=np.complex64)}, "unsupported dtype"),
        ({}, "empty"),
        ({"a": [np.zeros((2, 3)), np.zeros((2, 4))]}, "sample 1"),
    ],
)
def test_bad_batches_get_clear_errors(batch, message):
    with pytest.raises(KnowledgeError, match=message):
        normalize_batch(batch)


def test_check_batch_names_the_key_expected_and_got():
    desc = describe(normalize_batch({"x": np.zeros((2, 3), np.float32)})[0])
    with pytest.raises(KnowledgeError, match=r"'x' has dtype 'float64', expected 'float32'"):
        check_batch(normalize_batch({"x": np.zeros((2, 3))})[0], desc)
    with pytest.raises(KnowledgeError, match=r"'x' has shape \[-1, 4\], expected \[-1, 3\]"):
        check_batch(normalize_batch({"x": np.zeros((2, 4), np.float32)})[0], desc)
    with pytest.raises(KnowledgeError, match="missing"):
        check_batch(normalize_batch({"y": np.zeros((2, 3), np.float32)})[0], desc)
