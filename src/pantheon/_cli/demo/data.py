"""The demo's data: scikit-learn's handwritten digits, a fixed split and fixed-order readers.

The digits data set ships inside scikit-learn (1,797 grey 8x8 images of the digits 0-9, pixel
values 0-16), so the demo needs no download. Images are flattened to 64 ``float32`` features
scaled to ``[0, 1]``; labels are ``int64`` class indices 0-9.

The split is fixed (stratified, ``random_state`` 0): 30 % of the images (540) are the test set,
the other 1,257 train the teachers. The student learns from a small stratified *transfer set*
drawn from the teachers' training images. Teachers and student read the transfer set in the
same fixed order every round, which is what Pantheon's same-order mode needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..._errors import ConfigError, MissingDependencyError, missing_extra

__all__ = [
    "NUM_CLASSES",
    "NUM_FEATURES",
    "Batch",
    "DigitsSplit",
    "batch_reader",
    "iter_batches",
    "load_digits_split",
]

NUM_FEATURES = 64
"""Features per image: 8 x 8 pixels, flattened."""
NUM_CLASSES = 10
"""Classes: the digits 0-9."""

Batch = tuple[np.ndarray, np.ndarray]
"""One reader batch: ``(image, label)``, ``float32 [B, 64]`` and ``int64 [B]``."""


@dataclass(frozen=True)
class DigitsSplit:
    """The digits data split for the demo.

    Attributes:
        x_train: teachers' training images, ``float32 [n_train, 64]`` in ``[0, 1]``.
        y_train: their labels, ``int64 [n_train]``.
        x_test: held-out test images, ``float32 [n_test, 64]``.
        y_test: their labels, ``int64 [n_test]``.
        x_transfer: the student's training images (a stratified subset of ``x_train``).
        y_transfer: their labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_transfer: np.ndarray
    y_transfer: np.ndarray


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        err: MissingDependencyError = missing_extra("scikit-learn", "demo", feature="the demo")
        raise err from exc
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


def _stratified_take(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` samples of ``y``, as evenly spread over the classes as possible, sorted."""
    classes = np.unique(y)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    base, extra = divmod(n, len(classes))
    picked: list[np.ndarray] = []
    for i, idx in enumerate(per_class):
        want = base + (1 if i < extra else 0)
        picked.append(idx[:want])
    return np.sort(np.concatenate(picked))


def load_digits_split(
    *, transfer_size: int = 100, transfer_seed: int = 0, test_fraction: float = 0.3
) -> DigitsSplit:
    """Load the digits and split them into teacher-training, transfer and test sets.

    Args:
        transfer_size: number of training images the student learns from (stratified over the
            10 classes); default 100. Must be between 10 and the number of training images.
        transfer_seed: seed of the draw of the transfer set; default 0. The train/test split
            itself is always the same (``random_state`` 0).
        test_fraction: fraction of the 1,797 images held out for testing; default 0.3 (540).

    Returns:
        The split; every array is a fresh, C-contiguous numpy array.

    Raises:
        ConfigError: ``transfer_size`` or ``test_fraction`` out of range.
    """
    if not 0.05 <= test_fraction <= 0.9:
        raise ConfigError(
            f"load_digits_split: test_fraction must be in [0.05, 0.9], got {test_fraction!r}; "
            "pass a fraction such as 0.3"
        )
    from sklearn.model_selection import train_test_split

    x, y = _sklearn_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=0, stratify=y
    )
    n_train = len(y_train)
    if not NUM_CLASSES <= transfer_size <= n_train:
        raise ConfigError(
            f"load_digits_split: transfer_size must be between {NUM_CLASSES} and {n_train} "
            f"(the training images), got {transfer_size!r}"
        )
    take = _stratified_take(y_train, transfer_size, np.random.default_rng(transfer_seed))
    return DigitsSplit(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test),
        x_transfer=np.ascontiguousarray(x_train[take]),
        y_transfer=np.ascontiguousarray(y_train[take]),
    )


def iter_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """Yield ``(x, y)`` batches of ``batch_size`` samples in the arrays' order (last may be short).

    Raises:
        ConfigError: ``batch_size`` < 1 or ``x`` and ``y`` of different lengths.
    """
    if batch_size < 1:
        raise ConfigError(f"iter_batches: batch_size must be >= 1, got {batch_size!r}")
    if len(x) != len(y):
        raise ConfigError(
            f"iter_batches: x has {len(x)} samples but y has {len(y)}; pass arrays of one length"
        )
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def batch_reader(x: np.ndarray, y: np.ndarray, batch_size: int) -> Callable[[], Iterator[Batch]]:
    """A reader in the seed's style: a callable returning a fresh fixed-order batch iterator.

    This is what a teacher's ``reader_config={"batch_generator": ...}`` takes: every call starts a
    new round over the same samples in the same order, so every teacher and the student agree.
    """

    def reader() -> Iterator[Batch]:
        return iter_batches(x, y, batch_size)

    return reader
