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

from ._datasets import knowledge_dataset
from ._hidden import CausalLMHidden, causal_lm_hidden_program, save_lm_head
from ._topk import CausalLMTopK, causal_lm_topk_program

__all__ = [
    "CausalLMHidden",
    "CausalLMTopK",
    "causal_lm_hidden_program",
    "causal_lm_topk_program",
    "knowledge_dataset",
    "save_lm_head",
]
