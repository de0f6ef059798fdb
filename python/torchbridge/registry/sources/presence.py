"""``CachePresence``: which of a source's entries have their weights on this machine.

Listing must stay fast with thousands of entries, so presence is read from a
listing of each cache folder: an entry names the folder entries that hint its
weights are here (a Hugging Face repo folder, a file in torch.hub's
``checkpoints``), and only the entries hinted now, or hinted last time, are
looked at again. Everything is looked at again when the folders or the static
entries change (another ``$HF_HOME``, a ``refresh()``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from ..entry import ModelEntry
from ..paths import folder_names

__all__ = ["CachePresence", "Hint"]

Item = TypeVar("Item")
#: (index of the folder, name of a file or folder in it)
Hint = tuple[int, str]


class CachePresence(Generic[Item]):
    """The finished entries of a table of items, kept current for the cache folders.

    ``hints(item)`` names what in the folders hints that an item's weights are
    here; ``finish(item, hinted)`` makes its entry (``hinted`` false: not cached).
    """

    def __init__(
        self,
        hints: Callable[[Item], Iterable[Hint]],
        finish: Callable[[Item, bool], ModelEntry],
    ) -> None:
        self._hints, self._finish = hints, finish
        self._lock = threading.Lock()
        self._items: Mapping[str, Item] | None = None
        self._folders: tuple[Path, ...] = ()
        self._by_hint: dict[Hint, list[str]] = {}
        self._entries: dict[str, ModelEntry] = {}
        self._hinted: set[str] = set()

    def entries(
        self, items: Mapping[str, Item], folders: tuple[Path, ...]
    ) -> dict[str, ModelEntry]:
        """entries(items, folders) -> dict[str, ModelEntry]: every item's entry, by name."""
        with self._lock:
            if items is not self._items or folders != self._folders:
                self._items, self._folders = items, folders
                self._by_hint = {}
                for name, item in items.items():
                    for hint in self._hints(item):
                        self._by_hint.setdefault(hint, []).append(name)
                self._entries = {name: self._finish(item, False) for name, item in items.items()}
                self._hinted = set()
            hinted: set[str] = set()
            if self._by_hint:
                for index, folder in enumerate(folders):
                    for found in folder_names(folder):
                        hinted.update(self._by_hint.get((index, found), ()))
            for name in hinted | self._hinted:
                self._entries[name] = self._finish(items[name], name in hinted)
            self._hinted = hinted
            return self._entries
