"""
    TorchBridge

The Python ecosystem's pretrained PyTorch models (timm, torch.hub, torchvision,
local checkpoints) as Julia models: callable on Julia arrays without copies,
differentiable with any ChainRules AD, trainable with Optimisers.jl or with
torch's own optimisers, and queryable through one registry.

TorchBridge is a thin client of the `torchbridge` Python package (see
`docs/protocol.md`): every Python call goes through the module handles in
`python.jl`, and every array crosses through DLPack.jl with its dimensions
reversed (a Julia `(W, H, C, N)` batch is torch's `(N, C, H, W)`).
"""
module TorchBridge

using ChainRulesCore: ChainRulesCore, AbstractZero, NoTangent, ProjectTo, Tangent, unthunk
using DLPack: DLPack
using Functors: Functors
using PythonCall:
    PythonCall,
    Py,
    pybuiltins,
    pyconvert,
    pydict,
    pyis,
    pyisinstance,
    pystr,
    pytuple,
    pytype

export TorchModel, TorchBridgeError
export to_torch, from_torch
export zero_grad!, close!
export memory_stats, release!
export models, search_models, model_info, load_model, merge_adapter, register_local_model
export export_onnx
export tokenize, decode, generate
export TorchOptimiser, TorchTrainer, train_step!, fit_torch!
export TorchLayer

@static if VERSION >= v"1.11.0-DEV.469"
    eval(Meta.parse(
        "public scope, FunctionalModel, functional_call, nest, flatten, initial_parameters, initial_buffers, optimiser_spec, loss_name, schedule_spec, parameter_names, trainmode!, testmode!, init_distributed, destroy_distributed, shard",
    ))
end

include("python.jl")
include("tensors.jl")
include("models.jl")
include("rrules.jl")
include("functional.jl")
include("memory.jl")
include("registry.jl")
include("training.jl")
include("export.jl")
include("distributed.jl")
include("text.jl")
include("precompile.jl")

function __init__()
    _init_python()
    return nothing
end

end # module TorchBridge
