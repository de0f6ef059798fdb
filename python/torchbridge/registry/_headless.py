"""``Headless``: what a removed classifier becomes (kept apart: it imports torch)."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["Headless"]


class Headless(nn.Identity):
    """A removed classifier: passes the features through, and remembers the layer it
    replaced (its input features, kind and bias) so that a head can be put back."""

    def __init__(self, in_features: int, conv: bool, bias: bool) -> None:
        super().__init__()
        self.in_features, self.conv, self.bias = in_features, conv, bias

    def extra_repr(self) -> str:
        kind = "Conv2d 1x1" if self.conv else "Linear"
        return f"in_features={self.in_features}, replaces={kind}"
