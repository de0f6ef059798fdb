"""Free-text search: ranking sanity for typical queries, and the speed of repeated queries."""

from __future__ import annotations

import time

import pytest

import torchbridge
from torchbridge.registry.search import tokenize


def _top(query, n=5):
    return [e for e in torchbridge.search_models(query, limit=n)]


class TestRanking:
    def test_tiny_vision_transformer(self):
        """'tiny vision transformer' finds tiny ViTs: every top result is a tiny ViT variant."""
        top = _top("tiny vision transformer", 10)
        assert len(top) == 10
        for e in top:
            tokens = set(tokenize(e.name))
            assert "tiny" in tokens and "vit" in tokens, e.id
        assert "timm/vit_tiny_patch16_224" in {e.id for e in _top("tiny vision transformer", 20)}

    def test_efficientnet_b0_imagenet(self):
        """'efficientnet b0 imagenet' puts an ImageNet-trained EfficientNet-B0 first."""
        first = _top("efficientnet b0 imagenet", 1)[0]
        assert "efficientnet_b0" in first.name and "imagenet" in first.tags

    def test_exact_name_first(self):
        """An exact architecture name ranks that architecture from each source first."""
        assert {e.id for e in _top("resnet50", 2)} == {"timm/resnet50", "torchvision/resnet50"}

    def test_task_words(self):
        """'object detection' returns detection models."""
        assert {e.task for e in _top("object detection", 8)} == {"object-detection"}

    def test_prefix_words(self):
        """A word that prefixes model names ('mobilenet') finds those models."""
        assert all("mobilenet" in e.name for e in _top("mobilenet", 10))

    def test_synonym_vit(self):
        """'vision transformer' and 'vit' find the same family."""
        assert all("vit" in tokenize(e.name) for e in _top("vision transformer", 10))

    def test_test_models_sink(self):
        """timm's tiny test architectures do not top a plain query, but come up when asked for."""
        assert all(not e.name.startswith("test_") for e in _top("vit", 10))
        assert _top("test vit", 1)[0].name.startswith("test_vit")

    def test_no_match_and_limit(self):
        """A query matching nothing gives an empty list, and limit bounds the result."""
        assert torchbridge.search_models("zzqqxx nothingmatches") == []
        assert len(torchbridge.search_models("resnet", limit=3)) == 3
        assert torchbridge.search_models("", limit=3) == []

    def test_query_must_be_text(self):
        """A query that is not a string is a TypeError."""
        with pytest.raises(TypeError, match="query"):
            torchbridge.search_models(None)  # type: ignore[arg-type]


def test_tokenize_splits_names_and_digits():
    """Names split on punctuation, and a word with trailing digits also yields its parts."""
    assert tokenize("timm/resnet50.a1_in1k") == ["timm", "resnet50", "resnet", "50", "a1", "in1k"]


def test_repeated_queries_are_fast():
    """After the first call, listing everything and searching take well under a second."""
    torchbridge.list_models()
    torchbridge.search_models("warm up")
    start = time.perf_counter()
    entries = torchbridge.list_models()
    listed = time.perf_counter() - start
    start = time.perf_counter()
    torchbridge.search_models("efficientnet b0 imagenet")
    searched = time.perf_counter() - start
    assert len(entries) > 3000
    # generous bounds for a busy machine; benchmarks/bench_registry.py measures the real figures
    assert listed < 0.5 and searched < 0.5
