"""Integer narrowing: casts that check the range on write, and bit-packed integers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pantheon import (
    ConfigError,
    IntCast,
    KnowledgeError,
    KnowledgeFile,
    KnowledgeWriter,
    Packed,
    Ragged,
)
from pantheon._codecs import codec_from_spec, resolve_codecs


def test_int32_ids_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "k.arrow"
    ids = Ragged.from_list([np.array([5, 151_935, 7]), np.array([1])])
    with KnowledgeWriter(path, codecs={"input_ids": "int32", "pos": Packed(18)}) as w:
        w.write({"input_ids": ids, "pos": np.array([[0, 262_143], [3, 4]])})
    with KnowledgeFile(path) as kf:
        assert kf.codecs == {
            "input_ids": {"name": "int", "dtype": "int32"},
            "pos": {"name": "packed", "bits": 18},
        }
        cols = {c["name"]: c for c in kf.storage["input_ids"]["columns"]}
        assert cols["input_ids"]["dtype"] == "int32"
        assert kf.storage["pos"]["columns"][0]["shape"] == [-1, 5]  # 2 x 18 bits
        batch = next(iter(kf.iter_chunks())).data
    got = batch["input_ids"]
    assert isinstance(got, Ragged) and got.values.dtype == np.int64
    assert got.values.tolist() == [5, 151_935, 7, 1]
    assert batch["pos"].dtype == np.int64  # type: ignore[union-attr]
    assert batch["pos"].tolist() == [[0, 262_143], [3, 4]]  # type: ignore[union-attr]


def test_a_value_that_does_not_fit_is_refused_on_write(tmp_path: Path) -> None:
    path = tmp_path / "k.arrow"
    with KnowledgeWriter(path, codecs={"input_ids": "int16"}) as w:
        w.write({"input_ids": np.array([[1], [32_767]])})
        with pytest.raises(
            KnowledgeError, match=r"knowledge 'input_ids': the value 40000 does not fit in int16"
        ):
            w.write({"input_ids": np.array([[1], [40_000]])})
        with pytest.raises(KnowledgeError, match=r"-1 does not fit in 18 bits"):
            Packed(18).encode(np.array([[-1]]))
    with KnowledgeFile(path) as kf:
        assert kf.num_samples == 2  # the refused batch was not written


@pytest.mark.parametrize("shape", [(4,), (4, 3), (4, 2, 5)])
def test_packed_shapes(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, size=shape)
    codec = Packed.for_vocab(1000)
    assert codec.bits == 10
    field = {"shape": [-1, *shape[1:]], "dtype": "int64", "lod_level": 0}
    got = codec.decode(codec.encode(x), field)
    np.testing.assert_array_equal(got, x)


def test_ragged_packed_scalars_per_token() -> None:
    ids = Ragged.from_list([np.array([3, 9]), np.array([], np.int64), np.array([1])])
    codec = Packed(4)
    parts = codec.encode(ids)
    stored = parts[""]
    assert isinstance(stored, Ragged) and stored.inner_shape == (1,)
    got = codec.decode(parts, {"shape": [-1, -1], "dtype": "int64", "lod_level": 1})
    assert isinstance(got, Ragged) and got.values.tolist() == [3, 9, 1]
    assert got.lengths.tolist() == [2, 0, 1]


def test_int_codec_configuration_errors() -> None:
    desc = {"x": {"shape": [-1, 2], "dtype": "float32", "lod_level": 0}}
    with pytest.raises(ConfigError, match="integer fields"):
        resolve_codecs(desc, {"x": "int32"}, False)
    with pytest.raises(ConfigError, match="IntCast stores integers"):
        IntCast("int64")
    with pytest.raises(ConfigError, match="bits must be"):
        Packed(0)
    with pytest.raises(ConfigError, match="exactly 'bits'"):
        codec_from_spec({"name": "packed"})
    assert isinstance(codec_from_spec({"name": "int", "dtype": "uint16"}), IntCast)
