"""Feature-map variants (``load_model(id, features=True)``) and output sizes without data.

Feature variants are compared with the classifier's own layers run by hand;
``output_shapes`` with a real forward at several input sizes, and it must not
touch the module's parameters or BatchNorm statistics.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchbridge
from torchbridge.errors import (
    FeaturesUnavailableError,
    InputShapeError,
    OutputSizeUnknownError,
    RegistryArgumentError,
)
from torchbridge.julia_support import output_sizes
from torchbridge.shapes import output_shapes

TIMM = "timm/test_resnet.r160_in1k"


def _resnet_body(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _classifier_and_features(model_id):
    """The classifier and its feature variant holding the same weights, both in eval mode."""
    classifier = torchbridge.load_model(model_id).eval()
    features = torchbridge.load_model(model_id, features=True).eval()
    features.load_state_dict(classifier.state_dict(), strict=False)
    return classifier, features


class TestFeatureVariants:
    def test_torchvision_resnet_is_its_body_unpooled(self):
        classifier, features = _classifier_and_features("torchvision/resnet18")
        x = torch.randn(2, 3, 224, 160)
        with torch.no_grad():
            got = features(x)
            want = _resnet_body(classifier, x)
        assert got.shape == (2, 512, 7, 5)
        assert torch.equal(got, want)

    def test_torchvision_parameters_keep_their_names(self):
        classifier = torchbridge.load_model("torchvision/resnet18")
        features = torchbridge.load_model("torchvision/resnet18", features=True)
        names = {n for n, _ in features.named_parameters()}
        assert names == {n for n, _ in classifier.named_parameters()} - {"fc.weight", "fc.bias"}

    def test_torchvision_train_mode_switches_graphs(self):
        features = torchbridge.load_model("torchvision/resnet18", features=True)
        features.train()
        before = features.get_buffer("bn1.running_mean").clone()
        assert features(torch.randn(2, 3, 64, 64)).shape == (2, 512, 2, 2)
        assert not torch.equal(before, features.get_buffer("bn1.running_mean"))
        features.eval()
        after = features.get_buffer("bn1.running_mean").clone()
        features(torch.randn(2, 3, 64, 64))
        assert torch.equal(after, features.get_buffer("bn1.running_mean"))

    def test_densenet_applies_its_final_relu(self):
        classifier, features = _classifier_and_features("torchvision/densenet121")
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(features(x), torch.relu(classifier.features(x)))

    def test_timm_uses_timms_own_headless_model(self):
        import timm

        features = torchbridge.load_model(TIMM, features=True).eval()
        reference = timm.create_model(TIMM.partition("/")[2], num_classes=0, global_pool="").eval()
        reference.load_state_dict(features.state_dict())
        x = torch.randn(2, 3, 160, 160)
        with torch.no_grad():
            got = features(x)
            assert torch.equal(got, reference(x))
        assert got.dim() == 4 and got.shape[1] == features.num_features

    def test_pretrained_weights_reach_the_features(self, tmp_path):
        from safetensors.torch import save_file

        trained = torchbridge.load_model("torchvision/resnet18")
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        path = tmp_path / "resnet18.safetensors"
        save_file(trained.state_dict(), str(path))
        features = torchbridge.load_model("torchvision/resnet18", weights=path, features=True)
        assert torch.equal(
            features.get_parameter("layer4.1.conv2.weight"), trained.layer4[1].conv2.weight
        )
        x = torch.randn(1, 3, 96, 96)
        with torch.no_grad():
            assert torch.equal(features.eval()(x), _resnet_body(trained.eval(), x))

    def test_models_without_a_feature_map_say_so(self):
        with pytest.raises(
            FeaturesUnavailableError, match="torchvision/vit_b_16.*VisionTransformer"
        ):
            torchbridge.load_model("torchvision/vit_b_16", features=True)

    def test_features_and_num_classes_exclude_each_other(self):
        with pytest.raises(RegistryArgumentError, match="features=True.*num_classes=10"):
            torchbridge.load_model("torchvision/resnet18", features=True, num_classes=10)
        for bad in (-1, 2.5, "10"):
            with pytest.raises(RegistryArgumentError, match="non-negative int"):
                torchbridge.load_model("torchvision/resnet18", num_classes=bad)

    @pytest.mark.parametrize(
        ("model_id", "channels"),
        [
            ("torchvision/resnet18", 512),
            ("torchvision/mobilenet_v3_small", 576),
            ("timm/resnet18", 512),
            ("timm/mobilenetv3_large_100", 1280),  # a convolution after timm's num_features
            ("timm/vit_tiny_patch16_224", 192),  # tokens (N, tokens, C)
            ("timm/eva02_tiny_patch14_224", 192),  # a feature-extraction entry
            ("torchvision/vit_b_16", None),
        ],
    )
    def test_feature_channels(self, model_id, channels):
        assert torchbridge.feature_channels(model_id) == channels
        if channels is not None:
            features = torchbridge.load_model(model_id, features=True).eval()
            with torch.no_grad():
                out = features(torch.randn(1, 3, 224, 224))
            assert (out.shape[1] if out.dim() >= 4 else out.shape[-1]) == channels

    def test_info_row_carries_feature_channels(self):
        from torchbridge.julia_support import info_row

        assert info_row("torchvision/resnet18")["feature_channels"] == 512


class _TwoHeads(nn.Module):
    """Named outputs of different sizes, a BatchNorm updated in train mode."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x, y):
        h = self.bn(self.conv(x))
        return {"map": h, "logits": self.fc(h.mean((2, 3))) + y.sum()}


class TestOutputShapes:
    @pytest.mark.parametrize("size", [(1, 3, 224, 224), (4, 3, 96, 128), (2, 3, 33, 47)])
    @pytest.mark.parametrize(
        "model_id", ["timm/resnet18", "torchvision/mobilenet_v3_small", "torchvision/resnet18"]
    )
    def test_matches_a_real_forward(self, model_id, size):
        model = torchbridge.load_model(model_id).eval()
        (shape,), structure = output_shapes(model, size)
        with torch.no_grad():
            assert shape == tuple(model(torch.randn(size)).shape)
        assert not structure.named

    def test_a_module_built_here_with_named_outputs(self):
        model = _TwoHeads().train()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        shapes, structure = output_shapes(model, (2, 3, 31, 20), (7,))
        real = model(torch.randn(2, 3, 31, 20), torch.randn(7))
        assert shapes == (tuple(real["map"].shape), tuple(real["logits"].shape))
        assert structure.names == ("map", "logits")
        # the sizing ran in train mode and left every buffer and parameter as it was
        model.load_state_dict(state)
        output_shapes(model, (2, 3, 31, 20), (7,))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    def test_non_persistent_buffers_are_faked_too(self):
        class Scaled(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.register_buffer("scale", torch.full((1, 3, 1, 1), 2.0), persistent=False)

            def forward(self, x):
                return self.conv(x * self.scale)

        (shape,), _ = output_shapes(Scaled(), (2, 3, 10, 12))
        assert shape == (2, 4, 8, 10)

    def test_other_errors_of_the_forward_propagate(self):
        class Unfinished(nn.Module):
            def forward(self, x):
                raise NotImplementedError("this model is not finished")

        with pytest.raises(NotImplementedError, match="not finished"):
            output_shapes(Unfinished(), (1, 3))

    def test_allocates_no_values(self):
        model = torchbridge.load_model("torchvision/resnet18").eval()
        (shape,), _ = output_shapes(model, (65536, 3, 224, 224))  # 39 GB of input if real
        assert shape == (65536, 1000)

    def test_data_dependent_sizes_are_refused(self):
        class Positive(nn.Module):
            def forward(self, x):
                return x[x > 0]

        with pytest.raises(OutputSizeUnknownError, match="depends on the values"):
            output_shapes(Positive(), (3, 4))

    def test_sizes_the_model_rejects(self):
        model = torchbridge.load_model("torchvision/resnet18")
        with pytest.raises(InputShapeError, match=r"\(1, 5, 224, 224\).*channels"):
            output_shapes(model, (1, 5, 224, 224))

    def test_julia_sizes_are_reversed_both_ways(self):
        bridged = torchbridge.bridge(_TwoHeads())
        sizes, names = output_sizes(bridged, [(20, 31, 3, 2), (7,)])
        assert sizes == ((9, 15, 8, 2), (5, 2))
        assert names == ("map", "logits")
        plain = torchbridge.bridge(torchbridge.load_model("torchvision/resnet18", features=True))
        assert output_sizes(plain, [(256, 256, 3, 1)]) == (((8, 8, 512, 1),), None)
