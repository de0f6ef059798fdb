# ForwardDiff's dual numbers into torch: forward mode, and forward over reverse.
#
# An array of `Dual{T,V,N}` is `N + 1` values of `V` per element, the value
# first; it crosses reinterpreted as an array of `V` of size `(N + 1, dims...)`
# without a copy (NOTE [dual numbers cross packed] in the Python
# `julia_support.functional`). Torch runs its forward mode on the `N`
# directions at once (`torch.func.jvp` batched by `vmap`, or one direction at a
# time when the call writes BatchNorm statistics) and the outputs come back as
# arrays of duals of the same tag. A `TorchModel`, a `TorchLayer` and
# `TorchBridge.functional_call` all take them: `ForwardDiff.jacobian`,
# `DifferentiationInterface` with `AutoForwardDiff()`, and forward over
# reverse (`SecondOrder(AutoForwardDiff(), AutoZygote())`: Zygote's pullback
# then receives duals, and torch computes the derivative of its
# vector-Jacobian product).
module TorchBridgeForwardDiffExt

using ForwardDiff: Dual
using TorchBridge: TorchBridge, TorchBridgeError

TorchBridge._partials(::AbstractArray{<:Dual{T, V, N}}) where {T, V, N} = N

function TorchBridge._partials(x::AbstractArray{<:Dual{T, <:Dual}}) where {T}
    msg = "an array of nested duals ($(eltype(x))) cannot cross to torch: forward over " *
        "forward mode is not supported. Differentiate the inner function with a " *
        "reverse-mode AD (SecondOrder(AutoForwardDiff(), AutoZygote()))."
    throw(TorchBridgeError(:UnsupportedDTypeError, msg))
end

TorchBridge._packed(x::AbstractArray{<:Dual{T, V, N}}) where {T, V, N} = reinterpret(
    reshape,
    V,
    x,
)

function TorchBridge._unpacked(
    ::AbstractArray{<:Dual{T, V, N}},
    packed::AbstractArray{W},
) where {T, V, N, W}
    if size(packed, 1) != N + 1
        msg = "a packed result has $(size(packed, 1)) values per element for duals of $N " *
            "partials; expected $(N + 1)."
        throw(TorchBridgeError(:ParameterMismatchError, msg))
    end
    # the result's own element type (a Float32 model's outputs for Float64 duals
    # cannot happen: the call refuses mixed types)
    return copy(reinterpret(reshape, Dual{T, W, N}, packed))
end

TorchBridge._same_duals(
    ::AbstractArray{<:Dual{T, V, N}},
    ::AbstractArray{<:Dual{T, W, N}},
) where {T, V, W, N} = true
TorchBridge._same_duals(::AbstractArray{<:Dual}, ::AbstractArray{<:Dual}) = false

end # module TorchBridgeForwardDiffExt
