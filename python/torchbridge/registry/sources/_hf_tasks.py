"""The task of a transformers architecture, from transformers' own Auto mappings.

NOTE [hf tasks]
Each task is one of transformers' Auto classes (``AutoModelForAudioClassification``),
and an architecture's task is the first task in :data:`TASKS` whose Auto
mapping (``MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES``) names that class
for the config's ``model_type``. So ``<Auto class>.from_config(config)``
builds exactly the class the config names: ``HubertForSequenceClassification``
is ``audio-classification``, not ``sequence-classification``, whose Auto class
refuses a Hubert config. A class in several mappings takes the first, most
specific task (``GPT2LMHeadModel`` is ``causal-lm`` before ``pretraining``);
a class in none (``GPT2DoubleHeadsModel``), or one the installed transformers
does not have, is ``unknown``. Custom code (``auto_map``) takes the task of
the Auto class its ``auto_map`` names for its architecture.

The mappings are read from transformers' ``modeling_auto.py`` source with
``ast`` (importing it imports torch and takes seconds; listing imports
nothing), or from the module itself once something has imported it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "AUTO_CLASSES",
    "TASKS",
    "custom_code_auto_class",
    "mapping",
    "task_of_architecture",
    "task_of_config",
]

_MODULE = "transformers.models.auto.modeling_auto"

#: task -> (transformers' Auto class, its mapping in ``modeling_auto``), most specific first
TASKS: dict[str, tuple[str, str]] = {
    # text
    "sequence-classification": (
        "AutoModelForSequenceClassification",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    ),
    "token-classification": (
        "AutoModelForTokenClassification",
        "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    ),
    "document-question-answering": (
        "AutoModelForDocumentQuestionAnswering",
        "MODEL_FOR_DOCUMENT_QUESTION_ANSWERING_MAPPING_NAMES",
    ),
    "table-question-answering": (
        "AutoModelForTableQuestionAnswering",
        "MODEL_FOR_TABLE_QUESTION_ANSWERING_MAPPING_NAMES",
    ),
    "visual-question-answering": (
        "AutoModelForVisualQuestionAnswering",
        "MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES",
    ),
    "question-answering": (
        "AutoModelForQuestionAnswering",
        "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    ),
    "multiple-choice": ("AutoModelForMultipleChoice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"),
    "next-sentence-prediction": (
        "AutoModelForNextSentencePrediction",
        "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES",
    ),
    "speech-seq2seq": ("AutoModelForSpeechSeq2Seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
    "image-text-to-text": (
        "AutoModelForImageTextToText",
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    ),
    "seq2seq-lm": ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    "causal-lm": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    "masked-lm": ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    "multimodal-lm": ("AutoModelForMultimodalLM", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES"),
    # vision
    "image-classification": (
        "AutoModelForImageClassification",
        "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    ),
    "zero-shot-image-classification": (
        "AutoModelForZeroShotImageClassification",
        "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    ),
    "video-classification": (
        "AutoModelForVideoClassification",
        "MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES",
    ),
    "object-detection": ("AutoModelForObjectDetection", "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES"),
    "zero-shot-object-detection": (
        "AutoModelForZeroShotObjectDetection",
        "MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES",
    ),
    "semantic-segmentation": (
        "AutoModelForSemanticSegmentation",
        "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    ),
    "instance-segmentation": (
        "AutoModelForInstanceSegmentation",
        "MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES",
    ),
    "image-segmentation": (
        "AutoModelForImageSegmentation",
        "MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES",
    ),
    "universal-segmentation": (
        "AutoModelForUniversalSegmentation",
        "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",
    ),
    "depth-estimation": ("AutoModelForDepthEstimation", "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES"),
    "masked-image-modeling": (
        "AutoModelForMaskedImageModeling",
        "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES",
    ),
    "mask-generation": ("AutoModelForMaskGeneration", "MODEL_FOR_MASK_GENERATION_MAPPING_NAMES"),
    "keypoint-detection": (
        "AutoModelForKeypointDetection",
        "MODEL_FOR_KEYPOINT_DETECTION_MAPPING_NAMES",
    ),
    "keypoint-matching": (
        "AutoModelForKeypointMatching",
        "MODEL_FOR_KEYPOINT_MATCHING_MAPPING_NAMES",
    ),
    "image-to-image": ("AutoModelForImageToImage", "MODEL_FOR_IMAGE_TO_IMAGE_MAPPING_NAMES"),
    "text-recognition": (
        "AutoModelForTextRecognition",
        "MODEL_FOR_TEXT_RECOGNITION_MAPPING_NAMES",
    ),
    "backbone": ("AutoBackbone", "MODEL_FOR_BACKBONE_MAPPING_NAMES"),
    # audio
    "audio-classification": (
        "AutoModelForAudioClassification",
        "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    ),
    "audio-frame-classification": (
        "AutoModelForAudioFrameClassification",
        "MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES",
    ),
    "audio-xvector": ("AutoModelForAudioXVector", "MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES"),
    "speech-recognition": ("AutoModelForCTC", "MODEL_FOR_CTC_MAPPING_NAMES"),
    "text-to-spectrogram": (
        "AutoModelForTextToSpectrogram",
        "MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES",
    ),
    "text-to-waveform": (
        "AutoModelForTextToWaveform",
        "MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES",
    ),
    "audio-tokenization": ("AutoModelForAudioTokenization", "MODEL_FOR_AUDIO_TOKENIZATION_NAMES"),
    # time series
    "time-series-prediction": (
        "AutoModelForTimeSeriesPrediction",
        "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES",
    ),
    # the bodies, last: a class with a head above takes its head's task
    "feature-extraction": ("AutoModel", "MODEL_MAPPING_NAMES"),
    "text-encoding": ("AutoModelForTextEncoding", "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES"),
    "pretraining": ("AutoModelForPreTraining", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"),
}

#: task -> the transformers Auto class that builds it
AUTO_CLASSES: dict[str, str] = {task: auto for task, (auto, _) in TASKS.items()}
_TASK_OF_AUTO = {auto: task for task, auto in AUTO_CLASSES.items()}


def task_of_architecture(architecture: str | None, model_type: str | None = None) -> str:
    """task_of_architecture(architecture, model_type=None) -> str

    The task whose Auto class builds ``architecture`` from a config of
    ``model_type`` (NOTE [hf tasks]); without ``model_type``, the first task
    whose mapping names the class at all. ``"unknown"`` when none does.
    """
    if not architecture:
        return "unknown"
    by_pair, by_class = _index()
    if model_type:
        return by_pair.get((model_type, architecture), "unknown")
    return by_class.get(architecture, "unknown")


def task_of_config(config: Mapping[str, Any]) -> str:
    """task_of_config(config) -> str: the task of a ``config.json`` (its first architecture,
    or, for custom code, the Auto class its ``auto_map`` names)."""
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    auto_map = config.get("auto_map")
    if isinstance(auto_map, Mapping) and auto_map:
        return _TASK_OF_AUTO.get(custom_code_auto_class(auto_map, architecture) or "", "unknown")
    return task_of_architecture(architecture, str(config.get("model_type") or "") or None)


def custom_code_auto_class(auto_map: Mapping[str, Any], architecture: str | None) -> str | None:
    """custom_code_auto_class(auto_map, architecture) -> str | None

    The Auto class a repository's ``auto_map`` maps to its ``architecture``;
    else ``AutoModel`` when it names one; else ``None``.
    """
    models = {k: v for k, v in auto_map.items() if k in _TASK_OF_AUTO and isinstance(v, str)}
    for auto, ref in models.items():
        if architecture and ref.rsplit(".", 1)[-1] == architecture:
            return auto
    return "AutoModel" if "AutoModel" in models else None


def mapping(name: str) -> dict[str, tuple[str, ...]]:
    """mapping(name) -> {model_type: class names}: one of transformers' ``*_MAPPING_NAMES``
    (empty when the installed transformers lacks it)."""
    return _mappings().get(name, {})


@functools.lru_cache(maxsize=1)
def _index() -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    by_pair: dict[tuple[str, str], str] = {}
    by_class: dict[str, str] = {}
    for task, (_, name) in TASKS.items():
        for model_type, classes in mapping(name).items():
            for cls in classes:
                by_pair.setdefault((model_type, cls), task)
                by_class.setdefault(cls, task)
    return by_pair, by_class


@functools.lru_cache(maxsize=1)
def _mappings() -> dict[str, dict[str, tuple[str, ...]]]:
    wanted = {name for _, name in TASKS.values()}
    module = sys.modules.get(_MODULE)
    found = None if module is not None else _parse(_source(), wanted)
    if found is None:  # already imported, or a source this parser does not read
        try:
            module = importlib.import_module(_MODULE)
        except ImportError:
            return {}
        found = {n: _normal(getattr(module, n)) for n in wanted if hasattr(module, n)}
    return found


def _source() -> Path | None:
    spec = importlib.util.find_spec("transformers")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), "models", "auto", "modeling_auto.py")
    return path if path.is_file() else None


def _parse(path: Path | None, wanted: set[str]) -> dict[str, dict[str, tuple[str, ...]]] | None:
    """The ``wanted`` mappings of ``modeling_auto.py``; ``None`` if one is not a literal
    (a list of pairs, where ``*list(OTHER_MAPPING_NAMES.items())`` may stand for some)."""
    if path is None:
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    found: dict[str, dict[str, Any]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not (isinstance(target, ast.Name) and target.id.endswith("_NAMES")):
            continue
        value = node.value
        if isinstance(value, ast.Call) and len(value.args) == 1:  # OrderedDict([...])
            value = value.args[0]
        try:
            found[target.id] = dict(_pairs(value, found))
        except (ValueError, TypeError, SyntaxError, KeyError):
            if target.id in wanted:
                return None
    if not wanted & set(found):
        return None
    return {name: _normal(found[name]) for name in wanted & set(found)}


def _pairs(node: ast.expr, found: Mapping[str, Mapping[str, Any]]) -> list:
    if not isinstance(node, (ast.List, ast.Tuple)):
        return list(ast.literal_eval(node).items())
    pairs: list = []
    for element in node.elts:
        if isinstance(element, ast.Starred):  # *list(OTHER.items()) or *OTHER.items()
            inner = element.value
            if isinstance(inner, ast.Call) and getattr(inner.func, "id", None) == "list":
                inner = inner.args[0]
            if not (
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Attribute)
                and inner.func.attr == "items"
                and isinstance(inner.func.value, ast.Name)
            ):
                raise ValueError("not a mapping's items")
            pairs.extend(found[inner.func.value.id].items())
        else:
            pairs.append(ast.literal_eval(element))
    return pairs


def _normal(names: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in names.items()}
