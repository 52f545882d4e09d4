"""Hugging Face adapter: a causal language model as a teacher of per-token top-k log-probabilities.

::

    from transformers import AutoModelForCausalLM
    from pantheon.hf import causal_lm_topk_program

    model = AutoModelForCausalLM.from_pretrained(...)
    teacher.start_knowledge_service(
        feed_list=["input_ids"],
        schema={"topk_logprobs": "topk_logprobs", "topk_indices": "topk_indices"},
        program=causal_lm_topk_program(model, k=20),
        reader_config={"sample_generator": token_sequences, "batch_size": 8},
        exe=["cuda:0", "cuda:1"],
    )

The reader yields token sequences of any lengths; a batch of them is a ragged ``input_ids``
feed (or a padded ``[n, L]`` array with a lengths feed). For token ``t`` of a sequence, the
knowledge is the teacher's top-k of ``log_softmax(logits[t] / T)`` over the vocabulary: the
distribution of the token that follows ``t``. Needs ``torch`` and ``transformers``
(``pip install 'pantheon-kd[hf]'``).

:func:`causal_lm_hidden_program` sends the teacher's last hidden state instead (exact
knowledge in ``d`` values per token) and :func:`save_lm_head` writes its ``lm_head`` once, for
:func:`pantheon.torch.hidden_kd_loss`.

Stored at their width: ``program.codecs()`` gives the codecs that store the indices
bit-packed at ``ceil(log2(V))`` bits (18 for a 152k vocabulary, the layout of
:class:`~pantheon.TopK`'s indices), the log-probabilities as float16 and the token ids as
int32 (range checked on write)::

    program = causal_lm_topk_program(model, k=16, tail=True)
    teacher = Teacher(out_path="k.arrow", codecs=program.codecs(ids_key="input_ids"))

With ``tail=True`` the program also outputs ``"topk_tail"``, ``log(1 - sum(exp(topk)))`` per
token (the probability mass outside the top-k, computed from the full distribution).

:func:`knowledge_dataset` opens a knowledge file as a ``datasets.Dataset`` (no copy), for
``map``, ``with_format("torch")`` and the rest of Hugging Face ``datasets``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import ConfigError, missing_extra
from ._knowledge import Ragged, Value

__all__ = [
    "CausalLMHidden",
    "CausalLMTopK",
    "causal_lm_hidden_program",
    "causal_lm_topk_program",
    "knowledge_dataset",
    "save_lm_head",
]


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise missing_extra("torch", "hf", feature="pantheon.hf") from exc
    return torch


class CausalLMTopK:
    """A causal LM program producing ragged top-k log-probabilities per token.

    Outputs (for the schema): ``"topk_logprobs"`` float32 ``[n, -1, k]`` (sorted decreasingly)
    and ``"topk_indices"`` int32 ``[n, -1, k]``, and with ``tail`` ``"topk_tail"`` float32
    ``[n, -1, 1]``, all :class:`~pantheon.Ragged` with one row per input token. Build it with
    :func:`causal_lm_topk_program`.
    """

    def __init__(
        self,
        model: Any,
        k: int = 20,
        *,
        feed: str = "input_ids",
        lengths_feed: str | None = None,
        temperature: float = 1.0,
        pad_token_id: int = 0,
        tail: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        torch = _torch()
        from ._service.torch_program import TorchProgram

        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"causal_lm_topk_program needs a torch causal LM, got {type(model).__name__}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an int >= 1, got {k!r}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        self.k = k
        self.feed = feed
        self.lengths_feed = lengths_feed
        self.temperature = float(temperature)
        self.pad_token_id = int(pad_token_id)
        self.tail = bool(tail)
        self.vocab_size = _vocab_size(model) if vocab_size is None else int(vocab_size)
        self._placer = TorchProgram(model, [feed])

    def codecs(
        self,
        *,
        values_key: str = "topk_logprobs",
        indices_key: str = "topk_indices",
        ids_key: str | None = None,
        values: str = "float16",
    ) -> dict[str, Any]:
        """Codecs storing this program's knowledge at its width, for ``Teacher(codecs=...)``.

        Args:
            values_key: the knowledge key of ``"topk_logprobs"`` in the schema.
            indices_key: the knowledge key of ``"topk_indices"``: bit-packed at
                ``ceil(log2(vocab_size))`` bits (:class:`~pantheon.Packed`).
            ids_key: the key of the token ids passed through, if any: stored as int32.
            values: the log-probabilities' storage, ``"float16"`` (default), ``"bfloat16"``,
                ``"uint8"`` (8-bit codes relative to each token's maximum, ``k + 4`` bytes;
                :class:`~pantheon.Quant8`) or ``"none"`` (float32).

        Raises:
            ConfigError: the vocabulary size is unknown (give ``vocab_size=``).
        """
        from ._codecs import Packed, Quant8

        if self.vocab_size is None:
            raise ConfigError(
                "causal LM program: the model's vocabulary size is unknown (no config.vocab_size "
                "nor output embeddings); give causal_lm_topk_program(..., vocab_size=V)"
            )
        stored: Any = Quant8() if values == "uint8" else values
        out: dict[str, Any] = {values_key: stored, indices_key: Packed.for_vocab(self.vocab_size)}
        if ids_key is not None:
            out[ids_key] = "int32"
        return out

    def fingerprint(self) -> str:
        """What this teacher is: the model's state dict fingerprint, ``k``, the temperature and
        whether it outputs the tail."""
        tail = ";tail" if self.tail else ""
        return f"{self._placer.fingerprint()};k={self.k};T={self.temperature:g}{tail}"

    def for_device(self, device: str) -> _CausalLMRunner:
        """The runner of one worker on ``device`` (a deep copy of the model there, except for
        the first worker on the model's own device)."""
        torch = _torch()
        dev = torch.device(device)
        model = self._placer.module_for(dev).eval()
        return _CausalLMRunner(self, model, dev)


class _CausalLMRunner:
    def __init__(self, spec: CausalLMTopK, model: Any, device: Any) -> None:
        self.spec = spec
        self.model = model
        self.device = device

    def _ids_and_lengths(self, feeds: Mapping[str, Value]) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        if spec.feed not in feeds:
            raise ConfigError(f"causal LM program: no feed {spec.feed!r}; feeds: {list(feeds)}")
        ids = feeds[spec.feed]
        if isinstance(ids, Ragged):
            if ids.values.ndim != 1:
                raise ConfigError(
                    f"feed {spec.feed!r}: expected token ids [n, -1], got inner shape "
                    f"{list(ids.inner_shape)}"
                )
            return ids.padded(spec.pad_token_id)
        if ids.ndim != 2:
            raise ConfigError(
                f"feed {spec.feed!r}: expected token ids [n, L] or a ragged field, got shape "
                f"{list(ids.shape)}"
            )
        n, width = ids.shape
        if spec.lengths_feed is not None:
            lengths = np.asarray(feeds[spec.lengths_feed], dtype=np.int64).reshape(n)
        elif "attention_mask" in feeds:
            lengths = np.asarray(feeds["attention_mask"]).astype(bool).sum(axis=1).astype(np.int64)
        else:
            lengths = np.full(n, width, dtype=np.int64)
        if lengths.size and (lengths.min() < 0 or lengths.max() > width):
            raise ConfigError(
                f"causal LM program: lengths must be within [0, {width}], got {lengths.tolist()}"
            )
        return ids, lengths

    def __call__(self, feeds: Mapping[str, Value]) -> dict[str, Ragged]:
        torch = _torch()
        spec = self.spec
        ids, lengths = self._ids_and_lengths(feeds)
        keep = lengths > 0  # an all-padding row would only produce NaNs
        width_kept = int(lengths.max()) if lengths.size and keep.any() else 0
        k = spec.k
        if width_kept == 0:
            empty = np.zeros((0, k), dtype=np.float32)
            out = {
                "topk_logprobs": Ragged(empty, lengths),
                "topk_indices": Ragged(empty.astype(np.int32), lengths),
            }
            if spec.tail:
                out["topk_tail"] = Ragged(np.zeros((0, 1), np.float32), lengths)
            return out
        x = torch.from_numpy(np.ascontiguousarray(ids[keep, :width_kept], dtype=np.int64))
        lens = torch.from_numpy(lengths[keep])
        mask = torch.arange(width_kept)[None, :] < lens[:, None]
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            mask_d = mask.to(self.device, non_blocking=True)
            logits = self.model(input_ids=x, attention_mask=mask_d.long()).logits
            vocab = logits.shape[-1]
            if k > vocab:
                raise ConfigError(f"k={k} is larger than the model's vocabulary ({vocab})")
            tokens = logits[mask_d].float()  # [T, V], sample after sample
            logp = torch.log_softmax(tokens / spec.temperature, dim=-1)
            vals, idx = torch.topk(logp, k, dim=-1)
            result = {
                "topk_logprobs": Ragged(vals.cpu().numpy(), lengths),
                "topk_indices": Ragged(idx.to(torch.int32).cpu().numpy(), lengths),
            }
            if spec.tail:  # log of the mass outside the top-k, without 1 - sum(p) cancellation
                rest = logp.scatter(-1, idx, float("-inf")).logsumexp(dim=-1, keepdim=True)
                result["topk_tail"] = Ragged(rest.cpu().numpy(), lengths)
        return result


def causal_lm_topk_program(
    model: Any,
    k: int = 20,
    *,
    feed: str = "input_ids",
    lengths_feed: str | None = None,
    temperature: float = 1.0,
    pad_token_id: int = 0,
    tail: bool = False,
    vocab_size: int | None = None,
) -> CausalLMTopK:
    """A knowledge service program for a Hugging Face causal LM: top-k log-probs per token.

    Args:
        model: a ``transformers`` causal LM (``AutoModelForCausalLM``), any torch module whose
            ``forward(input_ids=, attention_mask=)`` returns an object with ``.logits``
            ``[n, L, V]``.
        k: entries kept per token (default 20).
        feed: the feed holding the token ids: a ragged ``[n, -1]`` field (sequences of any
            lengths, the usual case) or a right-padded ``[n, L]`` int array (default
            ``"input_ids"``).
        lengths_feed: for a padded feed, the feed holding each row's length; without it an
            ``"attention_mask"`` feed is used if present, else every row is full.
        temperature: ``T``: log-probs are ``log_softmax(logits / T)`` (default 1.0).
        pad_token_id: the id used to right-pad ragged sequences (masked out; default 0).
        tail: also output ``"topk_tail"``, ragged ``[n, -1, 1]`` float32: per token
            ``log(1 - sum(exp(topk_logprobs)))``, computed as the log-sum-exp of the
            log-probabilities outside the top-k (default False).
        vocab_size: ``V``, for :meth:`CausalLMTopK.codecs` (default: the model's
            ``config.vocab_size``, else its output embeddings' rows).

    Returns:
        A program (an object with ``for_device``) for ``start_knowledge_service`` whose outputs
        are ``"topk_logprobs"`` (float32) and ``"topk_indices"`` (int32), ragged
        ``[n, -1, k]``: one row per input token (and ``"topk_tail"`` with ``tail``); its
        ``codecs()`` store them at their width.
    """
    return CausalLMTopK(
        model,
        k,
        feed=feed,
        lengths_feed=lengths_feed,
        temperature=temperature,
        pad_token_id=pad_token_id,
        tail=tail,
        vocab_size=vocab_size,
    )


def _vocab_size(model: Any) -> int | None:
    """The vocabulary of a causal LM: ``config.vocab_size``, else its output embeddings' rows."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int) and size > 0:
        return size
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def knowledge_dataset(path: str | os.PathLike[str], *, allow_truncated: bool = True) -> Any:
    """A knowledge file (or directory of shards) as a Hugging Face ``datasets.Dataset``.

    The dataset is built on the memory-mapped Arrow table of the file: nothing is copied
    (nor decoded). Its columns are the file's stored columns (``docs/format.md``):
    ``__sample_id__``, then one per key, or one per stored part of a key with a codec
    (``logits@values``, ``logits@indices`` for top-k), in their storage dtypes (a key stored
    with a float16 cast is float16; bool is uint8, bfloat16 its uint16 bits); a field of
    shape ``[-1, d1, d2]`` is a list of ``d1 * d2`` values per sample, a variable-length field
    a list per sample. ``datasets`` sees an in-memory table: with loader workers started by
    ``fork`` (the Linux default) nothing is copied, while pickling the dataset (``spawn``
    workers, ``save_to_disk``) copies the data; :class:`pantheon.torch.KnowledgeLookup`
    reads by path instead.

    Args:
        path: the knowledge file or directory of shards.
        allow_truncated: read a cut-short file up to its last complete batch (default True).

    Raises:
        MissingDependencyError: ``datasets`` is not installed (``pip install datasets``).
        FileFormatError: not a readable knowledge file.
    """
    try:
        import datasets
    except ImportError as exc:
        raise missing_extra("datasets", "hf", feature="pantheon.hf.knowledge_dataset") from exc
    from ._files import KnowledgeFile

    with KnowledgeFile(path, allow_truncated=allow_truncated) as kf:
        table = kf.to_arrow()  # its buffers keep the mapping alive after close
        stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in kf.shards]
    fingerprint = hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]  # no hashing of data
    return datasets.Dataset(table, fingerprint=fingerprint)


_HIDDEN_DTYPES = ("float32", "float16", "bfloat16")


class CausalLMHidden:
    """A causal LM program producing its last hidden state per token (exact knowledge, ``d``
    values per token instead of ``V``).

    Output (for the schema): ``"hidden"`` ``[n, -1, d]`` :class:`~pantheon.Ragged`, one row per
    input token, in ``dtype``: the final hidden state (after the model's final norm), the
    vector its ``lm_head`` maps to the logits of the next token. Pair it with the
    ``lm_head`` side file (:func:`save_lm_head`) and
    :func:`pantheon.torch.hidden_kd_loss`. Build it with :func:`causal_lm_hidden_program`.
    """

    def __init__(
        self,
        model: Any,
        *,
        feed: str = "input_ids",
        lengths_feed: str | None = None,
        dtype: str = "float32",
        pad_token_id: int = 0,
        check_logits: bool = True,
    ) -> None:
        torch = _torch()
        from ._service.torch_program import TorchProgram

        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"causal_lm_hidden_program needs a torch causal LM, got {type(model).__name__}"
            )
        if dtype not in _HIDDEN_DTYPES:
            raise ConfigError(f"dtype must be one of {list(_HIDDEN_DTYPES)}, got {dtype!r}")
        self.feed = feed
        self.lengths_feed = lengths_feed
        self.dtype = dtype
        self.pad_token_id = int(pad_token_id)
        self.check_logits = bool(check_logits)
        self._placer = TorchProgram(model, [feed])

    def fingerprint(self) -> str:
        """What this teacher is: the model's state dict fingerprint and the dtype."""
        return f"{self._placer.fingerprint()};hidden;dtype={self.dtype}"

    def for_device(self, device: str) -> _HiddenRunner:
        """The runner of one worker on ``device`` (as :meth:`CausalLMTopK.for_device`)."""
        torch = _torch()
        dev = torch.device(device)
        return _HiddenRunner(self, self._placer.module_for(dev).eval(), dev)


class _HiddenRunner(_CausalLMRunner):
    def __init__(self, spec: CausalLMHidden, model: Any, device: Any) -> None:
        super().__init__(spec, model, device)  # type: ignore[arg-type]  # the same feed fields
        self.hidden = spec
        self.checked = not spec.check_logits

    def _check(self, logits: Any, hidden: Any) -> None:
        """Once per worker: the model's logits are its ``lm_head`` applied to the hidden state
        it reports (not so with logit soft-capping or scaling)."""
        head = self.model.get_output_embeddings()
        ref = head(hidden[:64].to(head.weight.dtype)).float()
        got = logits[:64].float()
        err = float((ref - got).abs().max()) if got.numel() else 0.0
        if err > 1e-3 * (1.0 + float(got.abs().max() if got.numel() else 0.0)):
            raise ConfigError(
                f"causal_lm_hidden_program: the model's logits differ from its lm_head applied "
                f"to its last hidden state (by up to {err:.3g}); the model transforms its "
                "logits further (soft-capping or scaling?), so hidden-state knowledge would "
                "not be exact: use causal_lm_topk_program, or check_logits=False if you "
                "reproduce the transform in the loss"
            )
        self.checked = True

    def __call__(self, feeds: Mapping[str, Value]) -> dict[str, Ragged]:
        torch = _torch()
        from ._knowledge import to_dtype, to_numpy

        spec = self.hidden
        ids, lengths = self._ids_and_lengths(feeds)
        keep = lengths > 0
        width = int(lengths.max()) if lengths.size and keep.any() else 0
        if width == 0:
            hidden_size = int(self.model.get_output_embeddings().weight.shape[1])
            empty = np.zeros((0, hidden_size), dtype=to_dtype(spec.dtype))
            return {"hidden": Ragged(empty, lengths)}
        x = torch.from_numpy(np.ascontiguousarray(ids[keep, :width], dtype=np.int64))
        mask = torch.arange(width)[None, :] < torch.from_numpy(lengths[keep])[:, None]
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            mask_d = mask.to(self.device, non_blocking=True)
            out = self.model(input_ids=x, attention_mask=mask_d.long(), output_hidden_states=True)
            hidden = out.hidden_states[-1][mask_d]  # [T, d], sample after sample
            if not self.checked:
                self._check(out.logits[mask_d], hidden)
            cast = getattr(torch, spec.dtype)
            values = to_numpy(hidden.to(cast))
        return {"hidden": Ragged(np.ascontiguousarray(values), lengths)}


def causal_lm_hidden_program(
    model: Any,
    *,
    feed: str = "input_ids",
    lengths_feed: str | None = None,
    dtype: str = "float32",
    pad_token_id: int = 0,
    check_logits: bool = True,
) -> CausalLMHidden:
    """A knowledge service program for a Hugging Face causal LM: its last hidden state per token.

    ``d`` values per token (``2 d`` bytes in float16: 8 KB for ``d = 4096``, against
    ``4 V`` for float32 logits) from which the student recomputes the teacher's exact
    distribution with the ``lm_head`` side file (:func:`save_lm_head`) and
    :func:`pantheon.torch.hidden_kd_loss`.

    Args:
        model: a ``transformers`` causal LM whose ``forward(input_ids=, attention_mask=,
            output_hidden_states=True)`` returns ``.hidden_states`` (the last one after the
            final norm) and ``.logits``, and whose ``get_output_embeddings()`` is its
            ``lm_head``.
        feed, lengths_feed, pad_token_id: as :func:`causal_lm_topk_program`.
        dtype: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``.
        check_logits: on each worker's first batch, check that the logits are the
            ``lm_head`` of the hidden state (a ``ConfigError`` for a model with logit
            soft-capping or scaling; default True).

    Returns:
        A program for ``start_knowledge_service`` with one output, ``"hidden"``, ragged
        ``[n, -1, d]``.
    """
    return CausalLMHidden(
        model,
        feed=feed,
        lengths_feed=lengths_feed,
        dtype=dtype,
        pad_token_id=pad_token_id,
        check_logits=check_logits,
    )


def save_lm_head(model: Any, path: str | os.PathLike[str], *, dtype: str | None = None) -> None:
    """Write a causal LM's ``lm_head`` (weight ``[V, d]``, bias if any) to an ``.npz`` side
    file, to ship once beside hidden-state knowledge (read it with
    :func:`pantheon.torch.load_lm_head`; nothing is pickled; format in ``docs/guide/llm.md``).

    Args:
        model: a model with ``get_output_embeddings()`` (a ``transformers`` causal LM), or the
            ``torch.nn.Linear`` itself.
        path: the file to write.
        dtype: ``"float16"`` or ``"float32"`` (default: float16 for a float16 head, float32
            otherwise: bfloat16 converts exactly).

    Raises:
        ConfigError: no ``lm_head`` found, or an unknown dtype.
    """
    torch = _torch()
    from ._files import LM_HEAD_DTYPES, write_lm_head

    head = model if isinstance(model, torch.nn.Linear) else None
    if head is None and callable(getattr(model, "get_output_embeddings", None)):
        head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ConfigError(
            f"save_lm_head: expected a causal LM with get_output_embeddings() or a "
            f"torch.nn.Linear, got {type(model).__name__}"
        )
    if dtype is None:
        dtype = "float16" if weight.dtype == torch.float16 else "float32"
    if dtype not in LM_HEAD_DTYPES:
        raise ConfigError(
            f"save_lm_head: dtype must be one of {list(LM_HEAD_DTYPES)}, got {dtype!r}"
        )
    cast = getattr(torch, dtype)
    bias = getattr(head, "bias", None)
    write_lm_head(
        path,
        weight.detach().to("cpu", cast).numpy(),
        None if bias is None else bias.detach().to("cpu", cast).numpy(),
    )
