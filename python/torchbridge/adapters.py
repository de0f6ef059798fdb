"""LoRA adapters (PEFT): finetune a large model by training a small adapter.

NOTE [adapters]
``load_model(id, lora={...})`` (Julia: ``load_model(id; lora = (r = 8, ...))``),
or :func:`add_lora` for a module built in torch, wraps the model in a
``peft.PeftModel`` whose LoRA layers sit on the target modules. PEFT freezes
every weight of the base model (``requires_grad=False``), and the bridge
shares trainable parameters only (NOTE [gradient buffers] in
:mod:`torchbridge.bridged`): a ``TorchModel``'s ``params`` and ``grads``, the
optimiser's state, the memory ledger and any per-step copy scale with the
adapter, not with the model.

The settings (a dict; every key optional):

* ``r`` — the rank of each adapter (8);
* ``alpha`` — its scale numerator, PEFT's ``lora_alpha`` (16);
* ``dropout`` — dropout on the adapter's input, PEFT's ``lora_dropout`` (0.0);
* ``target`` — the names of the modules to adapt, PEFT's ``target_modules``
  (a list, or one regular expression). Default: PEFT's choice for the
  transformers architecture (``q_proj``, ``v_proj`` for Llama, ``c_attn`` for
  GPT-2, ``query``, ``value`` for BERT); other models must name theirs;
* ``train`` — whole modules trained beside the adapter, PEFT's
  ``modules_to_save``. Default: the classifier head of a classifier (NOTE
  [head rule]), which would otherwise stay as loaded (a new head: random):
  for a transformers model, the head of the loaded model when its task has
  one; for any other, the one its source names, asked with the load's trust
  (``trust_repo``: a ``hub/`` source builds the model to name it); none for a
  removed head (``num_classes=0``). ``train=[]`` keeps it frozen;
* any other field of ``peft.LoraConfig`` under its own name (``use_rslora``,
  ``bias``, ``layers_to_transform`` ...).

PEFT keeps the adapter in float32 when the base is bfloat16 or float16
(``autocast_adapter_dtype``): the trainable parameters and their optimiser
state are float32, the frozen base is 16-bit.

A model with an adapter remembers the registry model it was made on (its id
and the arguments it was loaded with: :func:`base_of`).
``register_local_model(name, model)`` saves the adapter alone, in PEFT's own
format, beside that reference (NOTE [adapter files] in
:mod:`torchbridge.registry.sources.local_source`), and ``load_model("local/<name>")``
loads the base again and restores the adapter, trainable. :func:`merge_adapter`
folds the adapter into the base weights and returns the plain base model,
which ``export_onnx`` exports like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AdapterError

__all__ = [
    "BaseModel",
    "add_lora",
    "attach",
    "base_of",
    "is_adapter_model",
    "lora_settings",
    "merge_adapter",
    "restore_adapter",
    "save_adapter",
]

# the short names of the settings -> peft.LoraConfig's fields
_ALIASES = {
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target": "target_modules",
    "train": "modules_to_save",
}
_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
# LoraConfig fields that are PEFT's bookkeeping, not settings
_RESERVED = frozenset(
    {
        "peft_type",
        "task_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
    }
)
# the layer types LoRA adapts, by class name (transformers' Conv1D is GPT-2's Linear)
_ADAPTABLE = frozenset({"Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "Conv1D"})


@dataclass(frozen=True)
class BaseModel:
    """The registry model an adapter was made on.

    ``load_model(id, **kwargs)`` builds it again, with its weights: ``kwargs``
    are the arguments it was loaded with (``pretrained``, ``num_labels``,
    ``dtype`` as a name, ``weights`` as an absolute path ...), JSON values.
    ``identity`` says which weights those were (its source's
    ``weights_identity``: a file's ``sha256``, a Hugging Face snapshot's
    ``revision``; empty when the source cannot tell), so that the adapter is
    restored onto those only (NOTE [adapter files]).
    """

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        """Whether loading it gives weights (published, a file, a local model), not random ones."""
        return bool(
            self.kwargs.get("pretrained")
            or self.kwargs.get("weights")
            or self.id.startswith("local/")
        )


# what each adapter model was made on; kept beside the module, not inside it
_BASES: weakref.WeakKeyDictionary[Any, BaseModel] = weakref.WeakKeyDictionary()


def _peft():
    try:
        import peft
    except ImportError as err:  # pragma: no cover - peft is in the [lora] extra
        raise AdapterError(
            "LoRA adapters need the peft package: pip install 'torchbridge[lora]' "
            f"(or pip install peft). ({err})"
        ) from err
    return peft


@contextlib.contextmanager
def _quiet_peft():
    # PEFT still asks transformers >= 5 for the old name of a property, which warns
    # on every adapter made, and says so when it adapts GPT-2's Conv1D layers the
    # only way they can be (transposed weights): neither is the caller's to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore", message="fan_in_fan_out is set to False but the target module is `Conv1D`"
        )
        yield


def is_adapter_model(model: Any) -> bool:
    """is_adapter_model(model) -> bool: whether ``model`` is a ``peft.PeftModel``."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def base_of(model: Any) -> BaseModel | None:
    """base_of(model) -> BaseModel | None: the registry model an adapter model was made on."""
    return _BASES.get(model)


def _names(value: Any, what: str) -> str | list[str]:
    # one pattern, or a list of names (a Julia Vector arrives as a sequence)
    if isinstance(value, str):
        return value
    try:
        names = [str(v) for v in value]
    except TypeError:
        names = None
    if not names or not all(names):
        raise AdapterError(
            f"lora: {what} is a list of module names (['q_proj', 'v_proj']) or one regular "
            f"expression, got {value!r}."
        )
    return names


def lora_settings(spec: Any) -> dict[str, Any]:
    """lora_settings(spec) -> dict: the ``peft.LoraConfig`` fields a LoRA spec gives.

    ``spec`` is ``True`` (every default) or a mapping of the settings of NOTE
    [adapters], short names or LoraConfig's own; the defaults fill what it
    does not give.

    Raises:
        AdapterError: an unknown setting, one given twice, or a value out of range.
    """
    peft = _peft()
    if spec is True or spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise AdapterError(
            "lora: expected the adapter's settings as a dict, e.g. {'r': 8, 'alpha': 16, "
            f"'dropout': 0.0, 'target': ['q_proj', 'v_proj']}} (or True), got "
            f"{type(spec).__name__}."
        )
    known = {f.name for f in dataclasses.fields(peft.LoraConfig)} - _RESERVED
    given: dict[str, Any] = {}
    for key, value in spec.items():
        name = _ALIASES.get(str(key), str(key))
        if name not in known:
            raise AdapterError(
                f"lora: unknown setting {key!r}. The settings are r, alpha, dropout, target and "
                "train, or any field of peft.LoraConfig: "
                f"{', '.join(sorted(known - set(_ALIASES.values())))}."
            )
        if name in given:
            raise AdapterError(f"lora: {key!r} and its other name both given; give one.")
        given[name] = value
    settings = {**_DEFAULTS, **given}
    r = settings["r"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise AdapterError(f"lora: r (the adapter's rank) is a positive integer, got {r!r}.")
    alpha = settings["lora_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise AdapterError(f"lora: alpha is a positive number, got {alpha!r}.")
    dropout = settings["lora_dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise AdapterError(f"lora: dropout is a probability in [0, 1), got {dropout!r}.")
    settings["lora_dropout"] = float(dropout)
    for name, what in (("target_modules", "target"), ("modules_to_save", "train")):
        value = settings.get(name)
        if value is not None and not (name == "modules_to_save" and _empty(value)):
            settings[name] = _names(value, what)
    return settings


def _empty(value: Any) -> bool:
    try:
        return len(value) == 0
    except TypeError:
        return False


def _adaptable_names(model: Any) -> list[str]:
    """The last name component of every layer LoRA can adapt, in order, once each."""
    found = (
        name.rpartition(".")[2]
        for name, module in model.named_modules()
        if name and type(module).__name__ in _ADAPTABLE
    )
    return list(dict.fromkeys(found))


def attach(
    model: Any, spec: Any, *, base: BaseModel | None = None, classifier: Iterable[str] = ()
) -> Any:
    """attach(model, spec, *, base=None, classifier=()) -> peft.PeftModel

    :func:`add_lora` as the registry calls it: ``base`` is the registry model
    ``model`` was loaded as (remembered, for ``register_local_model``) and
    ``classifier`` names its classifier head, trained beside the adapter
    unless the spec says ``train`` (NOTE [adapters]).
    """
    peft = _peft()
    if is_adapter_model(model):
        raise AdapterError(
            f"lora: this {type(model.get_base_model()).__name__} already has an adapter; "
            "train it as it is, or merge it first (torchbridge.merge_adapter)."
        )
    settings = lora_settings(spec)
    head = [n for n in classifier if n]
    if "modules_to_save" not in settings and head:
        settings["modules_to_save"] = head
    elif settings.get("modules_to_save") is not None and _empty(settings["modules_to_save"]):
        settings["modules_to_save"] = None
    try:
        config = peft.LoraConfig(**settings)
        with _quiet_peft():
            wrapped = peft.get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as err:
        candidates = _adaptable_names(model)
        shown = ", ".join(candidates[:16]) + (" ..." if len(candidates) > 16 else "")
        raise AdapterError(
            f"lora: PEFT could not put adapters on this {type(model).__name__}: {err} "
            f"Name the layers to adapt with target=[...]; this model's Linear, Conv and "
            f"Embedding layers are called: {shown or 'none'}."
        ) from err
    if base is not None:
        _BASES[wrapped] = base
    return wrapped


def add_lora(model: Any, spec: Any = None, /, **settings: Any) -> Any:
    """add_lora(model, spec=None, /, **settings) -> peft.PeftModel

    Put LoRA adapters on ``model`` (any ``torch.nn.Module``; PEFT adapts
    ``Linear``, ``Conv`` and ``Embedding`` layers) and freeze everything
    else. ``spec`` (a dict) and ``settings`` are the settings of NOTE
    [adapters]: ``add_lora(model, r=8, alpha=16, target=["q_proj", "v_proj"])``.
    ``load_model(id, lora={...})`` does the same for a registry model and
    remembers the model, so that ``register_local_model`` can save the adapter
    alone; here, pass ``architecture=`` (and ``kwargs=``) to
    ``register_local_model`` instead.

    Raises:
        AdapterError: a bad setting, or target layers that PEFT cannot adapt
            (the message lists the layer names the model has).
    """
    if spec is not None and not isinstance(spec, Mapping) and spec is not True:
        raise AdapterError(f"add_lora: spec is a dict of settings, got {type(spec).__name__}.")
    merged = {**(spec if isinstance(spec, Mapping) else {}), **settings}
    return attach(model, merged)


def merge_adapter(model: Any) -> Any:
    """merge_adapter(model) -> torch.nn.Module

    Fold the adapter of ``model`` into the base model's weights
    (``W + B A · alpha / r``; a module trained beside it replaces the
    original) and return the base model, without adapter layers: a plain
    module that ``export_onnx`` and ``register_local_model`` take like any
    other. Its weights stay frozen as PEFT left them (``requires_grad_(True)``
    to train them all). ``model`` is used up: bridge and train the result, not it.

    Raises:
        AdapterError: ``model`` has no adapter.
    """
    if not is_adapter_model(model):
        raise AdapterError(
            f"merge_adapter: this {type(model).__name__} has no LoRA adapter to merge; load it "
            "with lora=... (or add_lora) first, or export it as it is."
        )
    _BASES.pop(model, None)
    return model.merge_and_unload()


def save_adapter(model: Any, folder: Path) -> Path:
    """save_adapter(model, folder) -> Path: the adapter file written to ``folder``.

    PEFT's own format: ``adapter_config.json`` and ``adapter_model.safetensors``
    (the adapter's tensors and those of the modules trained beside it). The
    base model is named by the caller (NOTE [adapter files]), not by PEFT's
    ``base_model_name_or_path``, which holds the folder it was loaded from.

    Raises:
        AdapterError: ``model`` holds no adapter, or more than one.
    """
    if not is_adapter_model(model):
        raise AdapterError(f"save_adapter: a {type(model).__name__} holds no adapter.")
    names = list(model.peft_config)
    if len(names) != 1:
        raise AdapterError(
            f"register_local_model: the model holds {len(names)} adapters ({', '.join(names)}); "
            "a local model keeps one. Delete the others (model.delete_adapter(name))."
        )
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder / "adapter_model.safetensors"


def check_adapter_folder(folder: Path, *, trust_pickle: bool = False) -> None:
    """check_adapter_folder(folder, *, trust_pickle=False) -> None

    The checks of a saved adapter's files, made before its base model is loaded: the
    files are someone else's until read. ``adapter_config.json`` must be a JSON
    object, and a pickled ``adapter_model.bin`` is read by torchbridge's own loader
    (NOTE [safe loading] in :mod:`torchbridge.registry.weights`), which refuses one
    that would run code and tells a damaged one apart, before peft reads it.

    Raises:
        AdapterError: ``adapter_config.json`` is not readable as a JSON object.
        UnsafeCheckpointError, CorruptWeightsError: ``adapter_model.bin`` would run
            code, or is damaged.
    """
    import json

    from .registry.weights import load_state_dict

    config = folder / "adapter_config.json"
    try:
        spec = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AdapterError(f"{config} is not a readable adapter configuration: {err}") from err
    if not isinstance(spec, dict):
        raise AdapterError(
            f"{config} holds a JSON {type(spec).__name__}, not a PEFT adapter configuration"
        )
    pickled = folder / "adapter_model.bin"
    if pickled.is_file() and not (folder / "adapter_model.safetensors").is_file():
        load_state_dict(pickled, trust_pickle=trust_pickle)  # peft's own torch.load later


def restore_adapter(module: Any, folder: Path, base: BaseModel) -> Any:
    """restore_adapter(module, folder, base) -> peft.PeftModel

    The adapter saved in ``folder`` (:func:`save_adapter`, checked with
    :func:`check_adapter_folder`) on ``module``, the base model loaded again,
    trainable.

    Raises:
        AdapterError: the adapter does not fit the module (another architecture),
            or its ``adapter_config.json`` is not a PEFT configuration peft reads.
        UnsafeCheckpointError: peft's own reading refused ``adapter_model.bin``.
    """
    import pickle

    config = folder / "adapter_config.json"
    pickled = folder / "adapter_model.bin"
    peft = _peft()
    try:
        with _quiet_peft():
            model = peft.PeftModel.from_pretrained(module, str(folder), is_trainable=True)
    except pickle.UnpicklingError as err:  # what torch.load(weights_only=True) refuses
        from .errors import UnsafeCheckpointError

        raise UnsafeCheckpointError(
            f"{pickled}: peft reads an adapter's pickle with torch.load(weights_only=True), "
            f"which refused it ({(str(err) or 'UnpicklingError').splitlines()[0]}). Save the "
            "adapter as "
            "adapter_model.safetensors."
        ) from err
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
        # a configuration of the wrong types fails deep inside peft
        raise AdapterError(
            f"the adapter in {folder} does not fit its base model {base.id} "
            f"({type(module).__name__}), or {config.name} is not a PEFT configuration it "
            f"reads: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    _BASES[model] = base
    return model
