# Flux's train/test mode reaches torch. `Flux.trainmode!(model)` and
# `Flux.testmode!(model)` walk a model's children and call
# `Flux.testmode!(child, mode)` on each, so a TorchModel, alone or inside a
# `Chain`, switches torch's BatchNorm and dropout with
# `TorchBridge.trainmode!`. Flux's automatic mode (`:auto` or `nothing`) leaves
# torch's mode as it is: torch has no notion of it.
#
# TorchBridge does not export its own `trainmode!`/`testmode!`, so with
# `using Flux, TorchBridge` the bare names are Flux's and reach torch through
# this method.
module TorchBridgeFluxExt

using Flux: Flux
using TorchBridge: TorchBridge, TorchModel

function Flux.testmode!(m::TorchModel, mode = true)
    mode isa Bool && TorchBridge.trainmode!(m, !mode)
    return m
end

end # module TorchBridgeFluxExt
