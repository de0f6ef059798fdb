# Optimisers.jl needs nothing from this extension to train a TorchModel with
# its own rules: Functors.jl shows it `params` (arrays over torch's memory) and
# `update!` writes them in place. What this adds is `TorchOptimiser` as a rule
# for `setup`/`update!`, so the update itself runs in torch:
#
#     state = Optimisers.setup(TorchOptimiser(Adam(1e-3)), model)
#     grads = Zygote.gradient(m -> loss(m(x), y), model)[1]
#     state, model = Optimisers.update!(state, model, grads)
#
# `update!` runs one torch optimiser step (and one schedule step) on the
# gradients it is given, viewed where they are: the tangent the rrule returns
# (copies of the gradient buffers, see `rrules.jl`) is not copied back.
# `setup` takes the TorchModel itself: inside a `Chain`, use an Optimisers.jl
# rule, or set up the TorchModel's part with its own state.
module TorchBridgeOptimisersExt

using Optimisers: Optimisers
using PythonCall: PythonCall, Py
using TorchBridge: TorchBridge, TorchModel, TorchOptimiser

const CRC = TorchBridge.ChainRulesCore

"""
    TorchOptimiserState

What `Optimisers.setup(::TorchOptimiser, ::TorchModel)` returns: the torch
optimiser (with its schedule) over the model's parameters.
"""
struct TorchOptimiserState
    rule::TorchOptimiser
    py::Py
end

function Optimisers.setup(o::TorchOptimiser, m::TorchModel)
    return TorchOptimiserState(o, TorchBridge._torch_optimiser(m, o))
end

function Optimisers.update!(state::TorchOptimiserState, m::TorchModel, grads)
    dparams = _params_tangent(grads)
    dparams === nothing && return state, m
    # Each gradient is applied where it is when torch can view it as its
    # parameter's (the tangent the rrule returned: no copy back); any other
    # (a zero, another element type or array type) is written into the
    # parameter's buffer first, and the buffer applied.
    given = map(m.grads, dparams) do buffer, g
        if g === nothing || g isa CRC.AbstractZero
            fill!(buffer, 0)
            return nothing
        elseif g === buffer
            return nothing
        elseif g isa Array && typeof(g) === typeof(buffer) && size(g) == size(buffer)
            return g
        else
            copyto!(buffer, g)
            return nothing
        end
    end
    TorchBridge._before_torch(m) # Julia's writes land before torch reads
    shares = TorchBridge._share_all(given)
    try
        arrays = PythonCall.pytuple(shares)
        try
            TorchBridge._guard(() -> TorchBridge._tbjl.optimizer_step(state.py, arrays))
        finally
            PythonCall.pydel!(arrays)
        end
    finally
        TorchBridge._release_shares(shares)
    end
    return state, m
end

Optimisers.update(state::TorchOptimiserState, m::TorchModel, grads) = Optimisers.update!(
    state,
    m,
    grads,
)

"""
    Optimisers.adjust!(state::TorchOptimiserState, eta::Real)

Set the learning rate of the torch optimiser (a schedule keeps scaling it).
"""
function Optimisers.adjust!(state::TorchOptimiserState, eta::Real)
    TorchBridge._guard(() -> TorchBridge._tbjl.set_learning_rate(state.py, eta))
    return state
end

# The parameter gradients in whatever mirror the AD produced: a Tangent (any
# ChainRules AD), a NamedTuple (Zygote), or nothing when no gradient reached
# the model. Elements may be `nothing` or zeros for parameters without one.
_params_tangent(::Union{Nothing, CRC.AbstractZero}) = nothing
_params_tangent(g::CRC.Tangent) = _param_arrays(g.params)
_params_tangent(g::NamedTuple) = haskey(g, :params) ? _param_arrays(g.params) : nothing
_param_arrays(::Union{Nothing, CRC.AbstractZero}) = nothing
_param_arrays(g) = map(CRC.unthunk, Tuple(g))

end # module TorchBridgeOptimisersExt
