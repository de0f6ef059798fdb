"""Model sources: the built-in ones, and those other packages declare.

A package adds a source by declaring an entry point in the group
``torchbridge.sources`` whose object is a :class:`ModelSource` subclass, an
instance, or a function returning one::

    [project.entry-points."torchbridge.sources"]
    mysource = "mypackage.models:MySource"
"""

from __future__ import annotations

import warnings
from typing import Any

from .base import ModelSource

__all__ = ["ENTRY_POINT_GROUP", "ModelSource", "builtin_sources", "entry_point_sources"]

ENTRY_POINT_GROUP = "torchbridge.sources"


def builtin_sources() -> list[ModelSource]:
    """builtin_sources() -> list[ModelSource]: timm, torchvision, hub, hf and local, in that
    order."""
    from .hf_source import HFSource
    from .hub_source import HubSource
    from .local_source import LocalSource
    from .timm_source import TimmSource
    from .torchvision_source import TorchvisionSource

    return [TimmSource(), TorchvisionSource(), HubSource(), HFSource(), LocalSource()]


def entry_point_sources() -> list[ModelSource]:
    """entry_point_sources() -> list[ModelSource]: the sources installed packages declare.

    A plugin that fails to load is reported with a warning and skipped: one
    broken package must not hide every other model.
    """
    from importlib.metadata import entry_points

    sources: list[ModelSource] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            sources.append(as_source(ep.load()))
        except Exception as err:
            warnings.warn(
                f"model source {ep.name!r} ({ep.value}) from entry point group "
                f"{ENTRY_POINT_GROUP!r} failed to load: {type(err).__name__}: {err}",
                stacklevel=2,
            )
    return sources


def as_source(obj: Any) -> ModelSource:
    """as_source(obj) -> ModelSource: an instance from a source, a source class or a factory."""
    if isinstance(obj, ModelSource):
        return obj
    if isinstance(obj, type) and issubclass(obj, ModelSource):
        return obj()
    if callable(obj):
        made = obj()
        if isinstance(made, ModelSource):
            return made
        obj = made
    raise TypeError(
        "expected a torchbridge ModelSource (subclass, instance or factory), "
        f"got {type(obj).__name__}"
    )
