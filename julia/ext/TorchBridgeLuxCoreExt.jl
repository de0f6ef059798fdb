# A torch model as a Lux layer: explicit parameters and state.
#
# `TorchLayer(id_or_model)` is a `LuxCore.AbstractLuxLayer` over a
# `TorchBridge.FunctionalModel` (NOTE [functional calls from Julia]):
#
# - `ps`: the trainable parameters, copied from torch once per
#   `initialparameters`, as the nested `NamedTuple` of the module's tree
#   (`TorchBridge.nest`): `ps.fc.weight`, `ps.layer1[Symbol("0")].conv1.weight`.
#   Dimensions are Julia's (a torch `(out, in)` weight is `(in, out)`).
# - `st`: `(buffers = <the same tree of the module's buffers>, training = Val(true))`;
#   `Lux.testmode`/`trainmode` set `training`. In training mode the call
#   returns the updated buffers (BatchNorm statistics) in `st′`; nothing of
#   the torch module, nor of the `ps` and `st` passed in, is written.
# - `layer(x, ps, st) -> (y, st′)` runs torch on views of `ps` (no copy for
#   dense arrays: an `Array`, a `ComponentArray`'s blocks) and of `x`: one
#   array, a `Tuple` of arrays for a module of several inputs, or a
#   `NamedTuple` of keyword inputs (a tokenized batch).
#
# Any AD that reads ChainRules rrules differentiates it (Zygote;
# Mooncake through its extension), with gradients for `ps` and `x` equal to
# torch autograd's of the same functional call. ForwardDiff's duals run
# through torch's forward mode (the ForwardDiff extension).
module TorchBridgeLuxCoreExt

using LuxCore: LuxCore
using PythonCall: Py
using Random: AbstractRNG
using TorchBridge: TorchBridge, FunctionalModel, TorchModel
const CRC = TorchBridge.ChainRulesCore

struct TorchLayer <: LuxCore.AbstractLuxLayer
    model::FunctionalModel
    param_paths::Vector{Vector{Symbol}}
    buffer_paths::Vector{Vector{Symbol}}
    param_length::Int
    state_length::Int
end

function TorchLayer(f::FunctionalModel)
    lengths(kind) = sum(prod, TorchBridge._layout_sizes(f, kind); init = 0)
    return TorchLayer(
        f,
        TorchBridge._paths(f.param_names),
        TorchBridge._paths(f.buffer_names),
        lengths("param"),
        lengths("buffer"),
    )
end

TorchBridge.TorchLayer(f::FunctionalModel) = TorchLayer(f)
TorchBridge.TorchLayer(model::Union{Py, TorchModel}; kw...) = TorchLayer(FunctionalModel(
    model;
    kw...,
))
TorchBridge.TorchLayer(id::AbstractString; kw...) = TorchLayer(FunctionalModel(id; kw...))

function Base.show(io::IO, l::TorchLayer)
    print(
        io,
        "TorchLayer(",
        length(l.param_paths),
        " params, ",
        l.param_length,
        " values, ",
    )
    print(io, length(l.buffer_paths), " buffers)")
    return nothing
end

LuxCore.initialparameters(::AbstractRNG, l::TorchLayer) = TorchBridge._nest(
    l.param_paths,
    TorchBridge.initial_parameters(l.model),
)

function LuxCore.initialstates(::AbstractRNG, l::TorchLayer)
    buffers = TorchBridge._nest(l.buffer_paths, TorchBridge.initial_buffers(l.model))
    return (buffers = buffers, training = Val(true))
end

LuxCore.parameterlength(l::TorchLayer) = l.param_length
LuxCore.statelength(l::TorchLayer) = l.state_length + 1

function (l::TorchLayer)(x, ps, st::NamedTuple)
    xs, kw = _inputs(x)
    i = findfirst(TorchBridge._sizes_only, xs)
    i === nothing || return _sizes_only(l, xs, xs[i]), st
    params = TorchBridge._leaves(l.param_paths, ps)
    buffers = _buffers(l, st)
    y, state = TorchBridge.functional_call(l.model, params, buffers, _training(st), xs, kw)
    return y, _new_state(l, st, state)
end

function _buffers(l::TorchLayer, st::NamedTuple)
    isempty(l.buffer_paths) && return nothing
    haskey(st, :buffers) ||
        throw(ArgumentError(
            "TorchLayer: the state has no `buffers`; pass the state `LuxCore.setup` made.",
        ))
    return CRC.ignore_derivatives(() -> TorchBridge._leaves(l.buffer_paths, st.buffers))
end

_training(st::NamedTuple) = haskey(st, :training) ? _training(st.training) : nothing
_training(::Val{true}) = true
_training(::Val{false}) = false
_training(mode::Bool) = mode

_inputs(x::AbstractArray) = ((x,), NamedTuple())
_inputs(xs::Tuple) = (xs, NamedTuple())
_inputs(kw::NamedTuple) = ((), kw)

_new_state(::TorchLayer, st, ::Nothing) = st
function _new_state(l::TorchLayer, st, state::Tuple)
    return CRC.ignore_derivatives() do
        merge(st, (buffers = TorchBridge._nest(l.buffer_paths, collect(state)),))
    end
end

# Arrays without values (`Lux.outputsize` of a model holding the layer): arrays
# without values of the output's sizes, from torch's fake tensors.
function _sizes_only(l::TorchLayer, xs::Tuple, template)
    sizes, names = TorchBridge._output_sizes(l.model, map(size, xs))
    ys = [TorchBridge._nil_array(template, s) for s in sizes]
    return TorchBridge._select_functional(l.model, TorchBridge._outputs(ys, names))
end

# Sizes without running the model: torch runs it on fake tensors. Like Lux's
# own `outputsize`, the last (batch) dimension is dropped.
function LuxCore.outputsize(l::TorchLayer, x, ::AbstractRNG)
    xs, kw = _inputs(x)
    isempty(kw) ||
        throw(ArgumentError(
            "TorchLayer: outputsize takes array inputs; keyword inputs run the model.",
        ))
    sizes, names = TorchBridge._output_sizes(l.model, map(size, xs))
    unbatched = [s[1:(end - 1)] for s in sizes]
    names === nothing || return NamedTuple{Tuple(Symbol.(names))}(Tuple(unbatched))
    return length(unbatched) == 1 ? only(unbatched) : Tuple(unbatched)
end

end # module TorchBridgeLuxCoreExt
