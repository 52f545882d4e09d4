"""The student's checks of its teachers' fingerprints.

A source that knows its teacher's fingerprints (a knowledge file's metadata, an online
teacher's DESC message) says so through :class:`Fingerprinted`. The student

* records them per teacher in :meth:`~pantheon.Student.state_dict` (version 3);
* after ``load_state_dict``, refuses a teacher whose fingerprint differs from the recorded one
  (:func:`check_resumed`): resuming at a position in another teacher's knowledge would train
  on knowledge the checkpoint never saw;
* refuses to merge teachers that read different data (:func:`check_datasets`, an
  :class:`~pantheon.AlignmentError`) before the first batch.

A fingerprint that one side does not know (an older file, a teacher given none) is not
compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .._errors import AlignmentError, ConfigError
from .._knowledge import FINGERPRINT_KEYS

__all__ = [
    "Fingerprinted",
    "check_datasets",
    "check_resumed",
    "check_teachers",
    "known",
    "parse_recorded",
]

_WHAT = {"fingerprint": "teacher fingerprint", "dataset_fingerprint": "dataset fingerprint"}


@runtime_checkable
class Fingerprinted(Protocol):
    """A source that can tell its teacher's fingerprints."""

    def fingerprints(self) -> Mapping[str, str]:
        """``{"fingerprint": ..., "dataset_fingerprint": ...}``, the ones known so far."""
        ...


def known(sources: Sequence[Any]) -> list[dict[str, str]]:
    """Each source's fingerprints known so far (an empty dict for the others)."""
    return [dict(s.fingerprints()) if isinstance(s, Fingerprinted) else {} for s in sources]


def parse_recorded(state: Mapping[str, Any], teachers: int) -> list[dict[str, str]]:
    """The fingerprints a state dict recorded (version 3), one dict per teacher; none before.

    Raises:
        ConfigError: a ``fingerprints`` entry that is not one dict of strings per teacher.
    """
    if state.get("version") != 3:
        return [{} for _ in range(teachers)]
    recorded = state.get("fingerprints")
    ok = isinstance(recorded, list) and len(recorded) == teachers
    ok = ok and all(
        isinstance(r, Mapping)
        and all(k in FINGERPRINT_KEYS and isinstance(v, str) for k, v in r.items())
        for r in recorded  # type: ignore[union-attr]
    )
    if not ok:
        raise ConfigError(
            f"state_dict['fingerprints'] must list one dict per teacher ({teachers}) mapping "
            f"{list(FINGERPRINT_KEYS)} to strings, got {recorded!r:.300}"
        )
    return [dict(r) for r in recorded]  # type: ignore[union-attr]


def check_teachers(sources: Sequence[Any], recorded: Sequence[Mapping[str, str]]) -> None:
    """Both checks, once the sources know their descriptions (right before merging).

    Raises:
        ConfigError: see :func:`check_resumed`. AlignmentError: see :func:`check_datasets`.
    """
    check_resumed(recorded, sources)
    check_datasets(sources)


def check_resumed(recorded: Sequence[Mapping[str, str]], sources: Sequence[Any]) -> None:
    """Refuse teachers whose fingerprints differ from the ones a loaded state dict recorded
    (``recorded`` empty: nothing was loaded).

    Raises:
        ConfigError: naming the teacher, both fingerprints and what to do.
    """
    if not recorded:
        return
    for before, now, source in zip(recorded, known(sources), sources, strict=True):
        name = source.name
        for key in FINGERPRINT_KEYS:
            if key in before and key in now and before[key] != now[key]:
                raise ConfigError(
                    f"{name} has {_WHAT[key]} {now[key]!r:.200}, but the state_dict being "
                    f"resumed was saved with {before[key]!r:.200}: its position refers to other "
                    "knowledge. Register the teacher the checkpoint was trained with, or start "
                    "this run from the beginning (without load_state_dict)"
                )


def check_datasets(sources: Sequence[Any]) -> None:
    """Refuse to merge teachers whose dataset fingerprints differ (before the first batch).

    Raises:
        AlignmentError: naming two teachers and their dataset fingerprints.
    """
    first: tuple[str, str] | None = None
    for prints, source in zip(known(sources), sources, strict=True):
        name = source.name
        dataset = prints.get("dataset_fingerprint")
        if dataset is None:
            continue
        if first is None:
            first = (name, dataset)
        elif dataset != first[1]:
            raise AlignmentError(
                f"{name} read the dataset {dataset!r:.200} but {first[0]} read "
                f"{first[1]!r:.200}: merged teachers must predict the same samples. Point "
                "them at the same data (and dataset_fingerprint), or train on them separately"
            )
