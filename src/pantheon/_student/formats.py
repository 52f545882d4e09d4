"""How a student hands batches to the training loop (ragged fields as the user asked)."""

from __future__ import annotations

from typing import Any, Literal

from .._knowledge import Knowledge, Ragged

__all__ = ["RaggedFormat", "format_batch"]

RaggedFormat = Literal["ragged", "padded", "list"]


def format_batch(data: Knowledge, ragged: RaggedFormat) -> dict[str, Any]:
    """The batch handed to the training loop.

    Every batch's dict is built afresh for it by the assembler (a decoded, sliced or merged
    chunk that nothing else holds), so it is handed out as it is unless ragged fields are
    converted.
    """
    if ragged == "ragged":
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Ragged):
            out[key] = value.padded() if ragged == "padded" else value.to_list()
        else:
            out[key] = value
    return out
