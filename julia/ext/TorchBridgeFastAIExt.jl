# torchbridge's pretrained image classifiers in FastAI.jl's model registry.
#
# FastAI.jl's model registry (`FastAI.Registries.models()`, a FeatureRegistries
# registry whose rows hold `id`, `description`, `backend`, `variants`,
# `checkpoints` and `loadfn`, with the concrete `ModelVariant(; transform,
# xblock, yblock)`) is in FastAI.jl's sources but not in every release. When the
# loaded FastAI has it, `__init__` adds one row per pretrained timm tag (every
# `timm/<architecture>.<tag>` image classifier with published weights, about
# 1,500; untagged architecture names and models without weights are left out),
# with `backend = :torch`:
#
#     entry = models()["timm/resnet18.a1_in1k"]
#     load(entry; pretrained = true)                        # the classifier, ImageNet head
#     load(entry; pretrained = true, num_classes = 10)      # a new 10-class head
#     load(entry; pretrained = true, variant = "backbone")  # the feature map (W, H, C, N)
#
# Every load returns a `TorchModel`; keywords FastAI does not know go to
# `load_model`. The backbone is the feature-map variant of
# `load_model(id; features = true)` (no pooling, no classifier), the
# convolutional feature extractor FastAI's `blockmodel` sizes with
# `Flux.outputsize` and puts in front of its head; Zygote differentiates
# through it. Both
# variants accept any input and output block (`xblock = yblock = Any`): a head
# sized from an output block's classes is `num_classes`, since FastAI's
# `issubblock` matches no block instance against a variant's block type.
# When the loaded FastAI has no model registry, the extension says so once with
# `@info` and does nothing else.
module TorchBridgeFastAIExt

using FastAI: FastAI
using PythonCall: PythonCall, pyconvert
using TorchBridge: TorchBridge, TorchModel, load_model

"""
    LoadTorchModel(id)

The `loadfn` of a registry row: `loadfn(checkpoint; kwargs...)` loads the
torchbridge model `id`, with its pretrained weights when `checkpoint` is not
`nothing` (offline-first, as `load_model(id; pretrained = true)`). Keywords go
to [`load_model`](@ref TorchBridge.load_model) (`num_classes`, `weights`,
timm's `drop_rate` ...). Keywords that arrive splatted as positional `Pair`s
are accepted too (`loadfn(checkpoint, kwargs...)`, as some FastAI sources
call it).
"""
struct LoadTorchModel
    id::String
end

function (f::LoadTorchModel)(checkpoint, options::Pair{Symbol}...; kwargs...)
    return load_model(f.id; pretrained = checkpoint !== nothing, options..., kwargs...)
end

# `m`'s feature-map variant, as a new TorchModel. `m` is closed: its parameter
# list changes.
function _feature_variant(m::TorchModel, id::String)
    bridged = TorchBridge._guard(
        () -> TorchBridge._tbjl.feature_variant(m.py; model_id = id),
    )
    return TorchModel(bridged; input_grads = m.input_grads)
end

"""
    BackboneTransform(id)

The `"backbone"` variant: the model without its pooling and classifier
(`load_model(id; features = true)`), returning the feature map `(W, H, C, N)`
in Julia order.
"""
struct BackboneTransform
    id::String
end

(t::BackboneTransform)(model, input, output; kwargs...) = _feature_variant(model, t.id)

"""
    model_registry() -> Union{Nothing, Tuple{registry, ModelVariant}}

FastAI.jl's model registry and its `ModelVariant` type, or `nothing` when the
loaded FastAI has none: the registry is `models()` in `FastAI.Registries` (or
in `FastAI`), next to a concrete `ModelVariant` with a `transformfn` field.
"""
function model_registry()
    places = isdefined(FastAI, :Registries) ? (FastAI.Registries, FastAI) : (FastAI,)
    for place in places
        (isdefined(place, :models) && isdefined(place, :ModelVariant)) || continue
        variant = getproperty(place, :ModelVariant)
        if variant isa DataType &&
                !isabstracttype(variant) &&
                hasfield(variant, :transformfn)
            return getproperty(place, :models)(), variant
        end
    end
    return nothing
end

"""
    register_models!(; source = "timm") -> Int

Add the pretrained image classifiers of `source` (`"timm"`, or `"torchvision"`)
to FastAI.jl's model registry and return how many rows were added. Ids already
in the registry are skipped (FeatureRegistries throws a `DuplicateIDError` on a
repeated id), so calling it again adds nothing twice. Throws an
`ArgumentError` when the loaded FastAI has no model registry.
"""
function register_models!(; source::AbstractString = "timm")
    found = model_registry()
    found === nothing &&
        throw(ArgumentError("register_models!: the loaded FastAI.jl has no model registry"))
    registry, Variant = found
    columns = TorchBridge._guard(() -> TorchBridge._tbjl.fastai_rows(; source = source))
    ids, descriptions, checkpoints = try
        (
            pyconvert(Vector{String}, columns["id"]),
            pyconvert(Vector{String}, columns["description"]),
            pyconvert(Vector{String}, columns["checkpoint"]),
        )
    finally
        PythonCall.pydel!(columns)
    end
    added = 0
    for (id, description, checkpoint) in zip(ids, descriptions, checkpoints)
        haskey(registry, id) && continue
        variants = Pair{String, Variant}[]
        push!(variants, "classifier" => Variant())
        push!(variants, "backbone" => Variant(; transform = BackboneTransform(id)))
        push!(
            registry,
            (;
                id = id,
                description = description,
                backend = :torch,
                checkpoints = [checkpoint],
                loadfn = LoadTorchModel(id),
                variants = variants,
            ),
        )
        added += 1
    end
    return added
end

const _NO_REGISTRY = "TorchBridge: the loaded FastAI.jl has no model registry, so " *
    "torchbridge's models are not added to it; find them with TorchBridge.models and " *
    "load them with load_model."

function __init__()
    if model_registry() === nothing
        @info(_NO_REGISTRY)
        return nothing
    end
    try
        register_models!()
    catch err
        @warn(
            "TorchBridge: torchbridge's models could not be added to FastAI.jl's model registry",
            exception = (err, catch_backtrace()),
        )
    end
    return nothing
end

end # module TorchBridgeFastAIExt
