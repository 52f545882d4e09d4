"""pantheon.paddle: static programs and dygraph Layers as knowledge service programs, Paddle
places and executors as devices, Paddle tensors as knowledge and messages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from pantheon import ConfigError, KnowledgeFile, Student, Teacher, WorkerError  # noqa: E402
from pantheon._chunks import concat_chunks  # noqa: E402
from pantheon._knowledge import BFLOAT16  # noqa: E402
from pantheon._service import parse_devices  # noqa: E402
from pantheon._wire import decode_value, encode_value  # noqa: E402
from pantheon.paddle import PaddleLayerProgram, PaddleProgram  # noqa: E402
from tests.helpers import ROOT, query_handler, round_factory  # noqa: E402

pytestmark = pytest.mark.paddle


@pytest.fixture
def static() -> Iterator[None]:
    """Paddle's static-graph mode for one test, dynamic mode (the default) restored after."""
    paddle.enable_static()
    try:
        yield
    finally:
        paddle.disable_static()


def seed_program(offset: int = -1) -> tuple[Any, Any, Any, Any]:
    """The seed toy's teacher: x -> 2x + offset, with the result copied by assign."""
    startup, program = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(program, startup):
        x = paddle.static.data(name="x", shape=[-1, 1], dtype="int64")
        y = x * 2 + offset
        result = paddle.assign(y)
    paddle.static.Executor(paddle.CPUPlace()).run(startup)
    return program, x, y, result


def fc_program() -> tuple[Any, Any, Any]:
    """A program with parameters: softmax(x W + b) as float32 and its logits as float16."""
    startup, program = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(program, startup):
        x = paddle.static.data(name="feat", shape=[-1, 3], dtype="float32")
        w, b = paddle.ParamAttr(name="fc_w"), paddle.ParamAttr(name="fc_b")
        logits = paddle.static.nn.fc(x, 4, weight_attr=w, bias_attr=b)
        probs = paddle.nn.functional.softmax(logits)
        half = paddle.cast(logits, "float16")
    paddle.static.Executor(paddle.CPUPlace()).run(startup)
    return program, probs, half


def fc_reference(feat: np.ndarray) -> np.ndarray:
    scope = paddle.static.global_scope()
    w = np.array(scope.find_var("fc_w").get_tensor())
    b = np.array(scope.find_var("fc_b").get_tensor())
    z = feat @ w + b
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def seed_samples() -> Iterator[list[int]]:
    for i in range(100):
        yield [i]  # as the seed's sample_generator: one int per sample, fed as [-1, 1]


def features() -> Iterator[tuple[np.ndarray]]:
    rng = np.random.default_rng(0)
    for _ in range(41):
        yield (rng.standard_normal(3),)  # float64: cast to the feed's float32


def gather(chunks: list[Any]) -> dict[str, np.ndarray]:
    out = concat_chunks(chunks)
    np.testing.assert_array_equal(out.ids, np.arange(len(out.ids)))
    return {k: v for k, v in out.data.items() if isinstance(v, np.ndarray)}


# -- static programs -----------------------------------------------------------------------


@pytest.mark.usefixtures("static")
@pytest.mark.parametrize("exe", [None, "cpu", 2, "executor", "place", ["cpu", "cpu", "cpu"]])
def test_seed_program_with_variables_in_feed_list_and_schema(exe: Any) -> None:
    program, x, y, result = seed_program()
    if exe == "executor":
        exe = paddle.static.Executor(paddle.CPUPlace())
    elif exe == "place":
        exe = paddle.CPUPlace()
    cfg = {"sample_generator": seed_samples, "batch_size": 7, "drop_last": False}
    schema = {"x": x, "2x-1": y, "result": result}
    data = gather(list(round_factory([x], schema, program, cfg, exe)(0)))
    assert list(data) == ["x", "2x-1", "result"]
    xs = np.arange(100).reshape(-1, 1)
    np.testing.assert_array_equal(data["x"], xs)  # fed as [B], passed through as [-1, 1]
    np.testing.assert_array_equal(data["2x-1"], 2 * xs - 1)
    np.testing.assert_array_equal(data["result"], 2 * xs - 1)
    assert data["x"].dtype == data["result"].dtype == np.int64


@pytest.mark.usefixtures("static")
def test_static_program_with_parameters_on_two_cpu_workers() -> None:
    program, probs, half = fc_program()
    cfg = {"sample_generator": features, "batch_size": 4, "drop_last": False}
    schema = {"feat": "feat", "probs": probs, "half": half}
    data = gather(list(round_factory(["feat"], schema, program, cfg, 2)(0)))
    feat = np.stack([f for (f,) in features()]).astype(np.float32)
    np.testing.assert_array_equal(data["feat"], feat)
    np.testing.assert_allclose(data["probs"], fc_reference(feat), rtol=1e-5, atol=1e-6)
    assert data["half"].dtype == np.float16  # fp16 knowledge straight from the program


@pytest.mark.usefixtures("static")
def test_each_worker_has_its_own_program_scope_and_executor() -> None:
    program, probs, _ = fc_program()
    wrapped = PaddleProgram(program, ["feat"], {"probs": probs})
    a, b = wrapped.for_device("cpu"), wrapped.for_device("cpu")
    assert a.program is not b.program and a.program is not program
    assert a.scope is not b.scope and a.exe is not b.exe
    name = "fc_w"
    shared = np.array(a.scope.find_var(name).get_tensor())
    np.testing.assert_array_equal(shared, np.array(b.scope.find_var(name).get_tensor()))
    feat = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(a({"feat": feat})["probs"], fc_reference(feat), rtol=1e-5)
    assert wrapped.output_names == ["probs", "feat"]


@pytest.mark.usefixtures("static")
def test_query_handler_with_a_static_program() -> None:
    program, x, y, _ = seed_program(offset=1)
    handle = query_handler([x], {"x": x, "2x+1": y}, program, exe=2)
    for n in (1, 5, 3):
        got = handle({"x": np.arange(n)})
        np.testing.assert_array_equal(got["2x+1"], 2 * np.arange(n).reshape(-1, 1) + 1)


@pytest.mark.usefixtures("static")
def test_static_program_mistakes_are_config_errors() -> None:
    program, x, y, _ = seed_program()
    cfg = {"batch_generator": lambda: iter([(np.arange(3),)])}
    with pytest.raises(ConfigError, match=r"feed variables \['x'\] are not in feed_list"):
        round_factory(["other"], {"y": y}, program, cfg)
    with pytest.raises(ConfigError, match="no variable named 'nope'"):
        round_factory([x], {"y": "nope"}, program, cfg)
    with pytest.raises(ConfigError, match="give the paddle.static.Program they belong to"):
        round_factory(["x"], {"y": y}, lambda x: x, cfg)
    with pytest.raises(ConfigError, match="schema\\['y'\\] of a Paddle program"):
        round_factory([x], {"y": 3}, program, cfg)
    float_cfg = {"batch_generator": lambda: iter([(np.ones((2, 1)) * 0.5,)])}
    with pytest.raises(ConfigError, match="has dtype float64, the program declares int64"):
        list(round_factory([x], {"y": y}, program, float_cfg)(0))
    wide_cfg = {"batch_generator": lambda: iter([(np.ones((2, 3), np.int64),)])}
    with pytest.raises(ConfigError, match=r"shape \[2, 3\], which does not fit .* \[-1, 1\]"):
        list(round_factory([x], {"y": y}, program, wide_cfg)(0))


@pytest.mark.usefixtures("static")
def test_parameters_without_values_are_a_config_error() -> None:
    startup, program = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(program, startup):
        x = paddle.static.data(name="feat", shape=[-1, 3], dtype="float32")
        out = paddle.static.nn.fc(x, 2)  # startup never run: no parameter values
    cfg = {"batch_generator": lambda: iter([(np.ones((2, 3), np.float32),)])}
    with pytest.raises(ConfigError, match="run the startup program"):
        round_factory([x], {"out": out}, program, cfg)


def test_paddle_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_devices(paddle.CPUPlace()) == ["cpu"]
    assert parse_devices("gpu:1") == ["gpu:1"]
    assert parse_devices(["gpu:0", "cuda:1"]) == ["gpu:0", "cuda:1"]
    exe = paddle.static.Executor(paddle.CPUPlace())
    assert parse_devices(exe) == ["cpu"]  # as the seed: CPU_NUM workers, default 1
    monkeypatch.setenv("CPU_NUM", "3")
    assert parse_devices(exe) == ["cpu"] * 3
    monkeypatch.setenv("CPU_NUM", "zero")
    with pytest.raises(ConfigError, match="CPU_NUM"):
        parse_devices(exe)


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="this Paddle has CUDA")
@pytest.mark.usefixtures("static")
def test_gpu_on_the_cpu_wheel_says_what_to_install() -> None:
    program, x, y, _ = seed_program()
    cfg = {"batch_generator": lambda: iter([(np.arange(3),)])}
    with pytest.raises(ConfigError, match="install paddlepaddle-gpu"):
        round_factory([x], {"y": y}, program, cfg, "gpu:0")


@pytest.mark.usefixtures("static")
def test_seed_teacher_with_use_fp16_through_a_knowledge_file(tmp_path: Path) -> None:
    program, probs, half = fc_program()
    path = tmp_path / "fc.arrow"
    teacher = Teacher(out_path=path)
    teacher.start()
    teacher.start_knowledge_service(
        feed_list=["feat"],
        schema={"probs": probs, "half": half},
        program=program,
        reader_config={"sample_generator": features, "batch_size": 8, "drop_last": False},
        exe=paddle.static.Executor(paddle.CPUPlace()),
        use_fp16=True,
    )
    teacher.close()
    with KnowledgeFile(path) as kf:
        assert kf.desc["probs"]["dtype"] == "float32"  # the description keeps the dtype
        assert kf.desc["half"]["dtype"] == "float16"
        assert kf.codecs["probs"] == {"name": "cast", "dtype": "float16"}  # stored as float16
    with Student() as student:
        student.register_teacher(in_path=path)
        student.start()
        (batch,) = list(student.get_knowledge_generator(batch_size=41)())
    feat = np.stack([f for (f,) in features()]).astype(np.float32)
    assert batch["probs"].dtype == np.float32
    np.testing.assert_allclose(batch["probs"], fc_reference(feat), atol=1e-3)


def test_legacy_programs_work_too(tmp_path: Path) -> None:
    """The pre-PIR program (FLAGS_enable_pir_api=0): Variables with names, fetched by name."""
    script = textwrap.dedent(
        """
        import numpy as np
        import paddle
        from pantheon._chunks import concat_chunks
        from tests.helpers import round_factory

        paddle.enable_static()
        assert paddle.static.Program is paddle.base.framework.Program
        startup, program = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(program, startup):
            x = paddle.static.data(name="x", shape=[-1, 1], dtype="int64")
            y = x * 2 - 1
        paddle.static.Executor(paddle.CPUPlace()).run(startup)
        cfg = {"sample_generator": lambda: ([i] for i in range(50)), "batch_size": 8}
        cfg["drop_last"] = False
        chunks = list(round_factory([x], {"x": x, "y": y, "z": y.name}, program, cfg, 2)(0))
        data = concat_chunks(chunks).data
        xs = np.arange(50).reshape(-1, 1)
        assert (data["x"] == xs).all() and (data["y"] == 2 * xs - 1).all()
        assert (data["z"] == data["y"]).all()
        print("legacy ok")
        """
    )
    env = {"FLAGS_enable_pir_api": "0", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "legacy ok" in proc.stdout


# -- dygraph Layers ------------------------------------------------------------------------


def mlp() -> Any:
    paddle.seed(0)
    return paddle.nn.Sequential(
        paddle.nn.Linear(3, 8), paddle.nn.Dropout(0.5), paddle.nn.ReLU(), paddle.nn.Linear(8, 2)
    )


@pytest.mark.parametrize("exe", [None, 2, paddle.CPUPlace()])
def test_layer_program_matches_the_layer(exe: Any) -> None:
    layer = mlp()

    def samples() -> Iterator[tuple[np.ndarray]]:
        for (f,) in features():
            yield (f.astype(np.float32),)

    cfg = {"sample_generator": samples, "batch_size": 6, "drop_last": False}
    data = gather(
        list(round_factory(["feat"], {"feat": "feat", "out": "output"}, layer, cfg, exe)(0))
    )
    layer.eval()  # dropout off, as the service runs it
    with paddle.no_grad():
        want = layer(paddle.to_tensor(data["feat"])).numpy()
    np.testing.assert_allclose(data["out"], want, rtol=1e-5, atol=1e-6)


def test_layer_outputs_tuples_dicts_float16_and_bfloat16() -> None:
    class Multi(paddle.nn.Layer):  # type: ignore[misc]
        def forward(self, a: Any, b: Any) -> Any:
            return {"sum": a + b, "half": (a * b).astype("float16"), "bf": a.astype("bfloat16")}

    batches = {"batch_generator": lambda: iter([(np.ones((3, 2), np.float32), np.ones((3, 2)))])}
    schema = {"sum": "sum", "half": "half", "bf": "bf"}
    chunks = list(round_factory(["a", "b"], schema, Multi(), batches)(0))
    data = chunks[0].data
    assert data["half"].dtype == np.float16 and data["bf"].dtype == BFLOAT16
    np.testing.assert_array_equal(data["sum"], np.full((3, 2), 2.0))


def test_layer_workers_get_copies_and_the_first_uses_the_layer() -> None:
    layer = mlp()
    wrapped = PaddleLayerProgram(layer, ["feat"])
    first, second = wrapped.for_device("cpu"), wrapped.for_device("cpu")
    assert first.layer is layer and second.layer is not layer
    assert not layer.training and not second.layer.training


def test_a_layer_in_static_mode_is_a_config_error() -> None:
    layer = mlp()
    cfg = {"batch_generator": lambda: iter([(np.ones((2, 3), np.float32),)])}
    make_round = round_factory(["feat"], {"out": "output"}, layer, cfg)
    paddle.enable_static()
    try:
        with pytest.raises(ConfigError, match="paddle.disable_static"):
            list(make_round(0))
    finally:
        paddle.disable_static()


def test_a_failing_layer_names_the_worker() -> None:
    class Broken(paddle.nn.Layer):  # type: ignore[misc]
        def forward(self, a: Any) -> Any:
            raise RuntimeError("boom")

    cfg = {"batch_generator": lambda: iter([(np.ones((2, 3), np.float32),)])}
    with pytest.raises(WorkerError, match="worker 0 .*boom"):
        list(round_factory(["a"], {"out": "output"}, Broken(), cfg)(0))


# -- tensors as knowledge and messages -----------------------------------------------------


def test_paddle_tensors_are_knowledge_and_messages(tmp_path: Path) -> None:
    path = tmp_path / "t.arrow"
    with Teacher(out_path=path) as teacher:
        teacher.dump(
            {
                "x": paddle.arange(4, dtype="int64").reshape([4, 1]),
                "half": paddle.ones([4, 2], dtype="float16"),
                "bf": paddle.ones([4, 2], dtype="float32").astype("bfloat16"),
            }
        )
    with KnowledgeFile(path) as kf:
        assert {k: f["dtype"] for k, f in kf.desc.items()} == {
            "x": "int64",
            "half": "float16",
            "bf": "bfloat16",
        }
    payload, frames = encode_value({"t": paddle.to_tensor([1.5, 2.5]), "ids": {3, 5}})
    got = decode_value(payload, [bytearray(f.tobytes()) for f in frames])
    np.testing.assert_array_equal(got["t"], np.array([1.5, 2.5], np.float32))
    assert got["ids"] == {3, 5}
