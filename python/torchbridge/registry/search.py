"""Free-text search over registry entries, ranked by relevance.

NOTE [ranking]
    The query is split into concepts; each concept is a word plus its
    synonyms ("vit" <-> "vision transformer", "imagenet" <-> "in1k" ...). An
    entry earns, per concept, the weight of the best field the concept appears
    in: the architecture part of the name (3), the weights tag (2), the tags
    (1.5), the description and task (1). A word that only prefixes an entry
    word ("mobilenet" in "mobilenetv3") earns 60 %. Entries that match every
    concept rank above those that match some; then published weights and
    shorter (base) names win ties. Entries matching no concept are dropped.

    Generic fuzzy matchers (rapidfuzz, BM25) rank by character overlap or by
    term rarity; model names need the domain synonyms and the name/tag/prose
    weighting above more than typo tolerance, and the index stays dependency-free.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Sequence

from .entry import ModelEntry

__all__ = ["rank", "tokenize"]

_SPLIT = re.compile(r"[^a-z0-9]+")
_ALPHA_DIGITS = re.compile(r"^([a-z]{2,})(\d+)$")

# Multi-word phrases first (matched greedily in the query), then single words.
_PHRASES: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {
    ("vision", "transformer"): (("vit",), ("vision", "transformer")),
    ("vision", "transformers"): (("vit",), ("vision", "transformer")),
    ("image", "net"): (("imagenet",),),
    ("object", "detection"): (("detection",),),
    ("mobile", "net"): (("mobilenet",),),
    ("efficient", "net"): (("efficientnet",),),
    ("res", "net"): (("resnet",),),
}
_SYNONYMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "vit": (("vision", "transformer"),),
    "transformer": (("vit",),),
    "transformers": (("transformer",), ("vit",)),
    "imagenet": (("in1k",), ("in21k",), ("in22k",), ("in12k",), ("imagenet1k",)),
    "imagenet1k": (("in1k",), ("imagenet",)),
    "imagenet21k": (("in21k",), ("in22k",)),
    "imagenet22k": (("in22k",), ("in21k",)),
    "effnet": (("efficientnet",),),
    "efficientnet": (("effnet",),),
    "convnet": (("cnn",), ("conv",)),
    "cnn": (("convnet",), ("conv",)),
    "detector": (("detection",),),
    "classifier": (("classification",),),
    "segmenter": (("segmentation",),),
    "clip": (("openai",), ("laion2b",)),
    "distilled": (("dist",),),
    "finetuned": (("ft",),),
    "tiny": (("ti",),),
}
_PREFIX_FACTOR = 0.6
_MIN_PREFIX = 3

_FIELD_NAME, _FIELD_TAG, _FIELD_TAGS, _FIELD_TEXT = 3.0, 2.0, 1.5, 1.0


def tokenize(text: str) -> list[str]:
    """tokenize(text) -> list[str]: lower-case words, with ``resnet50`` also giving ``resnet``,
    ``50``."""
    out: list[str] = []
    for word in _SPLIT.split(text.lower()):
        if not word:
            continue
        out.append(word)
        match = _ALPHA_DIGITS.match(word)
        if match:
            out.extend(match.groups())
    return out


class _Index:
    """Token -> [(entry position, field weight)], plus the vocabulary for prefix look-ups."""

    def __init__(self, entries: Sequence[ModelEntry]) -> None:
        postings: dict[str, dict[int, float]] = defaultdict(dict)
        self.name_lengths: list[int] = []
        self.joined_names: list[str] = []
        self.penalties: list[float] = []  # timm's tiny test models sink unless asked for
        for pos, entry in enumerate(entries):
            weights: dict[str, float] = {}
            arch, _, tag = entry.name.rpartition("/")[2].partition(".")
            for field_text, weight in (
                (entry.description + " " + entry.task, _FIELD_TEXT),
                (" ".join(entry.tags), _FIELD_TAGS),
                (tag, _FIELD_TAG),
                (arch, _FIELD_NAME),
            ):
                for token in tokenize(field_text):
                    if weights.get(token, 0.0) < weight:
                        weights[token] = weight
            for token, weight in weights.items():
                postings[token][pos] = weight
            self.name_lengths.append(len(entry.name))
            self.joined_names.append("".join(_SPLIT.split(entry.name.lower())))
            self.penalties.append(1.5 if "test" in entry.tags else 0.0)
        self.postings = dict(postings)
        self.vocabulary = sorted(self.postings)

    def match(self, alternative: tuple[str, ...]) -> dict[int, float]:
        """Entries holding every token of ``alternative`` (exact, else as a prefix), with a
        weight."""
        result: dict[int, float] | None = None
        for token in alternative:
            hits = dict(self.postings.get(token, {}))
            if len(token) >= _MIN_PREFIX:
                for word in self._prefixed(token):
                    for pos, weight in self.postings[word].items():
                        scaled = weight * _PREFIX_FACTOR
                        if hits.get(pos, 0.0) < scaled:
                            hits[pos] = scaled
            if result is None:
                result = hits
            else:  # every token must be there; the weakest field counts
                result = {p: min(w, hits[p]) for p, w in result.items() if p in hits}
            if not result:
                return {}
        return result or {}

    def _prefixed(self, token: str) -> list[str]:
        import bisect

        start = bisect.bisect_right(self.vocabulary, token)
        out = []
        for word in self.vocabulary[start:]:
            if not word.startswith(token):
                break
            out.append(word)
        return out


def _concepts(query: str) -> list[tuple[tuple[str, ...], ...]]:
    words = [w for w in _SPLIT.split(query.lower()) if w]
    concepts: list[tuple[tuple[str, ...], ...]] = []
    i = 0
    while i < len(words):
        for size in (2,):
            phrase = tuple(words[i : i + size])
            if phrase in _PHRASES:
                concepts.append(_PHRASES[phrase])
                i += size
                break
        else:
            word = words[i]
            alternatives: list[tuple[str, ...]] = [(word,)]
            alternatives.extend(_SYNONYMS.get(word, ()))
            match = _ALPHA_DIGITS.match(word)
            if match:  # "resnet50" also finds "resnet_50"-style names
                alternatives.append(match.groups())
            concepts.append(tuple(alternatives))
            i += 1
    return concepts


_CACHE_LOCK = threading.Lock()
_CACHE: tuple[int, tuple[str, ...], _Index] | None = None


def _index_for(entries: Sequence[ModelEntry]) -> _Index:
    global _CACHE
    ids = tuple(e.id for e in entries)
    key = hash(ids)
    with _CACHE_LOCK:
        if _CACHE is not None and _CACHE[0] == key and _CACHE[1] == ids:
            return _CACHE[2]
    index = _Index(entries)
    with _CACHE_LOCK:
        _CACHE = (key, ids, index)
    return index


def rank(entries: Sequence[ModelEntry], query: str, *, limit: int = 20) -> list[ModelEntry]:
    """rank(entries, query, *, limit=20) -> list[ModelEntry]: the best matches, best first.

    See NOTE [ranking].
    """
    concepts = _concepts(query)
    if not concepts or limit <= 0:
        return []
    index = _index_for(entries)
    per_entry: dict[int, list[float]] = defaultdict(lambda: [0.0] * len(concepts))
    for ci, alternatives in enumerate(concepts):
        for alternative in alternatives:
            for pos, weight in index.match(alternative).items():
                scores = per_entry[pos]
                if scores[ci] < weight:
                    scores[ci] = weight

    normalized_query = "".join(_SPLIT.split(query.lower()))
    wants_tests = "test" in normalized_query
    n_concepts = len(concepts)
    scored = []
    for pos, scores in per_entry.items():
        matched = n_concepts - scores.count(0.0)
        score = sum(scores) + 4.0 * matched / n_concepts
        if matched == n_concepts:
            score += 2.0
        if entries[pos].pretrained:
            score += 0.5
        if index.joined_names[pos] == normalized_query:
            score += 5.0
        if not wants_tests:
            score -= index.penalties[pos]
        score -= 0.01 * index.name_lengths[pos]  # base names before long variants
        scored.append((-score, entries[pos].id, pos))
    scored.sort()
    return [entries[pos] for _, _, pos in scored[:limit]]
