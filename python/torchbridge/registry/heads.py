"""Replace a model's classifier head, keeping the body's weights."""

from __future__ import annotations

from typing import Any

from ..errors import RegistryError

__all__ = ["replace_classifier"]


def replace_classifier(model: Any, num_classes: int, *, model_id: str) -> Any:
    """replace_classifier(model, num_classes, *, model_id) -> model

    Give ``model`` a freshly initialised head with ``num_classes`` outputs; every
    other weight is untouched. Models with timm's ``reset_classifier`` use it;
    otherwise the last ``Linear`` (or 1x1 ``Conv2d``, as in SqueezeNet) of the
    module tree is swapped for a new layer of the same kind. ``num_classes=0``
    removes the classifier: the layer becomes an ``nn.Identity`` and the model
    returns the features the classifier read (timm's pooled features).
    """
    import torch.nn as nn

    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"{model_id}: num_classes must be a non-negative int, got {num_classes!r}")
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return model

    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
        ):
            last_name, last = name, module
    if last is None or not last_name:
        raise RegistryError(
            f"{model_id}: found no Linear layer to replace with a {num_classes}-class head. "
            "Replace the head yourself after load_model(...)."
        )
    if num_classes == 0:
        new: nn.Module = nn.Identity()
    elif isinstance(last, nn.Linear):
        new = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    else:
        new = nn.Conv2d(last.in_channels, num_classes, kernel_size=1, bias=last.bias is not None)
    new = new.to(next(last.parameters()).device)
    parent_name, _, attr = last_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model
