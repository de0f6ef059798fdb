"""Hugging Face transformers through torchbridge: a finetune step, and the hf registry.

``hf_step_over_torch``: a finetune step of a BERT-base-sized random model
(12 layers, hidden 768, vocabulary 30,522; sequence 128, batch 8) as a Julia
user runs it — token ids and mask as Julia-ordered ``(seq, batch)`` Int64
arrays, keyword inputs through the bridge, the loss's cotangent on ``logits``
only, an optimiser step on the shared gradient buffers — over the plain
transformers + torch step (``model(**batch).logits``, cross-entropy, backward,
the same optimiser). Throughput ratio: plain time / bridge time (>= 0.97 means
the bridge costs at most 3%). Steps alternate in ABBA order.

``hf_list_ms``, ``hf_search_ms``: listing the hf source and searching over a
fake Hugging Face cache of 1,000 model repos (config and model card each),
warm (configs already read; the listing still reads every repo's ``refs`` and
stats its config), and the first, cold listing.

``TORCHBRIDGE_BENCH_HF_LAYERS`` (default 12) and ``TORCHBRIDGE_BENCH_HF_PAIRS``
(default 3) shrink the step benchmark on a slow machine.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SEQ, BATCH, LABELS = 128, 8, 2


def hf_step() -> dict:
    import torch.nn.functional as F
    from transformers import BertConfig, BertForSequenceClassification

    import torchbridge
    from torchbridge import memory

    layers = int(os.environ.get("TORCHBRIDGE_BENCH_HF_LAYERS", "12"))
    pairs = int(os.environ.get("TORCHBRIDGE_BENCH_HF_PAIRS", "3"))
    config = BertConfig(num_hidden_layers=layers, num_labels=LABELS)  # BERT-base sizes
    torch.manual_seed(0)
    plain = BertForSequenceClassification(config).train()
    bridged = copy.deepcopy(plain)
    bm = torchbridge.bridge(bridged)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (BATCH, SEQ))
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[:, SEQ - 16 :] = 0
    labels = torch.from_numpy(rng.integers(0, LABELS, BATCH))
    # what Julia holds: (seq, batch) column-major Int64 arrays
    julia_ids, julia_mask = np.asfortranarray(ids.T), np.asfortranarray(mask.T)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-5)
    bridge_opt = torch.optim.AdamW(bm.parameters, lr=1e-5)
    from torchbridge.exchange import to_torch

    def plain_step():
        started = time.perf_counter()
        logits = plain(input_ids=ids_t, attention_mask=mask_t).logits
        F.cross_entropy(logits, labels).backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    def bridge_step():
        started = time.perf_counter()
        (logits,), pullback = bm.forward(
            input_ids=to_torch(julia_ids, layout="julia"),
            attention_mask=to_torch(julia_mask, layout="julia"),
        )
        # the loss's gradient, as Julia computes it (softmax - onehot) / batch
        dlogits = torch.softmax(logits, -1)
        dlogits[torch.arange(BATCH), labels] -= 1
        pullback(logits=dlogits / BATCH)
        bridge_opt.step()
        return time.perf_counter() - started

    plain_step()
    bridge_step()
    plain_times, bridge_times = [], []
    baseline = memory.snapshot()
    for rep in range(2 * pairs):
        order = [(plain_step, plain_times), (bridge_step, bridge_times)]
        for step, times in order if rep % 2 == 0 else order[::-1]:
            times.append(step())
    at_baseline = True
    try:
        memory.assert_baseline(baseline)
    except AssertionError:
        at_baseline = False
    bm.close()
    p, b = statistics.median(plain_times), statistics.median(bridge_times)
    return {
        "hf_layers": layers,
        "torch_hf_step_s": p,
        "bridge_hf_step_s": b,
        "hf_step_over_torch": p / b,
        "hf_ledger_at_baseline": at_baseline,
    }


def fake_cache(hub: Path, n: int = 1000) -> None:
    kinds = [
        ("bert", "BertForSequenceClassification"),
        ("gpt2", "GPT2LMHeadModel"),
        ("vit", "ViTForImageClassification"),
        ("roberta", "RobertaForMaskedLM"),
        ("distilbert", "DistilBertModel"),
    ]
    revision = "0" * 40
    for i in range(n):
        model_type, arch = kinds[i % len(kinds)]
        repo = hub / f"models--org{i % 37}--{model_type}-model-{i}"
        snap = repo / "snapshots" / revision
        snap.mkdir(parents=True)
        config = {
            "architectures": [arch],
            "model_type": model_type,
            "hidden_size": 64 * (1 + i % 12),
            "vocab_size": 30522,
            "max_position_embeddings": 512,
            "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
        }
        (snap / "config.json").write_text(json.dumps(config))
        (snap / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
        (snap / "model.safetensors").write_bytes(b"")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)


def hf_registry(n: int = 1000, reps: int = 20) -> dict:
    from torchbridge.registry.search import rank
    from torchbridge.registry.sources.hf_source import HFSource

    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp) / "hub"
        fake_cache(hub, n)
        old = os.environ.get("HF_HUB_CACHE")
        os.environ["HF_HUB_CACHE"] = str(hub)
        try:
            source = HFSource()
            started = time.perf_counter()
            entries = source.entries()
            cold = time.perf_counter() - started
            assert len(entries) == n
            lists, searches = [], []
            for _ in range(reps):
                started = time.perf_counter()
                entries = source.entries()
                lists.append(time.perf_counter() - started)
                started = time.perf_counter()
                found = rank(entries, "bert sentiment classification", limit=20)
                searches.append(time.perf_counter() - started)
            assert found
        finally:
            if old is None:
                os.environ.pop("HF_HUB_CACHE", None)
            else:
                os.environ["HF_HUB_CACHE"] = old
    lst, srch = statistics.median(lists) * 1e3, statistics.median(searches) * 1e3
    return {
        "hf_models_listed": n,
        "hf_list_cold_ms": cold * 1e3,
        "hf_list_ms": lst,
        "hf_search_ms": srch,
        "hf_list_and_search_ms": lst + srch,
    }


def run() -> dict:
    return {**hf_registry(), **hf_step()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
