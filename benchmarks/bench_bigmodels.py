"""Large models: loading in place, LoRA, autocast, on a ~100M-parameter decoder.

The model is a Llama-style causal LM made from a config (8 layers, hidden 768,
vocabulary 32,000, untied head: 106M parameters, 423 MB in float32), with
random weights: nothing is downloaded. It is saved with ``save_pretrained``
and read back through the registry as ``hf/<folder>``.

``bigmodels_load_rss_over_checkpoint``: in a fresh process (imports done and
a tiny model of the same class loaded first), the peak resident memory that
``load_model(id, pretrained=True)`` followed by one read of every weight adds,
over the checkpoint's size (Linux's ``VmHWM``, reset through
``/proc/self/clear_refs``). A load that holds the weights once gives about
1.0, one that copies them about 2.0; target <= 1.3.
``bigmodels_weights_file_rss_over_checkpoint``: the same for ``weights=`` the
safetensors file (torchbridge's own in-place path, not transformers').

``bigmodels_lora_step_over_full_step``: a training step (forward, loss,
backward, AdamW; batch 2, sequence 64) with a rank-8 LoRA adapter on
``q_proj``/``v_proj`` over the same step training every weight.
``bigmodels_autocast_step_over_float32_step``: the full step with the forward
under bfloat16 autocast over the float32 one, on this CPU (a CPU without
bfloat16 instructions computes bfloat16 products more slowly). Steps alternate
(ABBA); medians. ``bigmodels_adapter_bytes_over_model_bytes``: the adapter's
bytes over the whole model's.

``TORCHBRIDGE_BENCH_BIG_LAYERS`` (default 8) and ``TORCHBRIDGE_BENCH_BIG_PAIRS``
(default 2) shrink it on a slow machine.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

BATCH, SEQ = 2, 64
_PYTHON = str(Path(__file__).resolve().parent.parent / "python")


def _config(layers: int, **overrides):
    from transformers import LlamaConfig

    sizes = dict(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=layers,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**{**sizes, **overrides})


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torchbridge

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

    model_id, tiny_id, weights = sys.argv[1], sys.argv[2], sys.argv[3] or None
    torchbridge.load_model(tiny_id, pretrained=True)  # imports, first-call set-up
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again here
    if weights:
        model = torchbridge.load_model(model_id, weights=weights)
    else:
        model = torchbridge.load_model(model_id, pretrained=True)
    loaded = status("VmHWM:") - base
    read = sum(float(t.float().sum()) for t in model.state_dict().values())
    print(json.dumps({"loaded": loaded, "read": status("VmHWM:") - base}))
    """
)


def _rss(model_id: str, tiny_id: str, weights: str, env: dict) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, model_id, tiny_id, weights],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if run.returncode != 0:
        raise RuntimeError(f"the memory measurement failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def load_memory(folder: Path, layers: int) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(layers))
    model.save_pretrained(folder / "bench-llama")
    LlamaForCausalLM(
        _config(
            1,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=256,
        )
    ).save_pretrained(folder / "bench-llama-tiny")
    values = sum(p.numel() for p in model.parameters())
    del model
    env = {
        **os.environ,
        "PYTHONPATH": _PYTHON,
        "TORCHBRIDGE_HF_DIRS": str(folder),
        "HF_HUB_OFFLINE": "1",
        "TORCHBRIDGE_OFFLINE": "1",
    }
    file = folder / "bench-llama" / "model.safetensors"
    size = file.stat().st_size
    folder_load = _rss("hf/bench-llama", "hf/bench-llama-tiny", "", env)
    file_load = _rss("hf/bench-llama", "hf/bench-llama-tiny", str(file), env)
    return {
        "bigmodels_parameters": values,
        "bigmodels_checkpoint_mb": size / 1e6,
        "bigmodels_load_only_rss_over_checkpoint": folder_load["loaded"] / size,
        "bigmodels_load_rss_over_checkpoint": folder_load["read"] / size,
        "bigmodels_weights_file_rss_over_checkpoint": file_load["read"] / size,
    }


def steps(layers: int, pairs: int) -> dict:
    from transformers import LlamaForCausalLM

    import torchbridge
    from torchbridge.train import TrainStep, logitcrossentropy, optimizer_from_spec

    torch.manual_seed(0)
    full = LlamaForCausalLM(_config(layers)).train()
    lora = torchbridge.add_lora(
        copy.deepcopy(full), r=8, alpha=16, target=["q_proj", "v_proj"]
    ).train()
    ids = torch.randint(0, 32000, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(0))
    x, y = {"input_ids": ids[:, :-1]}, ids[:, 1:]

    def trainer(model, **kw):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = optimizer_from_spec({"rule": "AdamW", "eta": 1e-5}, params)
        step = TrainStep(model, opt, logitcrossentropy, **kw)

        def run() -> float:
            started = time.perf_counter()
            step(x, y)
            return time.perf_counter() - started

        return run

    runs = {
        "full": trainer(full),
        "lora": trainer(lora),
        "autocast": trainer(full, mixed_precision="bfloat16"),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():  # warm-up: optimiser state, first-call set-up
        run()
    names = list(runs)
    for rep in range(2 * pairs):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(runs[name]())
    median = {k: statistics.median(v) for k, v in times.items()}
    adapter = sum(p.numel() * p.element_size() for p in lora.parameters() if p.requires_grad)
    total = sum(p.numel() * p.element_size() for p in full.parameters())
    return {
        "bigmodels_full_step_s": median["full"],
        "bigmodels_lora_step_s": median["lora"],
        "bigmodels_autocast_step_s": median["autocast"],
        "bigmodels_lora_step_over_full_step": median["lora"] / median["full"],
        "bigmodels_autocast_step_over_float32_step": median["autocast"] / median["full"],
        "bigmodels_adapter_bytes_over_model_bytes": adapter / total,
    }


def run() -> dict:
    layers = int(os.environ.get("TORCHBRIDGE_BENCH_BIG_LAYERS", "8"))
    pairs = int(os.environ.get("TORCHBRIDGE_BENCH_BIG_PAIRS", "2"))
    with tempfile.TemporaryDirectory() as tmp:
        figures = load_memory(Path(tmp), layers)
    return {**figures, **steps(layers, pairs)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
