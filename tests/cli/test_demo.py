"""The demo's parts, in process: data, models, training, report, teacher processes.

The full run through Pantheon (teacher processes, TCP, knowledge file) is checked against the
in-process reference by ``test_pantheon_run_reproduces_local_reference``, which runs once the
public ``pantheon.Teacher`` / ``pantheon.Student`` API is exported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import torch

import pantheon
from pantheon import (
    ConfigError,
    FileFormatError,
    KnowledgeError,
    PantheonTimeoutError,
    TeacherError,
)
from pantheon._cli.demo import DemoResult, DemoSettings, KnowledgeCounters, TeacherResult, run_demo
from pantheon._cli.demo.data import batch_reader, iter_batches, load_digits_split
from pantheon._cli.demo.models import (
    StudentMLP,
    TeacherCNN,
    TeacherMLP,
    build_teacher,
    load_weights,
    save_weights,
)
from pantheon._cli.demo.orchestrate import PantheonKnowledge
from pantheon._cli.demo.procs import TeacherProcess, teacher_command
from pantheon._cli.demo.report import format_table, plot_figure, verdict, write_report
from pantheon._cli.demo.teacher_proc import ADDRESS_PREFIX, build_parser, make_program
from pantheon._cli.demo.train import (
    StudentConfig,
    StudentTrainer,
    distillation_loss,
    evaluate,
    train_teacher,
)


@pytest.fixture(scope="module")
def split():  # type: ignore[no-untyped-def]
    return load_digits_split(transfer_size=100, transfer_seed=0)


# -- data -------------------------------------------------------------------------------------


def test_split_is_fixed_stratified_and_typed(split) -> None:  # type: ignore[no-untyped-def]
    assert split.x_train.shape == (1257, 64)
    assert split.x_test.shape == (540, 64)
    assert split.x_train.dtype == np.float32
    assert split.y_train.dtype == np.int64
    assert split.x_train.min() >= 0.0
    assert split.x_train.max() <= 1.0
    assert np.bincount(split.y_transfer).tolist() == [10] * 10
    again = load_digits_split(transfer_size=100, transfer_seed=0)
    np.testing.assert_array_equal(again.x_transfer, split.x_transfer)
    np.testing.assert_array_equal(again.y_test, split.y_test)
    other = load_digits_split(transfer_size=100, transfer_seed=1)
    np.testing.assert_array_equal(other.x_test, split.x_test)  # the split itself is fixed
    assert not np.array_equal(other.x_transfer, split.x_transfer)
    # every transfer image is one of the teachers' training images
    train_rows = {row.tobytes() for row in split.x_train}
    assert all(row.tobytes() in train_rows for row in split.x_transfer)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"transfer_size": 5}, "transfer_size must be between 10 and 1257"),
    ({"transfer_size": 5000}, "transfer_size must be between 10 and 1257"),
    ({"test_fraction": 0.99}, "test_fraction must be in"),
])  # fmt: skip
def test_split_rejects_bad_sizes(kwargs, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=words):
        load_digits_split(**kwargs)


def test_reader_replays_same_order_each_round(split) -> None:  # type: ignore[no-untyped-def]
    reader = batch_reader(split.x_transfer, split.y_transfer, 32)
    first, second = list(reader()), list(reader())
    assert [len(y) for _, y in first] == [32, 32, 32, 4]
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(np.concatenate([y for _, y in first]), split.y_transfer)


def test_iter_batches_rejects_bad_arguments() -> None:
    x, y = np.zeros((4, 64), np.float32), np.zeros(3, np.int64)
    with pytest.raises(ConfigError, match="x has 4 samples but y has 3"):
        list(iter_batches(x, y, 2))
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        list(iter_batches(x, x[:, 0], 0))


# -- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [TeacherMLP(), TeacherCNN(), StudentMLP(8)])
def test_models_map_images_to_ten_logits(model) -> None:  # type: ignore[no-untyped-def]
    out = model(torch.zeros(5, 64))
    assert out.shape == (5, 10)


def test_unknown_teacher_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown teacher kind 'rnn': expected one of mlp, cnn"):
        build_teacher("rnn")


def test_weights_round_trip_through_npz(tmp_path: Path, split) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    model = build_teacher("cnn")
    path = save_weights(model, tmp_path / "cnn")
    assert path.name == "cnn.npz"
    loaded = load_weights(build_teacher("cnn"), path)
    with torch.no_grad():
        x = torch.from_numpy(split.x_test[:8])
        np.testing.assert_array_equal(model.eval()(x).numpy(), loaded.eval()(x).numpy())
    with pytest.raises(FileFormatError, match="do not fit a TeacherMLP"):
        load_weights(build_teacher("mlp"), path)
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(FileFormatError, match="cannot read model weights"):
        load_weights(build_teacher("cnn"), tmp_path / "junk.npz")


# -- training ---------------------------------------------------------------------------------


def test_distillation_loss() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.arange(6) % 10
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.equal(distillation_loss(s, y, None, temperature=4.0, alpha=0.5), ce)
    assert torch.allclose(distillation_loss(s, y, t, temperature=4.0, alpha=1.0), ce)
    # soft term is zero when the student already matches the teacher
    assert abs(float(distillation_loss(t, y, t, temperature=4.0, alpha=0.0))) < 1e-5
    assert distillation_loss(s, y, t, temperature=2.0, alpha=0.0) > 0


def test_student_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        StudentConfig(temperature=0.0)
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        StudentConfig(alpha=1.5)


def test_teacher_training_learns(split) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = train_teacher(
        build_teacher("mlp"), split.x_train, split.y_train, epochs=3, seed=0, progress=False
    )
    assert evaluate(model, split.x_test, split.y_test) > 0.85


def test_same_seed_students_start_equal_and_differ_only_by_knowledge(split) -> None:  # type: ignore[no-untyped-def]
    a = StudentTrainer(7, StudentConfig(hidden=8), distill=False)
    b = StudentTrainer(7, StudentConfig(hidden=8), distill=True)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    logits = np.eye(10, dtype=np.float32)[split.y_transfer] * 5.0
    batches = [
        {"image": x, "label": y, "logits": logits[i * 16 : i * 16 + len(y)]}
        for i, (x, y) in enumerate(iter_batches(split.x_transfer, split.y_transfer, 16))
    ]
    stats = b.train_epoch(batches)
    assert (stats.batches, stats.samples) == (7, 100)
    assert np.isfinite(stats.mean_loss)
    assert stats.seconds >= 0
    a.train_epoch(batches)
    assert any(
        not torch.equal(pa, pb)
        for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )


def test_distilling_student_needs_logits(split) -> None:  # type: ignore[no-untyped-def]
    trainer = StudentTrainer(0, distill=True)
    batch = {"image": split.x_transfer[:4], "label": split.y_transfer[:4]}
    with pytest.raises(KnowledgeError, match=r"student batch 0 lacks \['logits'\]"):
        trainer.train_step(batch)
    StudentTrainer(0, distill=False).train_step(batch)  # labels alone are enough here


def test_program_serves_teacher_logits(split) -> None:  # type: ignore[no-untyped-def]
    model = build_teacher("mlp").eval()
    out = make_program(model)(image=split.x_test[:3], label=split.y_test[:3])
    assert isinstance(out, np.ndarray)
    assert out.shape == (3, 10)
    assert out.dtype == np.float32


# -- report -----------------------------------------------------------------------------------


def _result(base: list[float], kd: list[float]) -> DemoResult:
    return DemoResult(
        teachers=[TeacherResult("mlp", "online, over TCP", 0.97, 1.0)],
        baseline_curve=base,
        distilled_curve=kd,
        counters=KnowledgeCounters(300, 21, None, 0.5, 0.01, "measured by the demo"),
        settings={"seed": 4},
        elapsed_seconds=3.0,
    )


def test_table_says_when_distillation_did_not_help() -> None:
    worse = _result([0.5, 0.9], [0.4, 0.85])
    assert verdict(worse) == "distillation did NOT help on seed 4: -5.0 points"
    assert "did NOT help" in format_table(worse)
    assert "helped on seed 4: +2.0 points" in format_table(_result([0.9], [0.92]))
    assert "made no difference" in verdict(_result([0.9], [0.9]))
    assert "600 samples/s" not in format_table(worse)
    assert "| 600 (300 samples, 21 batches, bytes not reported, 0.50 s)" in format_table(worse)


def test_write_report_writes_markdown_json_and_png(tmp_path: Path) -> None:
    done = write_report(_result([0.5, 0.9], [0.4, 0.95]), tmp_path / "rep")
    assert done.report_dir == str(tmp_path / "rep")
    assert Path(done.files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = Path(done.files["markdown"]).read_text(encoding="utf-8")
    assert format_table(done) in md
    assert "accuracy.png" in md
    data = json.loads(Path(done.files["json"]).read_text(encoding="utf-8"))
    assert data["distilled_accuracy"] == 0.95
    assert data["baseline_curve"] == [0.5, 0.9]
    assert data["counters"]["samples_per_second"] == 600.0
    assert data["verdict"].startswith("distillation helped")


def test_plot_tells_the_teachers_apart_and_marks_finals_and_gain() -> None:
    import dataclasses

    result = dataclasses.replace(
        _result([0.5, 0.9], [0.4, 0.95]),
        teachers=[
            TeacherResult("mlp", "online, over TCP", 0.976, 1.0),
            TeacherResult("cnn", "offline, knowledge file", 0.98, 1.0),
        ],
    )
    ax = plot_figure(result).axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "90.0 %" in texts and "95.0 %" in texts  # the final accuracies, at the last points
    assert "+5.0 points" in texts  # the gain
    teachers = [line for line in ax.get_lines() if line.get_label().startswith("teacher ")]
    assert len(teachers) == len(result.teachers) == 2
    assert len({(line.get_color(), line.get_linestyle()) for line in teachers}) == 2
    labels = [line.get_label() for line in teachers]
    for t in result.teachers:
        assert sum(f"teacher {t.name} " in label for label in labels) == 1
        assert any(f"{100 * t.test_accuracy:.1f} %" in label for label in labels)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "student, distilled from both teachers: 95.0 %" in legend
    assert "+5.0 points" in ax.get_title()


# -- teacher processes ------------------------------------------------------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_teacher_process_reports_its_address(tmp_path: Path) -> None:
    code = f"print('noise'); print({ADDRESS_PREFIX!r} + '127.0.0.1:4321', flush=True)"
    proc = TeacherProcess(_python(code), name="fake teacher", log_path=tmp_path / "t.log")
    try:
        assert proc.wait_address(timeout=60) == "127.0.0.1:4321"
        proc.wait_exit(timeout=60)
    finally:
        proc.kill()


def test_teacher_process_failing_before_its_address(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('boom: no weights\\n'); sys.exit(3)"
    proc = TeacherProcess(_python(code), name="fake teacher", log_path=tmp_path / "t.log")
    try:
        with pytest.raises(
            TeacherError, match=r"(?s)exited with status 3 before .*boom: no weights"
        ):
            proc.wait_address(timeout=60)
        with pytest.raises(TeacherError, match="exited with status 3"):
            proc.wait_exit(timeout=60)
    finally:
        proc.kill()


def test_teacher_process_silent_past_the_timeout_is_killed(tmp_path: Path) -> None:
    code = "import threading; threading.Event().wait()"
    proc = TeacherProcess(_python(code), name="silent teacher", log_path=tmp_path / "t.log")
    try:
        with pytest.raises(PantheonTimeoutError, match="silent teacher reported no address"):
            proc.wait_address(timeout=0.3)
        assert proc._proc.poll() is not None  # killed and reaped
    finally:
        proc.kill()


def test_teacher_command_line_parses(tmp_path: Path) -> None:
    common = {"transfer_size": 100, "transfer_seed": 0, "batch_size": 32}
    offline = teacher_command("cnn", tmp_path / "w.npz", out_path=tmp_path / "k.arrow", **common)
    online = teacher_command("mlp", tmp_path / "w.npz", online_times=30, **common)
    parser = build_parser()
    a = parser.parse_args(offline[3:])
    assert (a.kind, a.pass_inputs, a.online, a.out_path) == (
        "cnn",
        True,
        False,
        str(tmp_path / "k.arrow"),
    )
    b = parser.parse_args(online[3:])
    assert (b.kind, b.pass_inputs, b.online, b.times) == ("mlp", False, True, 30)


# -- the whole run ----------------------------------------------------------------------------


def test_quick_local_run_writes_an_honest_report(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(tmp_path, quick=True, transport="local", progress=False, echo=lines.append)
    assert len(result.baseline_curve) == len(result.distilled_curve) == 6
    assert all(0.0 <= a <= 1.0 for a in result.baseline_curve + result.distilled_curve)
    assert [t.name for t in result.teachers] == ["mlp", "cnn"]
    assert result.counters.samples == 600
    assert result.counters.batches == 6 * 7
    assert verdict(result) in lines[0]
    assert "report:" in lines[1]
    for f in ("results.md", "results.json", "accuracy.png"):
        assert (tmp_path / f).is_file()
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["settings"]["transport"] == "local"
    assert data["settings"]["epochs"] == 6


def test_run_demo_rejects_unknown_transport(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="transport must be 'pantheon' or 'local'"):
        run_demo(tmp_path, transport="carrier pigeon", echo=None)  # type: ignore[arg-type]


def test_default_setting_distils_better_than_hard_labels(tmp_path: Path) -> None:
    """The measured claim of the demo's defaults, on seed 0 (not a timing)."""
    result = run_demo(tmp_path, seed=0, transport="local", progress=False, echo=None)
    assert result.distilled_accuracy > result.baseline_accuracy
    assert min(t.test_accuracy for t in result.teachers) > 0.95


@pytest.mark.skipif(
    not (hasattr(pantheon, "Teacher") and hasattr(pantheon, "Student")),
    reason="needs the public pantheon.Teacher / pantheon.Student API",
)
def test_pantheon_run_reproduces_local_reference(tmp_path: Path) -> None:
    local = run_demo(tmp_path / "local", quick=True, transport="local", progress=False, echo=None)
    real = run_demo(tmp_path / "real", quick=True, transport="pantheon", progress=False, echo=None)
    # the labels and images pass through unchanged, in the same order: identical baseline
    assert real.baseline_curve == local.baseline_curve
    # the merged mean logits may differ in the last bit from the in-process mean
    np.testing.assert_allclose(real.distilled_curve, local.distilled_curve, atol=0.01)
    assert real.counters.samples == local.counters.samples == 600
    assert real.counters.source == "Student.stats()"
    work = tmp_path / "real" / "work"
    assert (work / "cnn_knowledge.arrow").exists()
    # each teacher's log holds its own lines, Pantheon's INFO records included
    online = (work / "teacher_mlp_online.log").read_text(encoding="utf-8")
    offline = (work / "teacher_cnn_offline.log").read_text(encoding="utf-8")
    assert "INFO pantheon.demo: demo teacher mlp: weights loaded from" in online
    assert "INFO pantheon.demo: demo teacher mlp: waiting for the student on 127.0.0.1:" in online
    assert "INFO pantheon: teacher listening on 127.0.0.1:" in online
    assert "INFO pantheon: knowledge service: serving knowledge on 127.0.0.1:" in online
    assert "INFO pantheon.demo: demo teacher cnn: weights loaded from" in offline
    assert "INFO pantheon: knowledge service: dumping knowledge to" in offline
    assert "demo teacher cnn" not in online and "demo teacher mlp" not in offline


def test_failing_teacher_process_is_reported_with_its_log(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an archive")
    settings = DemoSettings(epochs=1, teacher_epochs=1, timeout=60.0)
    source = PantheonKnowledge({"mlp": junk, "cnn": junk}, settings, tmp_path, progress=False)
    with (
        pytest.raises(TeacherError, match=r"(?s)online teacher \(mlp\).*cannot read model weights"),
        source,
    ):
        pytest.fail("the teachers cannot start")
    for log in ("teacher_mlp_online.log", "teacher_cnn_offline.log"):
        assert (tmp_path / log).is_file()
    assert all(p._proc.poll() is not None for p in source._procs)  # both reaped
