# Mooncake's reverse mode through a torch model.
#
# A `TorchModel` call and `TorchBridge.functional_call` (what a `TorchLayer`
# runs) are Mooncake primitives: Mooncake does not trace into PythonCall, it
# calls the same bridge forward and pullback as the ChainRules rrules
# (`rrules.jl`, `functional.jl`) and adds the gradients to the arguments'
# tangents. The Python handles are constants to it (`NoTangent`): a
# `TorchModel`'s parameter gradients land in its gradient buffers `m.grads`
# (stateful, as with every AD); a `TorchLayer`'s come back in the gradient of
# `ps`. Inputs are plain `Array`s (Mooncake's tangent of a view is its
# parent's).
module TorchBridgeMooncakeExt

using Mooncake:
    Mooncake,
    CoDual,
    DefaultCtx,
    NoFData,
    NoRData,
    NoTangent,
    primal,
    tangent,
    zero_fcodual
using TorchBridge: TorchBridge, FunctionalModel, TorchModel
const CRC = TorchBridge.ChainRulesCore

Mooncake.tangent_type(::Type{<:TorchModel}) = NoTangent
Mooncake.tangent_type(::Type{FunctionalModel}) = NoTangent

# building the state's tree after a call is bookkeeping, not arithmetic
Mooncake.@zero_adjoint DefaultCtx Tuple{typeof(TorchBridge._nest), Vararg}

# The calls Mooncake takes as they are, in reverse mode (Mooncake 0.5 names the mode;
# 0.4 has reverse mode alone).
@static if isdefined(Mooncake, :ReverseMode)
    Mooncake.@is_primitive DefaultCtx Mooncake.ReverseMode Tuple{TorchModel, Vararg{Array}}
    Mooncake.@is_primitive DefaultCtx Mooncake.ReverseMode Tuple{TorchModel, NamedTuple}
    Mooncake.@is_primitive(
        DefaultCtx,
        Mooncake.ReverseMode,
        Tuple{typeof(TorchBridge.functional_call), FunctionalModel, Vararg},
    )
else
    Mooncake.@is_primitive DefaultCtx Tuple{TorchModel, Vararg{Array}}
    Mooncake.@is_primitive DefaultCtx Tuple{TorchModel, NamedTuple}
    Mooncake.@is_primitive(
        DefaultCtx,
        Tuple{typeof(TorchBridge.functional_call), FunctionalModel, Vararg},
    )
end

function Mooncake.rrule!!(m::CoDual{<:TorchModel}, xs::CoDual{<:Array}...)
    model = primal(m)
    inputs = map(primal, xs)
    y, back = TorchBridge._bridge_rrule(model, inputs, NamedTuple())
    ydual = zero_fcodual(y)
    function torchmodel_pullback!!(dy::NoRData)
        _, dinputs = back(_cotangent(ydual))
        foreach(_accumulate!, map(tangent, xs), map(primal, xs), dinputs)
        return NoRData(), map(_ -> NoRData(), xs)...
    end
    return ydual, torchmodel_pullback!!
end

function Mooncake.rrule!!(m::CoDual{<:TorchModel}, inputs::CoDual{<:NamedTuple})
    y, back = TorchBridge._bridge_rrule(primal(m), (), primal(inputs))
    ydual = zero_fcodual(y)
    function torchmodel_namedtuple_pullback!!(dy::NoRData)
        _, dinputs = back(_cotangent(ydual))
        _accumulate!(tangent(inputs), primal(inputs), Tuple(dinputs))
        return NoRData(), Mooncake.zero_rdata(primal(inputs))
    end
    return ydual, torchmodel_namedtuple_pullback!!
end

function Mooncake.rrule!!(
    ::CoDual{typeof(TorchBridge.functional_call)},
    f::CoDual{FunctionalModel},
    params::CoDual,
    buffers::CoDual,
    training::CoDual,
    xs::CoDual{<:Tuple},
    kw::CoDual{<:NamedTuple},
)
    y, state, back = TorchBridge._functional_rrule(
        primal(f),
        primal(params),
        primal(buffers),
        primal(training),
        primal(xs),
        primal(kw),
    )
    out = zero_fcodual((y, state))
    nxs = length(primal(xs))
    function functional_call_pullback!!(::NoRData)
        dparams, dinputs = back(_cotangent(out)[1])
        if primal(params) !== nothing
            _accumulate!(tangent(params), primal(params), Tuple(dparams))
        end
        _accumulate!(tangent(xs), primal(xs), Tuple(dinputs[1:nxs]))
        _accumulate!(tangent(kw), primal(kw), Tuple(dinputs[(nxs + 1):end]))
        rdata(x) = Mooncake.zero_rdata(primal(x))
        return NoRData(),
            NoRData(),
            rdata(params),
            rdata(buffers),
            rdata(training),
            rdata(xs),
            rdata(kw)
    end
    return out, functional_call_pullback!!
end

# The cotangent an output's fdata accumulated: arrays, or a Tuple / NamedTuple of them.
_cotangent(y::CoDual) = _as_cotangent(tangent(y))
_as_cotangent(t::Array) = t
_as_cotangent(t::Union{Tuple, NamedTuple}) = map(_as_cotangent, t)
_as_cotangent(::Union{NoFData, NoTangent, Nothing}) = CRC.ZeroTangent()
_as_cotangent(t) = t

# Add a gradient into an argument's fdata, in place. An `Array`'s fdata is an
# array of its size; a view's (a `ComponentArray`'s blocks, `ps.layer.weight`)
# is its parent's, so the gradient goes into the same view of the parent's
# fdata; a `Tuple`'s or `NamedTuple`'s holds its elements'.
_accumulate!(fdata, primal, ::Union{Nothing, CRC.AbstractZero}) = nothing
_accumulate!(::NoFData, primal, g) = nothing
_accumulate!(::NoFData, primal, ::Union{Nothing, CRC.AbstractZero}) = nothing
function _accumulate!(fdata, primal::AbstractArray, g::AbstractArray)
    _tangent_view(primal, fdata) .+= g
    return nothing
end
function _accumulate!(fdata::Union{Tuple, NamedTuple}, primal, gs::Tuple)
    foreach(_accumulate!, Tuple(fdata), Tuple(primal), gs)
    return nothing
end

_tangent_view(::Array, fdata::Array) = fdata
_tangent_view(p::SubArray, f::Mooncake.FData) = view(
    _tangent_view(parent(p), f.data.parent),
    p.indices...,
)
_tangent_view(p::Base.ReshapedArray, f::Mooncake.FData) = reshape(
    _tangent_view(parent(p), f.data.parent),
    size(p),
)
function _tangent_view(p, fdata)
    msg = "Mooncake: TorchBridge cannot add a gradient to an argument of type " *
        "$(typeof(p)) (its tangent is a $(typeof(fdata))); pass an Array, a view of " *
        "one, or a ComponentArray."
    throw(ArgumentError(msg))
end

end # module TorchBridgeMooncakeExt
