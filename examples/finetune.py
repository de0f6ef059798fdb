"""Finetune a registry model on your images from Python, then export it to ONNX.

    python examples/finetune.py --model timm/resnet18.a1_in1k --out finetune-output

The data here is scikit-learn's handwritten digits (upsampled to RGB images) so
that the example runs anywhere; replace ``load_data`` with your own dataset.
Pretrained weights come from the local caches or the network; offline and
without them, ``--weights FILE`` points at a weight file, and ``--scratch``
starts from random weights. ``--quick`` is a seconds-long run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import torchbridge
from torchbridge.train import Checkpoint, fit


def load_data(image_size: int, limit: int | None):
    """(train, valid) torch datasets of (3, S, S) float32 images and int64 labels 0-9."""
    import numpy as np
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32))[:, None]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = ((images - 0.5) / 0.5).repeat(1, 3, 1, 1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    if limit:
        order = order[:limit]
    cut = (len(order) * 4) // 5
    dataset = torch.utils.data.TensorDataset(images[order], labels[order])
    return (
        torch.utils.data.Subset(dataset, range(cut)),
        torch.utils.data.Subset(dataset, range(cut, len(order))),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL", "timm/resnet18.a1_in1k"))
    parser.add_argument("--weights", default=None, help="a weight file for --model")
    parser.add_argument("--scratch", action="store_true", help="random initial weights")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="use only this many images")
    parser.add_argument("--out", default="finetune-output")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 200 images, 16x16")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.limit, args.image_size = 1, args.limit or 200, 16
    out = Path(args.out)

    # 1. what the registry says about the model
    info = torchbridge.model_info(args.model)
    print(f"{info.id}: {info.description}")
    print(
        f"  input {info.input_size} (Julia {info.julia_input_size}), weights: "
        f"{'cached' if info.weights and info.weights.cached else 'not cached'}"
    )

    # 2. load it with a new 10-class head
    model = torchbridge.load_model(
        args.model, pretrained=not args.scratch, weights=args.weights, num_classes=10
    )

    # 3. finetune: Optimisers.jl rule names, a Flux loss, a warm-up then cosine schedule
    train, valid = load_data(args.image_size, args.limit)
    batch_size = 32
    steps = args.epochs * -(-len(train) // batch_size)
    history = fit(
        model,
        train,
        valid,
        epochs=args.epochs,
        batch_size=batch_size,
        optimizer={"rule": "AdamW", "eta": 1e-3, "lambda": 1e-4},
        loss="logitcrossentropy",
        metrics=["accuracy"],
        schedule={
            "schedule": "warmup",
            "steps": max(1, steps // 10),
            "then": {"schedule": "cosine", "steps": max(1, steps - steps // 10)},
        },
        early_stopping={"patience": 2, "monitor": "valid_accuracy"},
        checkpoint=Checkpoint(
            "digits-finetuned",
            directory=str(out / "models"),
            overwrite=True,
            architecture=None if hasattr(model, "pretrained_cfg") else args.model,
        ),
    )
    print(
        f"validation accuracy {history['valid_accuracy'][-1]:.1%}; saved as {history.checkpoint.id}"
    )

    # 4. export to ONNX, checked and verified against torch with onnxruntime
    report = torchbridge.export_onnx(
        model, out / "digits-finetuned.onnx", input_size=(3, args.image_size, args.image_size)
    )
    print(
        f"wrote {report.path} ({report.file_size / 1e6:.1f} MB); max |onnxruntime - torch| "
        f"{report.max_abs_diff:.1e} at batch sizes {report.batch_sizes_checked}"
    )
    return {"history": history, "report": report}


if __name__ == "__main__":
    main()
