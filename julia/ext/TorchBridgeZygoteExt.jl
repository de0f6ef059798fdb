# Zygote's implicit parameters reach torch's.
#
# With implicit parameters (`ps = Flux.params(model)`, `gradient(() -> loss, ps)`:
# what Flux.Optimise's optimisers use, and FluxTraining and FastAI.jl with
# them, e.g. Flux 0.14's `Adam()`), Zygote records a gradient for an array of
# `ps` only where the code it differentiates reads that array. A TorchModel's
# parameters are read by torch, inside the rrule, so they would get no gradient
# and the optimiser would silently leave the torch module as it was. This
# method runs the same rrule and hands each parameter's gradient to Zygote's
# record of implicit parameters. Explicit gradients (`gradient(m -> loss, m)`,
# Optimisers.jl) do not go through it.
#
# A model's own gradient is already in Zygote's form (`(params = (...),)`, the
# arrays typed and sized as the parameters), so `Zygote.gradient` returns it
# without converting it to a ChainRules tangent, projecting each parameter and
# converting it back: that round trip cost every step time and, being typed
# by the model's parameter tuple, compiled anew for every model.
module TorchBridgeZygoteExt

using TorchBridge: TorchModel
using Zygote: Zygote

function Zygote._pullback(cx::Zygote.Context{true}, m::TorchModel, xs::AbstractArray...)
    return _implicit_pullback(cx, m, xs...)
end

function Zygote._pullback(cx::Zygote.Context{true}, m::TorchModel, inputs::NamedTuple)
    return _implicit_pullback(cx, m, inputs)
end

function _implicit_pullback(cx, m::TorchModel, args...)
    y, back = Zygote.chain_rrule(Zygote.ZygoteRuleConfig(cx), m, args...)
    function implicit_params_pullback(Δ)
        grads = back(Δ)
        grads === nothing && return nothing
        dm = first(grads)
        dparams = dm === nothing ? nothing : dm.params
        if dparams !== nothing
            for (p, g) in zip(m.params, dparams)
                g === nothing || Zygote.accum_param(cx, p, g)
            end
        end
        return grads
    end
    return y, implicit_params_pullback
end

Zygote._project(::TorchModel, dx) = dx

end # module TorchBridgeZygoteExt
