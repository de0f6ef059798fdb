"""The memory ledger, as plain values and explicit scopes for Julia."""

from __future__ import annotations

from typing import Any

from .. import memory

__all__ = ["memory_stats", "scope_enter", "scope_exit"]


def memory_stats() -> dict[str, Any]:
    """memory_stats() -> dict: :func:`torchbridge.memory.stats` as plain values."""
    return memory.stats().to_dict()


def scope_enter(*, reusable: bool = False) -> Any:
    """scope_enter(*, reusable=False) -> scope: open a ``torchbridge.memory.scope``.

    Close it with ``scope_exit``. ``reusable=True`` lets the pullbacks created
    inside be called several times until then (NOTE [reusable pullbacks] in
    :mod:`torchbridge.memory`).
    """
    cm = memory.scope(reusable=reusable)
    cm.__enter__()
    return cm


def scope_exit(scope: Any) -> None:
    """scope_exit(scope) -> None: close a ``scope_enter`` scope, releasing its pullbacks."""
    scope.__exit__(None, None, None)
