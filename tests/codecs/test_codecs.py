import json

import ml_dtypes
import numpy as np
import pytest

from pantheon import ConfigError, Ragged
from pantheon._codecs import (
    Cast,
    Codec,
    codec_from_spec,
    column_name,
    register_codec,
    registered_codecs,
    resolve_codecs,
)
from pantheon._knowledge import describe, normalize_batch


def _desc(**arrays):
    batch, _ = normalize_batch(arrays)
    return describe(batch)


def test_column_names_of_parts():
    assert column_name("logits", "") == "logits"
    assert column_name("logits", "indices") == "logits@indices"


@pytest.mark.parametrize(
    ("alias", "dtype"),
    [("float16", "float16"), ("fp16", "float16"), ("bfloat16", "bfloat16"), ("bf16", "bfloat16")],
)
def test_cast_spec_is_json_and_rebuilds_the_same_codec(alias, dtype):
    codec = Cast(alias)
    spec = codec.spec()
    assert spec == {"name": "cast", "dtype": dtype}
    again = codec_from_spec(json.loads(json.dumps(spec)))
    assert again == codec
    assert isinstance(again, Codec)


def test_fp16_cast_round_trip_restores_dtype_within_precision():
    x = np.random.default_rng(0).normal(size=(16, 7)).astype(np.float32)
    field = _desc(x=x)["x"]
    parts = Cast("float16").encode(x)
    assert list(parts) == [""]
    assert parts[""].dtype == np.float16
    back = Cast("float16").decode(parts, field)
    assert back.dtype == np.float32
    assert back.shape == x.shape
    np.testing.assert_allclose(back, x, rtol=1e-3, atol=1e-4)


def test_bf16_cast_of_float64_and_of_ragged_fields():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3))
    back = Cast("bf16").decode(Cast("bf16").encode(x), _desc(x=x)["x"])
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, x, rtol=1e-2)
    rag = Ragged(rng.normal(size=(9, 2)).astype(np.float32), [2, 3, 4])
    parts = Cast("bfloat16").encode(rag)
    assert parts[""].dtype == np.dtype(ml_dtypes.bfloat16)
    back_rag = Cast("bfloat16").decode(parts, _desc(r=rag)["r"])
    assert isinstance(back_rag, Ragged)
    assert back_rag.dtype == np.float32
    np.testing.assert_array_equal(back_rag.lengths, [2, 3, 4])
    np.testing.assert_allclose(back_rag.values, rag.values, rtol=1e-2)


def test_cast_of_an_integer_field_is_refused_naming_the_key():
    desc = _desc(labels=np.zeros((4, 1), np.int64))
    with pytest.raises(ConfigError, match=r"'labels'.*float fields only"):
        resolve_codecs(desc, {"labels": "float16"}, use_fp16=False)


def test_unknown_cast_dtype_is_refused():
    with pytest.raises(ConfigError, match="float16' or 'bfloat16"):
        Cast("int8")


def test_use_fp16_casts_float32_and_float64_only():
    desc = _desc(
        a=np.zeros((2, 3), np.float32),
        b=np.zeros((2,), np.float64),
        c=np.zeros((2, 1), np.int32),
        d=np.zeros((2, 1), np.float16),
        e=np.zeros((2, 1), ml_dtypes.bfloat16),
    )
    codecs = resolve_codecs(desc, None, use_fp16=True)
    assert codecs == {"a": Cast("float16"), "b": Cast("float16")}
    assert resolve_codecs(desc, None, use_fp16=False) == {}


def test_explicit_codecs_win_over_use_fp16_and_none_opts_out():
    desc = _desc(a=np.zeros((2, 3), np.float32), b=np.zeros((2, 3), np.float32))
    codecs = resolve_codecs(desc, {"a": "bfloat16", "b": "none"}, use_fp16=True)
    assert codecs == {"a": Cast("bfloat16")}


def test_codec_objects_are_accepted():
    desc = _desc(a=np.zeros((2, 3), np.float32))
    assert resolve_codecs(desc, {"a": Cast("float16")}, use_fp16=False) == {"a": Cast("float16")}


def test_codecs_for_missing_keys_are_refused():
    desc = _desc(a=np.zeros((2, 3), np.float32))
    with pytest.raises(ConfigError, match=r"\['zz'\].*keys are \['a'\]"):
        resolve_codecs(desc, {"zz": "float16"}, use_fp16=False)


def test_a_non_codec_object_is_refused():
    desc = _desc(a=np.zeros((2, 3), np.float32))
    with pytest.raises(ConfigError, match="codec object"):
        resolve_codecs(desc, {"a": 3}, use_fp16=False)  # type: ignore[dict-item]


@pytest.mark.parametrize("spec", [{"name": "nope"}, {}, {"name": 3}, "cast", None])
def test_unknown_or_malformed_specs_are_config_errors(spec):
    with pytest.raises(ConfigError):
        codec_from_spec(spec)


def test_unknown_codec_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown codec 'nope'.*cast"):
        codec_from_spec({"name": "nope"})


def test_cast_spec_with_unknown_parameters_is_refused():
    with pytest.raises(ConfigError, match="only 'dtype'"):
        codec_from_spec({"name": "cast", "dtype": "float16", "code": "import os"})


def test_registry_refuses_to_overwrite_a_name():
    with pytest.raises(ConfigError, match="already registered"):
        register_codec("cast", lambda spec: Cast("float16"))
    assert "cast" in registered_codecs()


class _Halves:
    """A test codec with two parts: the first and the second half of the last axis."""

    def spec(self):
        return {"name": "test-halves"}

    def encode(self, value):
        k = value.shape[-1] // 2
        return {
            "lo": np.ascontiguousarray(value[..., :k]),
            "hi": np.ascontiguousarray(value[..., k:]),
        }

    def decode(self, parts, field):
        return np.concatenate([parts["lo"], parts["hi"]], axis=-1)


def test_registered_codecs_are_built_from_their_spec_and_name():
    if "test-halves" not in registered_codecs():
        register_codec("test-halves", lambda spec: _Halves())
    codec = codec_from_spec({"name": "test-halves"})
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(codec.decode(codec.encode(x), {}), x)
    desc = _desc(a=x)
    assert isinstance(resolve_codecs(desc, {"a": "test-halves"}, False)["a"], _Halves)


def test_codec_from_spec_never_turns_a_spec_into_code():
    with pytest.raises(ConfigError):
        codec_from_spec({"name": "builtins.eval"})
    with pytest.raises(ValueError, match="unknown codec"):
        codec_from_spec({"name": "os.system"})
