"""Feature-map variants: a classifier without its pooling and its head.

NOTE [feature variants]
    ``load_model(id, features=True)`` returns the model whose output is its last
    feature map, unpooled: torch ``(N, C, H, W)``, Julia ``(W, H, C, N)``; a
    ``(224, 224, 3, N)`` batch gives ``(7, 7, 512, N)`` on resnet18. This is
    the backbone FastAI.jl's ``blockmodel`` and other detection or segmentation
    heads expect. The variant is made from the loaded classifier (pretrained
    weights included), by what the module is, not by its id:

    - timm models: timm's own ``reset_classifier(0, global_pool="")``, the
      model ``timm.create_model(name, num_classes=0, global_pool="")`` builds.
      Vision transformers return their tokens, ``(N, tokens, C)``.
    - torchvision classifiers (also through ``hub/pytorch/vision`` and local
      models built from them): torchvision's ``create_feature_extractor`` up to
      the node named for the class in :data:`TORCHVISION_FEATURE_NODES`. The
      graph returns that one tensor, parameters keep their names and are the
      classifier's own tensors.
    - anything else: :class:`~torchbridge.errors.FeaturesUnavailableError`
      naming the id.

    :func:`feature_map_channels` is ``C``: dim 1 of a feature map, the last
    dim of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import FeaturesUnavailableError

__all__ = ["TORCHVISION_FEATURE_NODES", "feature_extractor", "feature_map_channels"]

#: The node whose output is the last feature map, by torchvision classifier class:
#: the input of the global pooling (for DenseNet, the ReLU its forward applies
#: after ``features``). Transformer classifiers (ViT, Swin, MaxViT) are absent:
#: they have no ``(N, C, H, W)`` map before their head.
TORCHVISION_FEATURE_NODES: dict[str, str] = {
    "AlexNet": "features",
    "ConvNeXt": "features",
    "DenseNet": "relu",
    "EfficientNet": "features",
    "GoogLeNet": "inception5b",
    "Inception3": "Mixed_7c",
    "MNASNet": "layers",
    "MobileNetV2": "features",
    "MobileNetV3": "features",
    "RegNet": "trunk_output",
    "ResNet": "layer4",
    "ShuffleNetV2": "conv5",
    "SqueezeNet": "features",
    "VGG": "features",
}

_FEATURES = "features"


def _is_timm(module: Any) -> bool:
    return type(module).__module__.startswith("timm.") and hasattr(module, "reset_classifier")


def _torchvision_node(module: Any) -> str | None:
    cls = type(module)
    if not cls.__module__.startswith("torchvision.models"):
        return None
    return TORCHVISION_FEATURE_NODES.get(cls.__name__)


def feature_extractor(model: Any, *, model_id: str) -> Any:
    """feature_extractor(model, *, model_id) -> nn.Module: ``model``'s feature-map variant.

    See NOTE [feature variants]. A timm model is changed in place and returned;
    a torchvision model gives a new graph module over the same parameters.

    Raises:
        FeaturesUnavailableError: the model is neither a timm model nor a
            torchvision classifier listed in :data:`TORCHVISION_FEATURE_NODES`.
    """
    if _is_timm(model):
        model.reset_classifier(0, global_pool="")
        return model
    node = _torchvision_node(model)
    if node is not None:
        return _torchvision_features(model, node)
    hint = ""
    if hasattr(model, "config") and hasattr(model, "base_model_prefix"):
        hint = ' For a transformers model, load it with task="feature-extraction".'
    raise FeaturesUnavailableError(
        f"{model_id}: no feature-map variant is known for a {type(model).__name__}; "
        "features=True works for timm models and torchvision's convolutional classifiers "
        f"({', '.join(sorted(TORCHVISION_FEATURE_NODES))}).{hint} Otherwise load the "
        "classifier and take the layers you need from it in Python."
    )


def _torchvision_features(model: Any, node: str) -> Any:
    import torch.fx as fx
    from torchvision.models.feature_extraction import create_feature_extractor

    graph_module = create_feature_extractor(model, return_nodes={node: _FEATURES})
    # create_feature_extractor returns a dict; the bridge's callers want the map.
    graphs: list[fx.Graph] = [graph_module.graph]
    for name in ("train_graph", "eval_graph"):
        graph = getattr(graph_module, name, None)
        if graph is not None and all(graph is not g for g in graphs):
            graphs.append(graph)
    for graph in graphs:
        output = next(n for n in graph.nodes if n.op == "output")
        (returned,) = output.args
        output.args = (returned[_FEATURES],)
        graph.lint()
    graph_module.recompile()
    return graph_module


def feature_map_channels(features: Any, input_size: Sequence[int] | None) -> int:
    """feature_map_channels(features, input_size) -> int: ``C`` of a feature variant's output.

    ``features`` is what :func:`feature_extractor` returned; ``input_size`` is
    one sample's torch size ``(C, H, W)`` (224² RGB when ``None``). The output
    is sized on fake tensors (:func:`torchbridge.shapes.output_shapes`), so a
    model on the ``meta`` device will do: ``C`` is dim 1 of a feature map
    ``(N, C, H, W)`` and the last dim of tokens ``(N, tokens, C)``. (timm's
    ``num_features`` is not always it: MobileNetV3 and GhostNet run a
    convolution after it.)
    """
    from ..shapes import output_shapes

    size = tuple(input_size) if input_size else (3, 224, 224)
    (shape, *_), _ = output_shapes(features, (1, *size))
    return int(shape[1] if len(shape) >= 4 else shape[-1])
