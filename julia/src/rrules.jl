##  Reverse mode through a TorchModel  ##
#
# NOTE [one forward, one pullback]
# The rrule runs one bridge forward that records torch's graph and returns a
# Python `Pullback` owning it. By default the Julia pullback is one-shot: its
# call writes the parameter gradients into the model's gradient buffers
# (`m.grads`), returns the input gradients as Julia-owned arrays, and releases
# the Python pullback and drops its handle before returning or throwing, so no
# graph outlives the step (an AD that never calls the pullback leaves it to
# `TorchBridge.scope` or `release!`).
#
# Inside `TorchBridge.scope(f; reusable = true)` the pullback may be called any
# number of times (`Zygote.jacobian`, `ChainRulesTestUtils.test_rrule`); each
# call returns the gradients of its own cotangent, and the scope frees the
# graph when it ends.
#
# The parameter tangent holds *copies* of the gradient buffers: the buffers are
# overwritten by the next pullback of the same model, and a tangent that
# aliased them would silently change under code that keeps gradients (gradient
# accumulation, comparing two steps). The copy costs one pass over the
# parameters per step.

# Keyword inputs (`input_ids`, `attention_mask` ...) cross like positional
# ones but get no tangent (ChainRules has none for keywords): token ids and
# masks need none. A float keyword input to differentiate (`inputs_embeds`) is
# passed in one NamedTuple instead, `m((; inputs_embeds, attention_mask))`,
# whose floating-point fields get their tangents.
function ChainRulesCore.rrule(m::TorchModel, xs::AbstractArray...; kw...)
    y, back = _bridge_rrule(m, xs, values(kw))
    function torchmodel_pullback(Δ)
        dm, dxs = back(Δ)
        return (dm, dxs[1:length(xs)]...) # keyword inputs' gradients are dropped
    end
    return y, torchmodel_pullback
end

function ChainRulesCore.rrule(m::TorchModel, inputs::NamedTuple)
    y, back = _bridge_rrule(m, (), inputs)
    function torchmodel_namedtuple_pullback(Δ)
        dm, dxs = back(Δ)
        return (dm, Tangent{typeof(inputs)}(; zip(keys(inputs), dxs)...))
    end
    return y, torchmodel_namedtuple_pullback
end

# One bridge forward recording torch's graph, for positional inputs `xs` and
# keyword inputs `kw` (a NamedTuple). Returns what the caller sees (`_select`)
# and a pullback giving the model's tangent and one tangent per input,
# positional ones first (see NOTE [one forward, one pullback]).
function _bridge_rrule(@nospecialize(m::TorchModel), xs::Tuple, kw::NamedTuple)
    _dual_template((xs..., values(kw)...)) === nothing ||
        return _dual_bridge_rrule(m, xs, kw)
    reusable = _in_reusable_scope()
    ys, pullback = _forward(m, xs, true; kw...)
    inputs = (xs..., values(kw)...)
    # a model without input gradients projects nothing (see `_BridgeBack`)
    projections = m.input_grads ? map(_projection, inputs) : nothing
    back = _BridgeBack(m, ys, pullback, length(inputs), projections, reusable, Ref(false))
    return _select(m, ys), back
end

# The pullback `_bridge_rrule` returns. A struct with untyped fields rather
# than a closure: a closure's type is built from the types it captures, here
# at run time on every call, since nothing is specialised on the model.
struct _BridgeBack
    model::TorchModel
    ys::Any
    pullback::Py
    ninputs::Int
    projections::Union{Nothing, Tuple} # nothing: every input's tangent is NoTangent()
    reusable::Bool
    used::Base.RefValue{Bool}
end

function (b::_BridgeBack)(Δ)
    m = b.model
    if b.used[] && !b.reusable
        msg = "pullback: this TorchModel pullback already ran and torch freed its graph; " *
            "a pullback is one-shot. Run the model again for another gradient, or run " *
            "the AD inside `TorchBridge.scope(f; reusable = true)` to call the " *
            "pullback several times (Zygote.jacobian does); the scope frees it at its end."
        throw(TorchBridgeError(:PullbackReleasedError, msg))
    end
    b.used[] = true
    Δ = m.output === nothing ? unthunk(Δ) : NamedTuple{(m.output,)}((unthunk(Δ),))
    dxs = _pullback(
        b.pullback,
        b.ys,
        Δ,
        b.ninputs;
        release = !b.reusable,
        inputs = m.input_grads,
    )
    b.projections === nothing && return _model_tangent(m), _no_tangents(b.ninputs)
    dinputs = map(b.projections, dxs) do project, dx
        dx === nothing ? NoTangent() : project(dx)
    end
    return _model_tangent(m), dinputs
end

_projection(x) = x isa AbstractArray ? ProjectTo(x) : nothing
_no_tangents(n::Int) = fill(NoTangent(), n)

# The model's tangent: copies of its gradient buffers (NOTE [one forward, one
# pullback]), structural all the way down so tangents add (ChainRules
# accumulation). The one place specialised on the model's type, so the tuple
# of copies is built without run-time type construction.
function _model_tangent(m::TorchModel{P}) where {P}
    return Tangent{typeof(m)}(; params = Tangent{P}(map(copy, m.grads)...))
end

# Call the Python pullback with the cotangents of `ys`; return one Julia-owned
# gradient (or nothing) per input. With `release`, the Python pullback is
# released and its handle dropped whatever happens; a reusable one is left to
# its scope. `inputs = false` (a model made with `input_grads = false`): torch
# computed no input gradient, so there is nothing to receive. See NOTE [one
# forward, one pullback].
function _pullback(
    pullback::Py,
    ys,
    Δ,
    ninputs::Int;
    release::Bool = true,
    inputs::Bool = true,
)
    shares = ()
    ran = false # a one-shot pullback that ran freed its graph itself
    try
        shares = _share_all(_cotangents(ys, Δ)) # a zero crosses as None
        result = _guard(() -> _tbjl.pullback(pullback, shares...))
        ran = true
        if !inputs
            PythonCall.pydel!(result)
            return Vector{Any}(nothing, ninputs)
        end
        grads, layouts, addresses = result[0], result[1], result[2]
        PythonCall.pydel!(result)
        try
            dxs = _receive(grads, _specs(layouts), addresses)
            if length(dxs) < ninputs
                msg = "pullback: torch returned $(length(dxs)) input gradients for $ninputs inputs."
                throw(TorchBridgeError(:CotangentError, msg))
            end
            return dxs[1:ninputs]
        finally
            PythonCall.pydel!(grads)
            PythonCall.pydel!(layouts)
            PythonCall.pydel!(addresses)
        end
    finally
        if release
            ran || _tbjl.release(pullback)
            PythonCall.pydel!(pullback)
        end
        _release_shares(shares)
    end
end

# One dense cotangent per output, shaped and typed like it; `nothing` for a zero.
_cotangents(y::AbstractArray, Δ) = (_cotangent(y, Δ),)
_cotangents(ys::Tuple, ::Union{Nothing, AbstractZero}) = map(_ -> nothing, ys)
_cotangents(ys::Tuple, Δ) = ntuple(i -> _cotangent(ys[i], Δ[i]), length(ys))
_cotangents(ys::NamedTuple, ::Union{Nothing, AbstractZero}) = map(_ -> nothing, Tuple(ys))
# named outputs: a loss on some fields only leaves the others' cotangents missing (zero)
function _cotangents(ys::NamedTuple, Δ)
    Δ = unthunk(Δ)
    return ntuple(length(ys)) do i
        name = keys(ys)[i]
        _cotangent(ys[i], hasproperty(Δ, name) ? getproperty(Δ, name) : nothing)
    end
end

# a zero (a field the loss does not use) crosses as no cotangent at all
_cotangent(::AbstractArray, ::Union{Nothing, AbstractZero}) = nothing
function _cotangent(y::AbstractArray, dy)
    dy = unthunk(dy)
    dy isa Union{Nothing, AbstractZero} && return nothing
    dy isa typeof(y) && return dy
    return copyto!(similar(y), dy)
end

# Inputs of duals (ForwardDiff over an AD that reads this rrule: a Hessian-vector
# product, `SecondOrder(AutoForwardDiff(), AutoZygote())`): the model's twin
# runs torch's forward mode, and its pullback forward over reverse (NOTE
# [functional calls from Julia]). The model's tangent holds the parameters'
# gradients, duals too; the gradient buffers `m.grads` are not written.
function _dual_bridge_rrule(@nospecialize(m::TorchModel), xs::Tuple, kw::NamedTuple)
    y, _, back = _functional_rrule(_twin(m), nothing, nothing, nothing, xs, kw)
    function dual_pullback(Δ)
        dparams, dinputs = back(Δ)
        P = typeof(m.params)
        return Tangent{typeof(m)}(; params = Tangent{P}(dparams...)), dinputs
    end
    return y, dual_pullback
end
