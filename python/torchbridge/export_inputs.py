"""What an ONNX export feeds the model: its inputs, an example, their dynamic axes, and
the feeds onnxruntime checks the file on.

NOTE [export inputs]
A model's inputs are read from what the module declares (transformers'
``main_input_name`` and ``config.is_encoder_decoder``, the token rules of
:class:`~torchbridge.textinputs.TextInputs`), never from its class name:

* a text model (its forward takes ``input_ids``): token ids and an attention
  mask (token type ids where the model has them), batch and sequence dynamic;
* an encoder-decoder model (T5, BART, Whisper, a vision encoder-decoder): the
  encoder's input (token ids as above, or one float tensor of one sample's
  size) and ``decoder_input_ids``, with a dynamic decoder sequence of its own:
  a decoder without its input does not run;
* any other model: one float tensor of one sample's size (an image, an audio
  clip), passed positionally, batch dynamic.

One sample's size comes from ``input_size``, else the registry, timm's
``pretrained_cfg``, or a transformers config: an image model's
``num_channels`` and ``image_size``, or a Whisper-style encoder's mel bins and
its fixed number of frames. An audio model whose clip length nothing fixes
needs ``input_size``; without it the export is refused with an
:class:`~torchbridge.errors.ExportError` saying so. The module is run once on
the example before it is exported: a model that does not run on it is an
``ExportError`` carrying the model's own message, never a bare exception.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ExportError

__all__ = ["ExportPlan", "export_plan", "plain_message", "plain_text"]

# terminal colour and cursor codes, which torch's exporter puts in its messages
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

_VERIFY_BATCH_SIZES = (1, 3)
# the example's lengths (distinct, and above 1: torch.export specialises a
# dimension of size 1, and may tie dimensions of equal example sizes) and the
# lengths onnxruntime is checked at
_EXAMPLE_LENGTHS = {"sequence": 8, "decoder_sequence": 5}
_CHECKED_LENGTHS = ({"sequence": 5, "decoder_sequence": 3}, {"sequence": 11, "decoder_sequence": 6})
# what one sample of an audio model's input looks like, for the message that asks for it
_AUDIO_SIZES = {
    "input_values": "input_size=(samples,), e.g. (16000,) for one second at 16 kHz",
    "input_features": "input_size=(num_mel_bins, frames) as its feature extractor makes them",
}


@dataclass(frozen=True)
class ExportPlan:
    """How one model is exported and checked.

    Attributes:
        module: what ``torch.onnx.export`` receives (the model, or a wrapper
            that passes the inputs by name and returns the flat outputs).
        input_names, output_names: the graph's names.
        example: the inputs the graph is traced on.
        dynamic_shapes: ``torch.onnx.export``'s ``dynamic_shapes``.
        feeds: ``(label, inputs)`` pairs that onnxruntime is checked on.
        batch_sizes: the batch sizes among the feeds.
    """

    module: torch.nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple | None
    feeds: tuple[tuple[str, tuple[torch.Tensor, ...]], ...]
    batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class _Input:
    """One input: its name, its kind, and its shape (ints fixed, names dynamic)."""

    name: str
    kind: str  # "ids", "mask", "types" or "float"
    shape: tuple[int | str, ...]
    vocab: int = 0

    def make(self, sizes: dict[str, int], generator, dtype, device) -> torch.Tensor:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)
        if self.kind == "ids":
            t = torch.randint(0, self.vocab, shape, generator=generator)
        elif self.kind == "mask":
            t = torch.ones(shape, dtype=torch.int64)
            if shape[-1] > 2:
                t[0, -2:] = 0  # some padding, as a real batch has
        elif self.kind == "types":
            t = torch.zeros(shape, dtype=torch.int64)
        else:
            t = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)
        return t.to(device)


class _KeywordModel(torch.nn.Module):
    """A model called with its inputs by name, given positionally; returns its flat tensors."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], extra: dict):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.extra = extra

    def forward(self, *inputs: torch.Tensor):
        from .outputs import flatten_outputs

        flat, _ = flatten_outputs(self.model(**dict(zip(self.input_names, inputs)), **self.extra))
        return tuple(flat)


def export_plan(
    model: Any,
    module: torch.nn.Module,
    input_size: Sequence[int] | None,
    *,
    dynamic_batch: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> ExportPlan:
    """export_plan(model, module, input_size, *, dynamic_batch, dtype, device) -> ExportPlan

    The inputs ``module`` is exported with (NOTE [export inputs]); ``model`` is
    what the caller passed (a registry id gives the registry's input size).

    Raises:
        ExportError: one sample's size is unknown or not a size, is given for
            a text model, or the module does not run on an example of its
            inputs (the message carries the model's own and says what to pass).
    """
    params = _forward_parameters(module)
    config = getattr(module, "config", None)
    extra = {"use_cache": False} if "use_cache" in params else {}
    decoder = _decoder_input(module, config, params)
    maxima = {"sequence": _max_length(config), "decoder_sequence": _decoder_max_length(config)}
    text = _text_inputs(module, params)
    if text is not None:
        if input_size is not None:
            raise ExportError(
                f"export_onnx: {type(module).__name__} takes token ids (input_ids), exported with "
                f"dynamic batch and sequence lengths; input_size={tuple(input_size)!r} applies to "
                "image and audio inputs only: leave it out."
            )
        inputs = [*text, *([decoder] if decoder else [])]
        return _keyword_plan(module, inputs, extra, maxima, dynamic_batch, dtype, device)
    size = _sample_size(model, module, input_size)
    if decoder is not None:
        main = _Input(_main_input_name(module, params), "float", ("batch", *size))
        return _keyword_plan(module, [main, decoder], extra, maxima, dynamic_batch, dtype, device)
    return _positional_plan(module, params, size, dynamic_batch, dtype, device)


# -- what the module declares ------------------------------------------------------


def _forward_parameters(module: torch.nn.Module) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return {}


def _main_input_name(module: torch.nn.Module, params: dict) -> str:
    name = getattr(module, "main_input_name", None)
    if isinstance(name, str) and name in params:
        return name
    return next(iter(params), "input")


def _text_inputs(module: torch.nn.Module, params: dict) -> list[_Input] | None:
    from .textinputs import TextInputs

    text = TextInputs.of(module)
    if text is None or text.vocab_size is None:
        return None
    if any(n in params for n in ("pixel_values", "input_features", "input_values")):
        return None  # a model that also reads images or audio (CLIP) is not a text model
    tokens = ("batch", "sequence")
    inputs = [_Input("input_ids", "ids", tokens, text.vocab_size)]
    if "attention_mask" in params:
        inputs.append(_Input("attention_mask", "mask", tokens))
    if "token_type_ids" in params and text.type_vocab_size:
        inputs.append(_Input("token_type_ids", "types", tokens))
    return inputs


def _decoder_input(module: torch.nn.Module, config: Any, params: dict) -> _Input | None:
    if not getattr(config, "is_encoder_decoder", False) or "decoder_input_ids" not in params:
        return None
    vocab = None
    get_decoder = getattr(module, "get_decoder", None)
    try:
        embedding = get_decoder().get_input_embeddings() if get_decoder else None
        vocab = getattr(embedding, "num_embeddings", None)
    except (AttributeError, NotImplementedError, TypeError):
        pass
    if not isinstance(vocab, int):
        vocab = getattr(_decoder_config(config), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ExportError(
            f"export_onnx: {type(module).__name__} is an encoder-decoder model, and the size of "
            "its decoder's vocabulary (for an example of decoder_input_ids) is in neither its "
            "decoder's embeddings nor its config. Export its encoder, or set config.vocab_size."
        )
    return _Input("decoder_input_ids", "ids", ("batch", "decoder_sequence"), vocab)


def _decoder_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    try:
        return get(decoder=True) if get else config
    except TypeError:  # pragma: no cover - a transformers without the keyword
        return config


def _max_length(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _decoder_max_length(config: Any) -> int | None:
    value = getattr(config, "max_target_positions", None)
    return value if isinstance(value, int) else _max_length(_decoder_config(config))


# -- one sample's size -------------------------------------------------------------


def _sample_size(model: Any, module: torch.nn.Module, input_size: Any) -> tuple[int, ...]:
    if input_size is None:
        if isinstance(model, str):
            from . import registry

            input_size = registry.model_info(model).input_size
        if input_size is None:
            input_size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size")
        if input_size is None:
            input_size = config_input_size(module)
        if input_size is None:
            name = _main_input_name(module, _forward_parameters(module))
            if name in _AUDIO_SIZES:
                raise ExportError(
                    f"export_onnx: {type(module).__name__} is an audio model (its input is "
                    f"{name}) and nothing fixes the length of one clip; pass "
                    f"{_AUDIO_SIZES[name]}."
                )
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


def config_input_size(module: torch.nn.Module) -> tuple[int, ...] | None:
    """config_input_size(module) -> size | None: one sample's size from a transformers config.

    An image model's ``(num_channels, height, width)`` (its own config's, or its
    encoder's); a Whisper-style encoder's ``(num_mel_bins, frames)``, where the
    frames are fixed: ``max_source_positions`` times the strides of its two
    convolutions, as the encoder itself requires.
    """
    config = getattr(module, "config", None)
    for candidate in (config, getattr(config, "encoder", None)):
        size = _image_size(candidate)
        if size is not None:
            return size
    mels = getattr(config, "num_mel_bins", None)
    positions = getattr(config, "max_source_positions", None)
    get_encoder = getattr(module, "get_encoder", None)
    if not (isinstance(mels, int) and isinstance(positions, int) and get_encoder):
        return None
    try:
        encoder = get_encoder()
        frames = positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    except (AttributeError, TypeError, IndexError):
        return None
    return (mels, int(frames))


def _image_size(config: Any) -> tuple[int, ...] | None:
    # a transformers vision config declares one image: num_channels, image_size
    image = getattr(config, "image_size", None)
    channels = getattr(config, "num_channels", None)
    if not isinstance(channels, int) or image is None:
        return None
    height, width = (image, image) if isinstance(image, int) else tuple(image)
    return (int(channels), int(height), int(width))


# -- plans ---------------------------------------------------------------------


def _keyword_plan(
    module, inputs: list[_Input], extra, maxima, dynamic_batch, dtype, device
) -> ExportPlan:
    from .outputs import flatten_outputs

    generator = torch.Generator().manual_seed(0)
    names = tuple(i.name for i in inputs)
    symbols = {d for i in inputs for d in i.shape if isinstance(d, str)}
    dims = {
        s: torch.export.Dim(s, max=maxima[s]) if maxima.get(s) else torch.export.Dim(s)
        for s in symbols
    }

    def axes(i: _Input) -> dict | None:
        found = {
            k: dims[d]
            for k, d in enumerate(i.shape)
            if isinstance(d, str) and (dynamic_batch or d != "batch")
        }
        return found or None

    example_sizes = {"batch": 2 if dynamic_batch else 1, **_EXAMPLE_LENGTHS}
    example = tuple(i.make(example_sizes, generator, dtype, device) for i in inputs)
    out = _trial(
        module, lambda: module(**dict(zip(names, example)), **extra), _describe(names, example)
    )
    _, structure = flatten_outputs(out)
    del out
    feeds = []
    for lengths, batch in zip(_CHECKED_LENGTHS, (1, 3) if dynamic_batch else (1, 1)):
        sizes = {"batch": batch, **lengths}
        label = ", ".join(
            [f"batch size {batch}"]
            + [f"{s.replace('_', ' ')} length {sizes[s]}" for s in _EXAMPLE_LENGTHS if s in symbols]
        )
        feeds.append((label, tuple(i.make(sizes, generator, dtype, device) for i in inputs)))
    return ExportPlan(
        module=_KeywordModel(module, names, extra),
        input_names=names,
        output_names=tuple(n.replace(".", "_") for n in structure.names),
        example=example,
        # one entry, for the wrapper's *inputs, holding one per input
        dynamic_shapes=(tuple(axes(i) for i in inputs),),
        feeds=tuple(feeds),
        batch_sizes=(1, 3) if dynamic_batch else (1,),
    )


def _positional_plan(module, params, size, dynamic_batch, dtype, device) -> ExportPlan:
    generator = torch.Generator().manual_seed(0)
    first = next(iter(params), None)
    # transformers models call their input pixel_values, input_values ...; keep that name
    name = first if first in ("pixel_values", "input_values", "input_features") else "input"

    def make(batch: int) -> torch.Tensor:
        x = torch.randn(batch, *size, generator=generator, dtype=torch.float32)
        return x.to(dtype).to(device)

    # a batch of 2 for the example: torch.export specialises dimensions of size 1
    example = (make(2 if dynamic_batch else 1),)
    out = _trial(module, lambda: module(*example), _describe((name,), example))
    output_names = _output_names(out)
    del out
    batch_sizes = _VERIFY_BATCH_SIZES if dynamic_batch else (1,)
    return ExportPlan(
        module=module,
        input_names=(name,),
        output_names=tuple(output_names),
        example=example,
        dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None,
        feeds=tuple((f"batch size {b}", (make(b),)) for b in batch_sizes),
        batch_sizes=batch_sizes,
    )


def _describe(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> str:
    return ", ".join(
        f"{n} {str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for n, t in zip(names, tensors)
    )


def _trial(module: torch.nn.Module, call: Callable[[], Any], described: str) -> Any:
    """The module's outputs on the example; a model that does not run on it is an ExportError."""
    try:
        with torch.no_grad():
            return call()
    except Exception as exc:
        raise ExportError(
            f"export_onnx: {type(module).__name__} does not run on an example of its inputs "
            f"({described}): {plain_message(exc)} Pass the input_size it takes (one "
            "sample in torch order, without the batch), or export the part of the model that "
            "takes these inputs."
        ) from exc


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


def plain_text(text: str) -> str:
    """plain_text(text) -> text without terminal colour and cursor codes."""
    return _ANSI.sub("", text)


def plain_message(exc: BaseException) -> str:
    """plain_message(exc) -> "ValueError: first line." without terminal codes, ending in a stop."""
    lines = plain_text(str(exc)).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if text and text[-1] not in ".!?":
        text += "."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
