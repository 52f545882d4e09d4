"""Every code block of the documentation runs.

For each Markdown file (README.md, docs/**/*.md, examples/toy/README.md), in a fresh temporary
working directory:

* ```python blocks run in order, in one namespace per file. A block whose first line is
  ``# file: NAME`` is also saved as ``NAME`` in the working directory (a module that later
  blocks or commands import); with ``# file: NAME (script)`` it is saved and compiled but not
  run (a script that a shell line of the page runs).
* ```bash / ```sh / ```console blocks: lines that start with ``pantheon `` run through the real
  command (the ``pantheon`` script next to ``sys.executable``) and must exit with status 0;
  ``pantheon serve --port ...`` is run in the background and read to the end by a Student.
  Every other line must be listed in :data:`NOT_RUN` with the reason it is not run. In
  ```console blocks only lines starting with ``$ `` are commands (the rest is output).
* ```text and untagged blocks (output, diagrams) are not run. Any other language is an
  error: tag it.

Failures name the file and the line of the block.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

SHELL = {"bash", "sh", "console", "shell"}
NOT_EXECUTED = {"text", ""}  # output, diagrams, untagged sketches

# Shell lines that are shown but not run, by prefix, each with the reason.
NOT_RUN: dict[str, str] = {
    "make demo": "`make demo` builds a virtual environment, installs the package and runs "
    "`pantheon demo`; the demo has its own tests",
    "make test": "`make test` is what CI runs (lint, type check, the whole test suite)",
    "git clone": "clones the repository: the tests run inside a clone",
    "cd pantheon-kd && make demo": "the clone's `make demo` (see `make demo`)",
    "pantheon demo": "the demo trains several models; the demo has its own tests",
    "pantheon bench": "benchmarks take minutes and measure this machine, not correctness",
    "python -m torch.distributed.run": "tests/online/test_many_students.py runs this DDP student "
    "with torchrun against a live teacher",
    "pip install": "installs packages: the test environment already has them",
    "PDOC_ALLOW_EXEC=1 python -m pdoc": "test_api_reference_builds runs pdoc (when it is "
    "installed)",
    "python examples/toy/": "tests/test_toy.py runs the toy's scripts in every mode",
    "PANTHEON_TOKEN=": "a teacher listening on every interface of another machine, for a student "
    "elsewhere",
}


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    text: str


# Documents whose examples need an extra: document -> the module to import (and test mark).
NEEDS: dict[str, str] = {"docs/guide/paddle.md": "paddle"}


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files.append(ROOT / "examples" / "toy" / "README.md")
    files.append(ROOT / "examples" / "toy" / "paddle" / "README.md")
    return [f for f in files if f.is_file()]


def doc_params() -> list[Any]:
    """The documents as test parameters, marked with the extra they need."""
    params = []
    for path in doc_files():
        rel = path.relative_to(ROOT).as_posix()
        marks = [getattr(pytest.mark, NEEDS[rel])] if rel in NEEDS else []
        params.append(pytest.param(path, marks=marks, id=rel))
    return params


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^ {0,3}(`{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        out.append(Block(lang, start + 1, "\n".join(body) + "\n"))
        i += 1
    return out


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """(line, command) of a shell block: comments and blanks dropped, ``\\`` lines joined."""
    commands: list[tuple[int, str]] = []
    pending, first = "", 0
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        line = raw.strip()
        if block.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:].strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            first = block.line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append((first, pending + line))
        pending = ""
    return commands


def not_run_reason(command: str) -> str | None:
    for prefix, reason in NOT_RUN.items():
        if command.startswith(prefix):
            return reason
    return None


def pantheon_command() -> list[str]:
    script = Path(sys.executable).parent / "pantheon"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "pantheon._cli"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PANTHEON_TOKEN", None)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def run_pantheon(args: list[str], cwd: Path, where: str) -> None:
    if args[:1] == ["serve"] and "--port" in args:
        run_serve(args, cwd, where)
        return
    proc = subprocess.run(
        [*pantheon_command(), *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (
        f"{where}: `pantheon {shlex.join(args)}` exited with {proc.returncode}\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    )


def _option(args: list[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


def run_serve(args: list[str], cwd: Path, where: str) -> None:
    """Run ``pantheon serve --port ...`` and read every round it serves with a Student."""
    from pantheon import Student

    proc = subprocess.Popen(
        [*pantheon_command(), *args],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first line says where it listens
        assert line.startswith("teacher listening on "), (
            f"{where}: expected 'teacher listening on HOST:PORT', got {line!r}; "
            f"stderr: {proc.communicate(timeout=30)[1][-2000:]}"
        )
        address = line.split()[-1]
        rounds = int(_option(args, "--times", "1") or 1)
        with Student(token=_option(args, "--token"), timeout=30) as student:
            student.register_teacher(in_address=address)
            student.start()
            for _ in range(rounds):
                assert sum(1 for _ in student.get_knowledge_generator(batch_size=32)()) > 0
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (
            f"{where}: `pantheon {shlex.join(args)}` exited with {proc.returncode}\n"
            f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def run_file(path: Path, workdir: Path) -> list[str]:
    """Run every block of ``path`` in ``workdir``; returns the shell lines not run (with reasons)."""
    rel = path.relative_to(ROOT)
    namespace: dict[str, object] = {"__name__": "__main__"}
    skipped: list[str] = []
    for block in blocks_of(path):
        where = f"{rel}:{block.line}"
        if block.lang == "python":
            first = block.text.lstrip().splitlines()[0] if block.text.strip() else ""
            m = re.match(r"#\s*file:\s*(\S+)(\s+\(script\))?", first)
            if m:
                (workdir / m.group(1)).write_text(block.text, encoding="utf-8")
                if m.group(2):  # a script that a shell line runs: saved, not run here
                    compile(block.text, where, "exec")
                    continue
            code = compile(block.text, where, "exec")
            exec(code, namespace)
        elif block.lang in SHELL:
            for line, command in shell_commands(block):
                reason = not_run_reason(command)
                if reason is not None:
                    skipped.append(f"{rel}:{line}: `{command}` not run: {reason}")
                    continue
                args = shlex.split(command)
                assert args[0] == "pantheon", (
                    f"{rel}:{line}: the shell line `{command}` is neither a `pantheon` command "
                    "nor listed in NOT_RUN (tests/test_docs.py) with the reason it is not run"
                )
                run_pantheon(args[1:], workdir, f"{rel}:{line}")
        elif block.lang not in NOT_EXECUTED:
            raise AssertionError(
                f"{where}: a ```{block.lang or '(no language)'} block; tag code as python, "
                "bash or console (run by this test) or text (not run)"
            )
    return skipped


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A fresh working directory on sys.path; environment and imported modules restored.

    Every Teacher and Student the examples create must be closed and every thread they start
    must end: leftovers fail the test (and are closed, so that nothing keeps running).
    """
    import pantheon

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PANTHEON_TOKEN", raising=False)
    saved_env = dict(os.environ)
    modules = set(sys.modules)
    threads = set(threading.enumerate())
    created: list[object] = []
    for cls in (pantheon.Teacher, pantheon.Student):
        original = cls.__init__

        def tracking_init(self, *args, __original=original, **kwargs):
            __original(self, *args, **kwargs)
            created.append(self)

        monkeypatch.setattr(cls, "__init__", tracking_init)

    yield tmp_path

    def new_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in threads and not t.daemon]

    for t in new_threads():
        t.join(10)
    unclosed = [repr(obj) for obj in created if not getattr(obj, "_closed", True)]
    for obj in created:
        obj.close()  # type: ignore[attr-defined]
    for t in new_threads():
        t.join(10)
    os.environ.clear()
    os.environ.update(saved_env)
    for name in set(sys.modules) - modules:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file.startswith(str(tmp_path)):
            del sys.modules[name]
    assert not unclosed, f"the examples left these open (close them): {unclosed}"
    left = [t for t in new_threads() if t.is_alive()]
    assert not left, f"the examples left threads running: {left}"


@pytest.mark.parametrize("path", doc_params())
def test_doc_blocks_run(path: Path, isolated: Path, record_property) -> None:
    needs = NEEDS.get(path.relative_to(ROOT).as_posix())
    if needs is not None:
        pytest.importorskip(needs)
    skipped = run_file(path, isolated)
    record_property("not_run", skipped)  # in the JUnit XML report: each line and its reason
    for line in skipped:
        print(line)  # shown with `pytest -rP` or on failure


def test_every_not_run_reason_is_used() -> None:
    used = {
        prefix
        for path in doc_files()
        for block in blocks_of(path)
        if block.lang in SHELL
        for _, command in shell_commands(block)
        for prefix in NOT_RUN
        if command.startswith(prefix)
    }
    assert set(NOT_RUN) - used == set(), "NOT_RUN lists lines that no document has any more"


def test_the_guide_and_readme_exist() -> None:
    for name in ("README.md", "CHANGELOG.md", "docs/guide.md", "docs/api.md"):
        assert (ROOT / name).is_file(), name


def test_api_reference_builds(tmp_path) -> None:
    """The command of docs/api.md builds a page per public module."""
    pytest.importorskip("pdoc")
    modules = ["pantheon", "pantheon.torch", "pantheon.onnx", "pantheon.hf"]
    if importlib.util.find_spec("paddle") is not None:
        modules.append("pantheon.paddle")
    proc = subprocess.run(
        [sys.executable, "-m", "pdoc", "--docformat", "google", "-o", str(tmp_path), *modules],
        env={**child_env(), "PDOC_ALLOW_EXEC": "1"},  # paddle runs ldd when imported
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    assert {
        "pantheon.html",
        "pantheon/torch.html",
        "pantheon/onnx.html",
        "pantheon/hf.html",
    } <= pages
    assert "start_knowledge_service" in (tmp_path / "pantheon.html").read_text(encoding="utf-8")
    if "pantheon.paddle" in modules:
        assert "pantheon/paddle.html" in pages


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^ {0,3}```.*?^ {0,3}```", "", text, flags=re.S | re.M)  # not in code
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.M)}


@pytest.mark.parametrize(
    "path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)).replace(os.sep, "/")
)
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(
        r"^ {0,3}```.*?^ {0,3}```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M
    )
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"
