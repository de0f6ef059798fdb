"""ONNX export that is checked before it is trusted.

``export_onnx`` writes the model with torch's ONNX exporter (``torch.export``
based), then checks the file with ``onnx.checker`` (full check, with shape
inference) and, when onnxruntime is installed, runs it against torch on random
inputs at two batch sizes. A file that fails any of these is deleted: the
caller gets an :class:`~torchbridge.errors.ExportError`, never a wrong file.

NOTE [one file]
Weights are stored inside the ``.onnx`` file (``external_data=False``) so that
the result is one self-contained file. Protobuf caps a message at 2 GiB, so a
model whose tensors exceed :data:`SINGLE_FILE_LIMIT` is written as ``.onnx``
plus ``.onnx.data``; the report names both.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .devices import module_device, module_float_dtype
from .errors import ExportError, ExportVerificationError

__all__ = ["SINGLE_FILE_LIMIT", "ExportReport", "TensorInfo", "export_onnx"]

# Tensors above this total go to an external data file (protobuf's limit is 2 GiB).
SINGLE_FILE_LIMIT = 1_800_000_000

# Largest |onnxruntime - torch| accepted, by the model's floating-point type.
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}

_VERIFY_BATCH_SIZES = (1, 3)


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: its name, shape (``"batch"`` for a dynamic dim) and type."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote and how it was checked.

    Attributes:
        path: The ``.onnx`` file.
        opset: The default-domain ONNX opset of the graph.
        inputs: The graph inputs (names, shapes, element types).
        outputs: The graph outputs.
        file_size: Bytes on disk, external data included.
        external_data: The ``.onnx.data`` file, when the weights did not fit in one file.
        max_abs_diff: The largest |onnxruntime - torch| over every output and batch
            size checked; ``None`` when not verified.
        tolerance: The largest difference that was accepted.
        batch_sizes_checked: The batch sizes run through onnxruntime (empty when not verified).
        verified_with: ``"onnxruntime <version>"``, or ``None`` when not verified.
        seconds: Wall time of the export, check and verification.
    """

    path: Path
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    file_size: int
    external_data: Path | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    batch_sizes_checked: tuple[int, ...] = ()
    verified_with: str | None = None
    seconds: float = 0.0
    warnings: tuple[str, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """to_dict() -> dict: a JSON-ready copy (paths as strings)."""
        return {
            "path": str(self.path),
            "opset": self.opset,
            "inputs": [_info_dict(i) for i in self.inputs],
            "outputs": [_info_dict(o) for o in self.outputs],
            "file_size": self.file_size,
            "external_data": str(self.external_data) if self.external_data else None,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "batch_sizes_checked": list(self.batch_sizes_checked),
            "verified_with": self.verified_with,
            "seconds": self.seconds,
        }


def _info_dict(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "shape": list(info.shape), "dtype": info.dtype}


# -- resolving the model and its input ------------------------------------------


def _resolve_model(model: Any, weights: str | None, num_classes: int | None) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        if weights is not None or num_classes is not None:
            raise ExportError(
                "export_onnx: weights= and num_classes= apply to a registry id; load the "
                "module with them first, or pass its id."
            )
        return model
    if not isinstance(model, str):
        raise ExportError(
            f"export_onnx: expected an nn.Module or a registry id such as 'timm/resnet18', "
            f"got {type(model).__name__}."
        )
    from . import registry
    from .registry.core import get_registry
    from .registry.heads import model_classes, settle_head

    # The same reading as load_model (NOTE [head rule]): the weights keep their own
    # head, num_classes=0 removes it, and any other num_classes names it. One the
    # weights do not hold would be a new, untrained head: an export must not hold one.
    entry = registry.model_info(model)
    if weights is None and entry.source != "local":
        if not entry.pretrained:
            raise ExportError(
                f"export_onnx: {model} has no published pretrained weights, so the export would "
                "hold random ones. Pass weights=FILE (--weights FILE) with a checkpoint."
            )
        if num_classes not in (None, 0, entry.num_classes):
            raise ExportError(
                f"export_onnx: num_classes={num_classes} without weights would give {model} a "
                "new, untrained head. Pass the weight file that head was trained in "
                "(--weights FILE), or export the finetuned model by its local/<name> id."
            )
    module = registry.load_model(model, pretrained=True, weights=weights)
    if num_classes is None:
        return module
    names = get_registry().classifier(model)
    held = model_classes(module, names)
    if num_classes not in (0, held):
        holds = f"a {held}-class head" if held is not None else "a head of unknown size"
        raise ExportError(
            f"export_onnx: the weights of {model} hold {holds}, so num_classes={num_classes} "
            "would export a new head with random values. Give the num_classes the weights "
            "were trained with, or none."
        )
    return settle_head(module, num_classes, names=names, model_id=model, yours=True)


def _input_size(model: Any, module: torch.nn.Module, input_size: Any) -> tuple[int, ...]:
    if input_size is None:
        if isinstance(model, str):
            from . import registry

            input_size = registry.model_info(model).input_size
        if input_size is None:
            input_size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size")
        if input_size is None:
            input_size = _config_image_size(getattr(module, "config", None))
        if input_size is None:
            raise ExportError(
                "export_onnx: the input size of one sample is unknown; pass input_size in "
                "torch order without the batch, e.g. input_size=(3, 224, 224)."
            )
    try:
        size = tuple(int(n) for n in input_size)
    except (TypeError, ValueError) as exc:
        raise ExportError(
            f"export_onnx: input_size must be a sequence of ints such as (3, 224, 224), got "
            f"{input_size!r}."
        ) from exc
    if not size or any(n < 1 for n in size):
        raise ExportError(f"export_onnx: input_size must be positive sizes, got {size}.")
    return size


def _config_image_size(config: Any) -> tuple[int, ...] | None:
    # a transformers vision config declares one image: num_channels, image_size
    image = getattr(config, "image_size", None)
    channels = getattr(config, "num_channels", None)
    if image is None or channels is None:
        return None
    height, width = (image, image) if isinstance(image, int) else tuple(image)
    return (int(channels), int(height), int(width))


def _image_input_name(module: torch.nn.Module) -> str:
    # transformers vision models call their input pixel_values; keep that name
    params = list(inspect.signature(module.forward).parameters)
    return "pixel_values" if params and params[0] == "pixel_values" else "input"


def _model_dtype_device(module: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    dtype = module_float_dtype(module) or torch.float32
    return dtype, module_device(module) or torch.device("cpu")


def _output_names(outputs: Any) -> list[str]:
    if isinstance(outputs, torch.Tensor):
        return ["output"]
    if isinstance(outputs, dict):
        return [str(k) for k in outputs]
    if isinstance(outputs, Sequence):
        return [f"output_{i}" for i in range(len(outputs))]
    raise ExportError(
        f"export_onnx: the model returned a {type(outputs).__name__}; ONNX export needs a "
        "tensor, a tuple/list of tensors or a dict of tensors."
    )


def _flat_outputs(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs)


# -- export, check, verify --------------------------------------------------------


def _unsupported_ops(text: str) -> list[str]:
    return sorted(set(re.findall(r"OpOverload\(op='([^']+)'", text)))


def _remove(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _write(
    module, example, path, *, names, input_names, dynamic_shapes, opset, external
) -> list[str]:
    """Run torch.onnx.export; its progress printout is kept out of the user's stdout."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if getattr(module, "onnx_export_by_tracing", False):
                # NOTE [re-exporting imported graphs]: an imported ONNX graph reads
                # shapes from tensors, which torch.export cannot; tracing records them
                axes = {0: "batch"} if dynamic_shapes else None
                torch.onnx.export(
                    module,
                    tuple(example),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=list(input_names),
                    output_names=names,
                    dynamic_axes={n: axes for n in [*input_names, *names]} if axes else None,
                )
            else:
                torch.onnx.export(
                    module,
                    tuple(example),
                    str(path),
                    dynamo=True,
                    external_data=external,
                    opset_version=opset,
                    input_names=list(input_names),
                    output_names=names,
                    dynamic_shapes=dynamic_shapes,
                )
    except Exception as exc:  # the exporter raises many types; all mean "no file"
        text = f"{exc}\n{exc.__cause__ or ''}"
        ops = _unsupported_ops(text)
        what = (
            f"ONNX has no translation for {', '.join(ops)}"
            if ops
            else f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        )
        raise ExportError(
            f"export_onnx: cannot export {type(module).__name__} to ONNX: {what}. Replace that "
            "operation in the model (or export the part of the model before it)."
        ) from exc
    return sorted({str(w.message).splitlines()[0] for w in caught})


def _graph_info(onnx_model) -> tuple[int, tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    import onnx

    def info(value) -> TensorInfo:
        tensor_type = value.type.tensor_type
        shape = tuple(
            d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        return TensorInfo(value.name, shape, dtype)

    opset = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializers = {i.name for i in onnx_model.graph.initializer}
    inputs = tuple(info(v) for v in onnx_model.graph.input if v.name not in initializers)
    outputs = tuple(info(v) for v in onnx_model.graph.output)
    return opset, inputs, outputs


def _verify(module, path, feeds, tolerance) -> float:
    """Run onnxruntime on each feed (a label and a tuple of torch inputs) against torch."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for label, xs in feeds:
        with torch.no_grad():
            expected = [t.detach().float().cpu().numpy() for t in _flat_outputs(module(*xs))]
        feed = {
            name: (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()
            for name, x in zip(input_names, xs)
        }
        try:
            got = session.run(None, feed)
        except Exception as exc:
            raise ExportVerificationError(
                f"export_onnx: onnxruntime could not run the exported model at {label}: {exc}"
            ) from exc
        if len(got) != len(expected):
            raise ExportVerificationError(
                f"export_onnx: the ONNX model has {len(got)} outputs, torch's has {len(expected)}."
            )
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            if g.shape != e.shape:
                raise ExportVerificationError(
                    f"export_onnx: output {i} has shape {g.shape} in onnxruntime and {e.shape} "
                    f"in torch at {label}."
                )
            diff = (
                float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64))))
                if g.size
                else 0.0
            )
            if not np.isfinite(diff):
                diff = float("inf")
            worst = max(worst, diff)
            if diff > tolerance:
                raise ExportVerificationError(
                    f"export_onnx: onnxruntime and torch differ by up to {diff:.3g} on output {i} "
                    f"at {label} (tolerance {tolerance:g}); the file was removed."
                )
    return worst


class _TextModel(torch.nn.Module):
    """A text model called with its token inputs positionally, returning its named tensors."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], extra: dict):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.extra = extra

    def forward(self, *inputs: torch.Tensor):
        from .outputs import flatten_outputs

        flat, _ = flatten_outputs(self.model(**dict(zip(self.input_names, inputs)), **self.extra))
        return tuple(flat)


def _text_spec(module: torch.nn.Module):
    """The token inputs of a text model (``None`` for any other module), as export needs them."""
    import inspect

    from .textinputs import TextInputs

    text = TextInputs.of(module)
    if text is None:
        return None
    params = inspect.signature(module.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and text.type_vocab_size:
        names.append("token_type_ids")
    extra = {"use_cache": False} if "use_cache" in params else {}
    config = getattr(module, "config", None)
    max_len = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    return text, [n for n in names if n in params], extra, max_len


def _text_feed(text, names, batch: int, seq: int, device, generator) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, text.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if seq > 2:
        mask[0, -2:] = 0  # some padding, as a real batch has
    types = torch.zeros(batch, seq, dtype=torch.int64)
    by_name = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return tuple(by_name[n].to(device) for n in names)


def export_onnx(
    model: torch.nn.Module | str,
    path: str | Path,
    *,
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    verify: bool = True,
    tolerance: float | None = None,
    weights: str | None = None,
    num_classes: int | None = None,
) -> ExportReport:
    """export_onnx(model, path, *, input_size, dynamic_batch=True, opset=None, verify=True)
    -> ExportReport

    Export ``model`` to the ONNX file ``path``, check it, and verify it numerically.

    Args:
        model: An ``nn.Module``, or a registry id (``"timm/resnet18"``,
            ``"local/my-model"``) loaded with :func:`torchbridge.load_model`
            (pretrained weights, or ``weights``).
        path: The ``.onnx`` file to write (its folder is created).
        input_size: One sample's shape in torch order, without the batch:
            ``(3, 224, 224)``. Defaults to the registry's or timm's input size,
            or a transformers vision config's ``(num_channels, image_size)``.
            Text models need none (their inputs are token ids). The image
            input is named ``input`` (``pixel_values`` where the model's
            forward calls it so).
        dynamic_batch: Export the batch dimension as symbolic (``"batch"``);
            otherwise the graph takes batches of one.
        opset: The ONNX opset to target; ``None`` lets torch choose.
        verify: Run onnxruntime (when installed) against torch at batch sizes
            1 and 3 (1 only without ``dynamic_batch``).
        tolerance: The largest accepted difference; default 1e-4 for float32.
        weights: A weight file for a registry id (``--weights``).
        num_classes: The head size of the weights (``--num-classes``), read as
            :func:`torchbridge.load_model` reads it: the weights keep their own
            head, so a size they do not hold, which would export a new and
            untrained head, is refused.

    The model is exported in eval mode; the mode of each submodule is restored afterwards.

    Raises:
        ExportError: the model cannot be expressed in ONNX (the message names
            the operation), would hold random weights, carries an unmerged LoRA
            adapter, or the written file fails ``onnx.checker``.
        ExportVerificationError: onnxruntime's outputs differ from torch's.
        UnknownModelError, WeightsNotFoundError, ...: a registry id cannot be loaded.

    A failed export writes nothing: a file already at ``path`` is left as it was.
    """
    started = time.perf_counter()
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(
            "export_onnx needs the onnx package: pip install 'torchbridge[onnx]'"
        ) from exc
    module = _resolve_model(model, weights, num_classes)
    from .adapters import is_adapter_model

    if is_adapter_model(module):
        raise ExportError(
            f"export_onnx: this {type(module.get_base_model()).__name__} carries a LoRA adapter "
            "in separate layers; fold it into the weights first: "
            "export_onnx(torchbridge.merge_adapter(model), path) (Julia: merge_adapter(m))."
        )
    text = _text_spec(module) if input_size is None else None
    size = _input_size(model, module, input_size) if text is None else ()
    dtype, device = _model_dtype_device(module)
    tol = tolerance if tolerance is not None else _TOLERANCE.get(dtype, 1e-4)
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    tensor_bytes = sum(
        t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]
    )
    external = tensor_bytes > SINGLE_FILE_LIMIT

    # every submodule's own mode (a finetuned model may keep frozen batch-norm layers in eval)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        batch_dim = torch.export.Dim("batch")
        if text is not None:  # token inputs: batch and sequence axes both dynamic
            spec, input_names, extra, max_len = text
            exported: torch.nn.Module = _TextModel(module, input_names, extra)
            example = _text_feed(spec, input_names, 2 if dynamic_batch else 1, 8, device, generator)
            seq_dim = (
                torch.export.Dim("sequence", max=max_len)
                if max_len
                else torch.export.Dim("sequence")
            )
            axes = {0: batch_dim, 1: seq_dim} if dynamic_batch else {1: seq_dim}
            # one entry, for the wrapper's *inputs, holding one per token input
            dynamic_shapes = (tuple(axes for _ in input_names),)
            with torch.no_grad():
                from .outputs import flatten_outputs

                _, structure = flatten_outputs(module(**dict(zip(input_names, example)), **extra))
            names = [n.replace(".", "_") for n in structure.names]
            shapes = [(1, 5), (3, 11)] if dynamic_batch else [(1, 5), (1, 11)]
            feeds = [
                (
                    f"batch size {b}, sequence length {q}",
                    _text_feed(spec, input_names, b, q, device, generator),
                )
                for b, q in shapes
            ]
            checked_batches = tuple(dict.fromkeys(b for b, _ in shapes))
        else:
            exported = module
            input_names = [_image_input_name(module)]
            # a batch of 2 for the example: torch.export specialises dimensions of size 1
            example = (torch.randn(2 if dynamic_batch else 1, *size, dtype=dtype, device=device),)
            dynamic_shapes = ({0: batch_dim},) if dynamic_batch else None
            with torch.no_grad():
                names = _output_names(module(*example))
            checked_batches = _VERIFY_BATCH_SIZES if dynamic_batch else (1,)
            feeds = [
                (
                    f"batch size {b}",
                    (
                        torch.randn(b, *size, generator=generator, dtype=torch.float32)
                        .to(dtype)
                        .to(device),
                    ),
                )
                for b in checked_batches
            ]
        if external:
            # the .onnx file names its data file, so both are written in place
            _remove(path, data_path)
            target = path
        else:
            # one file: written beside the target and moved over it once verified,
            # so a failed export leaves any earlier file at `path` untouched
            target = path.with_name(f".{path.stem}.{os.getpid()}.partial.onnx")
        # folders made for `path` are removed again if the export fails
        created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            caught = _write(
                exported,
                example,
                target,
                names=names,
                input_names=input_names,
                dynamic_shapes=dynamic_shapes,
                opset=opset,
                external=external,
            )
            if not target.exists():
                raise ExportError(f"export_onnx: torch.onnx.export wrote no file at {path}.")
            try:
                onnx.checker.check_model(str(target), full_check=True)
            except Exception as exc:
                raise ExportError(
                    f"export_onnx: the exported file fails onnx.checker's full check: {exc}"
                ) from exc
            graph = onnx.load(str(target), load_external_data=False)
            opset_version, inputs, outputs = _graph_info(graph)
            max_diff, checked, verified_with = None, (), None
            if verify:
                try:
                    import onnxruntime
                except ImportError:
                    onnxruntime = None
                if onnxruntime is not None:
                    checked = checked_batches
                    max_diff = _verify(exported, target, feeds, tol)
                    verified_with = f"onnxruntime {onnxruntime.__version__}"
            if target != path:
                os.replace(target, path)
        except BaseException:
            _remove(target, target.with_name(target.name + ".data"))
            if external:
                _remove(path, data_path)
            for folder in created:  # deepest first; a folder something else wrote into stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    finally:
        for submodule, training in modes:
            submodule.training = training

    has_data = external and data_path.exists()
    return ExportReport(
        path=path,
        opset=opset_version,
        inputs=inputs,
        outputs=outputs,
        file_size=path.stat().st_size + (data_path.stat().st_size if has_data else 0),
        external_data=data_path if has_data else None,
        max_abs_diff=max_diff,
        tolerance=tol if checked else None,
        batch_sizes_checked=tuple(checked),
        verified_with=verified_with,
        seconds=time.perf_counter() - started,
        warnings=tuple(caught),
    )
