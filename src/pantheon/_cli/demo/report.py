"""The demo's result, its table (markdown, also printed) and its report folder.

:func:`write_report` writes three files into the report folder:

* ``results.md`` - the table and the settings, in markdown;
* ``results.json`` - every number of :class:`DemoResult` (accuracies as fractions in ``[0, 1]``,
  times in seconds, sizes in bytes), machine-readable;
* ``accuracy.png`` - both students' test accuracy per epoch with their final accuracies and the
  gain between them marked, each teacher's accuracy as a line of its own colour and dash,
  labelled (matplotlib's Agg canvas, no display needed).
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
    "plot_figure",
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


_TEACHER_STYLES = (("tab:green", "--"), ("tab:purple", ":"), ("tab:brown", "-."))


def _plot_teachers(ax: Any, result: DemoResult) -> None:
    """One horizontal line per teacher, each its own colour and dash, labelled at its left end
    (the higher line's label above it, the lower's below: close accuracies stay readable)."""
    ranked = sorted(result.teachers, key=lambda t: t.test_accuracy)
    for t, (color, style) in zip(result.teachers, _TEACHER_STYLES, strict=False):
        acc = 100 * t.test_accuracy
        label = f"teacher {t.name} ({t.role.split(',')[0]}): {acc:.1f} %"
        ax.axhline(acc, ls=style, color=color, lw=1.6, label=label)
        above = t is ranked[-1]
        ax.annotate(
            f"teacher {t.name} {acc:.1f} %",
            xy=(0.01, acc),
            xycoords=("axes fraction", "data"),
            xytext=(0, 2 if above else -2),
            textcoords="offset points",
            va="bottom" if above else "top",
            color=color,
            fontsize=8,
        )


def _plot_finals(ax: Any, result: DemoResult, last: int) -> None:
    """The students' final accuracies beside their last points, and the gain between them."""
    base, dist = 100 * result.baseline_accuracy, 100 * result.distilled_accuracy
    close = abs(dist - base) < 3.0  # labels centred on their points would overlap
    for value, color, higher in (
        (base, "tab:blue", base > dist),
        (dist, "tab:orange", dist >= base),
    ):
        ax.annotate(
            f"{value:.1f} %",
            xy=(last, value),
            xytext=(8, (3 if higher else -3) if close else 0),
            textcoords="offset points",
            va=("bottom" if higher else "top") if close else "center",
            color=color,
            fontsize=9,
            fontweight="bold",
        )
    x = last + 0.14 * max(last, 1)
    ax.annotate(
        "",
        xy=(x, dist),
        xytext=(x, base),
        arrowprops={"arrowstyle": "|-|,widthA=0.4,widthB=0.4", "color": "black", "lw": 1.2},
    )
    ax.annotate(
        f"{result.gain_points:+.1f} points",
        xy=(x, (base + dist) / 2),
        xytext=(5, 0),
        textcoords="offset points",
        va="center",
        fontsize=9,
        fontweight="bold",
    )
    ax.set_xlim(0.5, last + 0.36 * max(last, 1))
    ax.set_xticks([t for t in ax.get_xticks() if 1 <= t <= last and float(t).is_integer()])


def plot_figure(result: DemoResult) -> Any:
    """The accuracy plot as a matplotlib ``Figure`` (Agg canvas): both students per epoch, their
    final accuracies and the gain marked, one labelled line per teacher."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        err: MissingDependencyError = missing_extra("matplotlib", "demo", feature="the demo plot")
        raise err from exc
    fig = Figure(figsize=(8.0, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epochs = list(range(1, len(result.baseline_curve) + 1))
    for curve, color, name in (
        (result.baseline_curve, "tab:blue", "student, hard labels only"),
        (result.distilled_curve, "tab:orange", "student, distilled from both teachers"),
    ):
        label = f"{name}: {100 * curve[-1]:.1f} %"
        ax.plot(epochs, [100 * a for a in curve], marker="o", ms=3, color=color, label=label)
    _plot_teachers(ax, result)
    _plot_finals(ax, result, epochs[-1])
    top = max([100 * t.test_accuracy for t in result.teachers] + [96.0])
    ax.set_ylim(top=top + 4.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"Digits: student test accuracy per epoch (seed {result.settings.get('seed')}); "
        f"distillation {result.gain_points:+.1f} points"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


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
    plot_figure(done).savefig(Path(files["plot"]), format="png")
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
