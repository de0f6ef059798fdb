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
from .export_inputs import ExportPlan, export_plan, plain_message, plain_text

__all__ = ["SINGLE_FILE_LIMIT", "ExportReport", "TensorInfo", "export_onnx"]

# Tensors above this total go to an external data file (protobuf's limit is 2 GiB).
SINGLE_FILE_LIMIT = 1_800_000_000

# Largest |onnxruntime - torch| accepted, by the model's floating-point type.
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}


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
        notes: What the export changed to succeed, in words (e.g. that a
            transformers model was traced with eager attention); empty when
            nothing.
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
    notes: tuple[str, ...] = ()
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
            "notes": list(self.notes),
        }


def _info_dict(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "shape": list(info.shape), "dtype": info.dtype}


# -- resolving the model and its input ------------------------------------------


def _resolve_model(
    model: Any,
    weights: str | None,
    num_classes: int | None,
    trust: dict[str, bool],
) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        if weights is not None or num_classes is not None or any(trust.values()):
            raise ExportError(
                "export_onnx: weights=, num_classes=, trust_repo= and trust_remote_code= apply "
                "to a registry id; load the module with them first, or pass its id."
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
    # the switches given, as load_model reads them (NOTE [trust])
    loading = {k: v for k, v in trust.items() if v}
    module = registry.load_model(model, pretrained=True, weights=weights, **loading)
    if num_classes is None:
        return module
    names = get_registry().classifier(model, **trust)
    held = model_classes(module, names)
    if num_classes not in (0, held):
        holds = f"a {held}-class head" if held is not None else "a head of unknown size"
        raise ExportError(
            f"export_onnx: the weights of {model} hold {holds}, so num_classes={num_classes} "
            "would export a new head with random values. Give the num_classes the weights "
            "were trained with, or none."
        )
    return settle_head(module, num_classes, names=names, model_id=model, yours=True)


def _model_dtype_device(module: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    dtype = module_float_dtype(module) or torch.float32
    return dtype, module_device(module) or torch.device("cpu")


def _flat_outputs(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs)


# -- export, check, verify --------------------------------------------------------


def _check_output_path(path: Path) -> None:
    """ExportError unless ``path`` can be a file: not a folder, and no file where one of its
    folders would be."""
    if path.is_dir():
        raise ExportError(
            f"export_onnx: {path} is a folder; name the .onnx file to write in it "
            f"(e.g. {path / 'model.onnx'})."
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(
                    f"export_onnx: cannot write {path}: {parent} is a file, not a folder."
                )
            break


def _unsupported_ops(text: str) -> list[str]:
    return sorted(set(re.findall(r"OpOverload\(op='([^']+)'", text)))


def _remove(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class _TorchExportFailed(Exception):
    """torch.onnx.export raised ``failure``; the caller words the ExportError."""

    def __init__(self, failure: Exception):
        super().__init__(failure)
        self.failure = failure


def _write_with_fallback(
    model: torch.nn.Module, plan: ExportPlan, target: Path, *, opset, external, notes: list
) -> list[str]:
    """Write ``plan`` to ``target``; retry once with eager attention (NOTE [eager attention])."""

    def write() -> list[str]:
        return _write(
            plan.module,
            plan.example,
            target,
            names=list(plan.output_names),
            input_names=plan.input_names,
            dynamic_shapes=plan.dynamic_shapes,
            opset=opset,
            external=external,
        )

    try:
        return write()
    except _TorchExportFailed as first:
        failure = first.failure
    attention = _switchable_attention(model)
    if attention in (None, "eager"):
        raise _export_error(model, failure, None) from failure
    with _eager_attention(model) as switched:
        if not switched:
            raise _export_error(model, failure, None) from failure
        try:
            caught = write()
        except _TorchExportFailed as second:
            raise _export_error(model, second.failure, attention) from second.failure
    notes.append(
        f"exported with attn_implementation='eager': torch.export could not trace the "
        f"model's {attention!r} attention ({_torch_reason(failure)}). The file was verified "
        f"against the model as it is, with {attention!r} attention."
    )
    return caught


def _export_error(model: torch.nn.Module, exc: Exception, eager_after: str | None) -> ExportError:
    """What a user reads when torch cannot export ``model``: the reason, and what to do."""
    ops = _unsupported_ops(f"{exc}\n{exc.__cause__ or ''}")
    name = type(model).__name__
    if ops:
        return ExportError(
            f"export_onnx: cannot export {name} to ONNX: ONNX has no translation for "
            f"{', '.join(ops)}. Replace that operation in the model (or export the part of the "
            "model before it)."
        )
    tried = (
        f" (with attn_implementation='eager' too, tried after its {eager_after!r} attention failed)"
        if eager_after
        else ""
    )
    reason = _torch_reason(exc)
    advice = []
    if "data-dependent" in reason:
        advice.append(
            "the model branches on tensor values (an `if` on a tensor): write that branch with "
            "torch.where or torch.cond"
        )
    advice.append("try dynamic_batch=False (a graph for batches of one)")
    if not eager_after and _switchable_attention(model) is not None:
        advice.append("load the model with attn_implementation='eager'")
    advice.append("or export the part of the model that torch.export can trace")
    return ExportError(
        f"export_onnx: cannot export {name} to ONNX{tried}: torch.export failed: {reason} "
        f"What to do: {'; '.join(advice)}."
    )


def _torch_reason(exc: Exception) -> str:
    """torch's exporter error in one line: the step that failed and its cause, without the
    terminal colour codes and the advice to file an issue."""
    text = plain_text(str(exc))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    head = re.split(r"\s*This is step \d+/\d+", lines[0])[0] if lines else ""
    head = head.rstrip(" .:")
    summary = re.search(r"## Exception summary\s+(\S.*)", text)
    if summary:
        cause = re.sub(r"^<class '(?:[\w.]*\.)?(\w+)'>:\s*", r"\1: ", summary.group(1).strip())
    elif exc.__cause__ is not None:
        cause = plain_message(exc.__cause__)
    else:
        return plain_message(exc)
    cause = cause if cause[-1:] in ".!?" else cause + "."
    return f"{head}: {cause}" if head else cause


# NOTE [eager attention]
# transformers models compute attention with torch's scaled_dot_product_attention
# ("sdpa") by default; torch.export cannot decompose that path in some models
# (Swin, T5: a view of a transposed tensor), while their eager attention, the
# same computation written out, exports. A failed export of a model that can
# switch is retried once with attn_implementation="eager"; every config's own
# setting is put back afterwards, the report's notes say so, and the file is
# verified against the model as it is (its own attention).


def _switchable_attention(model: torch.nn.Module) -> str | None:
    """The attention implementation of a transformers model that can switch it, else None."""
    config = getattr(model, "config", None)
    if not hasattr(model, "set_attn_implementation") or not hasattr(
        config, "_attn_implementation_internal"
    ):
        return None
    return getattr(config, "_attn_implementation", None)


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module):
    """Eager attention inside the block (True when it took); every config restored after."""
    # every config the switch may touch: the submodules' and their sub-configs, by identity
    configs: dict[int, Any] = {}
    pending = [getattr(m, "config", None) for m in model.modules()]
    while pending:
        config = pending.pop()
        if config is None or id(config) in configs:
            continue
        configs[id(config)] = config
        pending.extend(getattr(config, k, None) for k in getattr(config, "sub_configs", {}) or {})
    saved = [
        (c, c._attn_implementation_internal)
        for c in configs.values()
        if hasattr(c, "_attn_implementation_internal")
    ]
    try:
        try:
            model.set_attn_implementation("eager")
        except (ValueError, ImportError, NotImplementedError):
            yield False
            return
        yield getattr(model.config, "_attn_implementation", None) == "eager"
    finally:
        for config, implementation in saved:
            config._attn_implementation_internal = implementation


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
        raise _TorchExportFailed(exc) from exc
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
    trust_repo: bool = False,
    trust_remote_code: bool = False,
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
            or a transformers config's: an image model's ``(num_channels,
            image_size)``, a Whisper-style encoder's ``(num_mel_bins, frames)``.
            Text models need none (their inputs are token ids); an
            encoder-decoder model also gets ``decoder_input_ids`` (NOTE
            [export inputs] in :mod:`torchbridge.export_inputs`). The input is
            named ``input`` (``pixel_values``, ``input_values`` or
            ``input_features`` where the model's forward calls it so).
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
        trust_repo: Import the torch.hub repository that builds a ``hub/`` id
            (or a ``local/`` one made from it), as :func:`torchbridge.load_model`'s
            switch (``--trust-repo``; docs/registry.md, "Trust").
        trust_remote_code: Run the code of a Hugging Face repository that ships
            its own (``--trust-remote-code``), as ``load_model`` does.

    The model is exported in eval mode; the mode of each submodule is restored afterwards.

    A transformers model whose default attention torch.export cannot trace is
    exported with ``attn_implementation="eager"`` instead and verified against
    the model as it is; ``ExportReport.notes`` says so (NOTE [eager attention]).

    Raises:
        ExportError: the model cannot be expressed in ONNX (the message names
            the operation, or gives torch's reason and what to try), does not
            run on an example of its inputs (the message carries the model's
            own), its input size is unknown, it would hold random weights,
            carries an unmerged LoRA adapter, or the written file fails
            ``onnx.checker``.
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
    _check_output_path(Path(path))  # before the model is built: a wrong path fails at once
    module = _resolve_model(
        model,
        weights,
        num_classes,
        {"trust_repo": trust_repo, "trust_remote_code": trust_remote_code},
    )
    from .adapters import is_adapter_model

    if is_adapter_model(module):
        raise ExportError(
            f"export_onnx: this {type(module.get_base_model()).__name__} carries a LoRA adapter "
            "in separate layers; fold it into the weights first: "
            "export_onnx(torchbridge.merge_adapter(model), path) (Julia: merge_adapter(m))."
        )
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
        plan = export_plan(
            model, module, input_size, dynamic_batch=dynamic_batch, dtype=dtype, device=device
        )
        notes: list[str] = []
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
            caught = _write_with_fallback(
                module, plan, target, opset=opset, external=external, notes=notes
            )
            if not target.exists():
                raise ExportError(f"export_onnx: torch.onnx.export wrote no file at {path}.")
            try:
                onnx.checker.check_model(str(target), full_check=True)
            except Exception as exc:
                raise ExportError(
                    "export_onnx: the exported file fails onnx.checker's full check: "
                    f"{plain_message(exc)}"
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
                    checked = plan.batch_sizes
                    max_diff = _verify(plan.module, target, plan.feeds, tol)
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
        notes=tuple(notes),
        warnings=tuple(caught),
    )
