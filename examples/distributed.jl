# Data-parallel training from Julia on torch.distributed: Zygote + Optimisers.jl,
# one process per rank, gradients averaged by torch (DDP) inside each pullback.
#
#     mpiexecjl -n 2 julia --project=julia examples/distributed.jl
#
# or, without MPI, two processes with torchrun's variables set by hand:
#
#     for r in 0 1; do
#         RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \
#             julia --project=julia examples/distributed.jl &
#     done; wait
#
# Started alone, it is a world of one and trains on the whole batch. Needs
# Zygote and Optimisers in an environment on the load path (see
# examples/finetune.jl). STEPS sets the number of steps; with OUT set, rank 0
# writes the trained parameters there (Serialization), as the test suite
# compares them with a single process.

using TorchBridge
using Optimisers: Optimisers
using PythonCall: pyimport
using Random: Xoshiro
using Serialization: serialize
using Zygote: Zygote

const STEPS = parse(Int, get(ENV, "STEPS", "20"))

world = TorchBridge.init_distributed() # before the model is wrapped
println("rank $(world.rank) of $(world.world_size) ($(world.launcher)), on $(world.device)")

# the same initial weights everywhere (DDP also broadcasts rank 0's)
torch = pyimport("torch")
torch.manual_seed(0)
nn = torch.nn
model = pyimport("torchbridge").bridge(nn.Sequential(
    nn.Linear(6, 16),
    nn.Tanh(),
    nn.Linear(16, 3),
))
m = TorchModel(model; input_grads = false)

# a fixed global batch in Julia order (features, N); this rank trains on its rows
rng = Xoshiro(7)
X, Y = randn(rng, Float32, 6, 64), randn(rng, Float32, 3, 64)
rows = TorchBridge.shard(size(X, 2))
x, y = X[:, rows], Y[:, rows]

state = Optimisers.setup(Optimisers.Adam(1.0f-2), m)
for step in 1:STEPS
    TorchBridge.scope() do
        # the mean over this rank's rows: equal shares average to the whole batch's mean
        loss, grads = Zygote.withgradient(m -> sum(abs2, m(x) .- y) / length(y), m)
        Optimisers.update!(state, m, grads[1]) # the same averaged gradient on every rank
        step % 10 == 0 &&
            world.rank == 0 &&
            println("step $step: loss on rank 0's rows $loss")
    end
end

if world.rank == 0 && haskey(ENV, "OUT")
    serialize(ENV["OUT"], map(copy, m.params))
end
close!(m)
TorchBridge.destroy_distributed()
