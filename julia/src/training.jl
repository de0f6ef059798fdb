##  Training with torch's optimisers  ##
#
# Two ways to train a TorchModel:
#
# 1. Julia's AD and Optimisers.jl: `Zygote.gradient` goes through the rrule in
#    `rrules.jl`, `Optimisers.update!` writes the parameters in place (they are
#    torch's memory). Nothing here is needed.
# 2. torch's optimisers: a `TorchOptimiser` names an Optimisers.jl rule, and
#    torch performs exactly that update (`torchbridge.train.optimizer_from_spec`).
#    With the Optimisers extension it is a drop-in for a rule in
#    `Optimisers.setup`; `TorchTrainer` runs a whole step in torch (forward,
#    loss, backward, update) with only the batch crossing; the FluxTraining
#    extension drives it from a `Learner` (`fit_torch!`).

const _SUPPORTED_RULES = (:Descent, :Momentum, :Nesterov, :Adam, :AdamW, :RMSProp, :AdaGrad)
const _SUPPORTED_LOSSES = (
    :logitcrossentropy,
    :crossentropy,
    :mse,
    :binarycrossentropy,
    :logitbinarycrossentropy,
)

"""
    optimiser_spec(rule) -> Dict{String,Any}

The Optimisers.jl rule `rule` as torchbridge's optimiser spec: its type name and
every field under its Optimisers.jl name, e.g. `Adam(1e-3)` becomes
`Dict("rule" => "Adam", "eta" => 0.001, "beta" => (0.9, 0.999), "epsilon" => 1.0e-8)`.
Supported: `Descent`, `Momentum`, `Nesterov`, `Adam`, `AdamW`, `RMSProp`,
`AdaGrad`; torch then performs exactly the Optimisers.jl update. Any other rule
(an `OptimiserChain`, `ClipGrad` ...) throws an `ArgumentError` that lists these.
A `Dict` or `NamedTuple` spec is passed through with string keys.
"""
function optimiser_spec(rule)
    name = nameof(typeof(rule))
    if !(name in _SUPPORTED_RULES)
        msg = "optimiser_spec: torch has no translation of the rule $(rule); supported rules are " *
            "$(join(_SUPPORTED_RULES, ", ")) (from Optimisers.jl). Use Optimisers.jl with " *
            "Zygote for other rules."
        throw(ArgumentError(msg))
    end
    spec = Dict{String, Any}("rule" => String(name))
    for field in fieldnames(typeof(rule))
        spec[String(field)] = getfield(rule, field)
    end
    return spec
end
optimiser_spec(spec::AbstractDict) = Dict{String, Any}(String(k) => v for (k, v) in spec)
optimiser_spec(spec::NamedTuple) = optimiser_spec(Dict(pairs(spec)))

"""
    loss_name(lossfn) -> String

The name torchbridge knows a Flux loss by: `Flux.logitcrossentropy` becomes
`"logitcrossentropy"`. Supported: `logitcrossentropy`, `crossentropy`, `mse`,
`binarycrossentropy`, `logitbinarycrossentropy` (Flux's functions, or their
names as a `String` or `Symbol`); torch computes exactly Flux's definition,
with Flux's class dimension (`dims = 1` in Julia). Anything else throws an
`ArgumentError` listing these.
"""
loss_name(name::Union{AbstractString, Symbol}) = _check_loss(Symbol(name), name)
loss_name(f::Function) = _check_loss(nameof(f), f)

function _check_loss(name::Symbol, given)
    if !(name in _SUPPORTED_LOSSES)
        msg = "loss_name: torch has no translation of the loss $(given); supported losses are " *
            "$(join(_SUPPORTED_LOSSES, ", ")) (Flux's functions or their names). Use Zygote " *
            "with the Julia loss for others."
        throw(ArgumentError(msg))
    end
    return String(name)
end

"""
    schedule_spec(schedule) -> Union{Nothing,Dict{String,Any}}

A learning-rate schedule for a [`TorchOptimiser`](@ref), as torchbridge's
schedule spec: a `NamedTuple` or `Dict` such as
`(schedule = :cosine, steps = 1000)`, `(schedule = :step, step_size = 10, gamma = 0.5)`,
`(schedule = :onecycle, steps = 1000)` or `(schedule = :warmup, steps = 100, then = (schedule = :cosine, steps = 900))`.
The factor it gives at step `t` scales η; `nothing` means a constant η.
"""
schedule_spec(::Nothing) = nothing
function schedule_spec(s::Union{AbstractDict, NamedTuple})
    spec = Dict{String, Any}()
    for (k, v) in pairs(s)
        spec[String(k)] = v isa Symbol ?
            String(v) :
            v isa Union{AbstractDict, NamedTuple} ? schedule_spec(v) : v
    end
    return spec
end

"""
    TorchOptimiser(rule; schedule = nothing) -> TorchOptimiser

An Optimisers.jl `rule` (see [`optimiser_spec`](@ref)) to be run by torch, with
an optional learning-rate `schedule` (see [`schedule_spec`](@ref)). Pass it
where a rule goes: `Optimisers.setup(TorchOptimiser(Adam(1e-3)), model)` (with
the Optimisers extension) or `Learner(model, lossfn; optimizer = TorchOptimiser(...))`
(with the FluxTraining extension). The torch optimiser keeps its state (Adam's
moments ...) in torch's memory, next to the parameters.
"""
struct TorchOptimiser
    spec::Dict{String, Any}
    schedule::Union{Nothing, Dict{String, Any}}
end
TorchOptimiser(rule; schedule = nothing) = TorchOptimiser(
    optimiser_spec(rule),
    schedule_spec(schedule),
)

# The Python optimiser for `m`.
function _torch_optimiser(m::TorchModel, o::TorchOptimiser)
    spec = _pydict(o.spec)
    schedule = o.schedule === nothing ? nothing : _pydict(o.schedule)
    return _guard(() -> _tbjl.optimizer(m.py, spec; schedule = schedule))
end

# A spec as a Python dict, nested specs (a warmup's `then`) included: a Julia
# Dict would otherwise cross as a wrapped Julia object, not a `dict`.
_pydict(d::AbstractDict) = PythonCall.pydict(Dict{String, Any}(
    String(k) => _pyvalue(v)
    for (k, v) in d
))
_pyvalue(v::AbstractDict) = _pydict(v)
_pyvalue(v) = v

"""
    TorchTrainer(model::TorchModel, optimiser, lossfn; loss_options = (;)) -> TorchTrainer

A torch-native training step for `model`: `train_step!(trainer, x, y)` zeroes
the gradient buffers, runs the forward pass, the loss and the backward pass in
torch and applies the optimiser; only the batch crosses (viewed, not copied).
`optimiser` is a [`TorchOptimiser`](@ref) or an Optimisers.jl rule, `lossfn` a
Flux loss (see [`loss_name`](@ref)); `loss_options` are the loss's keywords in
torch terms (`agg = "sum"`, `dim = 1` for a `(W, H, C, N)` segmentation map).
The loss applies to the model's output, or, for a model with named outputs,
to the one its `output` names (`load_model(id; output = :logits)`).
"""
struct TorchTrainer
    model::TorchModel
    optimiser::Py
    py::Py
end

function TorchTrainer(m::TorchModel, optimiser, lossfn; loss_options = (;))
    o = optimiser isa TorchOptimiser ? optimiser : TorchOptimiser(optimiser)
    return TorchTrainer(m, _torch_optimiser(m, o), lossfn; loss_options = loss_options)
end

function TorchTrainer(m::TorchModel, optimiser::Py, lossfn; loss_options = (;))
    options = PythonCall.pydict(Dict{String, Any}(
        String(k) => v
        for (k, v) in pairs(loss_options)
    ))
    output = m.output === nothing ? nothing : String(m.output)
    trainer = _guard(
        () -> _tbjl.trainer(
            optimiser,
            loss_name(lossfn);
            loss_options = options,
            output = output,
        ),
    )
    return TorchTrainer(m, optimiser, trainer)
end

"""
    train_step!(trainer::TorchTrainer, x, y) -> (loss::Float64, ŷ)

One torch-native optimisation step on the batch `(x, y)` (Julia arrays, dims
reversed as everywhere; `x` may be a `NamedTuple` of keyword inputs, a text
batch from [`tokenize`](@ref)). Returns the loss and a Julia-owned copy of the
model's output, for metrics. Targets are what the Flux loss takes (one-hot or
probability arrays shaped like the output); `Bool` targets are converted to the
model's element type.
"""
function train_step!(t::TorchTrainer, x::AbstractArray, y::AbstractArray)
    xs = _crossing(x) # crosses as a forward's input does
    try
        return _train_step!(t, xs, y)
    finally
        _release_shares((xs,))
    end
end

function train_step!(t::TorchTrainer, x::NamedTuple, y::AbstractArray)
    shares = _share_all(values(x))
    inputs = nothing
    try
        inputs = PythonCall.pydict(Dict{String, Any}(zip(map(String, keys(x)), shares)))
        return _train_step!(t, inputs, y)
    finally
        inputs === nothing || PythonCall.pydel!(inputs)
        _release_shares(shares)
    end
end

# One Python call: the batch crosses as a forward's inputs do, and the output
# comes back as a forward's does (from its address on the CPU, see `_receive`).
function _train_step!(t::TorchTrainer, xs, y::AbstractArray)
    y = eltype(y) == Bool ? _float_like(t.model, y) : y
    _before_torch(t.model)
    ys = _crossing(y)
    result = try
        _guard(() -> _tbjl.train_step(t.py, xs, ys))
    finally
        _release_shares((ys,))
    end
    loss, outputs, layouts, addresses = try
        ntuple(i -> result[i - 1], 4)
    finally
        PythonCall.pydel!(result)
    end
    try
        return pyconvert(Float64, loss), only(_receive(outputs, _specs(layouts), addresses))
    finally
        foreach(PythonCall.pydel!, (loss, outputs, layouts, addresses))
    end
end

_float_like(m::TorchModel, y) = convert(AbstractArray{eltype(first(m.params))}, y)

"""
    fit_torch!(learner, nepochs[, (traindata, validdata)]) -> learner

Train a FluxTraining `Learner` whose model is a [`TorchModel`](@ref) with the
whole training step in torch: each epoch runs a torch-native training phase
(see [`TorchTrainer`](@ref)) and FluxTraining's `ValidationPhase`. The
learner's `optimizer` is a [`TorchOptimiser`](@ref) or an Optimisers.jl rule,
its `lossfn` a supported Flux loss (see [`loss_name`](@ref)); callbacks see
`step.xs`, `step.ys`, `step.ŷs` and `step.loss` as usual. Defined by the
FluxTraining extension (`using FluxTraining`).
"""
function fit_torch! end
