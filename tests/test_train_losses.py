"""Flux losses by name: values equal Flux's own documented results on the same inputs.

A Julia ``(classes, batch)`` array is the torch ``(batch, classes)`` tensor, so
``reshape(v, 3, 7)`` in Julia is ``v.reshape(7, 3)`` here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchbridge.errors import UnknownLossError
from torchbridge.train import (
    binarycrossentropy,
    crossentropy,
    logitbinarycrossentropy,
    logitcrossentropy,
    loss_from_name,
    mse,
    supported_losses,
)


def julia_matrix(values, rows, cols):
    """The torch view of Julia's ``reshape(values, rows, cols)``: shape (cols, rows)."""
    return torch.tensor(values, dtype=torch.float32).reshape(cols, rows)


def onehot(indices, classes):
    return F.one_hot(torch.tensor(indices), classes).float()


class TestFluxDocExamples:
    """The numbers Flux's docstrings print (src/losses/functions.jl)."""

    def test_logitcrossentropy(self):
        """logitcrossentropy(reshape(vcat(-9:0, 0:9, 7.5f0), 3, 7), "abcabaa") == 1.5791205f0."""
        y_model = julia_matrix([*range(-9, 1), *range(0, 10), 7.5], 3, 7)
        labels = [0, 1, 2, 0, 1, 0, 0]  # "abcabaa" over 'a':'c'
        assert logitcrossentropy(y_model, onehot(labels, 3)).item() == pytest.approx(
            1.5791205, abs=1e-6
        )
        assert logitcrossentropy(y_model, torch.tensor(labels)).item() == pytest.approx(
            1.5791205, abs=1e-6
        )

    def test_crossentropy(self):
        """crossentropy(softmax(reshape(-7:7, 3, 5)), onehot([0,1,2,1,0])) == 1.6076053f0."""
        y_model = torch.softmax(julia_matrix(list(range(-7, 8)), 3, 5), dim=-1)
        labels = [0, 1, 2, 1, 0]
        assert crossentropy(y_model, onehot(labels, 3)).item() == pytest.approx(1.6076053, abs=1e-6)
        assert crossentropy(y_model, torch.tensor(labels)).item() == pytest.approx(
            1.6076053, abs=1e-6
        )
        total = crossentropy(y_model, onehot(labels, 3), agg="sum").item()
        assert total == pytest.approx(5 * 1.6076053, abs=1e-5)

    def test_crossentropy_with_smoothed_labels(self):
        """crossentropy against label_smoothing(y, 0.15f0) == 1.5776052f0."""
        y_model = torch.softmax(julia_matrix(list(range(-7, 8)), 3, 5), dim=-1)
        smooth = onehot([0, 1, 2, 1, 0], 3) * (1 - 0.15) + 0.15 / 3
        assert crossentropy(y_model, smooth).item() == pytest.approx(1.5776052, abs=1e-6)

    def test_binarycrossentropy(self):
        """binarycrossentropy(y_prob[2,:], Bool[1,0,1]) == 0.43989f0, like crossentropy."""
        y_prob = torch.softmax(julia_matrix([1, 2, 3, 3, 4, 5], 2, 3), dim=-1)
        y_bin = torch.tensor([True, False, True])
        assert binarycrossentropy(y_prob[:, 1], y_bin).item() == pytest.approx(0.43989, abs=1e-5)
        y_hot = onehot([1, 0, 1], 2)
        assert crossentropy(y_prob, y_hot).item() == pytest.approx(0.43989, abs=1e-5)

    def test_logitbinarycrossentropy(self):
        """logitbinarycrossentropy(Float32[2, -1, pi], Bool[1,0,1]) == 0.160832f0."""
        y_model = torch.tensor([2.0, -1.0, math.pi])
        y_bin = torch.tensor([1, 0, 1])
        assert logitbinarycrossentropy(y_model, y_bin).item() == pytest.approx(0.160832, abs=1e-6)
        probs = torch.sigmoid(y_model)
        assert binarycrossentropy(probs, y_bin).item() == pytest.approx(0.16083185, abs=1e-5)

    def test_mse(self):
        """mse([1.1, 1.9, 3.1], 1:3) == 0.010000000000000018 (Float64)."""
        got = mse(torch.tensor([1.1, 1.9, 3.1], dtype=torch.float64), torch.arange(1, 4))
        assert got.item() == pytest.approx(0.010000000000000018, rel=1e-12)

    @pytest.mark.parametrize("agg", ["mean", "sum", "none"])
    @pytest.mark.parametrize("target", ["same", "broadcast", "bool"])
    def test_mse_values_and_gradients_are_fluxs_definition(self, agg, target):
        """mse, fused or not, equals agg((ŷ .- y) .^ 2) to the last bit; its gradient too, up to rounding."""
        torch.manual_seed(0)
        y_hat = torch.randn(6, 5, requires_grad=True)
        y = {
            "same": torch.randn(6, 5),
            "broadcast": torch.randn(1, 5),
            "bool": torch.rand(6, 5) > 0.5,
        }[target]
        got = mse(y_hat, y, agg=agg)
        want = (y_hat - y.float()) ** 2
        want = {"mean": want.mean(), "sum": want.sum(), "none": want}[agg]
        assert torch.equal(got, want)
        scale = torch.full_like(got, 0.3)  # a weighted loss: not a unit cotangent
        (g_got,) = torch.autograd.grad(got, y_hat, scale)
        (g_want,) = torch.autograd.grad(want, y_hat, scale)
        torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=0)

    def test_logitcrossentropy_dim_out_of_range_is_refused(self):
        """dim=3 on a 2-d output is an error, not a silent reduction over dim 3 % 2 == 1."""
        y_hat, y = torch.randn(2, 3), torch.softmax(torch.randn(2, 3), dim=1)
        with pytest.raises(IndexError):
            logitcrossentropy(y_hat, y, dim=3)

    def test_mse_of_integer_arrays(self):
        """Integer outputs and targets, as Flux.mse takes them: (0, 1, 2) against (0, 0, 0)."""
        y_hat, y = torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long)
        assert mse(y_hat, y, agg="sum").item() == 5
        assert mse(y_hat, y, agg="none").tolist() == [0, 1, 4]

    @pytest.mark.parametrize("agg", ["mean", "sum", "none"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("shape", [(8, 5), (2, 5, 3, 4)])
    def test_logitcrossentropy_on_probabilities_is_fluxs_definition(self, agg, dtype, shape):
        """One-hot targets (Julia's batches): agg(-sum(y .* logsoftmax(ŷ; dims); dims)), values and gradient."""
        torch.manual_seed(0)
        y_hat = torch.randn(*shape, dtype=dtype, requires_grad=True)
        y = torch.softmax(torch.randn(*shape, dtype=dtype), dim=1)
        got = logitcrossentropy(y_hat, y, dim=1, agg=agg)
        want = -(y * torch.log_softmax(y_hat, dim=1)).sum(dim=1)
        want = {"mean": want.mean(), "sum": want.sum(), "none": want}[agg]
        tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
        torch.testing.assert_close(got, want, **tol)
        (g_got,) = torch.autograd.grad(got.sum(), y_hat)
        (g_want,) = torch.autograd.grad(want.sum(), y_hat)
        torch.testing.assert_close(g_got, g_want, **tol)


class TestDefinitions:
    def test_crossentropy_epsilon_is_the_eltype_epsilon(self):
        """A zero probability costs -log(eps(Float32)), not infinity, as in Flux."""
        y_hat = torch.tensor([[1.0, 0.0]])
        got = crossentropy(y_hat, torch.tensor([1]))
        assert got.item() == pytest.approx(-math.log(np.finfo(np.float32).eps), rel=1e-6)

    def test_image_batches_use_dim_1(self):
        """For (N, C, H, W) logits with dim=1 the loss equals the per-pixel definition."""
        logits = torch.randn(2, 4, 3, 3)
        labels = torch.randint(0, 4, (2, 3, 3))
        got = logitcrossentropy(logits, labels, dim=1)
        per_pixel = logits.permute(0, 2, 3, 1).reshape(-1, 4)
        expected = -(F.log_softmax(per_pixel, -1) * F.one_hot(labels.reshape(-1), 4)).sum(-1).mean()
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        one_hot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
        assert logitcrossentropy(logits, one_hot, dim=1).item() == pytest.approx(
            expected.item(), rel=1e-6
        )

    def test_index_targets_on_a_non_leading_class_dim(self):
        """Class indices also work when the class dimension is not dimension 1."""
        logits = torch.randn(2, 3, 5)  # classes last
        labels = torch.randint(0, 5, (2, 3))
        got = logitcrossentropy(logits, labels, dim=-1)
        expected = F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1))
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)

    def test_agg_none_and_callable(self):
        """agg="none" keeps one value per sample and a callable aggregation is applied."""
        logits = torch.randn(4, 3)
        labels = torch.tensor([0, 1, 2, 0])
        per_sample = logitcrossentropy(logits, labels, agg="none")
        assert per_sample.shape == (4,)
        assert logitcrossentropy(logits, labels, agg=torch.max).item() == pytest.approx(
            per_sample.max().item()
        )


class TestByName:
    @pytest.mark.parametrize("name", ["logitcrossentropy", "Flux.logitcrossentropy", "Losses.mse"])
    def test_names_resolve(self, name):
        """Plain and Flux-qualified names resolve to the loss of that name."""
        assert loss_from_name(name).__name__ == name.rsplit(".", 1)[-1]

    def test_options_are_bound(self):
        """Keyword options such as agg are bound into the returned loss."""
        summed = loss_from_name("mse", agg="sum")
        assert summed(torch.ones(3), torch.zeros(3)).item() == 3.0

    def test_callable_passes_through(self):
        """A callable loss is returned as it is."""
        assert loss_from_name(F.mse_loss) is F.mse_loss

    def test_unknown_loss_lists_supported(self):
        """An unknown name is an UnknownLossError listing every supported loss."""
        with pytest.raises(UnknownLossError) as info:
            loss_from_name("hinge_loss")
        for name in supported_losses():
            assert name in str(info.value)
