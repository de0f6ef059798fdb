"""The bridge's gradients and BatchNorm statistics equal plain PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchbridge
from julia_arrays import ArrayValue
from models import mlp, reference_step, small_cnn

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def bridge_step(module, inputs, cotangents, *, seed: int):
    bm = torchbridge.bridge(module)
    torch.manual_seed(seed)
    outputs, pullback = bm.forward(*inputs)
    input_grads = pullback(*cotangents)
    grads = dict(zip(bm.param_names, (g.clone() for g in bm.grads)))
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    bm.close()
    return outputs, input_grads, grads, buffers


def assert_same_step(module, inputs, cotangents, *, seed=1234, tol=TIGHT):
    ref_out, ref_in, ref_params, ref_buffers, _ = reference_step(
        module, inputs, cotangents, seed=seed
    )
    out, in_grads, params, buffers = bridge_step(module, inputs, cotangents, seed=seed)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(in_grads, ref_in):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **tol)
    assert params.keys() == ref_params.keys()
    for name in params:
        torch.testing.assert_close(params[name], ref_params[name], **tol, msg=name)
    assert buffers.keys() == ref_buffers.keys()
    for name in buffers:
        torch.testing.assert_close(buffers[name], ref_buffers[name], **tol, msg=name)
    return params


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mlp(mode):
    """An MLP's input and parameter gradients equal torch.autograd's in float64."""
    model = mlp().train(mode == "train")
    x = torch.randn(5, 6, dtype=torch.float64)
    cot = torch.randn(5, 4, dtype=torch.float64)
    params = assert_same_step(model, [x], [cot])
    assert all(g.abs().sum() > 0 for g in params.values())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cnn_with_batchnorm_and_dropout(mode):
    """A CNN with BatchNorm and dropout matches torch, running statistics included."""
    model = small_cnn().train(mode == "train")
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    cot = torch.randn(4, 5, dtype=torch.float64)
    before = model[1].running_mean.clone()
    assert_same_step(model, [x], [cot])
    moved = not torch.equal(model[1].running_mean, before)
    assert moved == (mode == "train")  # statistics update in train mode only


def test_julia_batch_matches_torch_batch():
    """A raw Julia (W,H,C,N) batch from PythonCall gives the gradients of its NCHW tensor."""
    model = small_cnn().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    julia_array = ArrayValue(np.asfortranarray(x.numpy().transpose(3, 2, 1, 0)))  # (W,H,C,N)
    cot = torch.randn(2, 5, dtype=torch.float64)
    _, ref_in, ref_params, _, _ = reference_step(model, [x], [cot], seed=0)
    bm = torchbridge.bridge(model)
    (_,), pullback = bm.forward(julia_array)
    (gx,) = pullback(cot)
    torch.testing.assert_close(gx, ref_in[0], **TIGHT)
    for name, g in zip(bm.param_names, bm.grads):
        torch.testing.assert_close(g, ref_params[name], **TIGHT)
    bm.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(
    "name,kwargs,size",
    [("resnet18", {}, 64), ("vit_tiny_patch16_224", {"img_size": 32}, 32)],
)
def test_timm_models(name, kwargs, size, mode):
    """timm resnet18 and vit_tiny (random init) match torch in train and eval mode, every parameter gets a gradient."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7, **kwargs).double()
    model.train(mode == "train")
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    cot = torch.randn(2, 7, dtype=torch.float64)
    params = assert_same_step(model, [x], [cot], tol={"rtol": 1e-7, "atol": 1e-9})
    assert len(params) == sum(1 for p in model.parameters() if p.requires_grad)


def test_accumulate_adds_to_the_buffers():
    """accumulate=True adds this step's gradients to the buffers instead of overwriting."""
    model = mlp()
    bm = torchbridge.bridge(model)
    x = torch.randn(3, 6, dtype=torch.float64)
    cot = torch.randn(3, 4, dtype=torch.float64)
    bm.forward(x)[1](cot)
    once = [g.clone() for g in bm.grads]
    bm.forward(x)[1](cot, accumulate=True)
    for g, g1 in zip(bm.grads, once):
        torch.testing.assert_close(g, 2 * g1)
    bm.forward(x)[1](cot)
    for g, g1 in zip(bm.grads, once):
        torch.testing.assert_close(g, g1)
    bm.close()


def test_none_cotangent_is_zero():
    """A None cotangent counts as zero: only the other output contributes."""

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 2).double()
            self.b = torch.nn.Linear(3, 2).double()

        def forward(self, x):
            return {"a": self.a(x), "b": self.b(x)}

    model = TwoHeads()
    bm = torchbridge.bridge(model)
    x = torch.randn(4, 3, dtype=torch.float64)
    cot = torch.randn(4, 2, dtype=torch.float64)
    outputs, pullback = bm.forward(x)
    assert bm.output_structure.kind == "dict" and bm.output_structure.keys == ("a", "b")
    rebuilt = bm.output_structure.rebuild(outputs)
    assert set(rebuilt) == {"a", "b"}
    (gx,) = pullback(None, cot)
    torch.testing.assert_close(gx, cot @ model.b.weight)
    grads = dict(zip(bm.param_names, bm.grads))
    assert torch.count_nonzero(grads["a.weight"]) == 0
    torch.testing.assert_close(grads["b.weight"], cot.T @ x)
    bm.close()


def test_integer_inputs_have_no_gradient():
    """An integer input (token ids) gets None; the embedding still gets its gradient."""
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2)
    )
    bm = torchbridge.bridge(model)
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    (y,), pullback = bm.forward(ids)
    (g,) = pullback(torch.ones_like(y))
    assert g is None
    emb = dict(zip(bm.param_names, bm.grads))["0.weight"]
    assert torch.count_nonzero(emb[[1, 2, 3, 4, 5, 6]].abs().sum(1)) == 6
    assert torch.count_nonzero(emb[[0, 7, 8, 9]]) == 0
    bm.close()


def test_input_grads_false_skips_the_input():
    """input_grads=False returns None for the input and still fills the parameter gradients."""
    model = mlp()
    bm = torchbridge.bridge(model)
    x = torch.randn(3, 6, dtype=torch.float64)
    (y,), pullback = bm.forward(x, input_grads=False)
    assert pullback(torch.ones_like(y)) == (None,)
    assert all(g.abs().sum() > 0 for g in bm.grads)
    bm.close()


def test_grad_false_builds_no_graph():
    """grad=False returns outputs without a pullback and without touching the ledger."""
    bm = torchbridge.bridge(mlp())
    before = torchbridge.memory.stats()
    (y,), pullback = bm.forward(torch.randn(2, 6, dtype=torch.float64), grad=False)
    assert pullback is None
    assert not y.requires_grad and y.grad_fn is None
    assert torchbridge.memory.stats() == before
    bm.close()


def test_frozen_parameters_are_not_shared():
    """Parameters with requires_grad=False are neither listed nor given a buffer."""
    model = mlp()
    model[0].weight.requires_grad_(False)
    bm = torchbridge.bridge(model)
    assert "0.weight" not in bm.param_names
    assert len(bm.params) == len(bm.grads) == 3
    bm.close()


def test_torch_optimizer_sees_the_same_buffers():
    """p.grad is the shared buffer, so a torch optimiser steps with the bridge's gradients."""
    model = mlp()
    bm = torchbridge.bridge(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(3, 6, dtype=torch.float64)
    before = [p.clone() for p in bm.params]
    (y,), pullback = bm.forward(x)
    pullback(torch.ones_like(y))
    expected = [p - 0.1 * g for p, g in zip(before, bm.grads)]
    opt.step()
    for p, e in zip(bm.params, expected):
        torch.testing.assert_close(p, e)
    opt.zero_grad(set_to_none=True)  # detaches p.grad from the buffer ...
    pointers = [g.data_ptr() for g in bm.grads]
    (y,), pullback = bm.forward(x)
    pullback(torch.ones_like(y))  # ... and the next pullback puts it back
    assert [g.data_ptr() for g in bm.grads] == pointers
    assert all(p.grad is g for p, g in zip(model.parameters(), bm.grads))
    bm.close()


@pytest.mark.parametrize("input_grads", [True, False])
def test_the_bridge_is_a_boundary_for_callers_graphs(input_grads):
    """A torch input with its own history gets no gradient through the pullback: only the returned one."""
    leaf = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    x = leaf * 2  # a non-leaf with a graph behind it
    bm = torchbridge.bridge(mlp())
    (y,), pullback = bm.forward(x, input_grads=input_grads)
    (gx,) = pullback(torch.ones_like(y))
    assert leaf.grad is None
    assert (gx is not None) == input_grads
    bm.close()
