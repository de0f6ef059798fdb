##  Arrays across the boundary  ##
#
# NOTE [ownership of crossing arrays]
# Every array that crosses has one owner and one release point:
#
# - Inputs and cotangents stay owned by Julia and cross without a copy. A
#   dense CPU `Array` of a numpy type is passed as itself: PythonCall wraps it
#   in a juliacall `ArrayValue`, torch views it through the buffer protocol,
#   and the wrapper keeps `x` alive until torch drops the view. Any other
#   array is shared by `to_torch`, `DLPack.share(x, torch.from_dlpack)`:
#   DLPack.jl keeps `x` in its `SHARES_POOL` until torch drops the tensor. The
#   call's own handles are dropped right after it (the argument tuple,
#   `PythonCall.pydel!`); torch lets go when the step's pullback has run or
#   been released.
# - Results are copied into arrays Julia allocates and owns (`_receive`): on
#   the CPU from the tensor's address, otherwise by torch into a shared array.
#   The handles to torch's tensors are dropped at once, so no torch memory
#   waits for Julia's garbage collector (the DLPack.jl #26 leak).
# - Parameters and gradient buffers are torch's memory, wrapped once when a
#   model is wrapped (`_wrap`) and owned by the model (see `models.jl`).

# Element types by the name `torchbridge.exchange.julia_layout` gives them:
# every type DLPack.jl can share. `BFloat16` is BFloat16s.jl's, which DLPack.jl
# loads; torch's `complex32` (`ComplexF16`) has no DLPack.jl mapping.
const _ELTYPES = Dict{String, DataType}(
    "Float16" => Float16,
    "BFloat16" => DLPack.BFloat16,
    "Float32" => Float32,
    "Float64" => Float64,
    "ComplexF32" => ComplexF32,
    "ComplexF64" => ComplexF64,
    "Int8" => Int8,
    "Int16" => Int16,
    "Int32" => Int32,
    "Int64" => Int64,
    "UInt8" => UInt8,
    "UInt16" => UInt16,
    "UInt32" => UInt32,
    "UInt64" => UInt64,
    "Bool" => Bool,
)

# The element types whose `Array`s Python views through the buffer protocol
# (PythonCall's bufferable types that numpy and torch both read).
const _BufferEltype = Union{
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float16,
    Float32,
    Float64,
    ComplexF32,
    ComplexF64,
}

function _eltype(name::String)
    T = get(_ELTYPES, name, nothing)
    T === nothing || return T
    msg = "a result has torch element type $name, which TorchBridge cannot receive through " *
        "DLPack.jl; convert it in torch first (e.g. to Float32). Types that cross: " *
        join(sort!(collect(keys(_ELTYPES))), ", ") *
        "."
    throw(TorchBridgeError(:UnsupportedDTypeError, msg))
end

"""
    to_torch(x::AbstractArray) -> Py

A torch tensor over the memory of `x`, with the dimensions reversed: a Julia
`(W, H, C, N)` array is the torch tensor of shape `(N, C, H, W)`. Writes on
either side are seen on the other.

A strided array is shared without a copy; any other array (a `FillArray`, a
`OneHotMatrix`, a lazy `Adjoint`) is `collect`ed first and the copy is shared.
DLPack.jl keeps `x` alive until torch drops the tensor; drop the returned
handle with `PythonCall.pydel!` when done with it so that happens at once.
"""
function to_torch(x::AbstractArray)
    shared = _shareable(x)
    _before_share(shared)
    return DLPack.share(shared, _torch.from_dlpack)
end

# The array DLPack.jl shares for `x`: `x` itself when strided, else a dense
# copy (owned by the share). Device extensions add their own rules.
_shareable(x::AbstractArray) = x isa StridedArray ? x : collect(x)

# Device extensions order pending work before torch reads (CUDA: synchronize).
_before_share(x) = nothing

"""
    from_torch(t::Py) -> Array

A Julia-owned copy of the torch tensor `t`, with the dimensions reversed (a
torch `(N, C, H, W)` tensor becomes a Julia `(W, H, C, N)` array); a `CuArray`
when `t` is on a CUDA device and CUDA.jl is loaded. `t` itself is left alone.
"""
function from_torch(t::Py)
    tensors = pytuple((t,))
    layouts = _guard(() -> _tbjl.layouts(tensors))
    try
        return only(_receive(tensors, layouts))
    finally
        PythonCall.pydel!(layouts)
        PythonCall.pydel!(tensors)
    end
end

# Allocate a Julia array for a result, on the device the layout names.
_allocate(::Val{:cpu}, ::Type{T}, dims::Dims, index::Int) where {T} = Array{T}(undef, dims)
function _allocate(::Val{D}, ::Type{T}, dims::Dims, index::Int) where {D, T}
    msg = "a result lives on torch device $D:$index, and TorchBridge can only receive it " *
        "there with that device's Julia package loaded (`using CUDA` for cuda)."
    throw(TorchBridgeError(:DeviceMismatchError, msg))
end

# What a Julia array receiving a result needs: (size, element type, device, index).
const _Spec = Tuple{Dims, DataType, Symbol, Int}

# A model's last call (`_forward`): the key of its inputs (types and sizes of
# arrays, keyword values), its outputs' Python layouts, the same as specs, and
# the outputs' names (nothing when unnamed). Concretely typed: it is read on
# every call.
struct _OutputCache
    key::Any
    layouts::Py
    specs::Vector{Union{Nothing, _Spec}}
    names::Union{Nothing, Vector{String}}
end

# The specs of Python `layouts` (`nothing` where a layout is None).
function _specs(layouts::Py)
    n = length(layouts)
    specs = Vector{Union{Nothing, _Spec}}(nothing, n) # one type, whatever the layouts
    for i in 1:n
        layout = layouts[i - 1]
        if !_isnone(layout)
            dims, eltype, device, index = pyconvert(
                Tuple{Vector{Int}, String, String, Int},
                layout,
            )
            specs[i] = (Tuple(dims), _eltype(eltype), Symbol(device), index)
        end
        PythonCall.pydel!(layout)
    end
    return specs
end

# A fresh Julia array for one spec; the CPU without a `Val` built at run time.
function _allocate(spec::_Spec)
    dims, T, device, index = spec
    device === :cpu && return Array{T}(undef, dims)
    return _allocate(Val(device), T, dims, index)
end

# Copy torch `tensors` (a Python sequence, `None` entries allowed) into fresh
# Julia arrays allocated from their `layouts`; `nothing` where a tensor is None.
# With `addresses` (Python's `julia_support.addresses` of the tensors), a tensor
# with an address is copied from it here, while the caller holds `tensors`;
# the others are shared and filled by one `copy_out` call. See NOTE [ownership
# of crossing arrays].
_receive(tensors::Py, layouts::Py) = _receive(tensors, _specs(layouts))

function _receive(
    tensors::Py,
    specs::AbstractVector,
    addresses::Union{Nothing, Py} = nothing,
)
    n = length(specs)
    arrays = Vector{Any}(undef, n)
    shares = Vector{Union{Nothing, Py}}(nothing, n)
    try
        for i in 1:n
            spec = specs[i]
            if spec === nothing
                arrays[i] = nothing
                continue
            end
            A = _allocate(spec)
            arrays[i] = A
            address = addresses === nothing ? nothing : addresses[i - 1]
            if address === nothing || _isnone(address)
                shares[i] = to_torch(A)
            else
                _copy_from!(A, pyconvert(UInt, address))
            end
            address === nothing || PythonCall.pydel!(address)
        end
        all(isnothing, shares) && return arrays # copied, or nothing to copy
        destinations = pytuple(shares)
        try
            _guard(() -> _tbjl.copy_out(destinations, tensors))
        finally
            PythonCall.pydel!(destinations)
        end
    finally
        foreach(s -> s === nothing || PythonCall.pydel!(s), shares)
    end
    return arrays
end

# Copy the data of a C-contiguous CPU tensor at `address` (valid while its
# holder keeps the tensor) into `A`, which has its layout.
function _copy_from!(A::Array{T}, address::UInt) where {T}
    isempty(A) && return A # an empty tensor's address may be 0
    GC.@preserve A unsafe_copyto!(pointer(A), Ptr{T}(address), length(A))
    return A
end

# Wrap a C-contiguous torch tensor that the model owns (a parameter or a
# gradient buffer) as a Julia array over the same memory, dims reversed.
# DLPack.jl's import guesses the layout from the strides, which is ambiguous
# when all but one dimension have size one (DLPack.jl #47); reshaping to the
# reversed torch shape makes the result exact, still without a copy.
function _wrap(t::Py)
    dims = Tuple(reverse(pyconvert(Vector{Int}, t.shape)))
    A = DLPack.from_dlpack(t)
    return size(A) == dims ? A : reshape(A, dims)
end
