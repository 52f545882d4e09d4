"""The package's shape: seams, layers, no import cycles, small modules, tested ``__all__``.

The layer order itself is enforced by import-linter (``make lint``; contracts in
pyproject.toml); this module checks what a layers contract cannot.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import grimp
import pytest

import pantheon

SRC = Path(pantheon.__file__).resolve().parent
PUBLIC = ["pantheon", "pantheon.torch", "pantheon.onnx", "pantheon.hf", "pantheon.ray"]
SEAMS = [
    "pantheon._codecs",
    "pantheon._files",
    "pantheon._wire",
    "pantheon._online",
    "pantheon._student",
    "pantheon._service",
    "pantheon._cli",
]
MAX_LINES = 500


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    modules = sorted(m for m in graph.modules if m.startswith("pantheon"))
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c.startswith("pantheon")), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles_lazy_imports_included() -> None:
    graph = grimp.build_graph("pantheon")
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in [
        ("pantheon.a", "pantheon.b"),
        ("pantheon.b", "pantheon.c"),
        ("pantheon.c", "pantheon.a"),
    ]:
        graph.add_import(importer=a, imported=b)
    graph.add_import(importer="pantheon.c", imported="pantheon.d")
    assert _cycles(graph) == [["pantheon.a", "pantheon.b", "pantheon.c"]]


def test_no_module_is_over_the_size_limit() -> None:
    big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert big == {}, f"modules over {MAX_LINES} lines: split them"


@pytest.mark.parametrize("name", PUBLIC + SEAMS)
def test_all_names_exist_and_are_unique(name: str) -> None:
    module = importlib.import_module(name)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    assert sorted(names, key=str.lower) == sorted(names, key=str.lower)  # stable listing
    missing = [n for n in names if not hasattr(module, n)]
    assert missing == []


def test_the_seams_are_what_the_rest_of_the_package_imports() -> None:
    """Outside a subpackage, only its seam (``__init__``) is imported: never ``_x.module``."""
    graph = grimp.build_graph("pantheon")
    allowed = {  # framework programs the service imports lazily and adapters re-export
        ("pantheon.torch", "pantheon._service.torch_program"),
        ("pantheon.torch._data", "pantheon._service.torch_program"),
        ("pantheon.torch._lookup", "pantheon._service.torch_program"),
        ("pantheon.hf._topk", "pantheon._service.torch_program"),
        ("pantheon.hf._hidden", "pantheon._service.torch_program"),
        ("pantheon.onnx", "pantheon._service.onnx_program"),
        ("pantheon.paddle", "pantheon._service.paddle_program"),
        ("pantheon.paddle", "pantheon._service.paddle_layer"),
    }
    bad = []
    for seam in SEAMS:
        for inner in graph.find_children(seam):
            for importer in graph.find_modules_that_directly_import(inner):
                inside = importer == seam or importer.startswith(seam + ".")
                if not inside and (importer, inner) not in allowed:
                    bad.append((importer, inner))
    assert sorted(bad) == []
