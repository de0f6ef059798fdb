##  Memory: the Python ledger, from Julia  ##
#
# No device memory is freed by a finalizer alone: pullbacks release their graph
# when they run (see `rrules.jl`), results are Julia-owned copies (see
# `tensors.jl`), and what an AD leaves behind is released by `scope` or
# `release!`. `memory_stats` reads the ledger that counts all of it.

"""
    memory_stats() -> NamedTuple

What the bridge keeps alive right now, from torchbridge's ledger
(`torchbridge.memory.stats()`):

- `live_pullbacks`, `held_buffers`, `held_bytes` (a `Dict` device => bytes):
  pullbacks that still hold a graph and the tensors they keep;
- `open_models`, `shared_buffers`, `shared_bytes`: wrapped models and their
  shared parameters and gradient buffers;
- `released_by_gc`: pullbacks that only the garbage collector freed (cumulative;
  a well-behaved program keeps it constant);
- `read_only_copies`: inputs copied because their memory was marked read-only
  (cumulative; not a leak);
- `negative_stride_copies`: inputs copied because torch cannot view their
  negative strides, such as a view over a reversed range (cumulative; not a leak).

Take it before a loop and compare after it: a loop that leaves nothing behind
returns to the same value.
"""
function memory_stats()
    stats = _guard(() -> _tbjl.memory_stats())
    try
        count(key) = pyconvert(Int, stats[key])
        bytes(key) = pyconvert(Dict{String, Int}, stats[key])
        return (
            live_pullbacks = count("live_pullbacks"),
            held_buffers = count("held_buffers"),
            held_bytes = bytes("held_bytes"),
            open_models = count("open_models"),
            shared_buffers = count("shared_buffers"),
            shared_bytes = bytes("shared_bytes"),
            released_by_gc = count("released_by_gc"),
            read_only_copies = count("read_only_copies"),
            negative_stride_copies = count("negative_stride_copies"),
        )
    finally
        PythonCall.pydel!(stats)
    end
end

"""
    release!() -> Int

Release every live pullback of every model (`torchbridge.memory.release_all()`)
and return how many there were. For the end of a run or an interactive
session; inside a loop prefer [`TorchBridge.scope`](@ref).
"""
release!() = pyconvert(Int, _guard(() -> _tb.memory.release_all()))

"""
    TorchBridge.scope(f; reusable = false) -> f()

Run `f()` and then release every pullback created inside it that has not run,
so a forward whose pullback is never called (an AD that only wanted the
value, an exception between forward and backward) holds no memory past the
block. Wrap one training step:

```julia
TorchBridge.scope() do
    loss, grads = Zygote.withgradient(m -> lossfn(m(x), y), model)
    Optimisers.update!(state, model, grads[1])
end
```

With `reusable = true`, the pullbacks created inside (in the innermost scope)
may be called any number of times, each call giving the gradients of its own
cotangent; their graphs are freed when the scope ends. This is what AD code
that calls a pullback more than once needs:

```julia
J = TorchBridge.scope(; reusable = true) do
    Zygote.jacobian(x -> m(x), x)[1]
end
```

A pullback called after its scope has ended throws a `TorchBridgeError` of
kind `:PullbackReleasedError`. Scopes nest.
"""
function scope(f; reusable::Bool = false)
    handle = _guard(() -> _tbjl.scope_enter(; reusable = reusable))
    stack = get!(() -> Bool[], task_local_storage(), :torchbridge_scopes)::Vector{Bool}
    push!(stack, reusable)
    try
        return f()
    finally
        pop!(stack)
        _tbjl.scope_exit(handle)
        PythonCall.pydel!(handle)
    end
end

# Whether the innermost open scope of this task makes reusable pullbacks; the
# Python ledger decides the same for the pullbacks it creates.
function _in_reusable_scope()
    stack = get(task_local_storage(), :torchbridge_scopes, nothing)
    return stack !== nothing && !isempty(stack) && last(stack::Vector{Bool})
end
