"""Finetune a large causal language model with a LoRA adapter, then export it merged.

    python examples/finetune_large.py --model hf/meta-llama/Llama-3.2-1B --out lora-output

The model loads in bfloat16 with gradient checkpointing, and only a LoRA
adapter on its attention projections trains (a few million values for a
billion-parameter model). The adapter is saved alone as the registry model
``local/<name>``, beside a reference to its base model; loaded back, merged
into the base weights and exported to ONNX (in float32, which onnxruntime
runs everywhere). The text is a few sentences so that the example runs
anywhere; pass ``--text FILE`` for your own. The model must be on this machine
(the Hugging Face cache, or a ``save_pretrained`` folder named in
``TORCHBRIDGE_HF_DIRS``) or downloadable. ``--quick`` is a seconds-long run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torchbridge
from torchbridge.train import fit

TEXTS = [
    "the movie was a great story and the actor was good",
    "the book was long and the plot was boring",
    "i love this film and you love this book",
    "they hate the end of that story and we like the start",
]


def finetune(
    model_id: str,
    texts: list[str],
    out: Path,
    *,
    name: str = "my-lora",
    epochs: int = 3,
    eta: float = 2e-4,
    block: int = 128,
    batch_size: int = 8,
) -> dict:
    """Load ``model_id`` with an adapter, train it on ``texts``, save, reload, merge, export."""
    model = torchbridge.load_model(
        model_id,
        pretrained=True,
        dtype="bfloat16",  # the frozen base in bfloat16; the adapter stays float32
        gradient_checkpointing=True,  # activations recomputed in the backward pass
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "target": ["q_proj", "v_proj"]},
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # the adapter's

    # the text as blocks of block + 1 tokens: each block's inputs and next tokens
    tokenizer = torchbridge.load_tokenizer(model_id)
    ids = tokenizer(" ".join(texts), return_tensors="pt").input_ids[0]
    blocks = ids[: len(ids) // (block + 1) * (block + 1)].view(-1, block + 1)
    batches = [({"input_ids": b[:, :-1]}, b[:, 1:]) for b in blocks.split(batch_size)]

    # only the adapter trains; the loss is computed in float32
    history = fit(
        model,
        batches,
        epochs=epochs,
        optimizer={"rule": "AdamW", "eta": eta},
        loss="logitcrossentropy",
    )

    # the adapter alone is saved, beside a reference to its base model
    torchbridge.register_local_model(name, model, directory=out, overwrite=True)
    again = torchbridge.load_model(f"local/{name}")

    # folded into the base weights: a plain model, exported and checked by onnxruntime
    merged = torchbridge.merge_adapter(again)
    report = torchbridge.export_onnx(merged.float(), out / f"{name}.onnx")
    return {
        "trainable": trainable,
        "history": history,
        "model": model,
        "merged": merged,
        "report": report,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL", "hf/meta-llama/Llama-3.2-1B"))
    parser.add_argument("--text", type=Path, default=None, help="a text file to train on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eta", type=float, default=2e-4, help="the learning rate")
    parser.add_argument("--out", type=Path, default=Path("lora-output"))
    parser.add_argument("--quick", action="store_true", help="a few blocks of 8 tokens")
    args = parser.parse_args(argv)
    texts = args.text.read_text().split("\n") if args.text else TEXTS * (1 if args.quick else 8)
    block, batch_size = (8, 2) if args.quick else (128, 8)
    result = finetune(
        args.model,
        texts,
        args.out,
        epochs=args.epochs,
        eta=args.eta,
        block=block,
        batch_size=batch_size,
    )
    total = sum(p.numel() for p in result["merged"].parameters())
    losses = result["history"]["train_loss"]
    print(
        f"trained {result['trainable']:,} of {total:,} values; loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}; exported {result['report'].path}"
    )
    return result


if __name__ == "__main__":
    main()
