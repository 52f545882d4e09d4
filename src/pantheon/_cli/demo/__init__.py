"""The end-to-end demo behind ``pantheon demo``: two teachers distilled into a small student.

On scikit-learn's handwritten digits, a torch MLP teacher serves its logits online over TCP and
a small CNN teacher dumps its logits to an offline knowledge file; a small student is trained
twice with the same seed, on hard labels alone and distilled from both teachers' mean logits.
The run prints a table and writes a report folder (markdown, JSON, PNG plot)::

    from pantheon._cli.demo import run_demo
    result = run_demo("pantheon-demo", seed=0)

Needs the ``demo`` extra (torch, scikit-learn, matplotlib).
"""

from __future__ import annotations

from .orchestrate import DemoSettings, run_demo
from .report import DemoResult, KnowledgeCounters, TeacherResult
from .train import StudentConfig

__all__ = [
    "DemoResult",
    "DemoSettings",
    "KnowledgeCounters",
    "StudentConfig",
    "TeacherResult",
    "run_demo",
]
