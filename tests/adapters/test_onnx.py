"""pantheon.onnx: an .onnx teacher in the knowledge service (ONNX Runtime)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pantheon import ConfigError, WorkerError  # noqa: E402
from pantheon.onnx import OnnxProgram  # noqa: E402
from tests.helpers import query_handler, round_factory  # noqa: E402

# ONNX Runtime and torch run the same float32 math with different kernels: compare with these.
RTOL, ATOL = 1e-5, 1e-5


def mlp() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    ).eval()


def mlp_as_onnx(module: Any, path: Path) -> Path:
    """The MLP as an ONNX graph built with onnx.helper: x -> (logits, hidden)."""
    w1, b1 = module[0].weight.detach().numpy(), module[0].bias.detach().numpy()
    w2, b2 = module[2].weight.detach().numpy(), module[2].bias.detach().numpy()
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(w1.T), "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(np.ascontiguousarray(w2.T), "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["n", 16]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def features() -> Iterator[tuple[np.ndarray]]:
    rng = np.random.default_rng(0)
    for _ in range(23):
        yield (rng.standard_normal(8).astype(np.float32),)


def direct(module: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = module(torch.from_numpy(x)).numpy()
    return out


@pytest.mark.parametrize("exe", [None, 2])
def test_onnx_program_matches_the_torch_model(tmp_path: Path, exe: Any) -> None:
    module = mlp()
    path = mlp_as_onnx(module, tmp_path / "mlp.onnx")
    cfg = {"sample_generator": features, "batch_size": 4, "drop_last": False}
    schema = {"x": "x", "logits": "logits", "hidden": "hidden"}
    chunks = list(round_factory(["x"], schema, str(path), cfg, exe)(0))
    x = np.concatenate([c.data["x"] for c in chunks])
    logits = np.concatenate([c.data["logits"] for c in chunks])
    assert x.shape == (23, 8)
    np.testing.assert_allclose(logits, direct(module, x), rtol=RTOL, atol=ATOL)
    hidden = np.concatenate([c.data["hidden"] for c in chunks])
    assert hidden.shape == (23, 16)
    assert (hidden >= 0).all()


def test_onnx_export_from_torch(tmp_path: Path) -> None:
    module = mlp()
    path = tmp_path / "exported.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (torch.zeros(2, 8),),
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            )
        except (ImportError, ModuleNotFoundError) as exc:  # pragma: no cover
            pytest.skip(f"this torch cannot export ONNX here: {exc}")
    cfg = {"sample_generator": features, "batch_size": 5}
    chunks = list(round_factory(["x"], {"x": "x", "y": "logits"}, path, cfg)(0))
    x = np.concatenate([c.data["x"] for c in chunks])
    y = np.concatenate([c.data["y"] for c in chunks])
    np.testing.assert_allclose(y, direct(module, x), rtol=RTOL, atol=ATOL)


def test_onnx_export_with_dynamo_runs_as_a_program(tmp_path: Path) -> None:
    """torch's default exporter (dynamo=True) needs onnxscript, which the onnx extra installs."""
    pytest.importorskip("onnxscript", reason="the onnx extra installs onnxscript")
    module = mlp()
    path = tmp_path / "dynamo.onnx"
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, 8),),
            str(path),
            dynamo=True,
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    cfg = {"sample_generator": features, "batch_size": 5, "drop_last": False}
    chunks = list(round_factory(["x"], {"x": "x", "y": "logits"}, path, cfg)(0))
    x = np.concatenate([c.data["x"] for c in chunks])
    y = np.concatenate([c.data["y"] for c in chunks])
    assert len(x) == 23
    np.testing.assert_allclose(y, direct(module, x), rtol=RTOL, atol=ATOL)


def test_onnx_query_and_errors(tmp_path: Path) -> None:
    module = mlp()
    path = mlp_as_onnx(module, tmp_path / "mlp.onnx")
    program = OnnxProgram(path, intra_op_num_threads=1)
    assert program.output_names() == ["logits", "hidden"]
    handle = query_handler(["x"], {"logits": "logits"}, program)
    x = np.ones((3, 8), np.float32)
    np.testing.assert_allclose(handle({"x": x})["logits"], direct(module, x), rtol=RTOL, atol=ATOL)

    with pytest.raises(ConfigError, match=r"outputs: \['hidden', 'logits'\]"):
        query_handler(["x"], {"y": "output"}, program)({"x": x})
    with pytest.raises(ConfigError, match="not feeds"):
        query_handler(["z"], {"l": "logits"}, program)({"z": x})

    def bad_dtype() -> Iterator[tuple[np.ndarray]]:
        yield (np.ones((2, 8), np.float64),)

    it = round_factory(["x"], {"l": "logits"}, program, {"batch_generator": bad_dtype})(0)
    with pytest.raises(WorkerError, match=r"'cpu'.*batch 0"):
        next(it)
    assert it.join(10)


def test_onnx_device_errors(tmp_path: Path) -> None:
    import onnxruntime

    path = mlp_as_onnx(mlp(), tmp_path / "mlp.onnx")
    with pytest.raises(ConfigError, match="does not exist"):
        OnnxProgram(tmp_path / "none.onnx")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
            OnnxProgram(path).for_device("cuda:0")
    with pytest.raises(ConfigError, match="expected 'cpu' or 'cuda:N'"):
        OnnxProgram(path).for_device("mps")
