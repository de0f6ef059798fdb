##  Data-parallel training on torch.distributed  ##
#
# The process group is torch's: TorchBridge only asks the Python side to join
# it from the launcher's variables (`mpiexecjl`, `srun`, or torchrun's set by
# hand; MPI.jl is not needed). Models wrapped after `init_distributed` are
# DistributedDataParallel on the Python side, so every pullback leaves the
# average gradient over the ranks in `m.grads`, and Optimisers.jl (or a
# `TorchOptimiser`) takes the same step everywhere. See docs/distributed.md.

"""
    TorchBridge.init_distributed(; backend = nothing, timeout = nothing) -> NamedTuple

Join the job this process was launched in (`torchbridge.distributed.init`):
returns `(; rank, world_size, local_rank, local_world_size, device, backend,
launcher)`, ranks 0-based as the launchers count them. Call it before
[`load_model`](@ref): models wrapped afterwards average their gradients across
the ranks. `backend` is `"gloo"` or `"nccl"` (the default picks `nccl` with a
CUDA device); `timeout` (seconds) bounds how long a rank waits for the others
before a `TorchBridgeError` of kind `:RankFailedError`. A process started
without a launcher is a world of one, and nothing else changes.
"""
function init_distributed(; backend = nothing, timeout = nothing)
    world = _guard(() -> _tbjl.init_distributed(backend; timeout = timeout))
    try
        return (
            rank = pyconvert(Int, world["rank"]),
            world_size = pyconvert(Int, world["world_size"]),
            local_rank = pyconvert(Int, world["local_rank"]),
            local_world_size = pyconvert(Int, world["local_world_size"]),
            device = pyconvert(String, world["device"]),
            backend = _optional(String, world["backend"]),
            launcher = _optional(String, world["launcher"]),
        )
    finally
        PythonCall.pydel!(world)
    end
end

"""
    TorchBridge.destroy_distributed() -> nothing

Leave the process group (`torchbridge.distributed.destroy`); safe to call twice.
"""
function destroy_distributed()
    _guard(() -> _tbjl.destroy_distributed())
    return nothing
end

"""
    TorchBridge.shard(n::Integer) -> UnitRange{Int}

This rank's share of `n` rows, as a Julia range (`1:n` in a world of one): the
same split torchbridge's `fit` uses, contiguous and in order, so the ranks
together cover `1:n` once. Index the last (batch) dimension with it:
`x[:, :, :, shard(size(x, 4))]`.
"""
function shard(n::Integer)
    bounds = _guard(() -> _tbjl.shard_bounds(n))
    start, stop = pyconvert(Tuple{Int, Int}, bounds)
    PythonCall.pydel!(bounds)
    return (start + 1):stop
end
