# CuArrays across the bridge. Sharing a CuArray with torch and receiving
# results on a CUDA device both go through DLPack.jl (whose CUDA extension
# maps CuArrays to kDLCUDA); this extension adds what DLPack.jl leaves out:
#
# - stream order: DLPack.jl ignores the consumer's stream, so Julia's pending
#   work on a CuArray is synchronized before torch reads it (`_before_share`);
#   torchbridge's `copy_out` synchronizes torch's stream before Julia reads a
#   result;
# - results: arrays that receive torch's CUDA outputs are allocated as CuArrays
#   on the device torch names (`_allocate`).
module TorchBridgeCUDAExt

using CUDA: CUDA
using TorchBridge: TorchBridge

TorchBridge._before_share(::CUDA.CuArray) = CUDA.synchronize()

function TorchBridge._allocate(::Val{:cuda}, ::Type{T}, dims::Dims, index::Int) where {T}
    # CUDA.jl 5 defines `device!(f, ::CuDevice)` only; torch's index is the
    # same 0-based ordinal that `CuDevice` takes.
    return CUDA.device!(CUDA.CuDevice(index)) do
        CUDA.CuArray{T}(undef, dims)
    end
end

end # module TorchBridgeCUDAExt
