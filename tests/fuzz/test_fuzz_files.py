"""Mutated and crafted knowledge files: every read agrees with pyarrow or is refused.

Each read ends in values equal to pyarrow's own reading of the same bytes, or in a
``FileFormatError`` naming the file (:func:`tests.fuzz.ipc.check_read`): never another
exception type, never different values. Mutations: random bytes, one int64 field of a record
batch's metadata (rows, body length, field nodes, buffer offsets and lengths), one int64 of a
buffer's data (ragged offsets, top-k indices, the uncompressed length that starts every
compressed buffer), or a cut.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pantheon import KnowledgeWriter, Ragged, TopK
from tests.files.test_files import _rewrite_metadata
from tests.fuzz.common import SCALE, fuzz_settings
from tests.fuzz.ipc import batch_fields, buffers, check_read, messages, read_i64, write_i64

DELTAS = (-64, -9, -8, -1, 1, 7, 8, 9, 64)
SPECIALS = (0, 1, -1, -2, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -(2**63))


def _batches(sizes: tuple[int, ...], *, topk: bool = False) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    out = []
    for n in sizes:
        lengths = rng.integers(0, 4, n)
        tokens = int(lengths.sum())
        batch: dict[str, Any] = {
            "x": np.arange(n, dtype=np.int64),
            "dense": rng.normal(size=(n, 3)).astype(np.float32),
            "flags": rng.random((n, 2)) > 0.5,
            "tok": Ragged(rng.integers(0, 99, tokens).astype(np.int32), lengths),
            "emb": Ragged(rng.normal(size=(tokens, 2)).astype(np.float16), lengths),
        }
        if topk:
            batch = {
                "x": batch["x"],
                "logits": rng.normal(size=(n, 10)).astype(np.float32),
                "seq": Ragged(rng.normal(size=(tokens, 10)).astype(np.float32), lengths),
            }
        out.append(batch)
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"dense_only": True},
    "ragged": {},
    "zstd": {"compression": "zstd"},
    "lz4": {"compression": "lz4"},
    "fp16": {"use_fp16": True},
    "topk": {"codecs": {"logits": TopK(3), "seq": TopK(2)}},
}


@functools.cache
def variant(name: str) -> bytes:
    """The bytes of a small valid knowledge file of two batches (4 and 3 samples)."""
    options = dict(VARIANTS[name])
    batches = _batches((4, 3), topk=name == "topk")
    if options.pop("dense_only", False):
        batches = [{k: v for k, v in b.items() if not isinstance(v, Ragged)} for b in batches]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.arrow"
        with KnowledgeWriter(path, **options) as writer:
            for batch in batches:
                writer.write(batch)
        return path.read_bytes()


def check_bytes(data: bytes, *, sparse_topk: bool = False) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.arrow"
        path.write_bytes(data)
        return check_read(path, sparse_topk=sparse_topk)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_unmutated_files_read(name: str) -> None:
    assert check_bytes(variant(name)) == "read"
    assert check_bytes(variant(name), sparse_topk=True) == "read"


# --------------------------------------------------------------------------- fuzzing


def _new_value(draw: st.DrawFn, old: int) -> int:
    value = draw(
        st.one_of(st.sampled_from(DELTAS).map(lambda d: old + d), st.sampled_from(SPECIALS))
    )
    return max(-(2**63), min(2**63 - 1, value))


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(variant, kind of mutation, the mutated bytes)."""
    name = draw(st.sampled_from(sorted(VARIANTS)))
    data = bytearray(variant(name))
    batches = messages(bytes(data))[1:]
    kind = draw(st.sampled_from(["bytes", "field", "data", "cut"]))
    if kind == "bytes":
        for at, byte in draw(
            st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=4)
        ):
            data[at % len(data)] = byte
    elif kind == "field":
        fields = batch_fields(bytes(data), draw(st.sampled_from(batches)))
        at = fields[draw(st.sampled_from(sorted(fields)))]
        write_i64(data, at, _new_value(draw, read_i64(data, at)))
    elif kind == "data":
        bufs = [
            (at, size)
            for at, size in buffers(bytes(data), draw(st.sampled_from(batches)))
            if size >= 8
        ]
        at, size = draw(st.sampled_from(bufs))
        at += 8 * draw(st.integers(0, size // 8 - 1))
        write_i64(data, at, _new_value(draw, read_i64(data, at)))
    else:
        del data[draw(st.integers(0, len(data))) :]
    return name, kind, bytes(data)


@fuzz_settings(400)
@given(case=mutated_files(), sparse=st.booleans())
def test_mutated_files_read_as_pyarrow_reads_them_or_are_refused(
    case: tuple[str, str, bytes], sparse: bool
) -> None:
    _, _, data = case
    check_bytes(data, sparse_topk=sparse)


_SWEEP_VALUES = (1, 8, -8, -1, 2**62) if SCALE == 1 else DELTAS + SPECIALS


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_metadata_field_of_a_batch_mutated(name: str) -> None:
    """Each int64 field of the first batch's metadata, set off by a few bytes or to extreme
    values (all of them under ``make fuzz``): read as pyarrow reads it, or refused."""
    data = variant(name)
    msg = messages(data)[1]
    outcomes = {"read": 0, "refused": 0}
    for at in batch_fields(data, msg).values():
        old = read_i64(data, at)
        for change in _SWEEP_VALUES:
            new = change if abs(change) > 64 else old + change
            mutated = bytearray(data)
            write_i64(mutated, at, max(-(2**63), min(2**63 - 1, new)))
            outcomes[check_bytes(bytes(mutated))] += 1
    assert outcomes["refused"] > 0


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (the root excluded), depth first."""
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    out = []
    for key, child in items:
        out.append((*prefix, key))
        out += _paths(child, (*prefix, key))
    return out


_JSON_VALUES = st.one_of(
    st.sampled_from([0, 1, -1, 2, 3, 2**31, 2**40, 2**70, -(2**63), 1.5, None, True, "", "x"]),
    st.sampled_from(["int8", "float16", "bfloat16", "bool", "topk", "cast", "values", "indices"]),
    st.sampled_from([[], {}, [-1], [-1, -1], [-1, 0], {"name": "topk"}, [[[[[]]]]]]),
)


@fuzz_settings(150)
@given(
    name=st.sampled_from(["topk", "ragged", "fp16"]),
    key=st.sampled_from(["pantheon.desc", "pantheon.storage"]),
    data=st.data(),
)
def test_mutated_metadata_reads_as_pyarrow_reads_it_or_is_refused(
    name: str, key: str, data: Any
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "k.arrow", Path(tmp) / "bad.arrow"
        src.write_bytes(variant(name))
        with pa.memory_map(str(src)) as source:
            doc = json.loads(pa.ipc.open_file(source).schema.metadata[key.encode()])
        path = data.draw(st.sampled_from(_paths(doc)))
        parent = functools.reduce(lambda node, k: node[k], path[:-1], doc)
        parent[path[-1]] = data.draw(_JSON_VALUES)
        _rewrite_metadata(src, dst, {key: json.dumps(doc)})
        check_read(dst, sparse_topk=data.draw(st.booleans()))
