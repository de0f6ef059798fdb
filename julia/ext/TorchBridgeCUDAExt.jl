# CuArrays across the bridge. Sharing a CuArray with torch and receiving
# results on a CUDA device both go through DLPack.jl (whose CUDA extension
# maps CuArrays to kDLCUDA); this extension adds what DLPack.jl leaves out:
#
# - stream order, both ways: DLPack.jl ignores the consumer's stream, so
#   Julia's pending work on a CuArray is synchronized before torch reads it
#   (`_before_share`), and before any torch call that reads a model's memory
#   Julia may have written (parameters after `Optimisers.update!`, gradient
#   buffers filled by Julia before a torch optimiser step: `_before_torch`).
#   The other way, torchbridge synchronizes torch's stream before Julia reads
#   what torch wrote (`copy_out`, and every pullback and optimiser step of a
#   CUDA model, input gradients or not);
# - views: DLPack.jl's CUDA extension shares the *parent* of any strided CuArray
#   view (`share(A::StridedCuArray) = unsafe_share(parent(A))`), so a view that
#   is not itself a CuArray (a non-contiguous `view`, a `reshape` of one, an
#   `Adjoint`) would reach torch as its whole parent. Such an array is copied
#   into a dense CuArray, which the share then owns (`_shareable`). Contiguous
#   views are CuArrays in CUDA.jl and are shared as they are;
# - results: arrays that receive torch's CUDA outputs are allocated as CuArrays
#   on the device torch names (`_allocate`).
module TorchBridgeCUDAExt

using CUDA: CUDA
using TorchBridge: TorchBridge, TorchModel

TorchBridge._before_share(::CUDA.CuArray) = CUDA.synchronize()

TorchBridge._shareable(x::CUDA.AnyCuArray) = x isa CUDA.CuArray ? x : CUDA.CuArray(x)

function TorchBridge._before_torch(m::TorchModel)
    m.device === :cuda && CUDA.synchronize()
    return nothing
end

function TorchBridge._allocate(::Val{:cuda}, ::Type{T}, dims::Dims, index::Int) where {T}
    # CUDA.jl 5 defines `device!(f, ::CuDevice)` only; torch's index is the
    # same 0-based ordinal that `CuDevice` takes.
    return CUDA.device!(CUDA.CuDevice(index)) do
        CUDA.CuArray{T}(undef, dims)
    end
end

end # module TorchBridgeCUDAExt
