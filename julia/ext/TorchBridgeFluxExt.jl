# Flux's train/test mode reaches torch, and `Flux.outputsize` sizes a
# TorchModel.
#
# Mode: `Flux.trainmode!(model)` and
# `Flux.testmode!(model)` walk a model's children and call
# `Flux.testmode!(child, mode)` on each, so a TorchModel, alone or inside a
# `Chain`, switches torch's BatchNorm and dropout with
# `TorchBridge.trainmode!`. Flux's automatic mode (`:auto` or `nothing`) leaves
# torch's mode as it is: torch has no notion of it.
#
# TorchBridge does not export its own `trainmode!`/`testmode!`, so with
# `using Flux, TorchBridge` the bare names are Flux's and reach torch through
# this method.
#
# Size: `Flux.outputsize(m, (224, 224, 3, 1))` calls `m` on arrays of Flux's
# `Nil` (no values), alone or inside a `Chain`, as FastAI.jl's `blockmodel`
# does to size a head. A TorchModel answers by asking torch, which runs the
# module on fake tensors: no data, no memory for values, any input size. The
# sizes are in Julia order. A model whose output size depends on its input's
# values throws a `TorchBridgeError` of kind `:OutputSizeUnknownError`; sizes
# the module rejects, `:InputShapeError`.
module TorchBridgeFluxExt

using Flux: Flux
using Flux.NilNumber: Nil, nil
using TorchBridge: TorchBridge, TorchModel

function Flux.testmode!(m::TorchModel, mode = true)
    mode isa Bool && TorchBridge.trainmode!(m, !mode)
    return m
end

function (m::TorchModel)(x::AbstractArray{Nil}, xs::AbstractArray{Nil}...)
    sizes, names = TorchBridge._output_sizes(m, map(size, (x, xs...)))
    return TorchBridge._select(
        m,
        TorchBridge._outputs([fill(nil, s) for s in sizes], names),
    )
end

# Flux hands several inputs to a layer as one tuple.
(m::TorchModel)(xs::Tuple{AbstractArray{Nil}, Vararg{AbstractArray{Nil}}}) = m(xs...)

end # module TorchBridgeFluxExt
