"""Classifier heads: which tensors they are, how many classes they hold, and the head rule.

NOTE [head rule]
    Weights carry their own head. Whatever the weights (published, a file passed
    as ``weights=``, a local model), the model is built with the head size the
    weights hold and every tensor is loaded strictly. That size is read from the
    file: the rows of the classifier's weight, or 0 when the file holds no
    classifier tensors (a headless model). Then ``num_classes``:

    - not given, or equal to that size: the model keeps the weights' head;
    - different: the head is replaced by a freshly initialised one of that size
      (0 removes it) and the tensors dropped are logged on the
      ``torchbridge.registry`` logger, as a warning when the weights are yours
      (``weights=`` or a local model: their head was trained) and as info for
      published weights (the usual start of a finetuning).

    The body always loads. Without weights, ``num_classes`` is the size the
    builder gives the new head. The classifier is named by the source: timm's
    ``pretrained_cfg["classifier"]``, else the last ``Linear`` (or 1x1
    ``Conv2d``, as in SqueezeNet) of the architecture built with its own head.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import RegistryArgumentError, RegistryError

__all__ = [
    "classifier_names",
    "held_classes",
    "model_classes",
    "replace_classifier",
    "settle_head",
]

log = logging.getLogger("torchbridge.registry")


def _is_head_layer(module: Any) -> bool:
    import torch.nn as nn

    from ._headless import Headless

    return isinstance(module, (nn.Linear, Headless)) or (
        isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
    )


def classifier_names(model: Any) -> tuple[str, ...]:
    """classifier_names(model) -> tuple[str, ...]: the module names of a model's classifier.

    timm models name theirs (``pretrained_cfg["classifier"]``: ``"fc"``,
    ``"head.fc"``, or several); otherwise it is the last ``Linear`` or 1x1
    ``Conv2d`` of the module tree. Ask a model built with its own head: on a
    headless one the last such layer belongs to the body. Empty when none is found.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    named = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(named, str) and named:
        return (named,)
    if isinstance(named, (tuple, list)) and named:
        return tuple(str(n) for n in named)
    last = None
    for name, module in model.named_modules():
        if name and _is_head_layer(module):
            last = name
    return (last,) if last else ()


def held_classes(state: Mapping[str, Any], names: Sequence[str]) -> int | None:
    """held_classes(state, names) -> int | None: the classes a state dict's head holds.

    The rows of the first classifier weight (``f"{name}.weight"``) in ``state``;
    0 when ``state`` holds no tensor of the classifier (saved without a head);
    ``None`` when ``names`` is empty or the classifier's tensors have another form.
    """
    if not names:
        return None
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and len(getattr(weight, "shape", ())) >= 1:
            return int(weight.shape[0])
    prefixes = tuple(f"{name}." for name in names)
    if any(key.startswith(prefixes) for key in state):
        return None
    return 0


def model_classes(model: Any, names: Sequence[str]) -> int | None:
    """model_classes(model, names) -> int | None: the classes the model's head gives now.

    timm's ``num_classes``; else the outputs of the first named layer (0 for a
    removed classifier); ``None`` when unknown.
    """
    import torch.nn as nn

    if hasattr(model, "reset_classifier") and isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    if not names:
        return None
    try:
        layer = model.get_submodule(names[0])
    except AttributeError:
        return None
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    if isinstance(layer, nn.Identity):
        return 0
    return None


def replace_classifier(
    model: Any, num_classes: int, *, model_id: str, names: Sequence[str] | None = None
) -> Any:
    """replace_classifier(model, num_classes, *, model_id, names=None) -> model

    Give ``model`` a freshly initialised head with ``num_classes`` outputs; every
    other weight is untouched. Models with timm's ``reset_classifier`` use it;
    otherwise each layer in ``names`` (default: :func:`classifier_names`) is
    swapped for a new layer of the same kind (``Linear``, or a 1x1 ``Conv2d``)
    on the same device and dtype. ``num_classes=0`` removes the classifier: the
    layer becomes an ``nn.Identity`` and the model returns the features the
    classifier read (timm's pooled features); a later call puts a head back.
    """
    import torch.nn as nn

    from ._headless import Headless

    if not isinstance(num_classes, int) or num_classes < 0:
        raise RegistryArgumentError(
            f"{model_id}: num_classes must be a non-negative int, got {num_classes!r}"
        )
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return model

    names = tuple(names) if names is not None else classifier_names(model)
    layers = []
    for name in names:
        try:
            layers.append((name, model.get_submodule(name)))
        except AttributeError:
            continue
    layers = [(n, m) for n, m in layers if _is_head_layer(m)]
    if not layers:
        raise RegistryError(
            f"{model_id}: found no classifier layer (a Linear or 1x1 Conv2d) to replace with a "
            f"{num_classes}-class head. Load it without num_classes and replace the head yourself."
        )
    reference = next(model.parameters(), None)
    for name, old in layers:
        if isinstance(old, nn.Linear):
            in_features, conv, bias = old.in_features, False, old.bias is not None
        elif isinstance(old, nn.Conv2d):
            in_features, conv, bias = old.in_channels, True, old.bias is not None
        else:  # a classifier removed before
            in_features, conv, bias = old.in_features, old.conv, old.bias
        if num_classes == 0:
            new: nn.Module = Headless(in_features, conv, bias)
        elif conv:
            new = nn.Conv2d(in_features, num_classes, kernel_size=1, bias=bias)
        else:
            new = nn.Linear(in_features, num_classes, bias=bias)
        like = next(old.parameters(), reference)
        if like is not None:
            new = new.to(device=like.device, dtype=like.dtype)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def settle_head(
    model: Any,
    num_classes: int | None,
    *,
    names: Sequence[str],
    model_id: str,
    yours: bool,
) -> Any:
    """settle_head(model, num_classes, *, names, model_id, yours) -> model

    The last step of NOTE [head rule], on a model that holds all its weights:
    keep the head when ``num_classes`` is ``None`` or its size, else replace it
    and log what was dropped (a warning when the weights are ``yours``).
    """
    if num_classes is None:
        return model
    held = model_classes(model, names)
    if held == num_classes:
        return model
    if not names:
        raise RegistryError(
            f"{model_id}: found no classifier head to give {num_classes} classes. Load it "
            "without num_classes and adapt its heads yourself."
        )
    prefixes = tuple(f"{name}." for name in names)
    dropped = [key for key in model.state_dict() if key.startswith(prefixes)]
    replace_classifier(model, num_classes, model_id=model_id, names=names)
    if dropped:
        log.log(
            logging.WARNING if yours else logging.INFO,
            "%s: num_classes=%d replaces the %s-class head of its weights with a new, untrained "
            "one; dropped %s",
            model_id,
            num_classes,
            "?" if held is None else held,
            ", ".join(dropped),
        )
    return model
