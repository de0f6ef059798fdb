"""What a raw Julia array looks like to Python, for tests that run without Julia.

PythonCall hands Python a Julia ``Array`` as a ``juliacall.ArrayValue``: an
object whose ``__array_interface__`` reports Julia's size and column-major
strides over Julia's memory. :class:`ArrayValue` below has the same type name,
module and interface, so :func:`torchbridge.exchange.is_julia_array` knows it
exactly as it knows the real one.
"""

from __future__ import annotations

import numpy as np


class ArrayValue:
    """A stand-in for ``juliacall.ArrayValue`` over a column-major numpy array."""

    __module__ = "juliacall"

    def __init__(self, array: np.ndarray):
        self.array = array  # the Julia array's memory, Julia size, column-major

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def __array_interface__(self) -> dict:
        interface = dict(self.array.__array_interface__)
        interface["strides"] = self.array.strides  # PythonCall always gives the strides
        return interface


def julia_array(*size: int, dtype=np.float32, seed: int = 0) -> ArrayValue:
    """A Julia ``randn(Float32, size...)`` as PythonCall passes it."""
    rng = np.random.default_rng(seed)
    return ArrayValue(np.asfortranarray(rng.standard_normal(size).astype(dtype)))
