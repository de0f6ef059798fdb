# Finetune a pretrained timm model from Julia, two ways, then export it to ONNX.
# docs/tutorial.md walks through it.
#
#     julia --project=julia examples/finetune.jl
#
# Needs Flux, FluxTraining, Optimisers and Zygote in an environment on the load
# path (your default environment, `@v1.10` ...) and the pretrained weights of
# timm/resnet18.a1_in1k in the Hugging Face cache, or network access. Offline,
# name a weights file, and optionally another model, in the environment:
#
#     MODEL=timm/resnet10t WEIGHTS=/path/to/resnet10t.safetensors EPOCHS=1 \
#         julia --project=julia examples/finetune.jl
#
# The data is synthetic: two classes of 64×64 images told apart by their mean
# colour.

using TorchBridge
using Flux: Flux
using FluxTraining: FluxTraining
using Optimisers: Optimisers
using Zygote: Zygote

const MODEL = get(ENV, "MODEL", "timm/resnet18.a1_in1k")
const WEIGHTS = get(ENV, "WEIGHTS", nothing) # a file instead of the published weights
const EPOCHS = parse(Int, get(ENV, "EPOCHS", "3"))
const CLASSES = 2
const SIZE = 64

# source, task, input size (Julia order), mean/std, weights cached?
println(model_info(MODEL))

# Synthetic images in Julia order (W, H, C, N), one-hot labels (classes, N).
function batch(n)
    labels = rand(1:CLASSES, n)
    x = randn(Float32, SIZE, SIZE, 3, n) .* 0.5f0
    for (i, l) in enumerate(labels)
        x[:, :, l, i] .+= 1.0f0
    end
    return x, Float32.(Flux.onehotbatch(labels, 1:CLASSES))
end

train = [batch(16) for _ in 1:8]
valid = [batch(16) for _ in 1:2]
accuracy(model, data) = sum(
    sum(Flux.onecold(model(x)) .== Flux.onecold(y))
    for (x, y) in data
) /
    sum(size(y, 2) for (_, y) in data)

## 1. The whole step in torch, driven by a FluxTraining Learner
#
# A new 2-class head on the pretrained network; TorchOptimiser runs
# Optimisers.jl's Adam as a torch optimiser, with a cosine schedule.

model = load_model(MODEL; pretrained = true, weights = WEIGHTS, num_classes = CLASSES)
Flux.trainmode!(model) # Flux's mode functions switch torch's BatchNorm and dropout
learner = FluxTraining.Learner(
    model,
    Flux.logitcrossentropy;
    data = (train, valid),
    optimizer = TorchOptimiser(
        Optimisers.Adam(1.0f-3);
        schedule = (schedule = :cosine, steps = EPOCHS * length(train)),
    ),
)
fit_torch!(learner, EPOCHS)
Flux.testmode!(model)
println("torch-native finetuning: validation accuracy ", accuracy(model, valid))

## 2. FastAI's recipe: a feature backbone, a head sized by Flux.outputsize
#
# features = true drops the pooling and the classifier: the backbone returns
# its last feature map (W, H, C, N). Flux.outputsize asks torch for its size
# without data, as FastAI.jl's blockmodel does, and a Flux head pools and
# classifies it. As FastAI's finetune! does, the first epoch trains the head
# only (the backbone's optimiser state is frozen, so torch's parameters stay as
# loaded); later epochs train both, the pretrained layers with a smaller step.
# The backbone's input gradient is not needed (it sees data only).

backbone = load_model(
    MODEL;
    pretrained = true,
    weights = WEIGHTS,
    features = true,
    input_grads = false,
)
channels = Flux.outputsize(backbone, (SIZE, SIZE, 3, 1))[end - 1] # 512 for resnet18
head = Flux.Chain(
    Flux.AdaptiveMeanPool((1, 1)),
    Flux.flatten,
    Flux.Dense(channels => 64, Flux.relu),
    Flux.Dense(64 => CLASSES),
)
net = Flux.Chain(backbone, head)
state = Optimisers.setup(Optimisers.Adam(1.0f-3), net)
Optimisers.freeze!(state.layers[1]) # epoch 1: the head only

baseline = memory_stats()
for epoch in 1:EPOCHS
    if epoch == 2
        # then the pretrained layers too, with a smaller step
        Optimisers.thaw!(state.layers[1])
        Optimisers.adjust!(state.layers[1], 1.0f-4)
    end
    Flux.trainmode!(net) # the torch backbone too
    for (x, y) in train
        TorchBridge.scope() do
            # whatever happens, no graph outlives the step
            grads = Zygote.gradient(net -> Flux.logitcrossentropy(net(x), y), net)
            Optimisers.update!(state, net, grads[1])
        end
    end
    Flux.testmode!(net)
    println("epoch $epoch: validation accuracy ", accuracy(net, valid))
end
@assert memory_stats() == baseline "the bridge's ledger is back at its baseline"

## 3. Export the torch-trained classifier to ONNX
#
# input_size is one sample in Julia order (W, H, C); it is reversed for torch.

report = export_onnx(
    model,
    joinpath(mktempdir(), "resnet18_finetuned.onnx");
    input_size = (SIZE, SIZE, 3),
)
println(
    "exported ",
    report.path,
    " (",
    report.file_size,
    " bytes), max |onnxruntime - torch| = ",
    report.max_abs_diff,
)

@assert memory_stats().live_pullbacks == 0 # nothing held between steps
close!(model) # stop sharing its parameters and gradient buffers
close!(backbone)
