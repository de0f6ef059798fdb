"""The torchbridge exception hierarchy.

Every error torchbridge raises on bad input is a :class:`TorchBridgeError`. Each
class also derives from the builtin exception a Python user would expect
(``TypeError`` for a wrong kind of value, ``ValueError`` for a wrong value,
``LookupError`` for an unknown name ...), so generic handlers keep working.

Messages say what was wrong, what was expected, and what to do about it. The one
warning, :class:`VocabularyUnknownWarning`, is a ``TorchBridgeError`` as well, so
that, made an error with ``warnings.simplefilter("error", ...)``, it is caught
like the rest.
"""

from __future__ import annotations

__all__ = [
    "AdapterBaseChangedError",
    "AdapterError",
    "BridgeError",
    "BrokenEntryError",
    "ChecksumError",
    "CorruptWeightsError",
    "CotangentError",
    "DTypeMismatchError",
    "DeviceMismatchError",
    "DistributedError",
    "DuplicateModelError",
    "DuplicateSourceError",
    "ExportError",
    "ExportVerificationError",
    "FeaturesUnavailableError",
    "GradientCheckpointingError",
    "InputGradsError",
    "InputShapeError",
    "InputSpecError",
    "InvalidModelIdError",
    "LeakError",
    "MaskShapeError",
    "ModelClosedError",
    "NotAModuleError",
    "NotAPullbackError",
    "OnnxArgumentError",
    "OnnxImportError",
    "OnnxVerificationError",
    "OutputSizeUnknownError",
    "ParameterMismatchError",
    "PrecisionError",
    "PullbackReleasedError",
    "RankFailedError",
    "ReadOnlyArrayError",
    "RegistryArgumentError",
    "RegistryError",
    "RemoteCodeError",
    "SidecarValueError",
    "TokenIdError",
    "TokenizerNotFoundError",
    "TorchBridgeError",
    "TrainingError",
    "UnknownArchitectureError",
    "UnknownLossError",
    "UnknownModelError",
    "UnknownOptimizerError",
    "UnknownScheduleError",
    "UnknownSourceError",
    "UnsafeCheckpointError",
    "UnsupportedArrayError",
    "UnsupportedDTypeError",
    "UntrustedRepoError",
    "VocabularyUnknownWarning",
    "WeightsError",
    "WeightsNotFoundError",
]


class TorchBridgeError(Exception):
    """Base class of every error torchbridge raises on purpose."""


# -- the bridge (exchange, forward, pullback) --------------------------------


class BridgeError(TorchBridgeError):
    """An array, model or pullback could not cross the bridge."""


class NotAModuleError(BridgeError, TypeError):
    """``bridge`` (or a call that takes a bridged model) got something else than a module."""


class UnsupportedArrayError(BridgeError, TypeError):
    """The object is not an array the bridge can view without a copy."""


class UnsupportedDTypeError(BridgeError, TypeError):
    """The array's element type cannot cross through DLPack."""


class ReadOnlyArrayError(BridgeError, ValueError):
    """A destination array is read-only; nothing was written to it."""


class DTypeMismatchError(BridgeError, TypeError):
    """A floating-point input does not have the model's floating-point type."""


class DeviceMismatchError(BridgeError, ValueError):
    """An array lives on another device than the model."""


class InputShapeError(BridgeError, ValueError):
    """An input has the wrong rank or shape for the model."""


class MaskShapeError(InputShapeError):
    """An attention mask (or token type ids) does not have the shape of the token ids."""


class TokenIdError(BridgeError, ValueError):
    """Token ids fall outside the model's vocabulary (checked before the embedding runs)."""


class NotAPullbackError(BridgeError, TypeError):
    """A call that runs or releases a pullback got something else, or a pullback of another
    kind (a functional call's pullback given to the stateful model's call, or the reverse)."""


class ParameterMismatchError(BridgeError, ValueError):
    """Parameters, buffers or tangents passed to a functional call do not fit the module's."""


class VocabularyUnknownWarning(BridgeError, UserWarning):
    """A warning: a text model's vocabulary is unknown, so its token ids go unchecked.

    Issued once per model. ``warnings.simplefilter("error", VocabularyUnknownWarning)``
    refuses such models instead, with this class (a ``TorchBridgeError`` too).
    """


class InputGradsError(BridgeError, TypeError, ValueError):
    """``input_grads`` is not a bool, one bool per positional input, or a mapping of inputs
    to bools, or it asks for the gradient of an input that has none (token ids, a mask).

    Both a ``TypeError`` (a wrong kind of value) and a ``ValueError`` (a wrong
    length, an unknown name), as those cases were before they had a class.
    """


class CotangentError(BridgeError, ValueError):
    """A cotangent does not match the output it belongs to."""


class OutputSizeUnknownError(BridgeError, ValueError):
    """A model's output size depends on its input's values, so sizes alone cannot give it."""


class PullbackReleasedError(BridgeError, RuntimeError):
    """A pullback was called after it had run or been released."""


class ModelClosedError(BridgeError, RuntimeError):
    """A bridged model was used after ``close()``."""


class LeakError(TorchBridgeError, AssertionError):
    """The memory ledger is not back at its baseline."""


# -- the registry and weights ------------------------------------------------


class RegistryError(TorchBridgeError):
    """A model could not be found, described or loaded."""


class UnknownModelError(RegistryError, LookupError):
    """No registered model has this id."""

    def __init__(self, msg: str, model_id: str = "", suggestions: tuple[str, ...] = ()):
        super().__init__(msg, model_id, suggestions)
        self.model_id = model_id
        self.suggestions = tuple(suggestions)

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidModelIdError(UnknownModelError, ValueError):
    """An id, or a local model's name, is not a well-formed name (NOTE [ids are names]).

    It holds a path separator, ``..``, NUL or a control character, or is too
    long; nothing was looked up on disk for it.
    """


class BrokenEntryError(RegistryError, ValueError):
    """A model's description file (a local sidecar, a Hugging Face ``config.json``, a
    ``hubconf.py``) cannot be read as a registry entry.

    Listing skips the entry with one warning; ``model_info`` and ``load_model`` of
    its id raise this. ``path`` is the file, ``reason`` what is wrong with it.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(
            f"{path} cannot be read as a model entry: {reason}. Fix or remove the file.",
            path,
            reason,
        )
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownSourceError(RegistryError, LookupError):
    """No model source has this name."""


class DuplicateModelError(RegistryError, ValueError):
    """A model id is registered twice."""


class WeightsError(RegistryError):
    """Pretrained weights could not be found, trusted or read."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The weights are neither given, nor cached, nor downloadable here."""


class UnsafeCheckpointError(WeightsError):
    """A pickled checkpoint would run code to load; it was not loaded."""


class ChecksumError(WeightsError):
    """A weight file's sha256 differs from the published one."""


class CorruptWeightsError(WeightsError):
    """A weight file is truncated, corrupt, or does not fit the model."""


class DuplicateSourceError(RegistryError, ValueError):
    """A model source name is registered twice."""


class InputSpecError(RegistryError, ValueError):
    """A model's input size or normalisation (mean, std) is not valid."""


class SidecarValueError(RegistryError, TypeError):
    """A value ``register_local_model`` would record in a local model's sidecar (its
    ``metadata``, ``kwargs``, or the arguments an adapter's base model was loaded with) is
    not a JSON value; nothing was written."""


class UnknownArchitectureError(RegistryError, LookupError):
    """A Hugging Face config names an architecture the installed transformers does not have."""


class FeaturesUnavailableError(RegistryError, ValueError):
    """A model has no feature-map variant (``features=True``) the registry knows how to make."""


class RemoteCodeError(RegistryError, PermissionError):
    """A model repository needs its own Python code and ``trust_remote_code=True`` was not given.

    Also raised for a malformed ``auto_map`` (what would name that code).
    """


class UntrustedRepoError(RemoteCodeError):
    """Loading a torch.hub model would import its repository's ``hubconf.py``, and the
    repository is not trusted: ``trust_repo=True`` was not given and it is not in
    ``$TORCHBRIDGE_TRUSTED_REPOS`` (NOTE [trust] in :mod:`torchbridge.registry.trust`)."""


class TokenizerNotFoundError(RegistryError, LookupError):
    """A model has no tokenizer files on this machine (or none at all)."""


# -- finetuning large models -------------------------------------------------


class RegistryArgumentError(RegistryError, ValueError):
    """A registry call was given a value it cannot take: a ``num_classes`` that is not a
    non-negative int, ``features=True`` together with ``num_classes``, or an empty name (or
    one with ``/``) for a model source or a torch.hub repository."""


class AdapterError(RegistryError, ValueError):
    """A LoRA adapter could not be made, saved, restored or merged (its spec, its target
    layers, or its base model)."""


class AdapterBaseChangedError(AdapterError, ChecksumError):
    """A saved LoRA adapter's base model is no longer the one it was trained on: the weights
    file it was loaded from changed or is gone, a local model of that name holds other
    weights, or the Hugging Face cache holds another revision (NOTE [adapter files])."""


class PrecisionError(TorchBridgeError, ValueError):
    """A ``dtype`` or ``autocast`` setting names no floating-point type torch can run, or
    ``dtype`` is given twice (as ``dtype`` and as ``torch_dtype``)."""


class GradientCheckpointingError(RegistryError, ValueError):
    """A model has no gradient checkpointing torchbridge knows how to turn on."""


# -- training and export -----------------------------------------------------


class TrainingError(TorchBridgeError):
    """A training run could not be set up."""


class UnknownOptimizerError(TrainingError, ValueError):
    """The optimiser rule has no torch translation."""


class UnknownLossError(TrainingError, ValueError):
    """The loss has no torch translation."""


class UnknownScheduleError(TrainingError, ValueError):
    """The hyperparameter schedule is not known."""


class ExportError(TorchBridgeError):
    """A model could not be exported to ONNX."""


class ExportVerificationError(ExportError):
    """The exported ONNX model does not match torch within tolerance."""


class OnnxImportError(TorchBridgeError, ValueError):
    """An ONNX file could not be imported as a torch module.

    ``operators`` lists the operators concerned, when an operator is the reason;
    ``node`` and ``subgraph`` name the node that could not be converted and the
    graph it is in (``"the main graph"``, ``"then_branch of If 'x' in ..."``).
    """

    def __init__(
        self,
        msg: str,
        operators: tuple[str, ...] | list[str] = (),
        node: str | None = None,
        subgraph: str | None = None,
    ):
        super().__init__(msg, tuple(operators))
        self.operators = tuple(operators)
        self.node = node
        self.subgraph = subgraph

    def __str__(self) -> str:
        return str(self.args[0])


class OnnxArgumentError(OnnxImportError, TypeError):
    """An argument of :func:`~torchbridge.import_onnx` has a wrong kind or value
    (``batchnorm``, ``inputs``, ``trainable``); the message says what it takes."""


class OnnxVerificationError(OnnxImportError):
    """An imported ONNX model's output differs from onnxruntime's; ``output`` names it."""

    def __init__(self, msg: str, output: str | None = None):
        super().__init__(msg)
        self.output = output


# -- distributed training ------------------------------------------------------


class DistributedError(TorchBridgeError, RuntimeError):
    """A process group could not be set up from the launcher's variables, or failed."""


class RankFailedError(DistributedError):
    """A collective failed: another rank died, raised, or did not answer within the timeout."""
