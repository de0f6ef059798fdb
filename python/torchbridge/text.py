"""Text models: their tokenizers, and generation with torch's own ``generate``.

``load_tokenizer(model_id)`` gives the model's real fast tokenizer (a
``transformers`` ``PreTrainedTokenizerFast``), read from the same folder as the
model: the Hugging Face cache, a ``save_pretrained`` folder, or a local model
saved with ``register_local_model``. Token ids are 0-based, as the tokenizer
makes them, in Python and in Julia alike.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from .errors import RegistryError, TokenizerNotFoundError

__all__ = ["generate", "load_tokenizer", "model_folder"]

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def model_folder(model_id: str) -> Path:
    """model_folder(model_id) -> Path: the folder holding an ``hf/`` or transformers
    ``local/`` model's files (config, weights, tokenizer)."""
    from .registry.core import get_registry

    registry = get_registry()
    entry = registry.model_info(model_id)
    if entry.source == "hf":
        return registry.source("hf").folder(entry)
    folder = entry.metadata.get("hf_folder")
    if entry.source == "local" and folder:
        return Path(folder)
    if entry.source == "local":
        return model_folder(entry.metadata["architecture"])
    raise RegistryError(
        f"{model_id}: not a transformers model (its source is {entry.source}); tokenizers "
        "belong to hf/ models and to the local models saved from them."
    )


def load_tokenizer(model_id: str, *, trust_remote_code: bool = False, **kwargs: Any):
    """load_tokenizer(model_id, *, trust_remote_code=False, **kwargs) -> PreTrainedTokenizerFast

    The fast tokenizer of an ``hf/`` model (or a ``local/`` model saved from
    one), read from the model's folder on this machine; ``kwargs`` go to
    ``AutoTokenizer.from_pretrained``. Loaded once per process and id (the
    same object each call for the same folder).

    A repository whose ``config.json`` or ``tokenizer_config.json`` has an
    ``auto_map`` needs its own Python code for its tokenizer: it is refused
    unless ``trust_remote_code=True``, as :func:`torchbridge.load_model` refuses
    the model (NOTE [trust] in :mod:`torchbridge.registry.trust`). transformers
    is always told the decision, so it never asks on standard input.

    Raises:
        RemoteCodeError: the tokenizer needs the repository's code, and
            ``trust_remote_code`` is false (or its ``auto_map`` is malformed).
        TokenizerNotFoundError: the model's folder has no tokenizer files, or
            only a slow (Python) tokenizer.
        WeightsNotFoundError: the model is not on this machine and offline.
    """
    return read_tokenizer(model_id, trust_remote_code=trust_remote_code, **kwargs)


def read_tokenizer(
    model_id: str, *, trust_remote_code: bool = False, call: str = "load_tokenizer", **kwargs: Any
):
    """read_tokenizer(model_id, *, trust_remote_code=False, call="load_tokenizer", **kwargs)

    :func:`load_tokenizer` as a step of the public function ``call``, which a
    refusal tells the caller to pass ``trust_remote_code=True`` to.
    """
    from .registry.trust import check_remote_code

    folder = model_folder(model_id)
    trust = bool(trust_remote_code)
    check_remote_code(model_id, _configs(folder), trust, call=call)
    if kwargs:
        return _load(model_id, folder, trust, tuple(sorted(kwargs.items())))
    return _cached(model_id, folder, trust)


def _configs(folder: Path) -> dict[str, Any]:
    """The configs that may name a tokenizer's own code, by file name (unreadable: {})."""
    configs: dict[str, Any] = {}
    for name in ("config.json", "tokenizer_config.json"):
        try:
            configs[name] = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            configs[name] = {}
    return configs


@functools.lru_cache(maxsize=32)
def _cached(model_id: str, folder: Path, trust_remote_code: bool):
    return _load(model_id, folder, trust_remote_code, ())


def _load(model_id: str, folder: Path, trust_remote_code: bool, kwargs: tuple):
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise TokenizerNotFoundError(
            f"{model_id}: no tokenizer files in {folder} (expected tokenizer.json, or "
            "tokenizer_config.json with its vocabulary). Save the tokenizer there with "
            "tokenizer.save_pretrained(folder), or pass tokenizer= to register_local_model."
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(folder),
        local_files_only=True,
        trust_remote_code=trust_remote_code,  # decided above: never a prompt
        **dict(kwargs),
    )
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerNotFoundError(
            f"{model_id}: the tokenizer in {folder} is a slow Python tokenizer; torchbridge "
            "uses fast (Rust) tokenizers. Save a tokenizer.json with the fast tokenizer."
        )
    return tokenizer


def generate(
    model: Any,
    input_ids: Any,
    *,
    attention_mask: Any = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """generate(model, input_ids, *, attention_mask=None, max_new_tokens=20, do_sample=False,
    **kwargs) -> torch.Tensor

    Continue each sequence of ``input_ids`` (torch ``(batch, seq)``, any array
    :func:`~torchbridge.to_torch` views) with transformers' own ``generate``
    (forward only, no graph), greedy unless ``do_sample``. ``model`` is a
    causal language model or a bridged one. Returns the ids, prompt included,
    ``(batch, seq + new)``. Other ``kwargs`` go to ``generate``
    (``num_beams``, ``temperature`` ...).
    """
    from .bridged import BridgedModel
    from .exchange import to_torch
    from .textinputs import TextInputs

    module = model.module if isinstance(model, BridgedModel) else model
    if not hasattr(module, "generate"):
        raise TypeError(
            f"generate: {type(module).__name__} cannot generate; load a causal language model "
            "(task='causal-lm')."
        )
    ids = to_torch(input_ids)
    mask = None if attention_mask is None else to_torch(attention_mask)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
        mask = None if mask is None else mask.reshape(1, -1)
    text = TextInputs.of(module)
    if text is not None:
        text.check(
            [ids, mask], 0, ("input_ids", "attention_mask") if mask is not None else ("input_ids",)
        )
    if mask is None:
        mask = torch.ones_like(ids)
    config = getattr(module, "generation_config", None)
    if getattr(config, "pad_token_id", None) is None and "pad_token_id" not in kwargs:
        kwargs["pad_token_id"] = getattr(config, "eos_token_id", None)
    with torch.no_grad():
        return module.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            **kwargs,
        )
