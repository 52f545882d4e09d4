"""Crafted knowledge files, one per finding: what used to be read wrongly is now refused.

Findings 4 (ragged offsets that wrap), 5 (the zero-copy path trusting unaligned or impossible
buffers; top-k indices outside the vocabulary) and 11 (a small zstd file decompressing to
1 GiB). Every read also goes through the pyarrow oracle of :mod:`tests.fuzz.ipc`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pantheon import FileFormatError, KnowledgeError, KnowledgeFile, KnowledgeWriter, Ragged, TopK
from pantheon._codecs import decode_batch
from pantheon._wire import decode_parts, encode_parts
from tests.files.test_files import _rewrite_metadata
from tests.fuzz.common import run_isolated
from tests.fuzz.ipc import (
    batch_fields,
    buffers,
    check_read,
    messages,
    read_i64,
    write_i64,
)

X_VALUES = 3  # buffers of {"x": int64 [n]}: ids validity, ids, x validity, x values


def write(path: Path, *batches: dict, **options) -> bytes:
    with KnowledgeWriter(path, **options) as writer:
        for batch in batches:
            writer.write(batch)
    return path.read_bytes()


def read_all(path: Path, **options) -> list:
    with KnowledgeFile(path, **options) as kf:
        return list(kf.iter_chunks())


def edit_field(path: Path, key: str, change, batch: int = 0) -> None:
    """Overwrite one int64 field of a batch's metadata: ``change(old) -> new``."""
    data = bytearray(path.read_bytes())
    at = batch_fields(bytes(data), messages(bytes(data))[1 + batch])[key]
    write_i64(data, at, change(read_i64(data, at)))
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- finding 5


def test_finding_5_an_unaligned_buffer_offset_is_refused(tmp_path: Path) -> None:
    """One byte more in x's buffer offset turned x = [0, 1, 2, 3] into [72057594037927936,
    ...] (its bytes read one off). Arrow requires 8-byte aligned buffers; pyarrow refuses
    this file, and so does Pantheon now, naming file and batch."""
    path = tmp_path / "k.arrow"
    write(path, {"x": np.arange(4, dtype=np.int64), "y": np.arange(4, dtype=np.int64) * 10})
    edit_field(path, f"buffer{X_VALUES}.offset", lambda old: old + 1)  # y's bytes follow
    with pytest.raises(FileFormatError, match=rf"{path}: batch 0 cannot be decoded.*aligned"):
        read_all(path)
    assert check_read(path) == "refused"


@pytest.mark.parametrize(
    ("key", "change"),
    [
        (f"buffer{X_VALUES}.length", lambda old: 2**31),  # past the end of the body
        (f"buffer{X_VALUES}.length", lambda old: 2**62),
        (f"buffer{X_VALUES}.length", lambda old: old - 1),  # too short for 4 int64
        (f"buffer{X_VALUES}.offset", lambda old: -8),
        (f"buffer{X_VALUES}.offset", lambda old: 2**63 - 8),
        ("node1.length", lambda old: 2**40),
        ("node1.nulls", lambda old: 1),
        ("rows", lambda old: 2**40),
    ],
)
def test_finding_5_impossible_buffers_and_nodes_are_refused(tmp_path: Path, key, change) -> None:
    path = tmp_path / "k.arrow"
    write(path, {"x": np.arange(4, dtype=np.int64)})
    edit_field(path, key, change)
    with pytest.raises(FileFormatError, match=str(path)):
        read_all(path)
    assert check_read(path) == "refused"


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("buffer1.length", lambda old: old + 8),  # the ids: longer than needed, in the body
        ("buffer2.offset", lambda old: old + 3),  # an empty validity buffer: never read
    ],
)
def test_unusual_but_valid_buffers_read_as_pyarrow_reads_them(tmp_path: Path, key, change) -> None:
    path = tmp_path / "k.arrow"
    write(path, {"x": np.arange(4, dtype=np.int64)})
    edit_field(path, key, change)
    assert check_read(path) == "read"
    with KnowledgeFile(path) as kf:
        assert next(kf.iter_chunks()).data["x"].tolist() == [0, 1, 2, 3]


def _topk_file(path: Path, vocab: int) -> tuple[bytes, int]:
    """A top-k file of two samples; returns its bytes and where its first index lies."""
    logits = np.random.default_rng(0).normal(size=(2, vocab)).astype(np.float32)
    data = write(path, {"logits": logits}, codecs={"logits": TopK(3)})
    # buffers: ids (2), logits@values (3), logits@indices (3): its values are the last
    at, _ = buffers(data, messages(data)[1])[-1]
    return data, at


@pytest.mark.parametrize(("vocab", "bad"), [(10, -1), (10, 10), (70_000, -1), (70_000, 70_000)])
@pytest.mark.parametrize("sparse", [False, True])
def test_finding_5_a_topk_index_outside_the_vocabulary_is_refused(
    tmp_path: Path, vocab: int, bad: int, sparse: bool
) -> None:
    """An index -1 used to land on position V - 1 (numpy's negative indexing), silently."""
    path = tmp_path / "k.arrow"
    data, at = _topk_file(path, vocab)
    mutated = bytearray(data)
    # the indices are packed at ceil(log2(V)) bits, little-endian: the low bytes of `bad`
    # written at the first index give it the value `bad` modulo 2**bits, out of range here
    dtype = np.int16 if vocab <= 65536 else np.int32
    mutated[at : at + dtype().itemsize] = np.asarray([bad]).astype(dtype).tobytes()
    path.write_bytes(bytes(mutated))
    with pytest.raises(FileFormatError, match=rf"{path}: batch 0 .*knowledge 'logits'.*outside"):
        read_all(path, sparse_topk=sparse)
    assert check_read(path, sparse_topk=sparse) == "refused"


def test_a_topk_index_outside_the_vocabulary_on_the_wire_is_refused() -> None:
    codec = TopK(2)
    field = {"shape": [-1, 10], "dtype": "float32", "lod_level": 0}
    parts = codec.encode(np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32))
    header, frames = encode_parts(np.arange(3), {("logits", p): v for p, v in parts.items()})
    raw = [bytearray(np.asarray(f).tobytes()) for f in frames]
    raw[2][:1] = b"\xff"  # the first index, packed at 4 bits: 15
    _, got = decode_parts(header, raw)
    with pytest.raises(KnowledgeError, match=r"knowledge 'logits'.*15, outside .*\[0, 10\)"):
        decode_batch(got, {"logits": field}, {"logits": codec})


# --------------------------------------------------------------------------- finding 4


def test_finding_4_ragged_offsets_that_wrap_in_a_file_are_refused(tmp_path: Path) -> None:
    """Offsets [0, 3, -2**63 + 2, 0, 3] give lengths whose int64 sum wraps to 3: three
    tokens used to come back as [[10, 11, 12], [], [], [10, 11, 12]]."""
    path = tmp_path / "k.arrow"
    data = write(path, {"tok": Ragged(np.asarray([10, 11, 12], np.int32), [3, 0, 0, 0])})
    offsets_at, size = buffers(data, messages(data)[1])[3]  # ids (2), tok validity, offsets
    assert size == 40
    mutated = bytearray(data)
    mutated[offsets_at : offsets_at + 40] = np.asarray(
        [0, 3, -(2**63) + 2, 0, 3], dtype=np.int64
    ).tobytes()
    path.write_bytes(bytes(mutated))
    with pytest.raises(FileFormatError, match=rf"{path}: batch 0 cannot be decoded"):
        read_all(path)
    assert check_read(path) == "refused"


# --------------------------------------------------------------------------- finding 11

_BOMB = r"""
import sys
from pathlib import Path
import numpy as np
import pyarrow as pa
from pantheon import FileFormatError, KnowledgeFile, KnowledgeWriter
from tests.fuzz.ipc import replace_buffers

path = Path(sys.argv[1])
with KnowledgeWriter(path, compression="zstd") as writer:
    writer.write({"x": np.arange(4, dtype=np.int64)})
sink = pa.BufferOutputStream()
with pa.CompressedOutputStream(sink, "zstd") as out:  # 1 GiB of zeros, streamed
    zeros = bytes(1 << 20)
    for _ in range(1024):
        out.write(zeros)
bomb = (1 << 30).to_bytes(8, "little", signed=True) + sink.getvalue().to_pybytes()
path.write_bytes(replace_buffers(path.read_bytes(), 0, {3: bomb}))
print("size", path.stat().st_size)
try:
    with KnowledgeFile(path) as kf:
        list(kf.iter_chunks())
    print("read")
except FileFormatError as exc:
    print("refused", exc)
print("peak", pa.default_memory_pool().max_memory())
"""


def test_finding_11_a_small_zstd_file_cannot_decompress_to_a_gibibyte(tmp_path: Path) -> None:
    """A 4-sample zstd file whose x buffer is 1 GiB of zeros (about 33 KB compressed) used to
    be decompressed whole (pyarrow accepts a buffer longer than needed). Now the claimed size
    is compared with what 4 int64 need before anything is decompressed."""
    proc = run_isolated(_BOMB.replace("sys.argv[1]", repr(str(tmp_path / "bomb.arrow"))))
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert int(lines["size"]) < 100_000
    assert (
        "batch 0: buffer 3 (the values of column 'x') claims to decompress to" in lines["refused"]
    )
    assert "1073741824 bytes, but 4 rows allow at most 64" in lines["refused"]
    assert int(lines["peak"]) < 16 << 20, "pyarrow allocated the bomb"


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
@pytest.mark.parametrize(
    ("buffer", "claim"),
    [(1, 2**30), (3, 65), (3, -5), (5, 2**20), (7, 65), (7, 2**40)],
    ids=[
        "ids",
        "x-past-padding",
        "x-negative",
        "tok-offsets",
        "tok-values-past-padding",
        "tok-values",
    ],
)
def test_compressed_claims_are_capped_by_the_layout(
    tmp_path: Path, compression: str, buffer: int, claim: int
) -> None:
    """Buffers: 0 ids validity, 1 ids, 2 x validity, 3 x (4 int32: 16 bytes, 64 with padding),
    4 tok validity, 5 tok offsets, 6 its values' validity, 7 its values (5 int64 as the
    offsets say: 40 bytes, 64 with padding). Claims past what the layout allows are refused."""
    path = tmp_path / "k.arrow"
    batch = {"x": np.arange(4, dtype=np.int32), "tok": Ragged(np.arange(5), [1, 2, 2, 0])}
    data = write(path, batch, compression=compression)
    at, size = buffers(data, messages(data)[1])[buffer]
    assert size >= 8
    mutated = bytearray(data)
    write_i64(mutated, at, claim)
    path.write_bytes(bytes(mutated))
    with pytest.raises(FileFormatError, match=rf"{path}: batch 0"):
        read_all(path)
    assert check_read(path) == "refused"


def test_a_ragged_column_may_decompress_to_what_its_offsets_say(tmp_path: Path) -> None:
    """The cap follows the data's own offsets: a genuine, very compressible ragged batch
    (800 KB of zeros in a few KB) still reads."""
    path = tmp_path / "k.arrow"
    tok = Ragged(np.zeros(100_000, np.int64), [50_000, 0, 50_000])
    data = write(path, {"tok": tok}, compression="zstd")
    assert len(data) < 10_000
    with KnowledgeFile(path) as kf:
        (chunk,) = kf.iter_chunks()
    assert chunk.data["tok"].lengths.tolist() == [50_000, 0, 50_000]
    assert check_read(path) == "read"


# --------------------------------------------------------------------------- crafted metadata

_DESC = {
    "x": {"shape": [-1, 1], "dtype": "int64", "lod_level": 0},
    "l": {"shape": [-1, 5], "dtype": "float32", "lod_level": 0},
}


def _with_x_shape(shape: list[int]) -> dict[str, str]:
    column = {"name": "x", "part": "", "dtype": "int64", "shape": shape, "lod_level": 0}
    return {
        "pantheon.desc": json.dumps({**_DESC, "x": {**_DESC["x"], "shape": shape}}),
        "pantheon.storage": json.dumps(
            {"x": {"codec": None, "columns": [column]}, "l": _topk_storage()}
        ),
    }


def _topk_storage(**spec: object) -> dict[str, object]:
    return {
        "codec": {"name": "topk", "k": 2, **spec},
        "columns": [
            {
                "name": "l@values",
                "part": "values",
                "dtype": "float16",
                "shape": [-1, 2],
                "lod_level": 0,
            },
            {
                "name": "l@indices",
                "part": "indices",
                "dtype": "int16",
                "shape": [-1, 2],
                "lod_level": 0,
            },
        ],
    }


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"pantheon.desc": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
        ({"pantheon.storage": '{"a":' * 50_000 + "1" + "}" * 50_000}, "nested too deeply"),
        (_with_x_shape([-1, 2**70]), "more than an Arrow fixed-size list"),
        (_with_x_shape([-1, 2**40]), "more than an Arrow fixed-size list"),
        (
            {"pantheon.desc": json.dumps({**_DESC, "l": {**_DESC["l"], "shape": [-1, 2**40]}})},
            "more than an Arrow fixed-size list",
        ),
        (
            {"pantheon.desc": json.dumps({**_DESC, "l": {**_DESC["l"], "shape": [-1, 1]}})},
            "the codec of knowledge 'l'.*at least 2 entries",
        ),
        (
            {
                "pantheon.storage": json.dumps(
                    {
                        "x": json.loads(_with_x_shape([-1, 1])["pantheon.storage"])["x"],
                        "l": _topk_storage(k=2**80),
                    }
                )
            },
            "the codec of knowledge 'l'",
        ),
    ],
    ids=[
        "deep-desc",
        "deep-storage",
        "huge-dim",
        "big-dim",
        "huge-vocab",
        "vocab-under-k",
        "huge-k",
    ],
)
def test_crafted_metadata_is_a_file_format_error(tmp_path: Path, update: dict, match: str) -> None:
    """Deep JSON used to raise RecursionError, huge dimensions OverflowError and a huge
    vocabulary MemoryError (densifying); each is now refused when the file is opened."""
    src = tmp_path / "k.arrow"
    write(
        src,
        {"x": np.arange(4).reshape(4, 1), "l": np.ones((4, 5), np.float32)},
        codecs={"l": TopK(2)},
    )
    _rewrite_metadata(src, tmp_path / "bad.arrow", update)
    with pytest.raises(FileFormatError, match=match):
        read_all(tmp_path / "bad.arrow")
