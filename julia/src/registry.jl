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
    load_model(id; pretrained = false, weights = nothing, num_classes = nothing, features = false, trust_repo = false, trust_pickle = false, input_grads = true, output = nothing, lora = nothing, dtype = nothing, autocast = nothing, gradient_checkpointing = false, kwargs...) -> TorchModel

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

For large models (see `docs/transformers.md`, "Finetune a large model"):

- `lora = (r = 8, alpha = 16, dropout = 0.0, target = ["q_proj", "v_proj"])`
  puts LoRA adapters (PEFT) on the model and freezes everything else: `m.params`
  and `m.grads` hold the adapters alone (and a classifier head trained beside
  them), so Optimisers.jl's state and each step's copies scale with the
  adapter. Every field is optional (`lora = true`: all defaults; `target`
  defaults to PEFT's choice for the architecture; `train = [...]` names whole
  modules to train too).
- `dtype = :bfloat16` (or `:float16`, `:float32`) loads the weights in that
  type: `m.params` are `BFloat16` arrays, and so are floating-point outputs.
- `autocast = :bfloat16` keeps `Float32` weights and runs each forward under
  torch's autocast (matrix products in bfloat16); outputs and gradients are
  `Float32`.
- `gradient_checkpointing = true` recomputes activations in the backward pass
  (transformers and timm models), in training mode ([`trainmode!`](@ref)).

Offline, missing weights throw a `TorchBridgeError` of kind
`:WeightsNotFoundError` saying which file to provide and where; a bad `lora`
setting is an `:AdapterError`, a bad `dtype` or `autocast` a `:PrecisionError`.

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
    lora = nothing,
    dtype = nothing,
    autocast = nothing,
    gradient_checkpointing::Bool = false,
    kwargs...,
)
    weights = weights === nothing ? nothing : String(weights)
    spec = _lora_spec(lora)
    _module = _guard(
        () -> _tb.load_model(
            id;
            pretrained = pretrained,
            weights = weights,
            num_classes = num_classes,
            trust_repo = trust_repo,
            trust_pickle = trust_pickle,
            lora = spec,
            dtype = _precision(dtype),
            gradient_checkpointing = gradient_checkpointing,
            kwargs...,
        ),
    )
    try
        bridged = _guard(() -> _tb.bridge(_module; autocast = _precision(autocast)))
        return TorchModel(bridged; input_grads = input_grads, output = output)
    finally
        PythonCall.pydel!(_module)
        spec isa Py && PythonCall.pydel!(spec)
    end
end

# A LoRA spec as Python takes it: a dict whose lists of module names are lists
# (a Julia Vector would cross as a wrapped Julia object) and Symbols strings.
_lora_spec(::Nothing) = nothing
_lora_spec(spec::Bool) = spec
function _lora_spec(spec::Union{NamedTuple, AbstractDict})
    return PythonCall.pydict(Dict{String, Any}(
        String(k) => _lora_value(v)
        for (k, v) in pairs(spec)
    ))
end
function _lora_spec(spec)
    msg = "load_model: lora is a NamedTuple of settings, e.g. (r = 8, alpha = 16, " *
        "target = [\"q_proj\", \"v_proj\"]), or true for the defaults; got $(typeof(spec))."
    throw(TorchBridgeError(:AdapterError, msg))
end
_lora_value(v::AbstractVector) = PythonCall.pylist(map(_lora_value, v))
_lora_value(v::Union{Symbol, AbstractString}) = String(v)
_lora_value(v) = v

# A precision setting as Python takes it: `:bfloat16` / `"bfloat16"` -> "bfloat16".
_precision(::Nothing) = nothing
_precision(name::Union{Symbol, AbstractString}) = String(name)
_precision(::Type{Float16}) = "float16"
_precision(::Type{Float32}) = "float32"
_precision(::Type{Float64}) = "float64"
function _precision(value)
    msg = "a dtype or autocast is a name such as :bfloat16, :float16 or :float32; got $(value)."
    throw(TorchBridgeError(:PrecisionError, msg))
end

"""
    merge_adapter(m::TorchModel) -> TorchModel

Fold the LoRA adapter of `m` (a model loaded with `lora = ...`) into its base
weights and return the plain base model, without adapter layers, ready for
[`export_onnx`](@ref). `m` is closed (its parameters were the adapter's); the
merged model's weights are frozen, so its `params` are empty: it is for
inference and export. It keeps `m`'s `autocast`, `input_grads` and `output`.
A model without an adapter throws a `TorchBridgeError` of kind `:AdapterError`.
"""
function merge_adapter(m::TorchModel)
    _module = m.py.module
    autocast = m.py.autocast
    merged = nothing
    try
        if !pyconvert(Bool, _tb.adapters.is_adapter_model(_module))
            msg = "merge_adapter: this TorchModel has no LoRA adapter to merge; load it with " *
                "lora = (...) first, or export it as it is."
            throw(TorchBridgeError(:AdapterError, msg))
        end
        close!(m)
        merged = _guard(() -> _tb.merge_adapter(_module))
        bridged = _guard(() -> _tb.bridge(merged; autocast = autocast))
        return TorchModel(bridged; input_grads = m.input_grads, output = m.output)
    finally
        PythonCall.pydel!(_module)
        PythonCall.pydel!(autocast)
        merged === nothing || PythonCall.pydel!(merged)
    end
end

"""
    register_local_model(name, m::TorchModel; architecture = nothing, directory = nothing, overwrite = false, description = nothing, trust_remote_code = false) -> ModelRow

Save the torch module of `m` as the registry model `"local/\$name"`, so that
`load_model("local/\$name")` loads it back. A model loaded with `lora = ...`
is saved as its adapter alone (PEFT's format), beside a reference to the model
it was loaded from, and loads back as that model with the adapter restored,
trainable. Any other model is saved whole, as torchbridge's
`register_local_model` does, and needs `architecture`, the registry id that
builds it (`"timm/resnet18"`, `"hf/org/name"`). The files go to `directory`,
else torchbridge's models folder; an existing `"local/\$name"` is replaced only
with `overwrite = true`. A transformers model is saved with its architecture's
tokenizer, which a repository with its own code gives only with
`trust_remote_code = true` (else `:RemoteCodeError`, nothing written).
"""
function register_local_model(
    name::AbstractString,
    m::TorchModel;
    architecture = nothing,
    directory = nothing,
    overwrite::Bool = false,
    description = nothing,
    trust_remote_code::Bool = false,
)
    _module = m.py.module
    entry = nothing
    try
        entry = _guard(
            () -> _tb.register_local_model(
                String(name),
                _module;
                architecture = architecture === nothing ? nothing : String(architecture),
                directory = directory === nothing ? nothing : String(directory),
                overwrite = overwrite,
                description = description,
                trust_remote_code = trust_remote_code,
            ),
        )
        row = _guard(() -> _tbjl.entry_row(entry))
        try
            return _row(row)
        finally
            PythonCall.pydel!(row)
        end
    finally
        PythonCall.pydel!(_module)
        entry === nothing || PythonCall.pydel!(entry)
    end
end
