"""Keyword inputs, integer inputs, named outputs and cotangents by name, against autograd."""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import torchbridge
from julia_arrays import ArrayValue
from torchbridge import memory
from torchbridge.errors import CotangentError, MaskShapeError, TokenIdError

TIGHT = {"rtol": 1e-10, "atol": 1e-12}
VOCAB = 11


@dataclasses.dataclass
class Out:
    """A dataclass output with optional fields, as transformers' ModelOutput has."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden: tuple | None = None
    extra: int = 3


class Cache:
    """An opaque object holding tensors (transformers' key/value cache)."""

    def __init__(self, t):
        self.t = t


class TinyText(nn.Module):
    """A text model with transformers' calling convention, in float64."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)
        self.double()

    def get_input_embeddings(self):
        return self.embed

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        scale=1.0,
        output_hidden_states=False,
        labels=None,
    ):
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).to(h.dtype)
        h1 = torch.tanh(self.proj(h)) * scale
        logits = self.head(h1)
        loss = None if labels is None else (logits.sum(-1) - labels).pow(2).mean()
        return Out(logits=logits, loss=loss, hidden=(h, h1) if output_hidden_states else None)


def ids_and_mask(batch=2, seq=5):
    ids = torch.randint(0, VOCAB, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, -2:] = 0
    return ids, mask


def test_keyword_inputs_match_autograd():
    """Keyword inputs: outputs and parameter gradients equal a direct call's under autograd."""
    model = TinyText()
    ref = copy.deepcopy(model)
    ids, mask = ids_and_mask()
    cot = torch.randn(2, 5, 3, dtype=torch.float64)
    bm = torchbridge.bridge(model)
    with memory.expect_baseline():
        (logits,), pb = bm.forward(input_ids=ids, attention_mask=mask, scale=0.5)
        grads = pb(cot)
    out = ref(input_ids=ids, attention_mask=mask, scale=0.5)
    out.logits.backward(cot)
    torch.testing.assert_close(logits, out.logits.detach(), **TIGHT)
    assert grads == (None, None, None)
    for name, g in zip(bm.param_names, bm.grads):
        torch.testing.assert_close(g, ref.get_parameter(name).grad, **TIGHT, msg=name)
    bm.close()


def test_integer_inputs_cross_zero_copy_and_are_not_differentiated():
    """Julia Int64 ids and masks reach the module as views of the caller's memory."""
    seen = {}

    class Spy(TinyText):
        def forward(self, input_ids=None, attention_mask=None, **kw):
            seen["ids"], seen["mask"] = input_ids, attention_mask
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)

    bm = torchbridge.bridge(Spy())
    ids = np.asfortranarray(
        np.random.default_rng(0).integers(0, VOCAB, (5, 2))
    )  # Julia (seq, batch)
    mask = np.asfortranarray(np.ones((5, 2), dtype=np.int64))
    (logits,), pb = bm.forward(input_ids=ArrayValue(ids), attention_mask=ArrayValue(mask))
    assert seen["ids"].shape == (2, 5) and seen["ids"].dtype == torch.int64
    assert seen["ids"].data_ptr() == ids.ctypes.data
    assert seen["mask"].data_ptr() == mask.ctypes.data
    assert not seen["ids"].requires_grad
    assert pb(torch.ones_like(logits)) == (None, None)
    del seen["ids"], seen["mask"]
    bm.close()


def test_float_keyword_input_gets_its_gradient():
    """inputs_embeds, a float input passed by keyword, gets the gradient autograd gives."""
    model = TinyText()
    ref = copy.deepcopy(model)
    emb = torch.randn(2, 5, 6, dtype=torch.float64)
    mask = ids_and_mask()[1]
    cot = torch.randn(2, 5, 3, dtype=torch.float64)
    bm = torchbridge.bridge(model)
    _, pb = bm.forward(inputs_embeds=emb, attention_mask=mask)
    assert pb.input_names == ("inputs_embeds", "attention_mask")
    g_emb, g_mask = pb(cot)
    x = emb.clone().requires_grad_(True)
    ref(inputs_embeds=x, attention_mask=mask).logits.backward(cot)
    torch.testing.assert_close(g_emb, x.grad, **TIGHT)
    assert g_mask is None
    for name, g in zip(bm.param_names, bm.grads):
        if name.startswith("embed"):
            continue  # not reached from inputs_embeds
        torch.testing.assert_close(g, ref.get_parameter(name).grad, **TIGHT, msg=name)
    bm.close()


def test_positional_then_keyword_gradients_in_call_order():
    """Gradients come back positional inputs first, then keyword inputs in the order passed."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2).double()

        def forward(self, x, y=None, z=None):
            return self.lin(x) * y.sum() + z.sum()

    bm = torchbridge.bridge(Two())
    x, y, z = (torch.randn(4, 3, dtype=torch.float64) for _ in range(3))
    (out,), pb = bm.forward(x, z=z, y=y)
    assert pb.input_names == (0, "z", "y")
    gx, gz, gy = pb(torch.ones_like(out))
    xs = [t.clone().requires_grad_(True) for t in (x, y, z)]
    ref = copy.deepcopy(bm.module)
    ref(xs[0], y=xs[1], z=xs[2]).sum().backward()
    for a, b in zip((gx, gy, gz), xs):
        torch.testing.assert_close(a, b.grad, **TIGHT)
    bm.close()


def test_input_grads_by_name():
    """input_grads as a mapping skips the inputs it names False; unknown names are refused."""
    bm = torchbridge.bridge(TinyText())
    emb = torch.randn(2, 5, 6, dtype=torch.float64)
    _, pb = bm.forward(inputs_embeds=emb, input_grads={"inputs_embeds": False})
    assert pb(torch.ones(2, 5, 3, dtype=torch.float64)) == (None,)
    with pytest.raises(ValueError, match="not inputs of this call"):
        bm.forward(inputs_embeds=emb, input_grads={"input_ids": False})
    assert memory.stats().live_pullbacks == 0
    bm.close()


def test_dataclass_output_is_named_without_none_fields():
    """A dataclass output is a named structure: None and non-tensor fields are not outputs."""
    bm = torchbridge.bridge(TinyText())
    ids, _ = ids_and_mask()
    outputs, pb = bm.forward(input_ids=ids, output_hidden_states=True)
    s = bm.output_structure
    assert s.kind == "dict" and s.named
    assert s.keys == ("logits", "hidden")
    assert s.names == ("logits", "hidden.0", "hidden.1")
    assert s.paths == (("logits",), ("hidden", 0), ("hidden", 1))
    assert s.type_name.endswith("Out")
    rebuilt = s.rebuild(outputs)
    assert isinstance(rebuilt, Out) and rebuilt.loss is None and rebuilt.hidden[1] is outputs[2]
    assert list(s.to_dict(outputs)) == ["logits", "hidden.0", "hidden.1"]
    pb.release()
    bm.close()


def test_model_output_is_named():
    """transformers' ModelOutput crosses as a named structure without its None fields."""
    mo = pytest.importorskip("transformers.modeling_outputs")

    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2).double()

        def forward(self, x):
            return mo.SequenceClassifierOutput(logits=self.lin(x))

    bm = torchbridge.bridge(HF())
    x = torch.randn(4, 3, dtype=torch.float64)
    outputs, pb = bm.forward(x)
    assert bm.output_structure.names == ("logits",)
    rebuilt = bm.output_structure.rebuild(outputs)
    assert isinstance(rebuilt, mo.SequenceClassifierOutput) and rebuilt.loss is None
    (gx,) = pb(logits=torch.ones(4, 2, dtype=torch.float64))
    torch.testing.assert_close(gx, bm.module.lin.weight.sum(0).expand(4, 3), **TIGHT)
    bm.close()


def test_cotangents_for_some_fields_only():
    """A cotangent for one named output: the others count as zero and run no backward."""
    model = TinyText()
    ref = copy.deepcopy(model)
    ids, _ = ids_and_mask()
    labels = torch.randn(2, 5, dtype=torch.float64)
    bm = torchbridge.bridge(model)
    outputs, pb = bm.forward(input_ids=ids, labels=labels, output_hidden_states=True)
    assert bm.output_structure.names == ("logits", "loss", "hidden.0", "hidden.1")
    pb(loss=torch.tensor(1.0, dtype=torch.float64))
    ref(input_ids=ids, labels=labels).loss.backward()
    for name, g in zip(bm.param_names, bm.grads):
        torch.testing.assert_close(g, ref.get_parameter(name).grad, **TIGHT, msg=name)
    # A mapping works as well (what a Julia Dict becomes); mixing both is refused.
    _, pb = bm.forward(input_ids=ids, labels=labels)
    with pytest.raises(CotangentError, match="either positionally"):
        pb(torch.ones(2, 5, 3, dtype=torch.float64), loss=torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(CotangentError, match="no output named 'los'"):
        pb({"los": torch.tensor(1.0, dtype=torch.float64)})
    assert pb.live
    pb({"loss": torch.tensor(1.0, dtype=torch.float64)})
    for name, g in zip(bm.param_names, bm.grads):
        torch.testing.assert_close(g, ref.get_parameter(name).grad, **TIGHT, msg=name)
    bm.close()
    assert memory.stats().live_pullbacks == 0


def test_opaque_objects_are_not_outputs():
    """An object that is not a tensor or container (a cache) is dropped, its tensors not held."""

    class WithCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            y = self.lin(x)
            return OrderedDict(logits=y, past=Cache(y * 2)), (y, Cache(y), None, 4)

    bm = torchbridge.bridge(WithCache())
    outputs, pb = bm.forward(torch.randn(2, 3))
    s = bm.output_structure
    assert s.kind == "tuple" and s.names == ("0.logits", "1.0")
    rebuilt = s.rebuild(outputs)
    assert list(rebuilt[0]) == ["logits"] and rebuilt[1][1:] == (None, None, 4)
    pb.release()
    bm.close()


def test_token_ids_outside_the_vocabulary():
    """Ids outside the vocabulary are a TokenIdError naming its size, before the embedding runs."""
    bm = torchbridge.bridge(TinyText())
    ids, mask = ids_and_mask()
    with memory.expect_baseline():
        bad = ids.clone()
        bad[1, 2] = VOCAB
        with pytest.raises(TokenIdError, match=rf"vocabulary of {VOCAB} tokens.*0-based"):
            bm.forward(input_ids=bad, attention_mask=mask)
        with pytest.raises(TokenIdError, match="-1"):
            bm.forward(bad.clamp(max=0) - 1)  # positional input_ids are checked too
        with pytest.raises(TokenIdError, match="must be integers"):
            bm.forward(input_ids=ids.double())
        with pytest.raises(MaskShapeError, match=r"attention_mask has torch shape \(2, 4\)"):
            bm.forward(input_ids=ids, attention_mask=mask[:, :4])
        with pytest.raises(MaskShapeError):
            bm.forward(input_ids=ids, attention_mask=mask[0])  # a flat mask for a batch
    bm.close()
