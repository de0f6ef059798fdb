"""Losses by their Flux names, computing exactly Flux's definitions.

NOTE [class dimension]
Flux puts the classes first: a batch of logits is a ``(classes, batch)`` Julia
array and Flux's losses reduce over ``dims=1``. That Julia array *is* the torch
tensor of shape ``(batch, classes)`` (see NOTE [dimension order] in
:mod:`torchbridge.exchange`), so Flux's ``dims=1`` is torch's last dimension.
The functions here take the class dimension in torch numbering, ``dim=-1`` by
default, which is Flux's default. For an image batch (Julia ``(W, H, C, N)``,
torch ``(N, C, H, W)``) pass ``dim=1``.

Targets are either what Flux takes (one-hot or probability arrays of the
prediction's shape) or, for the categorical losses, integer class indices
counted from 0 with the class dimension removed (what ``torch.nn.functional.
cross_entropy`` takes; Julia labels counted from 1 need ``.- 1``).

``agg`` is Flux's aggregation: ``"mean"`` (the default), ``"sum"``, ``"none"``
or a callable taking the per-sample tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UnknownLossError

__all__ = [
    "binarycrossentropy",
    "crossentropy",
    "logitbinarycrossentropy",
    "logitcrossentropy",
    "loss_from_name",
    "mse",
    "supported_losses",
]

Aggregation = str | Callable[[torch.Tensor], torch.Tensor]
_REDUCTIONS = ("mean", "sum", "none")  # the aggregations torch's fused losses take by name


def _aggregate(values: torch.Tensor, agg: Aggregation) -> torch.Tensor:
    if callable(agg):
        return agg(values)
    if agg == "mean":
        return values.mean()
    if agg == "sum":
        return values.sum()
    if agg == "none":
        return values
    raise ValueError(f"agg must be 'mean', 'sum', 'none' or a callable, got {agg!r}")


def _is_class_index(y: torch.Tensor, y_hat: torch.Tensor) -> bool:
    floating = y.is_floating_point() or y.is_complex()
    return not floating and y.dtype is not torch.bool and y.ndim == y_hat.ndim - 1


def _pick(values: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """values[..., index, ...] along ``dim``, with ``dim`` removed."""
    dim = dim % values.ndim
    return values.gather(dim, index.long().unsqueeze(dim)).squeeze(dim)


def logitcrossentropy(
    y_hat: torch.Tensor, y: torch.Tensor, *, dim: int = -1, agg: Aggregation = "mean"
) -> torch.Tensor:
    """logitcrossentropy(y_hat, y; dim=-1, agg="mean") -> Tensor

    Flux's ``agg(-sum(y .* logsoftmax(ŷ; dims); dims))`` on logits ``y_hat``.
    """
    # torch's cross_entropy takes classes along dim 1 and aggregations by name
    fused = (
        y_hat.ndim >= 2
        and -y_hat.ndim <= dim < y_hat.ndim
        and dim % y_hat.ndim == 1
        and not callable(agg)
        and agg in _REDUCTIONS
    )
    if _is_class_index(y, y_hat):
        if fused:
            return F.cross_entropy(y_hat, y.long(), reduction=agg)  # fused, same value
        return _aggregate(-_pick(F.log_softmax(y_hat, dim=dim), y, dim), agg)
    if fused and y.shape == y_hat.shape and y.dtype == y_hat.dtype and y_hat.is_floating_point():
        # probabilities (one-hot batches from Julia): the same sum, fused
        return F.cross_entropy(y_hat, y, reduction=agg)
    return _aggregate(-(y * F.log_softmax(y_hat, dim=dim)).sum(dim=dim), agg)


def crossentropy(
    y_hat: torch.Tensor,
    y: torch.Tensor,
    *,
    dim: int = -1,
    agg: Aggregation = "mean",
    epsilon: float | None = None,
) -> torch.Tensor:
    """crossentropy(y_hat, y; dim=-1, agg="mean", epsilon=eps(eltype)) -> Tensor

    Flux's ``agg(-sum(xlogy.(y, ŷ .+ ϵ); dims))`` on probabilities ``y_hat``;
    ``ϵ`` defaults to the machine epsilon of ``y_hat``'s type, as Flux's ``epseltype``.
    """
    eps = torch.finfo(y_hat.dtype).eps if epsilon is None else epsilon
    if _is_class_index(y, y_hat):
        return _aggregate(-torch.log(_pick(y_hat, y, dim) + eps), agg)
    return _aggregate(-torch.xlogy(y.to(y_hat.dtype), y_hat + eps).sum(dim=dim), agg)


def mse(y_hat: torch.Tensor, y: torch.Tensor, *, agg: Aggregation = "mean") -> torch.Tensor:
    """mse(y_hat, y; agg="mean") -> Tensor: Flux's ``agg((ŷ .- y) .^ 2)``."""
    y = y.to(y_hat.dtype)
    if (
        not callable(agg)
        and agg in _REDUCTIONS
        and y.shape == y_hat.shape
        and y_hat.is_floating_point()
    ):
        # the same sum, in one fused kernel forward and backward (a small
        # model's step is dominated by the number of kernels it launches)
        return F.mse_loss(y_hat, y, reduction=agg)
    return _aggregate((y_hat - y) ** 2, agg)


def binarycrossentropy(
    y_hat: torch.Tensor,
    y: torch.Tensor,
    *,
    agg: Aggregation = "mean",
    epsilon: float | None = None,
) -> torch.Tensor:
    """binarycrossentropy(y_hat, y; agg="mean", epsilon=eps(eltype)) -> Tensor

    Flux's ``agg(@. -xlogy(y, ŷ + ϵ) - xlogy(1 - y, 1 - ŷ + ϵ))`` on probabilities.
    """
    eps = torch.finfo(y_hat.dtype).eps if epsilon is None else epsilon
    y = y.to(y_hat.dtype)
    return _aggregate(-torch.xlogy(y, y_hat + eps) - torch.xlogy(1 - y, 1 - y_hat + eps), agg)


def logitbinarycrossentropy(
    y_hat: torch.Tensor, y: torch.Tensor, *, agg: Aggregation = "mean"
) -> torch.Tensor:
    """logitbinarycrossentropy(y_hat, y; agg="mean") -> Tensor

    Flux's ``agg(@. (1 - y) * ŷ - logσ(ŷ))`` on logits.
    """
    y = y.to(y_hat.dtype)
    return _aggregate((1 - y) * y_hat - F.logsigmoid(y_hat), agg)


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "binarycrossentropy": binarycrossentropy,
    "crossentropy": crossentropy,
    "logitbinarycrossentropy": logitbinarycrossentropy,
    "logitcrossentropy": logitcrossentropy,
    "mse": mse,
}


def supported_losses() -> tuple[str, ...]:
    """supported_losses() -> ("binarycrossentropy", ...): the names ``loss_from_name`` takes."""
    return tuple(sorted(_LOSSES))


def loss_from_name(
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **options: Any
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss_from_name(loss, **options) -> loss_fn(y_hat, y)

    The loss with Flux name ``loss`` (``"logitcrossentropy"``, ``"Flux.mse"``,
    ...), with keyword ``options`` (``dim``, ``agg``, ``epsilon``) bound. A
    callable is returned unchanged.

    Raises:
        UnknownLossError: the name is not one of :func:`supported_losses`.
    """
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise UnknownLossError(
            f"loss_from_name: expected a Flux loss name or a callable, got "
            f"{type(loss).__name__}. Supported names: {', '.join(supported_losses())}."
        )
    name = loss.removeprefix("Flux.").removeprefix("Losses.").lower()
    if name not in _LOSSES:
        raise UnknownLossError(
            f"loss_from_name: unknown loss {loss!r}. Supported names: "
            f"{', '.join(supported_losses())}; or pass a callable loss_fn(y_hat, y)."
        )
    fn = _LOSSES[name]
    if not options:
        return fn

    def bound(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(y_hat, y, **options)

    bound.__name__ = name
    return bound
