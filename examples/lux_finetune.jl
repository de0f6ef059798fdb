# A pretrained torch backbone under a Lux head, trained with Lux.Training.
# docs/julia.md ("Lux") walks through it.
#
#     julia --project=julia examples/lux_finetune.jl
#
# Needs Lux, Optimisers and Zygote in an environment on the load path and the
# pretrained weights of timm/resnet18.a1_in1k in the Hugging Face cache, or
# network access. Offline, name a weights file, and optionally another model:
#
#     MODEL=timm/resnet10t WEIGHTS=/path/to/resnet10t.safetensors STEPS=5 \
#         julia --project=julia examples/lux_finetune.jl
#
# The data is synthetic: two classes of 64×64 images told apart by their mean
# colour.

using TorchBridge
using Lux: Lux
using Optimisers: Optimisers
using Random: Random
using Zygote # loaded: Lux.Training differentiates with it (AutoZygote)

const MODEL = get(ENV, "MODEL", "timm/resnet18.a1_in1k")
const WEIGHTS = get(ENV, "WEIGHTS", nothing) # a file instead of the published weights
const STEPS = parse(Int, get(ENV, "STEPS", "30"))
const CLASSES = 2
const SIZE = 64

# Synthetic images in Julia order (W, H, C, N), one-hot labels (classes, N).
function batch(n)
    labels = rand(1:CLASSES, n)
    x = randn(Float32, SIZE, SIZE, 3, n) .* 0.5f0
    for (i, l) in enumerate(labels)
        x[:, :, l, i] .+= 1.0f0
    end
    y = zeros(Float32, CLASSES, n)
    foreach(((i, l),) -> y[l, i] = 1, enumerate(labels))
    return x, y
end

# The torch network without its classifier (its output is the last feature map,
# (W, H, C, N)) as a Lux layer; a Lux head on top. The backbone's parameters
# are Lux parameters like the head's: torch runs on the `ps` passed in.
backbone = TorchLayer(MODEL; pretrained = true, weights = WEIGHTS, features = true)
channels = model_info(MODEL).feature_channels
model = Lux.Chain(
    backbone,
    Lux.GlobalMeanPool(),
    Lux.FlattenLayer(),
    Lux.Dense(channels => CLASSES),
)
ps, st = Lux.setup(Random.Xoshiro(0), model)
println("sizes without running: ", Lux.outputsize(model, batch(1)[1], Random.Xoshiro(0)))

# Lux.Training: Zygote differentiates the whole chain; the backbone's gradients
# are torch autograd's, and its BatchNorm statistics come back in the state.
lossfn = Lux.CrossEntropyLoss(; logits = Val(true))
function train(ts, steps)
    for step in 1:steps
        x, y = batch(16)
        _, loss, _, ts = Lux.Training.single_train_step!(
            Lux.AutoZygote(),
            lossfn,
            (x, y),
            ts,
        )
        step % 10 == 0 && println("step $step: loss $(round(loss; digits = 4))")
    end
    return ts
end
baseline = memory_stats()
ts = train(Lux.Training.TrainState(model, ps, st, Optimisers.Adam(1.0f-3)), STEPS)
@assert memory_stats() == baseline # no graph, share or pullback outlives a step

# Evaluation: running statistics instead of batch ones.
x, y = batch(64)
logits, _ = model(x, ts.parameters, Lux.testmode(ts.states))
accuracy = sum(argmax(logits; dims = 1) .== argmax(y; dims = 1)) / size(y, 2)
println("accuracy on fresh data: $accuracy")
