"""``python -m torchbridge.demo``: pretrain, register, finetune, export, verify — offline.

The path a user walks, on real data that ships with scikit-learn (its 1,797
handwritten 8×8 digits, upsampled to small RGB images):

1. train a small timm model from scratch on the digits 0–4 and save it as the
   local registry model ``local/digits-0to4``, with the input size and
   normalisation it was trained on — it stands in for pretrained weights,
   which cannot be downloaded here;
2. load it back through the registry with a new 5-class head,
   ``load_model("local/digits-0to4", num_classes=5)``, and finetune it on a
   different task, the digits 5–9, reporting accuracy before and after. These
   batches are handed over as column-major ``(W, H, C, N)`` arrays, exactly as
   Julia would share them, and cross into torch without a copy;
3. export the finetuned model to ONNX, verified with onnxruntime, and score
   the ONNX file on the held-out digits.

With ``MODEL=<registry id>`` (e.g. ``MODEL=timm/resnet18.a1_in1k``) and its
weights available (cache or network), step 1 is skipped and that pretrained
model is finetuned instead. ``--quick`` runs a seconds-long version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["load_digit_tasks", "main", "run_demo"]

PRETRAIN_NAME = "digits-0to4"
FINETUNE_NAME = "digits-5to9"
# pixels in [0, 1] become (pixel - MEAN) / STD, in [-1, 1]
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def load_digit_tasks(image_size: int, *, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """load_digit_tasks(image_size) -> {"pretrain": (...), "finetune": (...)}

    scikit-learn's digits as float32 ``(N, 3, S, S)`` images (bilinear
    upsampling, grey copied to three channels, normalised with ``MEAN`` and
    ``STD`` to [-1, 1]). Task
    ``pretrain`` holds the digits 0–4, task ``finetune`` the digits 5–9
    relabelled 0–4; each is ``(train_x, train_y, valid_x, valid_y)`` with a
    quarter held out.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32))[:, None]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear")
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (images.repeat(1, 3, 1, 1) - mean) / std
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    tasks = {}
    for task, classes in (("pretrain", range(0, 5)), ("finetune", range(5, 10))):
        index = np.flatnonzero(np.isin(labels, list(classes)))
        rng.shuffle(index)
        if limit is not None:
            index = index[:limit]
        cut = (len(index) * 3) // 4
        x, y = images[index].numpy(), labels[index] - classes.start
        tasks[task] = (x[:cut], y[:cut], x[cut:], y[cut:])
    return tasks


def julia_batches(images, labels, batch_size: int, *, seed: int) -> list[tuple[Any, Any]]:
    """Batches as Julia holds them: Fortran-order ``(W, H, C, N)`` Float32 arrays, Int64 labels.

    numpy arrays keep their own shape at the boundary, so each batch is handed
    over declared as Julia-ordered (``to_torch(whcn, layout="julia")``: the
    torch ``(N, C, H, W)`` view of the same memory, as DLPack.jl shares it).
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(labels))
    batches = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        whcn = np.array(images[index].transpose(3, 2, 1, 0), order="F")
        batches.append((whcn, labels[index]))
    return batches


def _declared(batches):
    """Julia-ordered batches declared as such: torch views of the same memory."""
    import torchbridge

    return [(torchbridge.to_torch(x, layout="julia"), y) for x, y in batches]


def bridge_step(model, whcn, labels) -> dict[str, Any]:
    """One forward and pullback of the autograd bridge on a Julia-ordered batch.

    The cotangent is that of the mean cross-entropy; the parameter gradients
    are compared with plain PyTorch autograd on the same batch.
    """
    import numpy as np
    import torch

    import torchbridge
    from torchbridge import memory

    model.eval()  # running statistics stay as trained; the comparison is exact
    baseline = memory.snapshot()
    with torchbridge.bridge(model) as bm:
        batch = torchbridge.to_torch(whcn, layout="julia")  # Julia order, declared
        (logits,), pullback = bm.forward(batch, input_grads=False)
        target = torch.from_numpy(np.asarray(labels))
        cotangent = (torch.softmax(logits, 1) - torch.nn.functional.one_hot(target, 5)) / len(
            target
        )
        pullback(cotangent)
        bridged = [g.clone() for g in bm.grads]
        shape = tuple(bm.forward(batch, grad=False)[0][0].shape)
        del batch
    torch_batch = torch.from_numpy(np.ascontiguousarray(whcn.transpose(3, 2, 1, 0)))
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(torch_batch), target).backward()
    reference = [p.grad for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    diff = max((a - b).abs().max().item() for a, b in zip(bridged, reference))
    return {
        "julia_size": list(whcn.shape),
        "torch_shape": list(torch_batch.shape),
        "zero_copy": bool(
            torchbridge.to_torch(whcn, layout="julia").data_ptr() == whcn.ctypes.data
        ),
        "logits_shape": list(shape),
        "parameters": len(bridged),
        "max_grad_diff": diff,
        "ledger_at_baseline": not memory.stats().differences(baseline),
    }


def torch_batches(images, labels, batch_size: int) -> Any:
    import torch

    dataset = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


def accuracy_of(model, images, labels, batch_size: int = 256) -> float:
    """The fraction of ``images`` that ``model`` classifies as ``labels``."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = torch.from_numpy(images[start : start + batch_size])
            y = torch.from_numpy(labels[start : start + batch_size])
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(labels)


def onnx_accuracy(path: Path, images, labels, batch_size: int = 256) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = session.run(None, {name: images[start : start + batch_size]})[0]
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(
    out: Path,
    *,
    model_id: str | None = None,
    arch: str = "resnet10t",
    image_size: int | None = None,
    pretrain_epochs: int = 6,
    finetune_epochs: int = 4,
    batch_size: int = 64,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """run_demo(out, ...) -> summary: the whole demo; files go under ``out``."""
    import torch

    import torchbridge
    from torchbridge.train import Checkpoint, fit

    started = time.perf_counter()
    torch.manual_seed(seed)
    out = Path(out)
    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    if image_size is None:
        registry_size = torchbridge.model_info(model_id).input_size if model_id else None
        image_size = int(registry_size[-1]) if registry_size else 32
    tasks = load_digit_tasks(image_size, seed=seed, limit=limit)
    summary: dict[str, Any] = {"image_size": image_size, "output": str(out.resolve())}

    # 1. a "pretrained" model: trained here on the digits 0-4, saved in the registry
    if model_id is None:
        base_id = f"timm/{arch}"
        _say(f"[1/4] pretraining {base_id} on the digits 0-4 ({image_size}x{image_size} RGB) ...")
        model = torchbridge.load_model(base_id, num_classes=5)
        train_x, train_y, valid_x, valid_y = tasks["pretrain"]
        steps = pretrain_epochs * -(-len(train_y) // batch_size)
        history = fit(
            model,
            torch_batches(train_x, train_y, batch_size),
            torch_batches(valid_x, valid_y, 256),
            epochs=pretrain_epochs,
            optimizer={"rule": "Adam", "eta": 3e-3},
            loss="logitcrossentropy",
            metrics=["accuracy"],
            schedule={"schedule": "onecycle", "steps": steps},
            checkpoint=Checkpoint(
                PRETRAIN_NAME,
                architecture=base_id,
                directory=str(models_dir),
                save="last",
                overwrite=True,
                input_size=(3, image_size, image_size),
                mean=MEAN,
                std=STD,
                extra={"description": _description(f"{base_id} trained", "0-4")},
            ),
            progress=progress,
        )
        model_id = history.checkpoint.id
        summary["pretrain"] = {
            "model": base_id,
            "valid_accuracy": history["valid_accuracy"][-1],
            "seconds": history.seconds,
            "registered_as": model_id,
            **_expects(history.checkpoint),
        }
        _say(
            f"      digits 0-4 accuracy {history['valid_accuracy'][-1]:.1%}; "
            f"registered as {model_id} ({_expects_text(history.checkpoint)})"
        )
    else:
        _say(f"[1/4] using the pretrained {model_id}")
        summary["pretrain"] = {"model": model_id}

    # 2. finetune it on another task, fed as Julia-ordered arrays through the bridge
    _say(f"[2/4] finetuning {model_id} on the digits 5-9 with a new 5-class head ...")
    # a local model always loads its saved weights; others load their published ones
    model = torchbridge.load_model(model_id, pretrained=True, num_classes=5)
    train_x, train_y, valid_x, valid_y = tasks["finetune"]
    before = accuracy_of(model, valid_x, valid_y)
    steps = finetune_epochs * -(-len(train_y) // batch_size)
    history = fit(
        model,
        _declared(julia_batches(train_x, train_y, batch_size, seed=seed)),
        _declared(julia_batches(valid_x, valid_y, 256, seed=seed)),
        epochs=finetune_epochs,
        optimizer={"rule": "AdamW", "eta": 1e-3, "lambda": 1e-4},
        loss="logitcrossentropy",
        metrics=["accuracy"],
        schedule={
            "schedule": "warmup",
            "steps": max(1, steps // 10),
            "then": {"schedule": "cosine", "steps": max(1, steps - steps // 10)},
        },
        checkpoint=Checkpoint(
            FINETUNE_NAME,
            architecture=_architecture_of(model, model_id),
            num_classes=5,
            directory=str(models_dir),
            overwrite=True,
            input_size=(3, image_size, image_size),
            mean=MEAN,
            std=STD,
            extra={"description": _description(f"{model_id} finetuned", "5-9")},
        ),
        early_stopping={"patience": 3, "monitor": "valid_accuracy"},
        progress=progress,
    )
    after = accuracy_of(model, valid_x, valid_y)
    summary["finetune"] = {
        "model": model_id,
        "accuracy_before": before,
        "accuracy_after": after,
        "epochs": len(history.epochs),
        "seconds": history.seconds,
        "registered_as": history.checkpoint.id,
        **_expects(history.checkpoint),
    }
    _say(f"      digits 5-9 accuracy: {before:.1%} before, {after:.1%} after finetuning")
    _say(f"      registered as {history.checkpoint.id} ({_expects_text(history.checkpoint)})")

    # 3. the path Julia's AD takes: one bridge forward, one pullback, nothing left held
    _say("[3/4] one step through the bridge, as Zygote drives it from Julia ...")
    summary["bridge"] = bridge_step(model, *julia_batches(valid_x, valid_y, 32, seed=seed)[0])
    b = summary["bridge"]
    _say(
        f"      Julia {tuple(b['julia_size'])} batch in as torch {tuple(b['torch_shape'])}, "
        f"zero-copy: {b['zero_copy']}; {b['parameters']} parameter gradients, max |bridge - "
        f"autograd| {b['max_grad_diff']:.1e}; ledger back at baseline: {b['ledger_at_baseline']}"
    )

    # 4. export, verify, and score the ONNX file itself
    _say("[4/4] exporting to ONNX and verifying with onnxruntime ...")
    onnx_path = out / f"{FINETUNE_NAME}.onnx"
    report = torchbridge.export_onnx(model, onnx_path, input_size=(3, image_size, image_size))
    summary["export"] = {
        **report.to_dict(),
        "onnx_accuracy": onnx_accuracy(onnx_path, valid_x, valid_y),
    }
    summary["seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(
        f"      {onnx_path} ({report.file_size / 1e6:.1f} MB, opset {report.opset}); "
        f"max |onnxruntime - torch| {report.max_abs_diff:.1e} at batch sizes "
        f"{', '.join(map(str, report.batch_sizes_checked))}; "
        f"ONNX accuracy {summary['export']['onnx_accuracy']:.1%}"
    )
    _say("")
    _say(f"done in {summary['seconds']:.0f} s. Files in {out}/:")
    _say(f"  {onnx_path.name}   the finetuned model, ONNX")
    _say(
        f"  models/           the registry models {summary['finetune']['registered_as']}"
        + (
            f" and {summary['pretrain'].get('registered_as')}"
            if "registered_as" in summary["pretrain"]
            else ""
        )
    )
    _say("  summary.json      every figure above")
    _say(
        f"  reuse them:  TORCHBRIDGE_MODEL_DIRS={models_dir} torchbridge info local/{FINETUNE_NAME}"
    )
    return summary


def _description(what: str, digits: str) -> str:
    return f"{what} by torchbridge.demo on the handwritten digits {digits} (scikit-learn)"


def _expects(entry: Any) -> dict[str, Any]:
    """What a registered model says it expects: its input size and normalisation."""
    return {
        "input_size": list(entry.input_size) if entry.input_size else None,
        "mean": list(entry.mean) if entry.mean else None,
        "std": list(entry.std) if entry.std else None,
    }


def _expects_text(entry: Any) -> str:
    def values(v: Any) -> str:
        return f"{v[0]:g}" if v and len(set(v)) == 1 else ", ".join(f"{x:g}" for x in v or ())

    size = "x".join(map(str, entry.input_size or ())) or "unknown"
    return f"input {size}, mean {values(entry.mean)}, std {values(entry.std)}"


def _architecture_of(model: Any, model_id: str) -> str:
    """The registry id that rebuilds ``model``: timm's architecture name, else ``model_id``."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return f"timm/{arch}" if arch else model_id


def main(argv: list[str] | None = None) -> int:
    """main(argv) -> exit code: the command line of ``python -m torchbridge.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m torchbridge.demo",
        description="Pretrain on digits 0-4, register, finetune on 5-9 through the registry, "
        "export to ONNX and verify - offline.",
    )
    parser.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    parser.add_argument(
        "--model",
        default=os.environ.get("MODEL") or None,
        help="finetune this pretrained registry model instead (default: $MODEL)",
    )
    parser.add_argument("--arch", default="resnet10t", help="timm architecture to pretrain")
    parser.add_argument("--image-size", type=int, default=None, help="image side (default 32)")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a seconds-long run, for tests")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network for weights
    settings: dict[str, Any] = {
        "model_id": args.model,
        "arch": args.arch,
        "image_size": args.image_size,
        "pretrain_epochs": args.pretrain_epochs,
        "finetune_epochs": args.finetune_epochs,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    if args.quick:
        settings.update(
            arch="test_resnet" if args.arch == "resnet10t" else args.arch,
            image_size=args.image_size or 16,
            pretrain_epochs=1,
            finetune_epochs=1,
            limit=200,
        )
    from torchbridge.errors import TorchBridgeError

    try:
        run_demo(Path(args.out), **settings)
    except TorchBridgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
