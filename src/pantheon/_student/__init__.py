"""The student side: sources of knowledge, read-ahead assembly, re-batching and merging.

The seam of the student layer: :class:`Student` (public as :class:`pantheon.Student`) over
one :class:`~.sources.Source` per teacher (a knowledge file, or an online teacher from
:mod:`pantheon._online`), re-batched (:mod:`.rebatch`), aligned and merged (:mod:`.merge`) in
a read-ahead thread (:mod:`.assembler`).
"""

from __future__ import annotations

from .merge import MergePlan, build_plan, merge_batches
from .rebatch import Rebatcher
from .sources import FileSource, OnlineCapable, RoundStream, Source
from .student import Student

__all__ = [
    "FileSource",
    "MergePlan",
    "OnlineCapable",
    "Rebatcher",
    "RoundStream",
    "Source",
    "Student",
    "build_plan",
    "merge_batches",
]
