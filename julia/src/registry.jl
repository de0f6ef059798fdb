##  The model registry  ##

"""
    ModelRow

One model of the registry as a `NamedTuple`; a `Vector{ModelRow}` is a
Tables.jl row table. Fields:

- `id` (`"timm/resnet18.a1_in1k"`, what [`load_model`](@ref) takes), `source`,
  `name`, `task`, `description`;
- `pretrained` (weights are published), `cached` (they are on this machine);
- `input_size`: one sample in **Julia order** (`[224, 224, 3]` for a
  `(W, H, C)` image), `torch_input_size` the same in torch order, or `nothing`;
- `num_classes`, `mean`, `std` (per channel), `license`, `tags`;
- `feature_channels`: the channels `C` of the feature map that
  `load_model(id; features = true)` returns (`(W, H, C, N)`). [`model_info`](@ref)
  computes it (torch builds the model on its `meta` device, without weights),
  or gives `nothing` when the model has no feature variant or cannot be sized
  without its weights; listings ([`models`](@ref), [`search_models`](@ref))
  do not compute it and always leave it `nothing`.
"""
const ModelRow = NamedTuple{
    (
        :id,
        :source,
        :name,
        :task,
        :description,
        :pretrained,
        :cached,
        :input_size,
        :torch_input_size,
        :num_classes,
        :mean,
        :std,
        :license,
        :tags,
        :feature_channels,
    ),
    Tuple{
        String,
        String,
        String,
        String,
        String,
        Bool,
        Bool,
        Union{Nothing, Vector{Int}},
        Union{Nothing, Vector{Int}},
        Union{Nothing, Int},
        Union{Nothing, Vector{Float64}},
        Union{Nothing, Vector{Float64}},
        Union{Nothing, String},
        Vector{String},
        Union{Nothing, Int},
    },
}

function _row(d::Py)
    return ModelRow((
        pyconvert(String, d["id"]),
        pyconvert(String, d["source"]),
        pyconvert(String, d["name"]),
        pyconvert(String, d["task"]),
        pyconvert(String, d["description"]),
        pyconvert(Bool, d["pretrained"]),
        pyconvert(Bool, d["cached"]),
        _optional(Vector{Int}, d["julia_input_size"]),
        _optional(Vector{Int}, d["input_size"]),
        _optional(Int, d["num_classes"]),
        _optional(Vector{Float64}, d["mean"]),
        _optional(Vector{Float64}, d["std"]),
        _optional(String, d["license"]),
        pyconvert(Vector{String}, d["tags"]),
        _optional(Int, d["feature_channels"]),
    ))
end

function _rows(rows::Py)
    try
        return ModelRow[_row(d) for d in rows]
    finally
        PythonCall.pydel!(rows)
    end
end

"""
    models(; pattern = nothing, source = nothing, pretrained = nothing, task = nothing) -> Vector{ModelRow}

The registry's models, filtered: `pattern` holds shell wildcards matched
against the id or name (`"resnet*"`, `"timm/vit_*"`), `source` keeps one source
(`"timm"`, `"torchvision"`, `"hub"`, `"local"`), `pretrained = true` keeps
models with published weights, `task` one task (`"image-classification"`).
Input sizes are in Julia order (see [`ModelRow`](@ref)).
"""
function models(; pattern = nothing, source = nothing, pretrained = nothing, task = nothing)
    rows = _guard(
        () -> _tbjl.registry_rows(
            pattern;
            source = source,
            pretrained = pretrained,
            task = task,
        ),
    )
    return _rows(rows)
end

"""
    search_models(query::AbstractString; limit = 20) -> Vector{ModelRow}

Free-text search ("tiny vision transformer", "efficientnet b0 imagenet"), best
match first.
"""
function search_models(query::AbstractString; limit::Integer = 20)
    return _rows(_guard(() -> _tbjl.search_rows(query; limit = limit)))
end

"""
    model_info(id::AbstractString) -> ModelRow

What the registry knows about one model. An unknown id throws a
`TorchBridgeError` of kind `:UnknownModelError` naming the closest ids.
"""
function model_info(id::AbstractString)
    row = _guard(() -> _tbjl.info_row(id))
    try
        return _row(row)
    finally
        PythonCall.pydel!(row)
    end
end

"""
    load_model(id; pretrained = false, weights = nothing, num_classes = nothing, features = false, trust_repo = false, trust_pickle = false, input_grads = true, output = nothing, kwargs...) -> TorchModel

Build the model `id` in torch and wrap it. `pretrained = true` loads the
published weights, offline-first (the Hugging Face and torch.hub caches, then a
download where the network allows it); `weights = path` loads that file;
`num_classes` gives it a new classifier head of that size. `features = true`
returns the model without its pooling and classifier: its output is the last
feature map, `(W, H, C, N)` in Julia order (`(7, 7, 512, N)` for resnet18 on
`(224, 224, 3, N)`; `model_info(id).feature_channels` is `C`), the backbone
FastAI.jl's `blockmodel` and other heads expect (timm models and torchvision's
convolutional classifiers; other models throw `:FeaturesUnavailableError`).
Other keyword arguments go to the model's builder (timm's `drop_rate` ...).
`input_grads` and `output` (`:logits`: return that named output alone) are
passed to [`TorchModel`](@ref).

Offline, missing weights throw a `TorchBridgeError` of kind
`:WeightsNotFoundError` saying which file to provide and where.

Code from a model's files runs only when you say so (docs/registry.md, "Trust"):
`trust_repo = true` lets a `hub/` model (or a `local/` model built from one)
import its torch.hub repository's `hubconf.py`, `trust_pickle = true` unpickles
a checkpoint in full, and `trust_remote_code = true` (passed on with the other
keywords, for `hf/` models only) lets a Hugging Face repository run its own
code. Without them such a model throws a `TorchBridgeError` of kind
`:UntrustedRepoError`, `:RemoteCodeError` or `:UnsafeCheckpointError` that
names the keyword, and nothing is left allocated.
"""
function load_model(
    id::AbstractString;
    pretrained::Bool = false,
    weights = nothing,
    num_classes = nothing,
    trust_repo::Bool = false,
    trust_pickle::Bool = false,
    input_grads::Bool = true,
    output = nothing,
    kwargs...,
)
    weights = weights === nothing ? nothing : String(weights)
    _module = _guard(
        () -> _tb.load_model(
            id;
            pretrained = pretrained,
            weights = weights,
            num_classes = num_classes,
            trust_repo = trust_repo,
            trust_pickle = trust_pickle,
            kwargs...,
        ),
    )
    try
        bridged = _guard(() -> _tb.bridge(_module))
        return TorchModel(bridged; input_grads = input_grads, output = output)
    finally
        PythonCall.pydel!(_module)
    end
end
