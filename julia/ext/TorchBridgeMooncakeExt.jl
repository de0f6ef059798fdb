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
    ReverseMode,
    primal,
    tangent,
    zero_fcodual
using TorchBridge: TorchBridge, FunctionalModel, TorchModel
const CRC = TorchBridge.ChainRulesCore

Mooncake.tangent_type(::Type{<:TorchModel}) = NoTangent
Mooncake.tangent_type(::Type{FunctionalModel}) = NoTangent

# building the state's tree after a call is bookkeeping, not arithmetic
Mooncake.@zero_adjoint DefaultCtx Tuple{typeof(TorchBridge._nest), Vararg}

Mooncake.@is_primitive DefaultCtx ReverseMode Tuple{TorchModel, Vararg{Array}}
Mooncake.@is_primitive DefaultCtx ReverseMode Tuple{TorchModel, NamedTuple}

function Mooncake.rrule!!(m::CoDual{<:TorchModel}, xs::CoDual{<:Array}...)
    model = primal(m)
    inputs = map(primal, xs)
    y, back = TorchBridge._bridge_rrule(model, inputs, NamedTuple())
    ydual = zero_fcodual(y)
    function torchmodel_pullback!!(dy::NoRData)
        _, dinputs = back(_cotangent(ydual))
        foreach(_accumulate!, map(tangent, xs), dinputs)
        return NoRData(), map(_ -> NoRData(), xs)...
    end
    return ydual, torchmodel_pullback!!
end

function Mooncake.rrule!!(m::CoDual{<:TorchModel}, inputs::CoDual{<:NamedTuple})
    y, back = TorchBridge._bridge_rrule(primal(m), (), primal(inputs))
    ydual = zero_fcodual(y)
    function torchmodel_namedtuple_pullback!!(dy::NoRData)
        _, dinputs = back(_cotangent(ydual))
        _accumulate!(tangent(inputs), Tuple(dinputs))
        return NoRData(), Mooncake.zero_rdata(primal(inputs))
    end
    return ydual, torchmodel_namedtuple_pullback!!
end

Mooncake.@is_primitive(
    DefaultCtx,
    ReverseMode,
    Tuple{typeof(TorchBridge.functional_call), FunctionalModel, Vararg},
)

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
        primal(params) === nothing || _accumulate!(tangent(params), Tuple(dparams))
        _accumulate!(tangent(xs), Tuple(dinputs[1:nxs]))
        _accumulate!(tangent(kw), Tuple(dinputs[(nxs + 1):end]))
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

# Add a gradient into an argument's fdata, in place: an array's is an array of
# the same size; a Tuple's or NamedTuple's holds its elements'.
_accumulate!(fdata::Array, g::AbstractArray) = (fdata .+= g; fdata)
_accumulate!(fdata, ::Union{Nothing, CRC.AbstractZero}) = fdata
_accumulate!(fdata::NoFData, g) = fdata
function _accumulate!(fdata::Union{Tuple, NamedTuple}, gs::Tuple)
    foreach(_accumulate!, Tuple(fdata), gs)
    return fdata
end

end # module TorchBridgeMooncakeExt
