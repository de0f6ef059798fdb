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
    y, back = Zygote.chain_rrule(Zygote.ZygoteRuleConfig(cx), m, xs...)
    return y, _recording_params(back, cx, m, 1)
end

function Zygote._pullback(cx::Zygote.Context{true}, m::TorchModel, inputs::NamedTuple)
    y, back = Zygote.chain_rrule(Zygote.ZygoteRuleConfig(cx), m, inputs)
    return y, _recording_params(back, cx, m, 1)
end

# m(x; attention_mask): Core.kwcall(kw, m, x...), whose pullback gives
# (kwcall, kw, m, x...)'s tangents
function Zygote._pullback(
    cx::Zygote.Context{true},
    kwf::typeof(Core.kwcall),
    kw::NamedTuple,
    m::TorchModel,
    xs::AbstractArray...,
)
    y, back = Zygote.chain_rrule_kw(Zygote.ZygoteRuleConfig(cx), kwf, kw, m, xs...)
    return y, _recording_params(back, cx, m, 3)
end

# `back`, then each parameter's gradient (the `at`-th tangent's `params`)
# handed to Zygote's record of implicit parameters.
function _recording_params(back, cx, m::TorchModel, at::Int)
    return function implicit_params_pullback(Δ)
        grads = back(Δ)
        grads === nothing && return nothing
        dm = grads[at]
        dparams = dm === nothing ? nothing : dm.params
        if dparams !== nothing
            for (p, g) in zip(m.params, dparams)
                g === nothing || Zygote.accum_param(cx, p, g)
            end
        end
        return grads
    end
end

Zygote._project(::TorchModel, dx) = dx

end # module TorchBridgeZygoteExt
