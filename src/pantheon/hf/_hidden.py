"""Causal LMs' last hidden state as knowledge, and their ``lm_head`` side file (``pantheon.hf``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import ConfigError
from .._knowledge import Ragged, Value
from ._topk import _CausalLMRunner, _torch

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
        from .._service.torch_program import TorchProgram

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
        from .._knowledge import to_dtype, to_numpy

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
    from .._files import LM_HEAD_DTYPES, write_lm_head

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
