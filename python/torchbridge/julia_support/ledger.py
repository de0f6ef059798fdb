"""The memory ledger, as plain values and explicit scopes for Julia."""

from __future__ import annotations

from typing import Any

from .. import memory

__all__ = ["memory_stats", "scope_enter", "scope_exit"]


def memory_stats() -> dict[str, Any]:
    """memory_stats() -> dict: :func:`torchbridge.memory.stats` as plain values."""
    return memory.stats().to_dict()


def scope_enter() -> Any:
    """scope_enter() -> scope: open a ``torchbridge.memory.scope``; close it with ``scope_exit``."""
    cm = memory.scope()
    cm.__enter__()
    return cm


def scope_exit(scope: Any) -> None:
    """scope_exit(scope) -> None: close a ``scope_enter`` scope, releasing its pullbacks."""
    scope.__exit__(None, None, None)
