"""The timm source: every timm architecture and every pretrained tag.

Ids are ``timm/<arch>`` (the default weights of the architecture, if any) and
``timm/<arch>.<tag>`` (one published set of weights). Entries are built once,
from timm's registry and pretrained configs, and cached; only the "is it on
this machine" part is recomputed per call, from two directory listings.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...errors import CorruptWeightsError, WeightsNotFoundError
from ..entry import ModelEntry, WeightsInfo
from ..heads import held_classes
from ..paths import hf_hub_cache_dir, hf_repo_dir, hf_repo_folder, torch_hub_checkpoints_dir
from ..weights import (
    build_for_loading,
    find_in_hf_cache,
    find_in_hub_checkpoints,
    hash_prefix_from_filename,
    load_into_model,
    load_state_dict,
    misfit_error,
    resolve_weights_file,
    url_filename,
)
from .base import TableSource

__all__ = ["TimmSource"]

# the files timm's Hub loader tries, safest first
_HF_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")

# pretrained-tag tokens -> words a person would search for
_TAG_WORDS = {
    "in1k": "ImageNet-1k",
    "in12k": "ImageNet-12k",
    "in21k": "ImageNet-21k",
    "in22k": "ImageNet-22k",
    "ft": "fine-tuned",
    "dist": "distilled",
    "laion2b": "LAION-2B",
    "laion400m": "LAION-400M",
    "openai": "OpenAI CLIP",
    "clip": "CLIP",
    "dino": "DINO",
    "mim": "masked image modelling",
    "sam": "SAM",
    "ssl": "semi-supervised",
    "swsl": "semi-weakly supervised",
}


@dataclass(frozen=True)
class _Static:
    """The part of an entry that never changes, and the keys to check its cache presence."""

    entry: ModelEntry
    hf_repo: str | None
    hf_files: tuple[str, ...]
    url: str | None
    hf_folder: str | None  # the repo's folder name in the Hugging Face cache
    url_file: str | None  # the URL's file name in torch.hub's checkpoints folder


class TimmSource(TableSource):
    """Models from ``timm`` (``pip install timm``)."""

    name = "timm"
    requirement = "timm (pip install 'torchbridge[timm]')"

    def available(self) -> bool:
        return importlib.util.find_spec("timm") is not None

    # -- listing -------------------------------------------------------------

    def build_table(self) -> dict[str, _Static]:
        return _build_static()

    def build_item(self, name: str) -> _Static | None:
        return _build_one(name)

    def cache_folders(self) -> tuple[Path, ...]:
        return (hf_hub_cache_dir(), torch_hub_checkpoints_dir())

    def hints(self, item: _Static) -> list[tuple[int, str]]:
        hints = []
        if item.hf_folder:
            hints.append((0, item.hf_folder))
        if item.url_file:
            hints.append((1, item.url_file))
        return hints

    def finish(self, item: _Static, hinted: bool) -> ModelEntry:
        return _with_weights(item, hinted)

    # -- loading -------------------------------------------------------------

    def classifier(self, entry: ModelEntry) -> tuple[str, ...]:
        named = entry.metadata.get("classifier")
        if isinstance(named, str) and named:
            return (named,)
        if isinstance(named, (tuple, list)) and named:
            return tuple(named)
        return super().classifier(entry)

    def build(self, entry: ModelEntry, *, num_classes: int | None, **kwargs: Any):
        import timm

        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return timm.create_model(entry.name, pretrained=False, **kwargs)

    def build_pretrained(
        self, entry: ModelEntry, *, weights: Path | None, trust_pickle: bool, **kwargs: Any
    ):
        import timm
        from timm.models import get_pretrained_cfg

        static = self.static().get(entry.name)
        if weights is None and (static is None or not entry.pretrained):
            raise WeightsNotFoundError(
                f"{entry.id} has no published pretrained weights. Pick a pretrained tag "
                f"(torchbridge list 'timm/{entry.name.split('.')[0]}.*' --pretrained) or pass "
                "weights=PATH."
            )
        resolved = resolve_weights_file(
            entry.id,
            explicit=weights,
            hf_repo=static.hf_repo if static else None,
            hf_filenames=static.hf_files if static else (),
            url=static.url if static else None,
        )
        path = resolved.path
        cfg = get_pretrained_cfg(entry.name)
        published = getattr(cfg, "num_classes", None)
        offset = getattr(cfg, "label_offset", None) or 0
        # NOTE: never let timm resolve weights itself: offline, its Hub fallback
        # retries for ~45 s. It always gets the resolved file (or state dict).
        held = None
        state = None
        if path.suffix == ".npz":
            # original JAX checkpoints: timm reads them with np.load(allow_pickle=False)
            overlay: dict[str, Any] = {"file": str(path), "custom_load": True}
        else:
            # Read once ourselves: typed errors for unsafe, corrupt or mismatched files,
            # and the head size the file holds (NOTE [head rule]).
            state = load_state_dict(path, trust_pickle=trust_pickle)
            held = held_classes(state, self.classifier(entry))
            if trust_pickle and path.suffix != ".safetensors":
                # timm itself would refuse a pickle that needs trust: hand it the tensors
                overlay = {"state_dict": state}
            else:
                overlay = {"file": str(path)}
        if held is None or published is None or held == published + offset:
            held = published  # the published layout: timm drops a label offset itself
        else:
            # timm compares the model's head with its config's to decide whether the
            # file's head is kept: the config says what the file holds.
            overlay.update(num_classes=held, label_offset=0)
        if held is not None:
            kwargs["num_classes"] = held
        if state is not None:
            model = _in_place(entry, state, path, kwargs)
            if model is not None:
                return model
            if "state_dict" not in overlay:
                del state  # timm reads the file itself
        try:
            model = timm.create_model(
                entry.name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        except RuntimeError as err:
            if "state_dict" not in str(err) and "shape" not in str(err):
                raise
            reference = timm.create_model(entry.name, pretrained=False, **kwargs)
            state = load_state_dict(path, trust_pickle=trust_pickle)
            raise misfit_error(
                reference, state, source=str(path), model_id=entry.id, cause=err
            ) from err
        cfg_dict = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg_dict, dict):
            cfg_dict.pop("state_dict", None)  # do not keep a second copy of the weights alive
            cfg_dict["file"] = str(path)
        return model


def _in_place(entry: ModelEntry, state: dict, path: Path, kwargs: dict) -> Any:
    """The model holding ``state`` in place (NOTE [loading in place]) when the file is
    already in the layout of the model timm builds; ``None`` when timm's own loader must
    convert it (an older layout, other input channels, a label offset), which copies."""
    import timm

    model = build_for_loading(lambda: timm.create_model(entry.name, pretrained=False, **kwargs))
    try:
        load_into_model(model, state, source=str(path))
    except CorruptWeightsError:
        return None
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg["file"] = str(path)
    return model


def _with_weights(static: _Static, present: bool) -> ModelEntry:
    """The entry with weights information for the current caches."""
    entry = static.entry
    if not entry.pretrained:
        return entry
    found = None
    if present and static.hf_repo:
        found = find_in_hf_cache(static.hf_repo, static.hf_files)
    if found is None and present and static.url_file:
        found = find_in_hub_checkpoints(static.url_file)
    if static.hf_repo:
        info = WeightsInfo(
            location=f"hf-hub:{static.hf_repo}",
            filename=static.hf_files[0],
            path=str(found or hf_repo_dir(static.hf_repo)),
            cached=found is not None,
            alternatives=(static.url,) if static.url else (),
        )
    else:
        assert static.url is not None
        filename = url_filename(static.url)
        info = WeightsInfo(
            location=static.url,
            filename=filename,
            path=str(found or torch_hub_checkpoints_dir() / filename),
            cached=found is not None,
            sha256=hash_prefix_from_filename(filename),
        )
    return replace(entry, weights=info)


def _build_static() -> dict[str, _Static]:
    import timm
    from timm.models import get_pretrained_cfg, is_model_pretrained

    try:
        from timm.models import get_arch_name
    except ImportError:  # older timm

        def get_arch_name(name: str) -> str:
            return name.split(".", 1)[0]

    module_of = _module_lookup()
    out: dict[str, _Static] = {}
    for arch in timm.list_models():
        out[arch] = _static_entry(
            arch, get_pretrained_cfg(arch), is_model_pretrained(arch), module_of(arch), tagged=False
        )
    for name in timm.list_models(pretrained=True):
        if name in out:
            continue
        arch = get_arch_name(name)
        out[name] = _static_entry(
            name, get_pretrained_cfg(name), True, module_of(arch), tagged=True
        )
    return out


def _build_one(name: str) -> _Static | None:
    """The table's item for ``name`` alone, as :func:`_build_static` would make it."""
    import timm
    from timm.models import get_pretrained_cfg, is_model_pretrained

    arch, _, tag = name.partition(".")
    module_of = _module_lookup()
    if not tag:
        if not timm.is_model(arch):
            return None
        cfg = get_pretrained_cfg(arch)
        return _static_entry(arch, cfg, is_model_pretrained(arch), module_of(arch), tagged=False)
    if name not in timm.list_pretrained(name):  # an exact name: no pattern characters
        return None
    return _static_entry(name, get_pretrained_cfg(name), True, module_of(arch), tagged=True)


def _module_lookup():
    # The timm module of an architecture ("resnet", "vision_transformer") names its family.
    try:
        from timm.models._registry import _model_to_module

        return lambda arch: _model_to_module.get(arch, "")
    except ImportError:  # private in timm: do without if it moves
        return lambda arch: ""


def _static_entry(name: str, cfg: Any, pretrained: bool, module: str, *, tagged: bool) -> _Static:
    arch, _, tag = name.partition(".")
    if cfg is not None and not tag:
        tag = cfg.tag or ""
    has_source = cfg is not None and bool(cfg.hf_hub_id or cfg.url)
    pretrained = pretrained and has_source
    hf_repo = cfg.hf_hub_id if (pretrained and cfg.hf_hub_id) else None
    if hf_repo and cfg.hf_hub_filename:
        hf_files: tuple[str, ...] = (cfg.hf_hub_filename,)
        if cfg.hf_hub_filename == "pytorch_model.bin":
            hf_files = ("model.safetensors", "pytorch_model.bin")
    else:
        hf_files = _HF_DEFAULT_FILES if hf_repo else ()
    url = cfg.url if (pretrained and isinstance(cfg.url, str) and cfg.url) else None

    num_classes = cfg.num_classes if cfg is not None else None
    input_size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else None
    task = "image-classification" if num_classes else "feature-extraction"
    if num_classes is None:
        task = "image-classification"
    family = module.replace("_", " ") if module else arch
    tag_tokens = [t for t in tag.replace("-", "_").split("_") if t]
    data_words = [_TAG_WORDS[t] for t in tag_tokens if t in _TAG_WORDS]

    parts = [f"{arch}: {family} from timm"]
    if task == "image-classification" and num_classes:
        parts.append(f"{num_classes}-class image classifier")
    elif task == "feature-extraction":
        parts.append("image feature extractor (no classifier head)")
    if input_size:
        parts.append("input " + "x".join(str(s) for s in input_size[1:]))
    if pretrained and tag:
        weights = f"{'default ' if not tagged else ''}weights '{tag}'"
        if data_words:
            weights += " (" + ", ".join(data_words) + ")"
        parts.append(weights)
    elif not pretrained:
        parts.append("no published weights")
    description = ", ".join(parts)
    if cfg is not None and cfg.description:
        description += ". " + cfg.description

    tags = ["timm"]
    if arch.startswith("test_"):
        tags.append("test")  # timm's tiny test architectures
    if module:
        tags.append(module)
    tags.extend(tag_tokens)
    if any(t.startswith("in") and t.endswith("k") for t in tag_tokens):
        tags.append("imagenet")
    metadata: dict[str, Any] = {"architecture": arch}
    if cfg is not None:
        for key in (
            "interpolation",
            "crop_pct",
            "crop_mode",
            "test_input_size",
            "paper_ids",
            "origin_url",
            "classifier",
            "first_conv",
        ):
            value = getattr(cfg, key, None)
            if value is not None:
                metadata[key] = value
    entry = ModelEntry(
        id=f"timm/{name}",
        source="timm",
        name=name,
        task=task,
        description=description,
        pretrained=pretrained,
        weights=None,
        input_size=input_size,
        mean=tuple(cfg.mean) if cfg is not None and cfg.mean else None,
        std=tuple(cfg.std) if cfg is not None and cfg.std else None,
        num_classes=num_classes,
        license=cfg.license if cfg is not None else None,
        tags=tuple(dict.fromkeys(tags)),
        metadata=metadata,
    )
    return _Static(
        entry,
        hf_repo,
        hf_files,
        url,
        hf_folder=hf_repo_folder(hf_repo) if hf_repo else None,
        url_file=url_filename(url) if url else None,
    )
