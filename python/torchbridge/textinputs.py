"""Token inputs checked before a text model runs.

An id outside the vocabulary makes the embedding raise an ``IndexError`` that
names no vocabulary (on a GPU, a device-side assert that ends the CUDA context),
and an attention mask of the wrong shape fails deep inside the attention. Both
are caught here first, with the sizes in both dimension orders. The names are
transformers' conventions; a positional input is known by the name the
module's ``forward`` gives it. Nothing here imports transformers.

NOTE [token inputs]
Each input that holds token ids is checked against the vocabulary of the
embedding that reads it, and each mask against the input it masks:

- ``input_ids``: the rows of ``get_input_embeddings()``, else the config's
  ``vocab_size``, else that of transformers' text config
  (``config.get_text_config()``: CLIP's ``text_config``); its masks are
  ``attention_mask`` and ``token_type_ids``.
- ``decoder_input_ids``: the rows of ``get_decoder().get_input_embeddings()``,
  else the ``vocab_size`` of ``config.get_text_config(decoder=True)``; its
  mask is ``decoder_attention_mask``.

Without the ids, a mask has the shape of ``inputs_embeds`` (``decoder_inputs_embeds``)
less its last dimension. A 4-d attention mask is transformers' own expanded
form and is taken as given. A model whose ``forward`` takes token ids but
whose vocabulary none of these names is not guessed at: its ids go unchecked,
and a :class:`~torchbridge.errors.VocabularyUnknownWarning` says so once per
model (``warnings.simplefilter("error", VocabularyUnknownWarning)`` makes it a
refusal).
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import MaskShapeError, TokenIdError, VocabularyUnknownWarning
from .exchange import julia_shape

__all__ = ["TextInputs", "check_token_ids"]

#: each token-id input -> the inputs with one entry per token of it
TOKEN_INPUTS: dict[str, tuple[str, ...]] = {
    "input_ids": ("attention_mask", "token_type_ids"),
    "decoder_input_ids": ("decoder_attention_mask",),
}
#: each token-id input -> the embeddings that stand in for it
_EMBEDS = {"input_ids": "inputs_embeds", "decoder_input_ids": "decoder_inputs_embeds"}
_NAMES = frozenset(
    [*TOKEN_INPUTS, *_EMBEDS.values(), *(m for masks in TOKEN_INPUTS.values() for m in masks)]
)
# models already told that their vocabulary is unknown (NOTE [token inputs])
_WARNED: weakref.WeakSet = weakref.WeakSet()


class TextInputs:
    """What a text model accepts: the vocabulary of each of its token-id inputs
    (``None`` where unknown) and the names of its positional inputs."""

    __slots__ = ("vocab", "type_vocab_size", "positional", "model_name")

    def __init__(
        self,
        vocab: Mapping[str, int | None],
        positional: Sequence[str],
        type_vocab_size: int | None,
        name: str,
    ) -> None:
        self.vocab = dict(vocab)
        self.type_vocab_size = type_vocab_size
        self.positional = tuple(positional)
        self.model_name = name

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary of ``input_ids`` (``None``: the model takes none, or it is unknown)."""
        return self.vocab.get("input_ids")

    @classmethod
    def of(cls, module: torch.nn.Module) -> TextInputs | None:
        """of(module) -> TextInputs | None: the token rules of a module whose ``forward``
        takes token ids (``None`` for any other module). Warns once per module whose
        vocabulary is unknown (NOTE [token inputs]).

        A wrapper that names its base model (PEFT's ``get_base_model()``: a
        model with LoRA adapters) takes what its base model takes.
        """
        unwrap = getattr(module, "get_base_model", None)
        if callable(unwrap):
            module = unwrap()
        try:
            signature = inspect.signature(module.forward)
        except (TypeError, ValueError):
            return None
        takes = [name for name in TOKEN_INPUTS if name in signature.parameters]
        if not takes:
            return None
        config = getattr(module, "config", None)
        vocab = {name: _vocabulary(module, config, name) for name in takes}
        unknown = [name for name, size in vocab.items() if size is None]
        if unknown and module not in _WARNED:
            _WARNED.add(module)
            warnings.warn(
                f"{type(module).__name__}: the vocabulary of its {' and '.join(unknown)} is "
                "unknown (no input embedding with num_embeddings, no vocab_size in its config), "
                "so those token ids go unchecked: an id out of range fails inside the model "
                "(on CUDA, as a device-side assert that ends the CUDA context). Give the model "
                "get_input_embeddings() or config.vocab_size to have them checked.",
                VocabularyUnknownWarning,
                stacklevel=3,
            )
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
            if name in _NAMES and isinstance(value, torch.Tensor):
                found[name] = value
        for name, value in zip(names, values[npos:]):
            if name in _NAMES and isinstance(value, torch.Tensor):
                found[name] = value
        what = f"forward ({self.model_name})"
        for ids_name, masks in TOKEN_INPUTS.items():
            ids = found.get(ids_name)
            if ids is not None:
                vocab = self.vocab.get(ids_name)
                if vocab is not None:
                    check_token_ids(ids, vocab, what=what, name=ids_name)
                ref, shape = ids_name, tuple(ids.shape)
            else:
                embeds = found.get(_EMBEDS[ids_name])
                if embeds is None or embeds.dim() < 2:
                    continue
                ref, shape = _EMBEDS[ids_name], tuple(embeds.shape)
            for mask_name in masks:
                mask = found.get(mask_name)
                if mask is None or (mask_name.endswith("attention_mask") and mask.dim() == 4):
                    continue
                _check_mask(mask_name, mask, ref, shape, what)
        types = found.get("token_type_ids")
        if types is not None and self.type_vocab_size is not None:
            check_token_ids(types, self.type_vocab_size, what=what, name="token_type_ids")


def _vocabulary(module: torch.nn.Module, config: Any, name: str) -> int | None:
    """The vocabulary of the token-id input ``name`` (NOTE [token inputs]); ``None``: unknown."""
    reader: Any = module
    if name == "decoder_input_ids":
        try:
            reader = module.get_decoder()  # type: ignore[operator]
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            reader = None
    try:
        rows = getattr(reader.get_input_embeddings(), "num_embeddings", None)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        rows = None
    if _is_size(rows):
        return rows
    decoder = name == "decoder_input_ids"
    if not decoder and _is_size(getattr(config, "vocab_size", None)):
        return config.vocab_size
    try:
        text = config.get_text_config(decoder=True) if decoder else config.get_text_config()
    except (AttributeError, TypeError, ValueError):  # none, or several text configs
        return None
    size = getattr(text, "vocab_size", None)
    return size if _is_size(size) else None


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_mask(name: str, mask: torch.Tensor, ref: str, shape: tuple, what: str) -> None:
    want = shape if ref in TOKEN_INPUTS else shape[:-1]
    if tuple(mask.shape) == want:
        return
    per = ref if ref in TOKEN_INPUTS else f"{ref} less its last (hidden) dimension"
    raise MaskShapeError(
        f"{what}: {name} has torch shape {tuple(mask.shape)} (Julia size "
        f"{julia_shape(mask.shape)}) but {ref} has torch shape {shape} (Julia size "
        f"{julia_shape(shape)}); {name} has one entry per token, the shape of {per}: torch "
        f"{want} (Julia {julia_shape(want)}). Pass both from the same tokenizer call."
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
