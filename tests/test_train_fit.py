"""``fit`` on real data (scikit-learn's handwritten digits), fed as Julia-ordered batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from julia_arrays import ArrayValue
from torchbridge.errors import TrainingError
from torchbridge.train import Checkpoint, EarlyStopping, fit


def digits_batches(batch_size=64):
    """Train/valid batches of 8×8 digits as Fortran-order (8, 8, 1, N) arrays, as in Julia."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # (N, 8, 8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]

    def batches(lo, hi):
        out = []
        for start in range(lo, hi, batch_size):
            chunk = images[start : min(start + batch_size, hi)]
            # (N, H, W) row-major -> the column-major (W, H, C, N) array Julia would pass
            whcn = np.array(chunk[:, None, :, :].transpose(3, 2, 1, 0), order="F")
            out.append((ArrayValue(whcn), labels[start : min(start + batch_size, hi)]))
        return out

    return batches(0, 1400), batches(1400, len(labels))


def small_cnn(classes=10):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, classes),
    )


def valid_accuracy(model, batches):
    from torchbridge.exchange import to_torch

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            pred = model(to_torch(x)).argmax(1)
            correct += int((pred == torch.from_numpy(y)).sum())
            total += len(y)
    return correct / total


@pytest.fixture(scope="module")
def digits():
    return digits_batches()


class TestFit:
    def test_fit_learns_digits_from_julia_ordered_batches(self, digits):
        """Three epochs of Adam raise validation accuracy on real digits from chance to > 90%."""
        train, valid = digits
        model = small_cnn()
        before = valid_accuracy(model, valid)
        history = fit(
            model,
            train,
            valid,
            epochs=3,
            optimizer={"rule": "Adam", "eta": 1e-2},
            loss="logitcrossentropy",
            metrics=["accuracy"],
            device="cpu",
            progress=False,
        )
        after = valid_accuracy(model, valid)
        assert before < 0.3
        assert after > 0.9
        assert history["valid_accuracy"][-1] == pytest.approx(after)
        assert history["train_loss"][-1] < history["train_loss"][0]
        assert set(history.last) >= {
            "epoch",
            "lr",
            "seconds",
            "train_loss",
            "train_accuracy",
            "valid_loss",
            "valid_accuracy",
        }
        assert history.monitor == "valid_loss" and history.best_epoch == 3

    def test_torch_dataset_is_batched(self, digits):
        """A map-style torch Dataset is batched and trained on like a DataLoader."""
        train, _ = digits
        xs = torch.cat(
            [
                torch.from_numpy(np.ascontiguousarray(x.array.transpose(3, 2, 1, 0)))
                for x, _ in train
            ]
        )
        ys = torch.cat([torch.from_numpy(y) for _, y in train])
        dataset = torch.utils.data.TensorDataset(xs, ys)
        history = fit(
            small_cnn(),
            dataset,
            epochs=2,
            optimizer={"rule": "Adam", "eta": 1e-2},
            loss="logitcrossentropy",
            metrics=["accuracy"],
            progress=False,
            batch_size=100,
        )
        assert history.monitor == "train_loss"
        assert history["train_accuracy"][-1] > 0.8

    def test_schedule_steps_once_per_batch(self, digits):
        """The schedule advances per batch: a step schedule of one epoch halves η each epoch."""
        train, _ = digits
        history = fit(
            small_cnn(),
            train,
            epochs=3,
            optimizer={"rule": "Descent", "eta": 0.1},
            loss="logitcrossentropy",
            progress=False,
            schedule={"schedule": "step", "step_size": len(train), "gamma": 0.5},
        )
        assert history["lr"] == pytest.approx([0.1, 0.05, 0.025])

    def test_early_stopping_stops_when_nothing_improves(self, digits):
        """With η = 0 nothing improves, so patience 2 stops after three epochs."""
        train, valid = digits
        history = fit(
            small_cnn(),
            train[:3],
            valid,
            epochs=10,
            optimizer={"rule": "Descent", "eta": 0.0},
            loss="logitcrossentropy",
            early_stopping=2,
            progress=False,
        )
        assert history.stopped_early
        assert len(history.epochs) == 3 and history.best_epoch == 1

    def test_patience_zero_stops_at_the_first_epoch_without_improvement(self, digits):
        """Patience 0 keeps training while every epoch improves, and stops at the first that
        does not; an improving epoch never ends training early."""
        train, valid = digits
        improving = fit(
            small_cnn(),
            train,
            valid,
            epochs=2,
            optimizer={"rule": "Adam", "eta": 1e-3},
            loss="logitcrossentropy",
            early_stopping=0,
            progress=False,
        )
        assert improving["valid_loss"][1] < improving["valid_loss"][0]
        assert len(improving.epochs) == 2 and not improving.stopped_early
        flat = fit(
            small_cnn(),
            train[:3],
            valid,
            epochs=10,
            optimizer={"rule": "Descent", "eta": 0.0},
            loss="logitcrossentropy",
            early_stopping=0,
            progress=False,
        )
        assert flat.stopped_early and len(flat.epochs) == 2 and flat.best_epoch == 1

    def test_negative_patience_is_refused(self, digits):
        """A negative patience is a TrainingError before any training."""
        train, _ = digits
        with pytest.raises(TrainingError, match="patience"):
            fit(
                small_cnn(),
                train,
                epochs=2,
                optimizer={"rule": "Adam"},
                loss="logitcrossentropy",
                early_stopping=-1,
                progress=False,
            )

    def test_early_stopping_restores_the_best_weights(self, digits):
        """When a later epoch diverges, the model ends with the best epoch's weights."""
        train, valid = digits
        model = small_cnn()
        history = fit(
            model,
            train,
            valid,
            epochs=4,
            optimizer={"rule": "Descent", "eta": 0.1},
            loss="logitcrossentropy",
            progress=False,
            # η × 1000 after the first epoch: the next epochs get worse
            schedule={"schedule": "step", "step_size": len(train), "gamma": 1000.0},
            early_stopping=EarlyStopping(patience=1, restore_best=True),
        )
        assert history.stopped_early and history.best_epoch == 1
        best = history.epochs[0]["valid_loss"]
        assert history.epochs[1]["valid_loss"] > best
        from torchbridge.exchange import to_torch
        from torchbridge.train import logitcrossentropy

        model.eval()
        with torch.no_grad():
            losses = [
                logitcrossentropy(model(to_torch(x)), torch.from_numpy(y)) * len(y)
                for x, y in valid
            ]
        assert float(sum(losses)) / sum(len(y) for _, y in valid) == pytest.approx(best, rel=1e-5)

    def test_monitoring_accuracy_maximises(self, digits):
        """Monitoring an accuracy treats larger values as better."""
        train, valid = digits
        history = fit(
            small_cnn(),
            train,
            valid,
            epochs=2,
            optimizer={"rule": "Adam", "eta": 1e-2},
            loss="logitcrossentropy",
            metrics=["accuracy"],
            progress=False,
            early_stopping={"monitor": "valid_accuracy", "patience": 5},
        )
        assert history.monitor == "valid_accuracy"
        assert history.best_value == max(history["valid_accuracy"])

    def test_progress_bar_and_summary_are_printed(self, digits, capsys):
        """With progress on, a summary line per epoch is written."""
        train, _ = digits
        fit(small_cnn(), train[:2], epochs=2, optimizer={"rule": "Adam"}, loss="logitcrossentropy")
        out = capsys.readouterr()
        text = out.out + out.err
        assert "epoch 1/2" in text and "epoch 2/2" in text and "train_loss" in text


class TestFitErrors:
    def test_one_shot_iterator_is_refused_for_several_epochs(self, digits):
        """A generator would be empty after one epoch, so it is refused up front."""
        train, _ = digits
        with pytest.raises(TrainingError, match="one-shot"):
            fit(
                small_cnn(),
                iter(train),
                epochs=2,
                optimizer={"rule": "Adam"},
                loss="logitcrossentropy",
                progress=False,
            )

    def test_unknown_metric(self, digits):
        """An unknown metric name is a TrainingError naming the known ones."""
        train, _ = digits
        with pytest.raises(TrainingError, match="accuracy"):
            fit(
                small_cnn(),
                train,
                epochs=1,
                optimizer={"rule": "Adam"},
                loss="logitcrossentropy",
                metrics=["f1"],
                progress=False,
            )

    def test_batches_must_be_pairs(self):
        """A batch that is not an (x, y) pair is a TrainingError."""
        with pytest.raises(TrainingError, match="pair"):
            fit(
                small_cnn(),
                [(torch.zeros(1, 1, 8, 8),)],
                epochs=1,
                optimizer={"rule": "Adam"},
                loss="logitcrossentropy",
                progress=False,
            )

    def test_checkpoint_without_architecture_for_a_plain_module(self, digits):
        """A checkpoint of a non-timm module must name its architecture."""
        train, _ = digits
        with pytest.raises(TrainingError, match="architecture"):
            fit(
                small_cnn(),
                train[:1],
                epochs=1,
                optimizer={"rule": "Adam"},
                loss="logitcrossentropy",
                checkpoint=Checkpoint("digits"),
                progress=False,
            )


class TestCheckpoints:
    def _timm_batches(self):
        torch.manual_seed(0)
        return [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))) for _ in range(2)]

    def test_best_weights_register_as_a_local_model(self, isolated_caches):
        """The checkpoint loads back with load_model('local/<name>') giving the same outputs."""
        import timm

        import torchbridge

        model = timm.create_model("test_resnet", num_classes=3)
        batches = self._timm_batches()
        history = fit(
            model,
            batches,
            batches,
            epochs=2,
            optimizer={"rule": "Adam", "eta": 1e-3},
            loss="logitcrossentropy",
            checkpoint=Checkpoint("digits-ckpt", save="last"),
            progress=False,
        )
        assert history.checkpoint.id == "local/digits-ckpt"
        assert history.checkpoint.num_classes == 3
        loaded = torchbridge.load_model("local/digits-ckpt").eval()
        model.eval()
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))

    def test_taken_name_is_refused_before_training(self, isolated_caches):
        """Reusing a checkpoint name without overwrite fails before any epoch runs."""
        import timm

        batches = self._timm_batches()
        settings = dict(
            epochs=1, optimizer={"rule": "Adam"}, loss="logitcrossentropy", progress=False
        )
        fit(
            timm.create_model("test_resnet", num_classes=3),
            batches,
            checkpoint=Checkpoint("taken"),
            **settings,
        )
        model = timm.create_model("test_resnet", num_classes=3)
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(TrainingError, match="taken"):
            fit(model, batches, checkpoint=Checkpoint("taken"), **settings)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        history = fit(model, batches, checkpoint=Checkpoint("taken", overwrite=True), **settings)
        assert history.checkpoint.id == "local/taken"

    def test_checkpoint_records_input_size_and_normalisation(self, isolated_caches):
        """Checkpoint's input_size, mean and std end up in the registered entry and its sidecar."""
        import json

        import timm

        import torchbridge

        batches = self._timm_batches()
        history = fit(
            timm.create_model("test_resnet", num_classes=3),
            batches,
            epochs=1,
            optimizer={"rule": "Adam"},
            loss="logitcrossentropy",
            checkpoint=Checkpoint(
                "sized-ckpt",
                input_size=(3, 16, 16),
                mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5),
                extra={"description": "trained on 16x16 noise"},
            ),
            progress=False,
        )
        entry = torchbridge.model_info("local/sized-ckpt")
        assert entry == history.checkpoint
        assert entry.input_size == (3, 16, 16) and entry.julia_input_size == (16, 16, 3)
        assert entry.mean == (0.5, 0.5, 0.5) and entry.std == (0.5, 0.5, 0.5)
        assert entry.description == "trained on 16x16 noise"
        data = json.loads(Path(entry.metadata["sidecar"]).read_text())
        assert data["input_size"] == [3, 16, 16] and data["std"] == [0.5, 0.5, 0.5]

    def test_checkpoint_without_input_spec_inherits_the_architecture(self, isolated_caches):
        """A Checkpoint without input_size, mean and std records the architecture's."""
        import timm

        import torchbridge

        batches = self._timm_batches()
        history = fit(
            timm.create_model("test_resnet", num_classes=3),
            batches,
            epochs=1,
            optimizer={"rule": "Adam"},
            loss="logitcrossentropy",
            checkpoint=Checkpoint("plain-ckpt"),
            progress=False,
        )
        arch = torchbridge.model_info("timm/test_resnet")
        assert history.checkpoint.input_size == arch.input_size
        assert history.checkpoint.mean == arch.mean and history.checkpoint.std == arch.std

    def test_invalid_input_spec_is_refused_before_training(self, isolated_caches):
        """A bad std, or input_size given twice, fails before any epoch runs or file is written."""
        import timm

        from torchbridge.errors import InputSpecError

        model = timm.create_model("test_resnet", num_classes=3)
        before = [p.detach().clone() for p in model.parameters()]
        settings = dict(
            epochs=1, optimizer={"rule": "Adam"}, loss="logitcrossentropy", progress=False
        )
        batches = self._timm_batches()
        with pytest.raises(InputSpecError, match="std entries must be > 0"):
            fit(model, batches, checkpoint=Checkpoint("bad", std=(0.5, 0.0, 0.5)), **settings)
        with pytest.raises(InputSpecError, match="input_size must be a tuple"):
            fit(model, batches, checkpoint={"name": "bad", "input_size": (3, 0, 16)}, **settings)
        twice = Checkpoint("bad", input_size=(3, 16, 16), extra={"input_size": (3, 16, 16)})
        with pytest.raises(TrainingError, match="both as a field and in extra"):
            fit(model, batches, checkpoint=twice, **settings)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert not (isolated_caches / "torchbridge" / "models").exists()
