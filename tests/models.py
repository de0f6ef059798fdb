"""Small models the bridge tests run on, and a reference: plain torch autograd."""

from __future__ import annotations

import copy

import torch
from torch import nn


def mlp(dtype=torch.float64) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def small_cnn(dtype=torch.float64) -> nn.Module:
    """A CNN with BatchNorm and dropout: both depend on train/eval mode."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).to(dtype)


def reference_step(module: nn.Module, inputs, cotangents, *, seed: int):
    """Plain PyTorch: forward, backward with the given cotangents, on a copy of ``module``.

    Returns (outputs, input_grads, param_grads by name, buffers by name, the copy).
    """
    ref = copy.deepcopy(module)
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    torch.manual_seed(seed)
    out = ref(*xs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    torch.autograd.backward(list(outs), list(cotangents))
    params = {n: p.grad.detach().clone() for n, p in ref.named_parameters() if p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in ref.named_buffers()}
    input_grads = [x.grad if x.requires_grad else None for x in xs]
    return [o.detach() for o in outs], input_grads, params, buffers, ref
