"""Causal LMs as top-k teachers: the program and its runner (``pantheon.hf``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import ConfigError, missing_extra
from .._knowledge import Ragged, Value


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
        from .._service.torch_program import TorchProgram

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
        from .._codecs import Packed, Quant8

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
