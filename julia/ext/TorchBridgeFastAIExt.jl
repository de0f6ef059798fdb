# torchbridge's models in FastAI's model registry. When FastAI is loaded, every
# model the torchbridge registry lists appears in `FastAI.models()` under its
# torchbridge id with `backend = :torch`:
#
#     load(models()["timm/resnet18.a1_in1k"]; pretrained = true)                  # the whole model
#     load(models()["timm/resnet18.a1_in1k"]; variant = "backbone")               # no classifier
#     load(models()["timm/resnet18.a1_in1k"]; output = OneHotTensor{0, ...}(classes))  # a new head
#
# Each load returns a `TorchModel`, usable as a drop-in backbone in a Flux
# `Chain` (Zygote differentiates through it). The registry is queried once, at
# load time; call `TorchBridgeFastAIExt.register_models!()` after registering
# local models to add them.
module TorchBridgeFastAIExt

using FastAI: FastAI
using TorchBridge: TorchBridge, load_model, models

const Registries = FastAI.Registries

"""
    TorchVariant(id::String, kind::Symbol)

A FastAI model variant of the torchbridge model `id`: `:classifier` (a new head sized
for the task's output block when it has `classes`) or `:backbone` (no
classifier: the pooled features, `num_classes = 0`).
"""
struct TorchVariant <: Registries.ModelVariant
    id::String
    kind::Symbol
end

Registries.compatibleblocks(::TorchVariant) = (Any, Any)

function Registries.loadvariant(v::TorchVariant, xblock, yblock, checkpoint; kwargs...)
    options = Dict{Symbol, Any}(kwargs)
    if v.kind === :backbone
        options[:num_classes] = 0
    elseif hasproperty(yblock, :classes)
        options[:num_classes] = length(yblock.classes)
    end
    return load_model(v.id; pretrained = checkpoint !== nothing, options...)
end

_registry() = isdefined(FastAI, :models) ? FastAI.models() : Registries.models()

"""
    register_models!(; source = nothing) -> Int

Add the torchbridge registry's models (of one `source`, or all) to FastAI's
model registry, skipping ids already there; returns how many were added.
"""
function register_models!(; source = nothing)
    registry = _registry()
    added = 0
    for row in models(; source = source)
        id = row.id
        entry = (;
            id = id,
            description = row.description,
            backend = :torch,
            loadfn = (checkpoint; kwargs...) -> load_model(
                id;
                pretrained = checkpoint !== nothing,
                kwargs...,
            ),
            checkpoints = row.pretrained ? ["pretrained"] : String[],
            variants = [
                "classifier" => TorchVariant(id, :classifier),
                "backbone" => TorchVariant(id, :backbone),
            ],
        )
        try
            push!(registry, entry)
            added += 1
        catch err
            # FeatureRegistries refuses a repeated id: keep the entry already there
            nameof(typeof(err)) === :DuplicateIDError || rethrow()
        end
    end
    return added
end

function __init__()
    try
        register_models!()
    catch err
        @warn "torchbridge's models could not be added to FastAI's model registry" exception = err
    end
    return nothing
end

end # module TorchBridgeFastAIExt
