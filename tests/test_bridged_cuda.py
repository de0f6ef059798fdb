"""The same bridge on a CUDA device: gradients, zero-copy, ledger bytes per device, streams."""

from __future__ import annotations

import pytest
import torch

import torchbridge
from models import mlp, reference_step, small_cnn
from torchbridge import memory
from torchbridge.errors import DeviceMismatchError
from torchbridge.exchange import copy_into, julia_layout, to_torch

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cnn_gradients_on_cuda(mode):
    """A BatchNorm CNN on CUDA gives plain autograd's gradients and statistics."""
    model = small_cnn().cuda().train(mode == "train")
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64, device="cuda")
    cot = torch.randn(4, 5, dtype=torch.float64, device="cuda")
    _, ref_in, ref_params, ref_buffers, _ = reference_step(model, [x], [cot], seed=3)
    bm = torchbridge.bridge(model)
    torch.manual_seed(3)
    (_,), pullback = bm.forward(x)
    (gx,) = pullback(cot)
    torch.testing.assert_close(gx, ref_in[0])
    for name, g in zip(bm.param_names, bm.grads):
        torch.testing.assert_close(g, ref_params[name])
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, ref_buffers[name])
    bm.close()


def test_cuda_producer_is_viewed_on_its_device():
    """A CUDA DLPack producer is viewed without a copy, on its own device."""
    source = torch.randn(3, 6, device="cuda")
    capsule = torch.utils.dlpack.to_dlpack(source)
    t = to_torch(capsule)
    assert t.device == source.device and t.data_ptr() == source.data_ptr()


def test_results_copy_into_cuda_memory_the_caller_owns():
    """copy_into fills a caller-owned CUDA array; julia_layout names the device."""
    source = torch.arange(6.0, device="cuda").reshape(2, 3)
    destination = torch.empty(3, 2, device="cuda").t()  # a column-major (3, 2) Julia array
    assert julia_layout(source) == ((3, 2), "Float32", "cuda", source.device.index)
    copy_into(destination, source)
    torch.testing.assert_close(destination, source)


def test_ledger_counts_cuda_bytes_and_returns_to_baseline():
    """Held and shared bytes are counted under the CUDA device and come back to baseline."""
    base = memory.snapshot()
    bm = torchbridge.bridge(mlp(torch.float32).cuda())
    device = str(bm.device)
    _, pullback = bm.forward(torch.randn(4, 6, device="cuda"))
    s = memory.stats()
    assert s.held_bytes[device] >= (4 * 6 + 4 * 4) * 4
    assert s.shared_bytes[device] > 0
    pullback.release()
    bm.close()
    memory.assert_baseline(base)


def test_cpu_input_for_a_cuda_model():
    """A host array for a CUDA model is refused and names both devices."""
    bm = torchbridge.bridge(mlp(torch.float32).cuda())
    with pytest.raises(DeviceMismatchError, match="cuda"):
        bm.forward(torch.randn(2, 6))
    bm.close()


def test_thousand_steps_keep_cuda_memory_flat():
    """1,000 steps leave torch's CUDA allocator where it started (within one batch)."""
    bm = torchbridge.bridge(torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU()).cuda())
    x = torch.randn(64, 256, device="cuda")
    cot = torch.ones(64, 256, device="cuda")
    for _ in range(20):
        bm.forward(x)[1](cot)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with memory.expect_baseline():
        for _ in range(1000):
            _, pullback = bm.forward(x)
            pullback(cot)
        with memory.scope():
            for _ in range(1000):
                bm.forward(x)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before <= x.nbytes
    bm.close()


def test_julia_pullback_leaves_torch_stream_idle_without_input_grads():
    """After a Julia-support pullback with input_grads=False, torch's stream has no pending work: Julia may read the gradient buffers at once."""
    from torchbridge import julia_support as jl

    torch.manual_seed(0)
    module = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)]).cuda()
    bm = torchbridge.bridge(module)
    x = torch.randn(512, 2048, device="cuda")
    for _ in range(3):
        outputs, pb, _ = jl.forward(bm, x, input_grads=False)
        grads, *_ = jl.pullback(pb, torch.ones_like(outputs[0]))
        assert grads == (None,)
        assert torch.cuda.current_stream().query()  # nothing left to run
    opt = jl.optimizer(bm, {"rule": "Adam", "eta": 1e-3})
    jl.optimizer_step(opt)
    assert torch.cuda.current_stream().query()
    bm.close()
