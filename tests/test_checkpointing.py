"""Gradient checkpointing (torchbridge.checkpointing): fewer saved activations, the same gradients."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import torchbridge  # noqa: E402
from torchbridge import memory  # noqa: E402
from torchbridge.errors import GradientCheckpointingError  # noqa: E402

LLAMA, GPT2, BERT = "hf/test/tiny-llama", "hf/test/tiny-gpt2", "hf/test/tiny-bert"


def step(module, *inputs, **kw_inputs) -> tuple[int, dict[str, torch.Tensor]]:
    """One bridged forward and pullback in training mode: how many tensors autograd saved
    for the backward pass, and every parameter's gradient."""
    saved = []

    def pack(t):
        saved.append(1)
        return t

    bm = torchbridge.bridge(module)
    bm.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs, pullback = bm.forward(*inputs, input_grads=False, **kw_inputs)
    count = len(saved)
    pullback(*(torch.ones_like(o) for o in outputs))
    grads = {n: g.clone() for n, g in zip(bm.param_names, bm.grads)}
    bm.close()
    return count, grads


def token_ids(batch: int = 3, seq: int = 9) -> torch.Tensor:
    return torch.randint(1, 40, (batch, seq), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_id", [LLAMA, GPT2, BERT])
def test_checkpointed_gradients_equal_plain_ones(finetune_models, model_id):
    """gradient_checkpointing=True keeps fewer tensors for the backward pass, and every
    parameter's gradient equals the plain one."""
    baseline = memory.snapshot()
    plain = torchbridge.load_model(model_id, pretrained=True)
    checkpointed = torchbridge.load_model(model_id, pretrained=True, gradient_checkpointing=True)
    ids = token_ids()
    kept, want = step(plain, input_ids=ids)
    kept_checkpointed, got = step(checkpointed, input_ids=ids)
    assert kept_checkpointed < kept / 2
    assert got.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    memory.assert_baseline(baseline)


def test_with_a_lora_adapter(finetune_models):
    """Checkpointing reaches the base model under a LoRA adapter; the adapter's gradients
    equal the plain ones."""
    spec = {"r": 4, "target": ["q_proj", "v_proj"]}
    plain = torchbridge.load_model(LLAMA, pretrained=True, lora=spec)
    with torch.no_grad():  # B starts at zero: give A's gradients something to be
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    checkpointed = copy.deepcopy(plain)
    torchbridge.checkpointing.enable_gradient_checkpointing(checkpointed)
    ids = token_ids()
    kept, want = step(plain, input_ids=ids)
    kept_checkpointed, got = step(checkpointed, input_ids=ids)
    assert kept_checkpointed < kept / 2 and len(want) == 8
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_timm_models_checkpoint_their_blocks():
    """A timm model turns on its own set_grad_checkpointing; gradients are unchanged."""
    torch.manual_seed(0)
    plain = torchbridge.load_model("timm/test_vit")
    checkpointed = copy.deepcopy(plain)
    torchbridge.checkpointing.enable_gradient_checkpointing(checkpointed)
    assert checkpointed.grad_checkpointing
    x = torch.randn(2, *torchbridge.model_info("timm/test_vit").input_size)
    kept, want = step(plain, x)
    kept_checkpointed, got = step(checkpointed, x)
    assert kept_checkpointed < kept
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_model_without_checkpointing_is_refused():
    """A torchvision model declares no checkpointing: a typed error, naming the model."""
    with pytest.raises(GradientCheckpointingError, match="torchvision/resnet18: a ResNet has no"):
        torchbridge.load_model("torchvision/resnet18", gradient_checkpointing=True)
