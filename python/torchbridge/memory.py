"""The memory ledger: what the bridge keeps alive, on each side of the boundary.

NOTE [ownership]
Every buffer that crosses the boundary has one owner and one release point:

* an imported input, the graph a forward builds, and the graph outputs are
  owned by the :class:`~torchbridge.Pullback` of that forward; they are freed
  when the pullback runs, when ``release()`` is called, when the enclosing
  :func:`scope` exits, or when the model is closed;
* a model's parameters and gradient buffers are shared once, when the model is
  bridged, and are owned by the :class:`~torchbridge.BridgedModel` until
  ``close()``.

The ledger counts all of these so that a test or a benchmark can check that a
run leaves nothing behind. A pullback that is only reclaimed by the garbage
collector still frees its graph, but is counted in ``released_by_gc``: on the
Julia side that would be a finalizer, which is not a release point.

NOTE [the ledger under the garbage collector]
The collector can run a pullback's ``__del__`` at any allocation, in any
thread, including one that holds the ledger's lock (``stats()`` allocates
while it sums). So the collector's path takes no lock at all: it removes the
pullback with a single dict operation and records the release in a deque
(both atomic under the GIL), and ``stats()`` folds those records in later.
Only calls made on purpose (a model opening or closing, a scope, ``stats()``)
take the lock.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import LeakError

if TYPE_CHECKING:
    from .bridged import BridgedModel, Pullback

__all__ = [
    "MemoryStats",
    "assert_baseline",
    "expect_baseline",
    "release_all",
    "scope",
    "snapshot",
    "stats",
]


@dataclass(frozen=True)
class MemoryStats:
    """MemoryStats: a snapshot of the ledger.

    Attributes:
        live_pullbacks: pullbacks that still hold a graph.
        held_buffers: tensors those pullbacks keep alive (imported inputs and
            graph outputs).
        held_bytes: bytes of ``held_buffers`` per device (``"cpu"``, ``"cuda:0"`` ...).
        open_models: bridged models not yet closed.
        shared_buffers: parameters and gradient buffers the open models share.
        shared_bytes: bytes of ``shared_buffers`` per device.
        released_by_gc: pullbacks freed by the garbage collector rather than by
            a call, a ``release()``, a scope or ``close()``; cumulative.
        read_only_copies: inputs copied because their producer marked them
            read-only (NOTE [read-only memory] in :mod:`torchbridge.exchange`);
            cumulative, and not a leak: :meth:`differences` leaves it out.
        negative_stride_copies: inputs copied because torch cannot view their
            negative strides (NOTE [negative strides] in :mod:`torchbridge.exchange`);
            cumulative, and not a leak either.
    """

    live_pullbacks: int = 0
    held_buffers: int = 0
    held_bytes: dict[str, int] = field(default_factory=dict)
    open_models: int = 0
    shared_buffers: int = 0
    shared_bytes: dict[str, int] = field(default_factory=dict)
    released_by_gc: int = 0
    read_only_copies: int = 0
    negative_stride_copies: int = 0

    def to_dict(self) -> dict:
        return {
            "live_pullbacks": self.live_pullbacks,
            "held_buffers": self.held_buffers,
            "held_bytes": dict(self.held_bytes),
            "open_models": self.open_models,
            "shared_buffers": self.shared_buffers,
            "shared_bytes": dict(self.shared_bytes),
            "released_by_gc": self.released_by_gc,
            "read_only_copies": self.read_only_copies,
            "negative_stride_copies": self.negative_stride_copies,
        }

    def differences(self, baseline: MemoryStats) -> list[str]:
        """The counters that differ from ``baseline``, as readable lines."""
        lines = []
        for name, now in self.to_dict().items():
            if name in _NOT_RELEASED:
                continue
            before = baseline.to_dict()[name]
            if isinstance(now, dict):
                for device in sorted(set(now) | set(before)):
                    a, b = before.get(device, 0), now.get(device, 0)
                    if a != b:
                        lines.append(f"{name}[{device}]: {a} -> {b}")
            elif now != before:
                lines.append(f"{name}: {before} -> {now}")
        return lines


# counters that record work done, not memory held: no release brings them back
_NOT_RELEASED = frozenset({"read_only_copies", "negative_stride_copies"})


def tensor_bytes(tensors) -> Counter:
    """Bytes per device of ``tensors`` (each counted at its own size)."""
    total: Counter = Counter()
    for t in tensors:
        total[str(t.device)] += t.nbytes
    return total


class _Ledger:
    """The counts behind :func:`stats` (NOTE [the ledger under the garbage collector])."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pullbacks: dict[int, weakref.ref[Pullback]] = {}
        self._models: dict[int, tuple[int, Counter]] = {}
        self._released_by_gc = 0
        self._gc_releases: deque[None] = deque()  # appended without a lock, folded by stats()
        self._read_only_copies = 0
        self._negative_stride_copies = 0
        self._scopes = threading.local()
        self.open_scopes = 0  # in any thread

    # pullbacks ---------------------------------------------------------------
    # Only a weak reference is kept: the ledger must never be what keeps a
    # graph alive. Sizes are summed when stats() asks, off the training step.
    def add_pullback(self, pullback: Pullback) -> bool:
        """Record ``pullback`` in the innermost scope; True when that scope is reusable."""
        # A single dict store is atomic under the GIL; no lock on the hot path.
        self._pullbacks[id(pullback)] = weakref.ref(pullback)
        if self.open_scopes:  # skip the thread-local lookup when no scope is open
            stack = getattr(self._scopes, "stack", None)
            if stack:
                scope = stack[-1]
                scope.created.append(pullback)
                return scope.reusable
        return False

    def remove_pullback(self, pullback: Pullback, *, by_gc: bool = False) -> None:
        # No lock: this runs from __del__, possibly inside stats() on this thread.
        self._pullbacks.pop(id(pullback), None)
        if by_gc:
            self._gc_releases.append(None)

    def count_read_only_copy(self) -> None:
        with self._lock:
            self._read_only_copies += 1

    def count_negative_stride_copy(self) -> None:
        with self._lock:
            self._negative_stride_copies += 1

    def live_pullbacks(self) -> list[Pullback]:
        refs = list(self._pullbacks.copy().values())
        return [pb for pb in (ref() for ref in refs) if pb is not None]

    # models ------------------------------------------------------------------
    def add_model(self, model: BridgedModel, buffers: int, nbytes: Counter) -> None:
        with self._lock:
            self._models[id(model)] = (buffers, nbytes)

    def remove_model(self, model: BridgedModel) -> None:
        with self._lock:
            self._models.pop(id(model), None)

    # scopes ------------------------------------------------------------------
    def scope_stack(self) -> list[_Scope]:
        stack = getattr(self._scopes, "stack", None)
        if stack is None:
            stack = self._scopes.stack = []
        return stack

    def stats(self) -> MemoryStats:
        # Pullbacks are summed outside the lock: a collection may free one meanwhile
        # (its weak reference then reads None), and must never wait for this call.
        held_bytes: Counter = Counter()
        held = 0
        live = 0
        for ref in list(self._pullbacks.copy().values()):
            pullback = ref()
            if pullback is None or not pullback.live:
                continue
            tensors = pullback.held_tensors()
            live += 1
            held += len(tensors)
            held_bytes.update(tensor_bytes(tensors))
            del pullback
        with self._lock:
            while self._gc_releases:
                self._gc_releases.popleft()
                self._released_by_gc += 1
            models = list(self._models.values())
            released_by_gc, read_only_copies = self._released_by_gc, self._read_only_copies
            negative_stride_copies = self._negative_stride_copies
        shared_bytes: Counter = Counter()
        shared = 0
        for buffers, nbytes in models:
            shared += buffers
            shared_bytes.update(nbytes)
        return MemoryStats(
            live_pullbacks=live,
            held_buffers=held,
            held_bytes=dict(held_bytes),
            open_models=len(models),
            shared_buffers=shared,
            shared_bytes=dict(shared_bytes),
            released_by_gc=released_by_gc,
            read_only_copies=read_only_copies,
            negative_stride_copies=negative_stride_copies,
        )


LEDGER = _Ledger()


def stats() -> MemoryStats:
    """stats() -> MemoryStats

    What the bridge keeps alive right now: live pullbacks and the buffers they
    hold, open models and the parameters and gradients they share, bytes per
    device of each.
    """
    return LEDGER.stats()


snapshot = stats


class _Scope:
    """One open :func:`scope`: the pullbacks created in it, released when it exits.

    A class rather than a generator context manager: a Julia training loop
    opens one per step.
    """

    __slots__ = ("reusable", "created", "_stack")

    def __init__(self, reusable: bool):
        self.reusable = reusable
        self.created: list[Pullback] = []
        self._stack: list[_Scope] | None = None

    def __enter__(self) -> None:
        self._stack = LEDGER.scope_stack()
        self._stack.append(self)
        with LEDGER._lock:
            LEDGER.open_scopes += 1

    def __exit__(self, *exc) -> None:
        self._stack.pop()
        with LEDGER._lock:
            LEDGER.open_scopes -= 1
        for pullback in self.created:
            pullback.release()
        self.created.clear()


def scope(*, reusable: bool = False) -> _Scope:
    """scope(*, reusable=False) -> context manager

    Releases, at exit, every pullback created inside it by this thread that
    has not been freed yet — a forward whose pullback is never called then
    holds no memory past the step. Scopes nest; each releases what was created
    in it.

    NOTE [reusable pullbacks]
    A pullback is one-shot: its first call frees the graph. Inside
    ``scope(reusable=True)`` the pullbacks created (in the innermost scope)
    may be called any number of times, each call computing the gradients for
    its own cotangents (a Jacobian row by row, ``test_rrule``'s repeated
    calls), and their graphs are freed when the scope exits. Memory stays
    deterministic either way: freed by the call, or by the scope.

    Example:
        >>> with torchbridge.memory.scope():
        ...     outputs, pullback = model.forward(x)   # never pulled back
        >>> torchbridge.memory.stats().live_pullbacks
        0
    """
    return _Scope(bool(reusable))


def release_all() -> int:
    """release_all() -> number released

    Releases every live pullback of every model. For the end of a training run
    or an interactive session; inside a loop prefer :func:`scope`.
    """
    released = 0
    for pullback in LEDGER.live_pullbacks():
        if pullback.release():
            released += 1
    return released


def assert_baseline(baseline: MemoryStats, *, include_gc: bool = True) -> None:
    """assert_baseline(baseline) -> None

    Raises :class:`~torchbridge.errors.LeakError` listing every counter that is
    not back at ``baseline`` (a snapshot taken with :func:`snapshot`). With
    ``include_gc`` (the default) a pullback freed only by the garbage collector
    since the baseline counts as a leak too.
    """
    now = stats()
    lines = now.differences(baseline)
    if not include_gc:
        lines = [line for line in lines if not line.startswith("released_by_gc")]
    if lines:
        raise LeakError(
            "the bridge's memory ledger is not back at its baseline:\n  "
            + "\n  ".join(lines)
            + "\nCall every pullback or release() it, run forwards whose pullback may be "
            "skipped inside torchbridge.memory.scope(), and close() models you are done with.",
            lines,
        )


@contextlib.contextmanager
def expect_baseline(*, include_gc: bool = True) -> Iterator[MemoryStats]:
    """expect_baseline() -> context manager

    Snapshots the ledger, runs the block, and asserts with
    :func:`assert_baseline` that the block left nothing behind.
    """
    baseline = stats()
    yield baseline
    assert_baseline(baseline, include_gc=include_gc)
