"""What an online teacher says of its knowledge: description, codecs, fingerprints.

The description is learned from the first chunk the teacher produces (or answers), the codecs
are resolved against it once, and :meth:`Described.event` gives the DESC message a serve call
sends (its ``times`` differs from call to call).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .._codecs import Codec, encode_batch, resolve_codecs
from .._knowledge import Chunk, Description, describe
from .messages import Desc

__all__ = ["Described"]


class Described:
    """A teacher's knowledge description, once known.

    Args:
        codecs: the user's per-key codec settings.
        use_fp16: store float knowledge as float16 (until the description is known).
    """

    def __init__(self, codecs: Mapping[str, Any], use_fp16: bool) -> None:
        self._codec_args = dict(codecs)
        self.use_fp16 = use_fp16
        self.desc: Description | None = None
        self.codecs: dict[str, Codec] = {}
        self.fingerprints: dict[str, str] = {}
        self._lock = threading.Lock()

    def learn(self, chunk: Chunk) -> bool:
        """Learn the description from ``chunk`` if it is the first; True if it was.

        Raises:
            ConfigError: codecs that do not fit the description.
            KnowledgeError: a key whose codec's parts clash with another key (found by
                encoding the first chunk once, here, where it can still fail the round).
        """
        if self.desc is not None:
            return False
        desc = describe(chunk.data)
        codecs = resolve_codecs(desc, self._codec_args, self.use_fp16)
        encode_batch(chunk.data, codecs, where="the teacher's first batch", ids=chunk.ids)
        with self._lock:
            if self.desc is not None:
                return False
            self.codecs, self.desc = codecs, desc
            return True

    def event(self, times: int) -> Desc:
        """The DESC message of a serve call of ``times`` rounds (the description is known)."""
        assert self.desc is not None
        codecs = {k: c.spec() for k, c in self.codecs.items()}
        return Desc(self.desc, codecs, times, dict(self.fingerprints))

    def status(self) -> dict[str, Any]:
        """What ``pantheon status`` shows of it."""
        return {
            "desc": self.desc,
            "codecs": {k: c.spec() for k, c in self.codecs.items()},
            "fingerprints": dict(self.fingerprints),
        }
