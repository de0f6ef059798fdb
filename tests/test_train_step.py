"""The torch-native training step, fed torch tensors or foreign column-major arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from julia_arrays import ArrayValue
from torchbridge.errors import TrainingError
from torchbridge.train import TrainStep, as_batch, logitcrossentropy, optimizer_from_spec


def linear_model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


class TestTrainStep:
    def test_step_equals_hand_written_sgd_step(self):
        """One step equals forward, loss, backward and w -= η ∇w written out by hand."""
        model, reference = linear_model(), linear_model()
        x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
        step = TrainStep(
            model,
            optimizer_from_spec({"rule": "Descent", "eta": 0.5}, model.parameters()),
            logitcrossentropy,
        )
        result = step(x, y)
        loss = logitcrossentropy(reference(x), y)
        loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.5 * p.grad
        assert result.loss.item() == pytest.approx(loss.item())
        for got, expected in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(got, expected)
        assert all(p.grad is None for p in model.parameters())  # zero-grad ran

    def test_julia_batch_is_viewed_as_nchw(self):
        """A raw Julia (W, H, C, N) array trains exactly like its (N, C, H, W) tensor."""
        rng = np.random.default_rng(0)
        memory = np.asfortranarray(rng.standard_normal((5, 4, 2, 3), dtype=np.float32))
        julia_batch = ArrayValue(memory)
        torch_batch = torch.from_numpy(np.ascontiguousarray(memory.transpose(3, 2, 1, 0)))
        labels = np.array([0, 2, 1])

        def make():
            torch.manual_seed(1)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 5, 3))

        a, b = make(), make()
        step_a = TrainStep(a, torch.optim.SGD(a.parameters(), lr=0.1), logitcrossentropy)
        step_b = TrainStep(b, torch.optim.SGD(b.parameters(), lr=0.1), logitcrossentropy)
        viewed = as_batch(julia_batch, torch.device("cpu"))
        assert viewed.shape == (3, 2, 4, 5)
        assert viewed.data_ptr() == memory.ctypes.data  # no copy
        ra, rb = step_a(julia_batch, labels), step_b(torch_batch, torch.from_numpy(labels))
        assert ra.loss.item() == pytest.approx(rb.loss.item())
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb)

    def test_mixed_precision_on_cpu_uses_bfloat16_and_trains(self):
        """mixed_precision on the CPU runs the forward in bfloat16 and still lowers the loss."""
        model = linear_model()
        step = TrainStep(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            logitcrossentropy,
            mixed_precision=True,
        )
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        first = step(x, y)
        assert first.outputs.dtype == torch.bfloat16
        for _ in range(20):
            last = step(x, y)
        assert last.loss.item() < first.loss.item()
        assert model.weight.dtype == torch.float32

    def test_non_scalar_loss_is_refused(self):
        """A loss that is not reduced to a scalar is a TrainingError."""
        model = linear_model()
        step = TrainStep(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda out, y: logitcrossentropy(out, y, agg="none"),
        )
        with pytest.raises(TrainingError, match="scalar"):
            step(torch.randn(2, 4), torch.tensor([0, 1]))

    @pytest.mark.cuda
    def test_mixed_precision_on_cuda_uses_float16_with_a_scaler(self):
        """On CUDA, mixed precision runs float16 with a GradScaler and lowers the loss."""
        model = linear_model().cuda()
        step = TrainStep(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            logitcrossentropy,
            mixed_precision=True,
        )
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        first = step(x, y)
        assert first.outputs.dtype == torch.float16
        for _ in range(20):
            last = step(x, y)
        assert last.loss.item() < first.loss.item()


def test_bridged_models_keep_their_shared_gradient_buffers():
    """A TrainStep over a bridged module zeroes the shared gradient buffers in place, never replaces them."""
    import torchbridge

    model = torch.nn.Linear(4, 3)
    bm = torchbridge.bridge(model)
    step = TrainStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.functional.mse_loss
    )
    for _ in range(2):
        step(torch.randn(5, 4), torch.randn(5, 3))
    assert all(p.grad is g for p, g in zip(model.parameters(), bm.grads))
    assert all(torch.count_nonzero(g) == 0 for g in bm.grads)
    bm.close()
