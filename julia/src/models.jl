##  TorchModel  ##

"""
    TorchModel(bridged::Py; input_grads = true, output = nothing) -> TorchModel

A torch module wrapped for Julia: callable on Julia arrays, differentiable with
any ChainRules AD (see `rrules.jl`), trainable with Optimisers.jl.
`bridged` is a `torchbridge.BridgedModel` (`torchbridge.bridge(module)`);
[`load_model`](@ref) is the usual way to get one.

Fields:
- `params`: a `Tuple` of Julia arrays, one per trainable parameter in torch's
  `named_parameters` order (names in `parameter_names(m)`), each **aliasing
  torch's parameter memory** with its dimensions reversed. Writing to them
  (`Optimisers.update!` does) changes the torch model in place.
- `grads`: the same for torch's gradient buffers, written by every pullback.
  They are overwritten at the next step; gradients handed to Julia code are
  copies (see `rrules.jl`).
- `input_grads`: whether pullbacks compute gradients with respect to the
  inputs. `false` saves that work when the model sees data only (the first
  layer of a network); the input tangent is then `NoTangent()`.
- `output`: for a module with named outputs (a transformers `ModelOutput`, a
  dict), the one the model returns, as an array (`:logits`), instead of the
  `NamedTuple` of all of them; `nothing` (the default) returns them all. A
  Flux loss, FluxTraining and [`fit_torch!`](@ref) then see an array.

Both tuples are wrapped once, here, and stay valid until [`close!`](@ref); keep
the model alive as long as you use them. Functors.jl sees only `params` as
children, so `Optimisers.setup(rule, m)` and `Optimisers.update!` train exactly
the torch parameters.

Calling `m(x...)` outside AD runs torch without recording a graph and returns a
Julia-owned array (a `Tuple` of arrays, depth-first, when the module returns
several tensors; a `NamedTuple` when they are named). Keyword inputs are
passed as keywords, `m(; input_ids, attention_mask)`, or as one `NamedTuple`,
`m((; input_ids, attention_mask))` (what [`tokenize`](@ref) returns and a data
loader's batch holds); differentiated, the `NamedTuple` form gives its
floating-point fields a tangent (keywords get none).
"""
struct TorchModel{P <: Tuple, G <: Tuple}
    py::Py
    names::Vector{String}
    params::P
    grads::G
    device::Symbol
    device_index::Int
    input_grads::Bool
    output::Union{Nothing, Symbol}
    # what the last call's outputs were, nothing before the first call (see `_forward`)
    outputs::Base.RefValue{Union{Nothing, _OutputCache}}
end

function TorchModel(bridged::Py; input_grads::Bool = true, output = nothing)
    state = _guard(() -> _tbjl.model_state(bridged))
    try
        names = pyconvert(Vector{String}, state["param_names"])
        # splatted from a Vector: a Tuple built from a generator compiles per model
        params = (Any[_wrap(p) for p in state["params"]]...,)
        grads = (Any[_wrap(g) for g in state["grads"]]...,)
        device = Symbol(pyconvert(String, state["device"]))
        index = pyconvert(Int, state["device_index"])
        return TorchModel(
            bridged,
            names,
            params,
            grads,
            device,
            index,
            input_grads,
            output === nothing ? nothing : Symbol(output),
            Ref{Union{Nothing, _OutputCache}}(nothing),
        )
    finally
        PythonCall.pydel!(state)
    end
end

"""
    parameter_names(m::TorchModel) -> Vector{String}

torch's names of the trainable parameters (`"layer1.0.conv1.weight"` ...), in
the order of `m.params` and `m.grads`.
"""
parameter_names(m::TorchModel) = m.names

function Base.show(io::IO, m::TorchModel)
    n = sum(length, m.params; init = 0)
    print(io, "TorchModel(", length(m.params), " params, ", n, " values, ", m.device, ")")
    return nothing
end

##  Functors: only the parameters are children  ##

# `m` may also be a gradient mirror (a NamedTuple or Tangent backing) when
# Optimisers.jl walks a model and its gradient together.
Functors.functor(::Type{<:TorchModel}, m) = (params = m.params,),
    nt -> _restore(m, nt.params)

# Rebuilding a TorchModel with new parameters writes them into torch's memory:
# a TorchModel is a handle on one torch module, never a copy of it. In-place
# updates (`Optimisers.update!`) hand the same arrays back and cost nothing.
_restore(m, params) = merge(m, (params = params,))
function _restore(m::TorchModel, params)
    params === m.params && return m
    length(params) == length(m.params) ||
        throw(ArgumentError(
            "TorchModel: expected $(length(m.params)) parameters, got $(length(params))",
        ))
    for (i, (old, new)) in enumerate(zip(m.params, params))
        old === new && continue
        if typeof(new) != typeof(old) || size(new) != size(old)
            msg = "TorchModel: parameter $(m.names[i]) would become a $(summary(new)), but it is " *
                "torch's $(summary(old)) and cannot change type, size or device from Julia. " *
                "Convert or move the torch module instead (e.g. load_model(...) on the device)."
            throw(ArgumentError(msg))
        end
        copyto!(old, new)
    end
    return m
end

##  Calling the model  ##

function (m::TorchModel)(xs::AbstractArray...; kw...)
    # arrays of duals (ForwardDiff) run through torch's forward mode
    _dual_template((xs..., values(kw)...)) === nothing ||
        return first(functional_call(_twin(m), nothing, nothing, nothing, xs, values(kw)))
    ys, _ = _forward(m, xs, false; kw...)
    return _select(m, ys)
end

(m::TorchModel)(inputs::NamedTuple) = m(; inputs...)

# What the caller gets: every output, or the one `m.output` names.
function _select(@nospecialize(m::TorchModel), ys)
    return m.output === nothing ? ys : _select_named(m.output, ys)
end

function _select_named(name::Symbol, ys)
    ys isa NamedTuple && haskey(ys, name) && return getproperty(ys, name)
    found = ys isa NamedTuple ? join(keys(ys), ", ") : "no names (it returns $(typeof(ys)))"
    msg = "TorchModel: output = :$name, but the module's outputs have $found. " *
        "Name one of them, or load the model with output = nothing for all of them."
    throw(ArgumentError(msg))
end

# An input (or cotangent) as it crosses: a dense CPU `Array` of a type numpy
# reads as itself (PythonCall hands Python a juliacall `ArrayValue`, which
# torchbridge views through the buffer protocol with the dims reversed by
# type, and which keeps the array alive while torch holds it: no DLPack
# capsule to build); any other array shared through DLPack (`to_torch`);
# anything else (`nothing`, a Bool, a number, a string) as the Python value
# PythonCall makes.
_crossing(v::Array{<:_BufferEltype}) = v
_crossing(v::AbstractArray) = to_torch(v)
_crossing(v::Py) = PythonCall.pynew(v) # a handle of our own: the caller's is not released
_crossing(v) = v

# `_crossing` of each value, in a Vector; when one fails, the shares already
# made are released before the error propagates (no share waits for the GC).
function _share_all(values)
    shares = Any[]
    try
        for v in values
            push!(shares, _crossing(v))
        end
    catch
        _release_shares(shares)
        rethrow()
    end
    return shares
end

_release_shares(shares) = foreach(v -> v isa Py && PythonCall.pydel!(v), shares)
# What of a keyword input decides its call's output layouts and names (the
# cache in `_forward`): an array's type and size, a plain value itself. A
# Python object is never matched (the key must not hold the caller's handle).
_kw_key(v::AbstractArray) = (typeof(v), size(v))
_kw_key(::Py) = _Unmatched()
_kw_key(v) = v

struct _Unmatched end
Base.isequal(::_Unmatched, ::_Unmatched) = false

# The outputs as the caller sees them: one array, a Tuple, or a NamedTuple
# when the module returns named outputs (a dict, a dataclass, a ModelOutput).
function _outputs(ys, names)
    names === nothing || return NamedTuple{Tuple(Symbol.(names))}(Tuple(ys))
    return length(ys) == 1 ? only(ys) : Tuple(ys)
end

# The names of the last forward's outputs, or nothing when they have none.
_output_names(@nospecialize(m::TorchModel)) = _output_names(m.py)

function _output_names(model::Py)
    structure = model.output_structure
    try
        named = pyconvert(Bool, structure.named)
        return named ? pyconvert(Vector{String}, structure.names) : nothing
    finally
        PythonCall.pydel!(structure)
    end
end

# One bridge forward. Returns the Julia-owned outputs and the Python pullback
# (`nothing` when `grad` is false). The input shares are dropped before
# returning: the pullback holds its own references to them.
#
# Outputs usually have the layouts they had for inputs of the same sizes: the
# model keeps the last call's layouts, and torch compares them with its
# outputs' in the same round trip (`forward_into`), so an unchanged output
# converts nothing. The outputs are received as NOTE [results cross to a Julia
# owner] in the Python `julia_support.step` says: CPU ones copied from their
# addresses, others through `copy_out`.
function _forward(@nospecialize(m::TorchModel), xs::Tuple, grad::Bool; kw...)
    # not specialised on the model's type: its parameter tuple's type differs
    # from model to model and the call does not depend on it
    _before_torch(m)
    key = (map(x -> (typeof(x), size(x)), xs), map(_kw_key, values(kw)))
    last = m.outputs[]
    cached = last !== nothing && isequal(last.key, key) ? last : nothing
    expected = cached === nothing ? pybuiltins.None : cached.layouts
    result = _forward_call(m, expected, xs, kw, grad)
    outputs, pullback, layouts = result[0], result[1], result[2]
    addresses = result[3]
    PythonCall.pydel!(result)
    kept = false # whether `layouts` is now the model's cache
    names = nothing
    ys = try
        if _isnone(layouts)
            # the outputs have the expected layouts
            specs = cached.specs
            names = cached.names
        else
            specs = _specs(layouts)
            names = _output_names(m)
            m.outputs[] = _OutputCache(key, layouts, specs, names)
            kept = true
        end
        _receive(outputs, specs, addresses)
    catch
        _tbjl.release(pullback)
        rethrow()
    finally
        PythonCall.pydel!(outputs)
        PythonCall.pydel!(addresses)
        kept || PythonCall.pydel!(layouts)
    end
    pb = _isnone(pullback) ? nothing : pullback
    return _outputs(ys, names), pb
end

# The Python call of one forward: inputs shared, positional ones as one tuple
# and keyword ones as one dict, so the call has the same form every step.
function _forward_call(
    @nospecialize(m::TorchModel),
    expected::Py,
    xs::Tuple,
    kw,
    grad::Bool,
)
    shares = _share_all(xs)
    kwshares = Any[]
    inputs = kwinputs = nothing
    try
        isempty(kw) || (kwshares = _share_all(values(kw)))
        inputs = pytuple(shares)
        kwinputs = isempty(kw) ? nothing : pydict(zip(map(string, keys(kw)), kwshares))
        kwarg = something(kwinputs, pybuiltins.None) # the shared None: never deleted
        return _guard(
            () -> _tbjl.forward_into(m.py, expected, inputs, kwarg, grad, m.input_grads),
        )
    finally
        inputs === nothing || PythonCall.pydel!(inputs)
        kwinputs === nothing || PythonCall.pydel!(kwinputs)
        _release_shares(shares)
        _release_shares(kwshares)
    end
end

# The Julia sizes of `m`'s outputs for inputs of Julia `sizes`, and their
# names (`nothing` when unnamed): torch runs the module on fake tensors, with
# no data and no memory for values (Flux's `outputsize`, in the Flux extension).
function _output_sizes(m::TorchModel, sizes)
    result = _guard(() -> _tbjl.output_sizes(m.py, pytuple(map(pytuple, sizes))))
    try
        outs = [Tuple(pyconvert(Vector{Int}, s)) for s in result[0]]
        names = _optional(Vector{String}, result[1])
        return outs, names
    finally
        PythonCall.pydel!(result)
    end
end

# Device extensions order Julia's pending writes to the model's memory before
# torch reads it (CUDA: synchronize Julia's stream).
_before_torch(::TorchModel) = nothing

##  Model state  ##

"""
    trainmode!(m::TorchModel, mode::Bool = true) -> m

Put the torch module in training mode (BatchNorm uses batch statistics and
updates its running ones, dropout is active), or in evaluation mode with
`mode = false`.

Not exported, as Flux exports functions of the same names: call it
`TorchBridge.trainmode!`, or, with Flux loaded, use Flux's `trainmode!` and
`testmode!`, which reach torch for a `TorchModel` alone or inside a `Chain`
(the Flux extension).
"""
function trainmode!(m::TorchModel, mode::Bool = true)
    _guard(() -> m.py.train(mode))
    return m
end

"""
    testmode!(m::TorchModel) -> m

Evaluation mode: BatchNorm uses its running statistics, dropout is off. Not
exported (see [`trainmode!`](@ref)).
"""
testmode!(m::TorchModel) = trainmode!(m, false)

# Whether torch's module is in training mode.
_training(m::TorchModel) = pyconvert(Bool, _guard(() -> m.py.training))

"""
    zero_grad!(m::TorchModel) -> m

Set every gradient buffer (`m.grads`) to zero, in place.
"""
function zero_grad!(m::TorchModel)
    _guard(() -> m.py.zero_grad())
    return m
end

"""
    close!(m::TorchModel) -> nothing

Release every live pullback of `m` and stop sharing its parameters and
gradient buffers. `m.params` and `m.grads` must not be used afterwards (the
torch module itself stays usable from Python). Idempotent.
"""
function close!(m::TorchModel)
    _guard(() -> m.py.close())
    return nothing
end
