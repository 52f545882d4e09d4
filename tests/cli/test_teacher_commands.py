"""`pantheon serve` / `pantheon dump`: exit statuses, messages in the words of the options,
what `dump` takes, progress bars, the sizes it prints, and `--weights`.

In process with click's CliRunner (the modules a command imports are written to a temporary
folder under a fresh name), and through the real entry point in a subprocess where a terminal,
signals or a second process matter.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pantheon import KnowledgeFile
from pantheon._cli import main
from pantheon._cli.errors import cli_words
from pantheon._cli.inspect_file import inspect_report, size_line

MODULE = """
import numpy as np

def teacher(x):
    return {"y": x * 2.0}

def broken(x):
    raise RuntimeError("the model broke on purpose")

def batches():
    for s in range(0, 50, 10):
        yield (np.arange(s, s + 10, dtype=np.float32).reshape(-1, 1),)

def tokens():  # variable-length samples: 1..7 tokens each
    for n in range(30):
        yield (np.arange(n % 7 + 1, dtype=np.int64),)

def lengths(ids):
    return {"n": np.full((len(ids), 1), 1.0, np.float32)}
"""


@pytest.fixture(autouse=True)
def _restore_signals() -> Iterator[None]:
    """`serve`/`dump` turn SIGINT/SIGTERM into KeyboardInterrupt; undo it after each test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def mod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh module holding MODULE's programs and readers; its name; cwd is its folder."""
    name = f"clitoy_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PANTHEON_TOKEN", raising=False)
    return name


def cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def dump_args(mod: str, *extra: str, program: str = "teacher") -> list[str]:
    return ["dump", f"{mod}:{program}", "--reader", f"{mod}:batches", "--feed", "x",
            "--schema", "y", "--out", "k.arrow", *extra]  # fmt: skip


# -- help and refused options ---------------------------------------------------------------


def test_dump_help_lists_only_what_applies_to_dumping() -> None:
    dump_help = cli("dump", "--help").output
    serve_help = cli("serve", "--help").output
    for option in ("--port", "--host", "--token", "--times", "--timeout"):
        assert option not in dump_help
        assert option in serve_help
    for option in ("--out", "--compression", "--reader", "--weights", "--no-progress"):
        assert option in dump_help


@pytest.mark.parametrize(
    ("option", "value"),
    [("--port", "0"), ("--host", "0.0.0.0"), ("--token", "s3cret"), ("--times", "2"),
     ("--timeout", "5")],
)  # fmt: skip
def test_dump_refuses_online_options_and_points_to_serve(mod, option, value) -> None:
    res = cli(*dump_args(mod, option, value))
    assert res.exit_code == 2
    assert f"{option} applies to an online teacher" in res.output
    assert "pantheon serve" in res.output
    assert not Path("k.arrow").exists()


def test_dump_ignores_the_token_environment_variable(mod, monkeypatch) -> None:
    monkeypatch.setenv("PANTHEON_TOKEN", "from-the-environment")
    res = cli(*dump_args(mod))
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("option", [["--host", "0.0.0.0"], ["--times", "2"], ["--timeout", "9"]])
def test_serve_to_a_file_refuses_online_options(mod, option) -> None:
    args = ["serve", f"{mod}:teacher", "--reader", f"{mod}:batches", "--feed", "x", "--out", "k"]
    res = cli(*args, *option)
    assert res.exit_code == 2
    assert f"{option[0]} applies to an online teacher (--port), not to --out" in res.output


# -- usage errors (exit 2) name the option --------------------------------------------------


def test_listening_beyond_loopback_without_a_token_names_the_option(mod) -> None:
    res = cli("serve", f"{mod}:teacher", "--reader", f"{mod}:batches", "--feed", "x",
              "--port", "0", "--host", "0.0.0.0")  # fmt: skip
    assert res.exit_code == 2
    assert "Usage:" in res.output
    assert "--token" in res.output and "PANTHEON_TOKEN" in res.output
    assert "token=" not in res.output


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--batch-size", "8"], "Invalid value for '--batch-size': applies to --reader-kind"),
        (["--topk", "y=0"], "Invalid value for '--topk'"),
        (["--schema", "=y"], "Invalid value for '--schema'"),
        (["--compression", "lz4", "--exe", ","], "Invalid value for '--exe'"),
    ],
)
def test_bad_option_values_are_usage_errors_naming_the_option(mod, extra, words) -> None:
    res = cli(*dump_args(mod, *extra))
    assert res.exit_code == 2
    assert words in res.output


def test_a_reader_that_cannot_be_imported_names_reader(mod) -> None:
    res = cli("dump", f"{mod}:teacher", "--reader", f"{mod}:nope", "--feed", "x", "--out", "k")
    assert res.exit_code == 2
    assert "Invalid value for '--reader'" in res.output
    assert "has no attribute 'nope'" in res.output


def test_a_dump_without_a_reader_says_it_needs_one(mod) -> None:
    res = cli("dump", f"{mod}:teacher", "--feed", "x", "--out", "k.arrow")
    assert res.exit_code == 2
    assert "needs --reader" in res.output


# -- failures while running (exit 1, no usage text) -----------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--schema", "nope"], "--schema nope is neither an output of the program nor a feed"),
        (["--feed", "z"], "in --feed order ['x', 'z']"),
    ],
)
def test_a_run_that_fails_on_its_data_exits_1_in_the_options_words(mod, args, words) -> None:
    res = cli(*dump_args(mod, *args))
    assert res.exit_code == 1, res.output
    assert "Usage:" not in res.output
    assert res.output.startswith("Error: ")
    assert words in res.output
    assert "feed_list" not in res.output and "schema[" not in res.output


def test_a_program_that_raises_exits_1_with_its_error(mod) -> None:
    res = cli(*dump_args(mod, program="broken"))
    assert res.exit_code == 1
    assert "Usage:" not in res.output
    assert "RuntimeError: the model broke on purpose" in res.output


def test_a_teacher_no_student_reaches_exits_1_after_its_timeout(mod) -> None:
    res = cli("serve", f"{mod}:teacher", "--reader", f"{mod}:batches", "--feed", "x",
              "--port", "0", "--timeout", "0.5")  # fmt: skip
    assert res.exit_code == 1
    assert res.output.startswith("teacher listening on 127.0.0.1:")
    assert "Error: no student connected" in res.output and "Usage:" not in res.output


def test_cli_words_translates_the_library_names() -> None:
    assert cli_words("Pass token=... or set PANTHEON_TOKEN") == "Pass --token or set PANTHEON_TOKEN"
    assert (
        cli_words("schema['logits'] = 'output' is neither") == "--schema logits=output is neither"
    )
    assert cli_words("schema['y'] = 'y' is neither") == "--schema y is neither"
    assert cli_words("expected the keys ['x'] (feed_list)") == "expected the keys ['x'] (--feed)"
    assert cli_words("served its 2 round(s) (times=2)") == "served its 2 round(s) (--times 2)"
    assert cli_words("raise Teacher(timeout=...) to wait") == "raise --timeout to wait"
    assert cli_words("exe must be None, a device") == "--exe must be None, a device"
    assert cli_words("run exe.run(startup) first") == "run exe.run(startup) first"
    assert cli_words("needs an online teacher (out_port)") == "needs an online teacher (--port)"
    assert cli_words("two\n   lines") == "two lines"


# -- progress bars and the sizes dump prints ------------------------------------------------


def _entry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pantheon._cli", *args], capture_output=True, text=True,
        timeout=120, cwd=cwd, check=False,
    )  # fmt: skip


def test_a_failure_through_the_entry_point_exits_1_without_a_traceback(mod, tmp_path) -> None:
    res = _entry(*dump_args(mod, program="broken"), cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith("Error: ") and "Usage:" not in res.stderr
    assert "Traceback" not in res.stderr
    assert "RuntimeError: the model broke on purpose" in res.stderr


def test_progress_bar_only_when_asked_or_on_a_terminal(mod, tmp_path) -> None:
    plain = _entry(*dump_args(mod), cwd=tmp_path)  # stderr is a pipe, not a terminal
    assert plain.returncode == 0, plain.stderr
    assert "dumping knowledge" not in plain.stderr
    shown = _entry(*dump_args(mod, "--progress"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "dumping knowledge" in shown.stderr and "50 samples" in shown.stderr
    hidden = _entry(*dump_args(mod, "--no-progress"), cwd=tmp_path)
    assert hidden.returncode == 0 and "dumping knowledge" not in hidden.stderr


def _done_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("done: ")]
    assert len(lines) == 1, output
    return lines[0]


def test_dump_prints_the_sizes_inspect_shows(mod, tmp_path) -> None:
    res = cli(*dump_args(mod, "--compression", "zstd"))
    assert res.exit_code == 0, res.output
    report = inspect_report(tmp_path / "k.arrow", stats=False)
    assert _done_line(res.output) == f"done: {size_line(report)}"
    on_disk = sum(p.stat().st_size for p in [tmp_path / "k.arrow"])
    assert f"{on_disk:,} bytes on disk" in res.output
    shown = _entry("inspect", "k.arrow", "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["bytes"] == on_disk
    assert (
        f"{on_disk:,} ({report['bytes_per_sample']:.6g} per sample)"
        in _entry("inspect", "k.arrow", cwd=tmp_path).stdout
    )
    assert "50 samples in 5 batches" in res.output


def test_dump_of_ragged_knowledge_prints_the_tokens_inspect_counts(mod, tmp_path) -> None:
    res = cli("dump", f"{mod}:lengths", "--reader", f"{mod}:tokens", "--reader-kind",
              "sample_generator", "--batch-size", "8", "--feed", "ids", "--schema", "ids",
              "--schema", "n", "--out", "k.arrow")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = inspect_report(tmp_path / "k.arrow", stats=False)
    assert report["tokens"] == sum(n % 7 + 1 for n in range(30))
    line = _done_line(res.output)
    assert line == f"done: {size_line(report)}"
    assert re.search(rf"{report['tokens']:,} tokens \([\d.]+ bytes per token\)", line)


# -- --weights ------------------------------------------------------------------------------

NET = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 3)

    def forward(self, x):
        return self.lin(x)

class Marker:  # unpickling it would create the file MARKER
    def __reduce__(self):
        return (open, ("MARKER", "w"))
"""


@pytest.fixture
def net(mod, tmp_path) -> str:
    """A module holding NET beside ``mod``; its name (skips without torch)."""
    pytest.importorskip("torch")
    (tmp_path / f"{mod}_net.py").write_text(NET)
    return f"{mod}_net"


def test_weights_loads_a_state_dict_into_the_class(mod, net, tmp_path) -> None:
    import importlib

    import torch

    module = importlib.import_module(net)
    trained = module.Net()
    with torch.no_grad():
        trained.lin.weight.copy_(torch.tensor([[1.0], [2.0], [-3.0]]))
        trained.lin.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))
    torch.save({"epoch": 7, "state_dict": trained.state_dict()}, tmp_path / "ckpt.pt")
    res = cli("dump", f"{net}:Net", "--weights", "ckpt.pt", "--reader", f"{mod}:batches",
              "--feed", "x", "--schema", "logits=output", "--out", "k.arrow")  # fmt: skip
    assert res.exit_code == 0, res.output
    x = np.arange(50, dtype=np.float32).reshape(-1, 1)
    expected = x * np.array([1.0, 2.0, -3.0], np.float32) + np.array([0.5, 0.0, 1.0], np.float32)
    with KnowledgeFile(tmp_path / "k.arrow") as kf:
        got = np.concatenate([c.data["logits"] for c in kf.iter_chunks()])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_weights_never_unpickles_objects(mod, net, tmp_path) -> None:
    import importlib

    import torch

    module = importlib.import_module(net)
    torch.save({"state_dict": module.Net().state_dict(), "x": module.Marker()}, "evil.pt")
    torch.save(module.Net(), "whole.pt")  # a pickled module, not a state dict
    assert not (tmp_path / "MARKER").exists()
    for name, held in (("evil.pt", "io.open"), ("whole.pt", f"{net}.Net")):
        res = cli("dump", f"{net}:Net", "--weights", name, "--reader", f"{mod}:batches",
                  "--feed", "x", "--out", "k.arrow")  # fmt: skip
        assert res.exit_code == 2, res.output
        assert "Invalid value for '--weights'" in res.output
        assert "never unpickled" in res.output and held in res.output
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "k.arrow").exists()


@pytest.mark.parametrize(
    ("program", "state", "words"),
    [
        ("Net", {"lin.weight": [[1.0, 2.0]]}, "does not fit Net"),
        ("Net", {"other": {"a": 1}}, "holds a dict without a state dict"),
        (
            "function",
            None,
            "loads a state dict into a torch.nn.Module, but the program is a function",
        ),
        ("Net", "missing", "does not exist"),
    ],
)
def test_weights_that_do_not_fit_name_the_option(mod, net, tmp_path, program, state, words) -> None:
    import torch

    if isinstance(state, dict):
        torch.save({k: torch.tensor(v) if isinstance(v, list) else v for k, v in state.items()},
                   tmp_path / "w.pt")  # fmt: skip
    spec = f"{mod}:teacher" if program == "function" else f"{net}:{program}"
    if program == "function":
        torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    res = cli("dump", spec, "--weights", "w.pt", "--reader", f"{mod}:batches", "--feed", "x",
              "--out", "k.arrow")  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--weights'" in res.output
    assert words in res.output
