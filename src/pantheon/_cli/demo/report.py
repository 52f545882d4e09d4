"""The demo's result, its table (markdown, also printed) and its report folder.

:func:`write_report` writes three files into the report folder:

* ``results.md`` - the table and the settings, in markdown;
* ``results.json`` - every number of :class:`DemoResult` (accuracies as fractions in ``[0, 1]``,
  times in seconds, sizes in bytes), machine-readable;
* ``accuracy.png`` - both students' test accuracy per epoch, teachers as dashed lines
  (matplotlib's Agg canvas, no display needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..._errors import MissingDependencyError, missing_extra

__all__ = [
    "DemoResult",
    "KnowledgeCounters",
    "TeacherResult",
    "format_table",
    "verdict",
    "write_report",
]


@dataclass(frozen=True)
class TeacherResult:
    """One teacher of the demo.

    Attributes:
        name: short name (``"mlp"``, ``"cnn"``). role: how it served its knowledge, in words.
        test_accuracy: accuracy on the test set, a fraction in ``[0, 1]``.
        train_seconds: wall time of its training (s).
    """

    name: str
    role: str
    test_accuracy: float
    train_seconds: float


@dataclass(frozen=True)
class KnowledgeCounters:
    """What the distilled student's knowledge stream delivered, over all epochs.

    Attributes:
        samples: samples received. batches: batches received.
        bytes: bytes received, or None where the source of the counters does not say.
        loop_seconds: wall time of the student's training loops (waiting included) (s).
        wait_seconds: time the student spent blocked waiting for the next batch (s).
        source: where the counters come from, in words (e.g. ``"Student.stats()"``).
    """

    samples: int
    batches: int
    bytes: int | None
    loop_seconds: float
    wait_seconds: float
    source: str

    @property
    def samples_per_second(self) -> float:
        """Knowledge throughput: samples received per second of the student's loop."""
        return self.samples / self.loop_seconds if self.loop_seconds > 0 else float("nan")


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured, and where its report went.

    Attributes:
        teachers: the teachers, in registration order.
        baseline_curve: test accuracy of the student trained on hard labels, after each epoch.
        distilled_curve: the same for the student distilled from the merged teacher logits.
        counters: the distilled student's knowledge stream counters.
        settings: the settings the run used (seed, epochs, sizes, temperature, ...).
        elapsed_seconds: wall time of the whole run (s).
        report_dir: the report folder, or None before :func:`write_report`.
        files: the report files written, by kind (``"markdown"``, ``"json"``, ``"plot"``).
    """

    teachers: list[TeacherResult]
    baseline_curve: list[float]
    distilled_curve: list[float]
    counters: KnowledgeCounters
    settings: dict[str, Any]
    elapsed_seconds: float
    report_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def baseline_accuracy(self) -> float:
        """Final test accuracy of the hard-label student (fraction)."""
        return self.baseline_curve[-1]

    @property
    def distilled_accuracy(self) -> float:
        """Final test accuracy of the distilled student (fraction)."""
        return self.distilled_curve[-1]

    @property
    def gain_points(self) -> float:
        """Distilled minus hard-label final accuracy, in percentage points."""
        return 100.0 * (self.distilled_accuracy - self.baseline_accuracy)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field plus the derived numbers."""
        data = asdict(self)
        data["baseline_accuracy"] = self.baseline_accuracy
        data["distilled_accuracy"] = self.distilled_accuracy
        data["gain_points"] = self.gain_points
        data["counters"]["samples_per_second"] = self.counters.samples_per_second
        data["verdict"] = verdict(self)
        return data


def verdict(result: DemoResult) -> str:
    """One honest sentence on whether distillation helped in this run."""
    gain = result.gain_points
    seed = result.settings.get("seed")
    if gain > 0:
        return f"distillation helped on seed {seed}: {gain:+.1f} points"
    if gain == 0:
        return f"distillation made no difference on seed {seed} (same final accuracy)"
    return f"distillation did NOT help on seed {seed}: {gain:+.1f} points"


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f} %"


def _mb(n: int | None) -> str:
    return "bytes not reported" if n is None else f"{n / 1e6:.2f} MB"


def format_table(result: DemoResult) -> str:
    """The results table in markdown (also readable as plain text)."""
    c = result.counters
    rows = [("", "measured in this run")]
    for i, t in enumerate(result.teachers, 1):
        rows.append((f"teacher {i}: {t.name} ({t.role}), test accuracy", _pct(t.test_accuracy)))
    rows += [
        ("student on hard labels only, test accuracy", _pct(result.baseline_accuracy)),
        ("student distilled from both teachers, test accuracy", _pct(result.distilled_accuracy)),
        ("effect of distillation", verdict(result)),
        (
            "knowledge throughput (samples / s of student loop)",
            f"{c.samples_per_second:,.0f} ({c.samples:,} samples, {c.batches:,} batches, "
            f"{_mb(c.bytes)}, {c.loop_seconds:.2f} s)",
        ),
        ("student wait time for knowledge", f"{c.wait_seconds:.3f} s ({c.source})"),
        ("whole run", f"{result.elapsed_seconds:.1f} s"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"| {k:<{w0}} | {v:<{w1}} |" for k, v in rows]
    lines.insert(1, f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|")
    return "\n".join(lines)


def _what_ran(settings: dict[str, Any]) -> str:
    g = settings.get
    return (
        "Data: scikit-learn's handwritten digits; the teachers train on 1,257 images, "
        f"the student on {g('transfer_size')} of them (a stratified draw). Both students start "
        "from the same weights (same seed) and see the same batches in the same order; one "
        "learns from the labels only, the other also from both teachers' mean logits as soft "
        f"targets (temperature {g('student_temperature')}, hard-label weight "
        f"{g('student_alpha')}). Accuracies are on the 540 held-out test images after the "
        f"last of {g('epochs')} epochs; the plot shows every epoch."
    )


def _settings_markdown(settings: dict[str, Any]) -> str:
    return "\n".join(f"- `{k}`: {v}" for k, v in settings.items())


def _plot(result: DemoResult, path: Path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        err: MissingDependencyError = missing_extra("matplotlib", "demo", feature="the demo plot")
        raise err from exc
    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epochs = list(range(1, len(result.baseline_curve) + 1))
    ax.plot(
        epochs,
        [100 * a for a in result.baseline_curve],
        marker="o",
        ms=3,
        label="student, hard labels",
    )
    ax.plot(
        epochs,
        [100 * a for a in result.distilled_curve],
        marker="o",
        ms=3,
        label="student, distilled",
    )
    for t, style in zip(result.teachers, ("--", ":"), strict=False):
        ax.axhline(100 * t.test_accuracy, ls=style, color="grey", lw=1, label=f"teacher {t.name}")
    ax.set_ylim(top=100.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Digits: student test accuracy per epoch (seed {result.settings.get('seed')})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(result: DemoResult, report_dir: str | os.PathLike[str]) -> DemoResult:
    """Write ``results.md``, ``results.json`` and ``accuracy.png`` into ``report_dir``.

    The folder is created if missing; existing files of those names are replaced.

    Returns:
        A copy of ``result`` with ``report_dir`` and ``files`` filled in.
    """
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": str(folder / "results.md"),
        "json": str(folder / "results.json"),
        "plot": str(folder / "accuracy.png"),
    }
    done = dataclasses.replace(result, report_dir=str(folder), files=files)
    _plot(done, Path(files["plot"]))
    markdown = (
        "# Pantheon demo: distilling two teachers into a small student\n\n"
        f"{format_table(done)}\n\n"
        f"{_what_ran(done.settings)}\n\n"
        "![test accuracy per epoch](accuracy.png)\n\n"
        f"## Settings\n\n{_settings_markdown(done.settings)}\n"
    )
    Path(files["markdown"]).write_text(markdown, encoding="utf-8")
    Path(files["json"]).write_text(json.dumps(done.to_json(), indent=2) + "\n", encoding="utf-8")
    return done
