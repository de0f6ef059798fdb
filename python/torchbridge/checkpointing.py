"""Gradient checkpointing: keep fewer activations, recompute them in the backward pass.

NOTE [gradient checkpointing]
``load_model(id, gradient_checkpointing=True)`` (Julia: the same keyword) turns
on the model's own checkpointing, through the library that built it:

* transformers: ``model.gradient_checkpointing_enable()`` (named
  ``activation_checkpointing_enable`` since transformers 5), non-reentrant
  (``torch.utils.checkpoint(use_reentrant=False)``), so that it works with
  frozen embeddings (a LoRA model's) and with inputs that need no gradient;
  transformers checkpoints each layer in training mode only (``trainmode!``,
  ``fit`` and FluxTraining's training phases set it);
* timm: ``model.set_grad_checkpointing(True)`` (its blocks run through
  ``torch.utils.checkpoint``);
* a model with a LoRA adapter: its base model, the same way.

Each checkpointed layer keeps its input only; the backward pass runs its
forward again to rebuild the rest. The gradients are the plain ones; a step
costs about one more forward. Other models (torchvision's, torch.hub's)
declare no checkpointing and are refused with a
:class:`~torchbridge.errors.GradientCheckpointingError`.
"""

from __future__ import annotations

from typing import Any

from .errors import GradientCheckpointingError

__all__ = ["enable_gradient_checkpointing"]


def enable_gradient_checkpointing(model: Any, *, model_id: str | None = None) -> Any:
    """enable_gradient_checkpointing(model, *, model_id=None) -> model

    Turn on ``model``'s own gradient checkpointing (NOTE [gradient
    checkpointing]); ``model_id`` names it in errors. Returns ``model``.

    Raises:
        GradientCheckpointingError: the model (or its architecture) has none.
    """
    name = model_id or type(model).__name__
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        if hasattr(target, "gradient_checkpointing_enable"):
            if not getattr(target, "supports_gradient_checkpointing", False):
                raise GradientCheckpointingError(
                    f"{name}: transformers' {type(target).__name__} does not support gradient "
                    "checkpointing; load it without gradient_checkpointing=True."
                )
            options = {"use_reentrant": False}
            if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5's name
                target.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:  # pragma: no cover - transformers 4
                target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
            return model
        if hasattr(target, "set_grad_checkpointing"):  # timm
            target.set_grad_checkpointing(True)
            return model
    except GradientCheckpointingError:
        raise
    except (NotImplementedError, AssertionError, ValueError, AttributeError) as err:
        raise GradientCheckpointingError(
            f"{name}: its gradient checkpointing could not be turned on: "
            f"{type(err).__name__}: {err}"
        ) from err
    raise GradientCheckpointingError(
        f"{name}: a {type(target).__name__} has no gradient checkpointing that torchbridge "
        "knows how to turn on (transformers models and timm models have one); load it without "
        "gradient_checkpointing=True."
    )
