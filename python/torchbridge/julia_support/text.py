"""Text models from Julia: tokens in and out, in Julia's dimension order.

Token ids cross as ``Int64`` arrays. A batch of ``batch`` sequences of length
``seq`` is torch ``(batch, seq)`` and Julia ``(seq, batch)``: the results here
are numpy arrays of shape ``(seq, batch)`` over column-major memory, so
PythonCall's ``PyArray`` (or ``pyconvert(Array, x)``) reads them as Julia
``(seq, batch)`` matrices without reordering, and passing them back to the
model (a Julia array, reversed by type) gives torch ``(batch, seq)`` again.
Ids stay 0-based, as the tokenizer makes them: do not add 1 in Julia.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..exchange import to_torch
from ..text import generate as _generate
from ..text import load_tokenizer

__all__ = ["decode", "generate", "tokenize", "vocab_size"]


def _julia_order(batch_first: Any) -> np.ndarray:
    """A torch-order ``(batch, seq)`` int array as Julia ``(seq, batch)``: the same memory."""
    a = np.ascontiguousarray(np.asarray(batch_first, dtype=np.int64))
    return a.T  # shape (seq, batch), column-major


def tokenize(
    model_id: str,
    texts: str | Sequence[str],
    *,
    padding: bool | str = True,
    truncation: bool = True,
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, np.ndarray]:
    """tokenize(model_id, texts, *, padding=True, truncation=True, max_length=None,
    trust_remote_code=False) -> dict

    The model's tokenizer on ``texts`` (one string, or several: a batch).
    Returns ``{"input_ids": ..., "attention_mask": ...}`` (and
    ``"token_type_ids"`` where the model uses them), each an ``int64`` array in
    Julia order ``(seq, batch)`` (a single string is a batch of one). Ids are
    0-based. ``padding``: ``True`` (to the longest), ``"max_length"``, or
    ``False`` (then every text must have the same length). A tokenizer that
    needs its repository's own code loads only with ``trust_remote_code=True``
    (:func:`torchbridge.load_tokenizer`).
    """
    tokenizer = load_tokenizer(model_id, trust_remote_code=trust_remote_code)
    batch = [texts] if isinstance(texts, str) else [str(t) for t in texts]
    encoded = tokenizer(
        batch,
        padding=padding,
        truncation=truncation,
        max_length=max_length,
        return_tensors="np",
    )
    return {name: _julia_order(values) for name, values in encoded.items()}


def _batch_first(ids: Any, layout: str | None) -> torch.Tensor:
    t = to_torch(ids, layout=layout)
    return t.unsqueeze(0) if t.dim() == 1 else t


def decode(
    model_id: str,
    ids: Any,
    *,
    skip_special_tokens: bool = True,
    layout: str | None = None,
    trust_remote_code: bool = False,
) -> list[str]:
    """decode(model_id, ids, *, skip_special_tokens=True, layout=None, trust_remote_code=False)
    -> list[str]

    The texts of token ids: a Julia ``(seq, batch)`` matrix (one text per
    column) or a ``(seq,)`` vector (one text). Ids are 0-based. ``layout``
    follows the protocol's rule (a raw Julia array is known by its type; say
    ``"julia"`` for any other array in Julia order). ``trust_remote_code`` as
    for :func:`tokenize`.
    """
    tokenizer = load_tokenizer(model_id, trust_remote_code=trust_remote_code)
    rows = _batch_first(ids, layout).to("cpu", torch.int64).tolist()
    return tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens)


def generate(
    model: Any,
    input_ids: Any,
    *,
    attention_mask: Any = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    layout: str | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """generate(model, input_ids, *, attention_mask=None, max_new_tokens=20, do_sample=False,
    layout=None, **kwargs) -> numpy int64 array, Julia (seq + new, batch)

    :func:`torchbridge.generate` on Julia ids (``(seq, batch)``, or a
    ``(seq,)`` vector; ``layout`` as for :func:`decode`); the result, prompt
    included, in Julia order.
    """
    ids = _batch_first(input_ids, layout)
    mask = None if attention_mask is None else _batch_first(attention_mask, layout)
    out = _generate(
        model,
        ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        **kwargs,
    )
    return _julia_order(out.cpu().numpy())


def vocab_size(model_id: str, *, trust_remote_code: bool = False) -> int:
    """vocab_size(model_id, *, trust_remote_code=False) -> int: the number of token ids (ids
    are ``0:vocab_size-1``); ``trust_remote_code`` as for :func:`tokenize`."""
    return len(load_tokenizer(model_id, trust_remote_code=trust_remote_code))
