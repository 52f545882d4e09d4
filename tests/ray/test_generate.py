"""generate_knowledge on a local Ray instance: shards by id range, every id once, resume."""

from __future__ import annotations

import numpy as np
import pytest

from pantheon import ConfigError, KnowledgeFile, Student
from tests.ray import services

pytestmark = [
    pytest.mark.ray,
    # Ray Data's groupby sets deprecated options of its own context, which then warns
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]
ray_mod = pytest.importorskip("pantheon.ray")
ray = pytest.importorskip("ray")

N = 10_000
PER_SHARD = 2_500


def _dataset():
    def with_x(batch):
        ids = batch["id"]
        return {"id": ids, "x": ids.astype(np.float32).reshape(-1, 1) / 100}

    return ray.data.range(N, override_num_blocks=8).map_batches(with_x, batch_format="numpy")


def _generate(out):
    return ray_mod.generate_knowledge(
        _dataset(),
        out,
        feed_list=["x"],
        schema={"a": "a", "b": "b", "x": "x"},
        program=services.affine,
        batch_size=256,
        concurrency=2,
        num_cpus=1,
        shard_samples=PER_SHARD,
    )


@pytest.mark.timeout(300)  # three Ray Data jobs (a shuffle each) on 2 cores
def test_every_id_once_equal_to_the_program_then_only_a_deleted_or_cut_shard_again(
    ray_cluster, tmp_path
):
    out = tmp_path / "knowledge"
    report = _generate(out)
    names = [f"part-{k:010d}.arrow" for k in range(N // PER_SHARD)]
    assert report == {"computed": names, "kept": [], "samples": N}
    with KnowledgeFile(out) as kf:
        assert kf.num_samples == N
        assert kf.sample_ids.tolist() == list(range(N))  # every id once, in order
        ids = np.array([9_999, 0, 4_321, 2_500, 7])
        got = kf.take(ids)
        x = (ids.astype(np.float32) / 100).reshape(-1, 1)
        want = services.affine(x)
        assert np.array_equal(got["a"], want["a"]) and np.array_equal(got["b"], want["b"])
    with Student() as student:  # the directory is one knowledge source
        student.register_teacher(in_path=out)
        batches = list(student.get_knowledge_generator(batch_size=1000)())
    x = np.concatenate([b["x"] for b in batches])
    assert np.array_equal(np.concatenate([b["a"] for b in batches]), services.affine(x)["a"])
    assert len(x) == N

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / names[2]).unlink()
    (out / f".{names[1]}.{'0' * 32}.tmp").write_bytes(b"half a shard")  # a killed job's leftover
    again = _generate(out)
    assert again == {
        "computed": [names[2]],
        "kept": [names[0], names[1], names[3]],
        "samples": PER_SHARD,
    }
    assert sorted(p.name for p in out.iterdir()) == names  # the leftover is gone
    for name in (names[0], names[1], names[3]):
        assert (out / name).stat().st_mtime_ns == mtimes[name]  # not written again
    with KnowledgeFile(out) as kf:
        assert kf.sample_ids.tolist() == list(range(N))

    cut = out / names[1]  # a shard whose footer was lost does not pass for whole
    cut.write_bytes(cut.read_bytes()[:-100])
    assert _generate(out)["computed"] == [names[1]]
    with KnowledgeFile(out, allow_truncated=False) as kf:
        assert kf.sample_ids.tolist() == list(range(N))


def test_bad_arguments_are_refused_before_anything_runs(ray_cluster, tmp_path):
    with pytest.raises(ConfigError, match="ray.data.Dataset"):
        ray_mod.generate_knowledge(
            [1, 2],
            tmp_path,
            feed_list=["x"],
            schema={"a": "a"},
            program=services.affine,
            batch_size=8,
        )
