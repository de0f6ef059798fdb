"""Token inputs checked before a text model runs.

An id outside the vocabulary makes the embedding raise an ``IndexError`` that
names no vocabulary (on a GPU, a device-side assert that ends the CUDA context),
and an attention mask of the wrong shape fails deep inside the attention. Both
are caught here first, with the sizes in both dimension orders. The names are
transformers' conventions (``input_ids``, ``attention_mask``,
``token_type_ids``); a positional input is known by the name the module's
``forward`` gives it. Nothing here imports transformers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from .errors import MaskShapeError, TokenIdError
from .exchange import julia_shape

__all__ = ["TextInputs", "check_token_ids"]

_MASKS = ("attention_mask", "token_type_ids")


class TextInputs:
    """What a text model accepts: its vocabulary size and the names of its positional inputs."""

    __slots__ = ("vocab_size", "type_vocab_size", "positional", "model_name")

    def __init__(
        self, vocab_size: int, positional: Sequence[str], type_vocab_size: int | None, name: str
    ) -> None:
        self.vocab_size = vocab_size
        self.type_vocab_size = type_vocab_size
        self.positional = tuple(positional)
        self.model_name = name

    @classmethod
    def of(cls, module: torch.nn.Module) -> TextInputs | None:
        """of(module) -> TextInputs | None: the token rules of a module that takes ``input_ids``.

        A wrapper that names its base model (PEFT's ``get_base_model()``: a
        model with LoRA adapters) takes what its base model takes.
        """
        unwrap = getattr(module, "get_base_model", None)
        if callable(unwrap):
            module = unwrap()
        get = getattr(module, "get_input_embeddings", None)
        if get is None:
            return None
        try:
            signature = inspect.signature(module.forward)
        except (TypeError, ValueError):
            return None
        if "input_ids" not in signature.parameters:
            return None
        try:
            embedding = get()
        except (NotImplementedError, AttributeError):
            embedding = None
        vocab = getattr(embedding, "num_embeddings", None)
        config = getattr(module, "config", None)
        if not isinstance(vocab, int):
            vocab = getattr(config, "vocab_size", None)
        if not isinstance(vocab, int):
            return None
        type_vocab = getattr(config, "type_vocab_size", None)
        positional = [
            n
            for n, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return cls(
            vocab,
            positional,
            type_vocab if isinstance(type_vocab, int) else None,
            type(module).__name__,
        )

    def check(self, values: Sequence[Any], npos: int, names: Sequence[str]) -> None:
        """check(values, npos, names) -> None: raise before the module sees bad token inputs."""
        found: dict[str, torch.Tensor] = {}
        for name, value in zip(self.positional, values[:npos]):
            if name in ("input_ids", *_MASKS) and isinstance(value, torch.Tensor):
                found[name] = value
        for name, value in zip(names, values[npos:]):
            if name in ("input_ids", *_MASKS) and isinstance(value, torch.Tensor):
                found[name] = value
        ids = found.get("input_ids")
        if ids is None:
            return
        check_token_ids(ids, self.vocab_size, what=f"forward ({self.model_name})")
        for name in _MASKS:
            other = found.get(name)
            # a 4-d attention mask is transformers' own expanded form, taken as given
            if other is None or (name == "attention_mask" and other.dim() == 4):
                continue
            if other.shape != ids.shape:
                raise MaskShapeError(
                    f"forward ({self.model_name}): {name} has torch shape {tuple(other.shape)} "
                    f"(Julia size {julia_shape(other.shape)}) but input_ids has torch shape "
                    f"{tuple(ids.shape)} (Julia size {julia_shape(ids.shape)}); {name} has one "
                    "entry per token, the shape of input_ids. Pass both from the same "
                    "tokenizer call."
                )
        types = found.get("token_type_ids")
        if types is not None and self.type_vocab_size is not None:
            check_token_ids(
                types,
                self.type_vocab_size,
                what=f"forward ({self.model_name})",
                name="token_type_ids",
            )


def check_token_ids(
    ids: torch.Tensor, vocab_size: int, *, what: str, name: str = "input_ids"
) -> None:
    """check_token_ids(ids, vocab_size, *, what, name="input_ids") -> None

    Raise :class:`~torchbridge.errors.TokenIdError` when ``ids`` are not
    integers in ``0:vocab_size-1``.
    """
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TokenIdError(
            f"{what}: {name} must be integers (Int64 in Julia, int64 in torch), got {ids.dtype}."
        )
    if ids.numel() == 0:
        return
    lo, hi = torch.aminmax(ids)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        hint = (
            " Token ids are 0-based, as the tokenizer makes them: do not add 1 in Julia."
            if hi == vocab_size
            else ""
        )
        raise TokenIdError(
            f"{what}: {name} holds the id {bad}, outside the vocabulary of {vocab_size} tokens "
            f"(ids 0 to {vocab_size - 1}); the ids range from {lo} to {hi}.{hint} Tokenize with "
            "the model's own tokenizer (torchbridge.load_tokenizer)."
        )
