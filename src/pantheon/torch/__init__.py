"""PyTorch adapter: torch teachers for the knowledge service, student-side datasets, KD losses.

Importing this module imports ``torch`` (``pip install 'pantheon-kd[torch]'``); the rest of
Pantheon never does unless a torch program is used.

* :class:`TorchProgram` runs a ``torch.nn.Module`` (or a TorchScript file) as a knowledge
  service program; ``Teacher.start_knowledge_service`` wraps a module in it automatically.
* :class:`KnowledgeDataset` wraps a student's knowledge generator as an ``IterableDataset``.
* :func:`distributed_rank`: a data-parallel student's rank and world size.
* :class:`KnowledgeLookup` is a knowledge file as a map-style ``Dataset`` (any sampler, any
  number of loader workers); :class:`WithKnowledge` pairs your own dataset with it.
* Losses: :func:`soft_target_kl`, :func:`topk_kl`, :func:`feature_mse`; for language models
  (forward KL, reverse KL, generalized JSD; masks; chunked): :func:`dense_kd_loss`,
  :func:`topk_kd_loss` (with or without the tail mass), :func:`sampled_kd_loss`,
  :func:`hidden_kd_loss` (the teacher's last hidden state and its ``lm_head``, read with
  :func:`load_lm_head`).
"""

from __future__ import annotations

from .._errors import missing_extra

try:
    import torch  # noqa: F401 - the extra's dependency, imported first for a clear error
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise missing_extra("torch", "torch", feature="pantheon.torch") from _exc

from .._service.torch_program import TorchProgram, to_tensor
from ._data import KnowledgeDataset
from ._distributed import distributed_rank
from ._llm_losses import dense_kd_loss, hidden_kd_loss, sampled_kd_loss, topk_kd_loss
from ._lm_head import LMHead, load_lm_head
from ._lookup import KnowledgeLookup, KnowledgeSamples, WithKnowledge
from ._losses import feature_mse, soft_target_kl, topk_kl

__all__ = [
    "KnowledgeDataset",
    "KnowledgeLookup",
    "KnowledgeSamples",
    "LMHead",
    "TorchProgram",
    "WithKnowledge",
    "dense_kd_loss",
    "distributed_rank",
    "feature_mse",
    "hidden_kd_loss",
    "load_lm_head",
    "sampled_kd_loss",
    "soft_target_kl",
    "to_tensor",
    "topk_kd_loss",
    "topk_kl",
]
