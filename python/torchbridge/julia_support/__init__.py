"""The calls TorchBridge.jl makes, each one round trip, with plain results.

TorchBridge.jl (``julia/``) keeps its logic in Python, where it is tested, and
calls only the names of this façade, the public names of :mod:`torchbridge`,
and ``torch.from_dlpack``. ``tests/test_julia_contract.py`` checks every such
call in the Julia sources against the signatures here. Each concern lives in
its own module:

* :mod:`.step` — a model's shared state, forward, pullback, and results copied
  into Julia-owned arrays (NOTE [results cross to a Julia owner]);
* :mod:`.functional` — functional calls (Lux layers, parameters passed per
  call) and ForwardDiff's duals, packed (NOTE [dual numbers cross packed]);
* :mod:`.ledger` — the memory ledger and explicit scopes;
* :mod:`.rows` — registry rows, FastAI.jl's registry, feature variants;
* :mod:`.training` — torch optimisers and the torch-native step over a
  bridged model's gradient buffers;
* :mod:`.distributed` — the process group for data-parallel training
  (``init_distributed``, ``destroy_distributed``, ``shard_bounds`` ...);
* :mod:`.text` — text models: tokenize, decode and generate, token ids in
  Julia order ``(seq, batch)``, 0-based.

Arrays arrive as torch tensors that DLPack.jl made from Julia arrays
(``DLPack.share(x, torch.from_dlpack)``: a C-contiguous tensor with the Julia
dimensions reversed), or as raw Julia arrays that PythonCall passes
(``juliacall.ArrayValue``, reversed by type); both are the same tensor (NOTE
[dimension order] in :mod:`torchbridge.exchange`).
"""

from __future__ import annotations

from .distributed import (
    destroy_distributed,
    distributed_all_sum,
    distributed_barrier,
    distributed_world,
    init_distributed,
    shard_bounds,
)
from .functional import (
    functional_apply,
    functional_model,
    functional_pullback,
    functional_state,
)
from .ledger import memory_stats, scope_enter, scope_exit
from .rows import (
    entry_row,
    fastai_rows,
    feature_variant,
    info_row,
    registry_rows,
    search_rows,
)
from .step import (
    Layout,
    addresses,
    copy_out,
    forward,
    forward_into,
    layouts,
    model_state,
    output_sizes,
    pullback,
    release,
    synchronize,
)
from .text import decode, generate, tokenize, vocab_size
from .training import (
    TorchOptimizer,
    TorchTrainer,
    optimizer,
    optimizer_step,
    set_learning_rate,
    train_step,
    trainer,
)

__all__ = [
    "Layout",
    "TorchOptimizer",
    "TorchTrainer",
    "addresses",
    "copy_out",
    "decode",
    "destroy_distributed",
    "distributed_all_sum",
    "distributed_barrier",
    "distributed_world",
    "entry_row",
    "fastai_rows",
    "feature_variant",
    "forward",
    "forward_into",
    "functional_apply",
    "functional_model",
    "functional_pullback",
    "functional_state",
    "generate",
    "info_row",
    "init_distributed",
    "layouts",
    "memory_stats",
    "model_state",
    "output_sizes",
    "optimizer",
    "optimizer_step",
    "pullback",
    "registry_rows",
    "release",
    "scope_enter",
    "scope_exit",
    "search_rows",
    "set_learning_rate",
    "shard_bounds",
    "synchronize",
    "tokenize",
    "train_step",
    "trainer",
    "vocab_size",
]
