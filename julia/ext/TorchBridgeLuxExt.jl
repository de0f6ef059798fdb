# Lux's sizes without values reach a TorchLayer.
#
# `Lux.outputsize(model, x, rng)` calls every layer of a model on arrays of
# Lux's `Nil` (no values). A `TorchLayer` among them answers from torch's fake
# tensors (no data, no memory for values), as its own `LuxCore.outputsize`
# does: its output is an array of `Nil` of the output's size.
module TorchBridgeLuxExt

using Lux: Lux
using TorchBridge: TorchBridge

const Nil = Lux.NilSizePropagation.Nil

TorchBridge._sizes_only(::AbstractArray{<:Nil}) = true
TorchBridge._nil_array(
    ::AbstractArray{<:Nil},
    dims::Dims,
) = Lux.NilSizePropagation.NilArray{length(dims)}(dims)

end # module TorchBridgeLuxExt
