"""torchbridge: the Python ecosystem's pretrained PyTorch models, from Julia and Python.

The public surface is listed once, here. Names resolve lazily so that
``import torchbridge`` stays cheap and optional dependencies (timm, onnx) are
imported only by the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Every error class at the top level (``except torchbridge.TorchBridgeError``);
# the module is small and imports nothing heavy.
from . import errors as errors
from .errors import *  # noqa: F403
from .errors import __all__ as _ERROR_NAMES

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the core bridge
    "bridge": "torchbridge.bridged",
    "BridgedModel": "torchbridge.bridged",
    "Pullback": "torchbridge.bridged",
    "OutputStructure": "torchbridge.bridged",
    "to_torch": "torchbridge.exchange",
    "FunctionalModel": "torchbridge.functional",
    # the registry
    "ModelEntry": "torchbridge.registry",
    "list_models": "torchbridge.registry",
    "search_models": "torchbridge.registry",
    "model_info": "torchbridge.registry",
    "load_model": "torchbridge.registry",
    "feature_channels": "torchbridge.registry",
    "register_source": "torchbridge.registry",
    "register_local_model": "torchbridge.registry",
    # large models: adapters
    "add_lora": "torchbridge.adapters",
    "merge_adapter": "torchbridge.adapters",
    # text models
    "load_tokenizer": "torchbridge.text",
    "generate": "torchbridge.text",
    # export
    "export_onnx": "torchbridge.export",
    "ExportReport": "torchbridge.export",
    # import
    "import_onnx": "torchbridge.onnx_import",
    "OnnxImportReport": "torchbridge.onnx_import",
}

# submodules reachable as attributes: torchbridge.memory, torchbridge.train, ...
_SUBMODULES = frozenset(
    {
        "adapters",
        "checkpointing",
        "cli",
        "errors",
        "exchange",
        "export",
        "memory",
        "registry",
        "train",
        "bridged",
        "text",
        "distributed",
        "functional",
        "precision",
    }
)

__all__ = sorted(
    [
        *_EXPORTS,
        *_ERROR_NAMES,
        "distributed",
        "errors",
        "functional",
        "memory",
        "train",
        "__version__",
    ]
)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"torchbridge.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'torchbridge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import distributed as distributed
    from . import functional as functional
    from . import memory as memory
    from . import train as train
    from .adapters import add_lora as add_lora
    from .adapters import merge_adapter as merge_adapter
    from .bridged import BridgedModel as BridgedModel
    from .bridged import OutputStructure as OutputStructure
    from .bridged import Pullback as Pullback
    from .bridged import bridge as bridge
    from .exchange import to_torch as to_torch
    from .export import ExportReport as ExportReport
    from .export import export_onnx as export_onnx
    from .functional import FunctionalModel as FunctionalModel
    from .onnx_import import OnnxImportReport as OnnxImportReport
    from .onnx_import import import_onnx as import_onnx
    from .registry import (
        ModelEntry as ModelEntry,
    )
    from .registry import (
        feature_channels as feature_channels,
    )
    from .registry import (
        list_models as list_models,
    )
    from .registry import (
        load_model as load_model,
    )
    from .registry import (
        model_info as model_info,
    )
    from .registry import (
        register_local_model as register_local_model,
    )
    from .registry import (
        register_source as register_source,
    )
    from .registry import (
        search_models as search_models,
    )
    from .text import generate as generate
    from .text import load_tokenizer as load_tokenizer
