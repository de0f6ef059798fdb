##  Functional calls: parameters and state passed per call  ##
#
# NOTE [functional calls from Julia]
# A `TorchModel` holds torch's own parameters (stateful, updated in place). A
# `FunctionalModel` is the other way (NOTE [functional calls] in the Python
# `torchbridge.functional`): each call passes the parameters and the buffers
# as Julia arrays, torch runs the module on views of them, and in training
# mode the updated buffers come back as new arrays. This is what Lux layers
# (`TorchLayer`, the LuxCore extension) and ADs that pass parameters per call
# need. Parameters and buffers are named by torch's names; `_nest` makes the
# nested `NamedTuple` of a module's tree (`ps.layer1[Symbol("0")].conv1.weight`).
#
# The call `_call(f, params, buffers, training, xs, kw)` has an rrule (this
# file), a Mooncake rule (Mooncake extension), and takes ForwardDiff duals
# (ForwardDiff extension): arrays of duals cross packed (NOTE [dual numbers
# cross packed] in the Python `julia_support.functional`), their tangents run
# through torch's forward mode, and a pullback of duals is forward over reverse.

"""
    TorchBridge.FunctionalModel(model; input_grads = true, output = nothing)

A torch module called on parameters and buffers passed per call (see
[`TorchLayer`](@ref) for the Lux layer built on it). `model` is a model id
(`"timm/resnet18"`), a Python `torch.nn.Module`, or a [`TorchModel`](@ref)
(whose module is then called functionally: the TorchModel's own parameters are
untouched). `input_grads` and `output` are as for `TorchModel`.

Fields: `param_names` and `buffer_names` (torch's names, in the order the
calls take them).
"""
struct FunctionalModel
    py::Py
    param_names::Vector{String}
    buffer_names::Vector{String}
    input_grads::Bool
    output::Union{Nothing, Symbol}
    outputs::Base.RefValue{Union{Nothing, _OutputCache}}
end

function FunctionalModel(model::Py; input_grads::Bool = true, output = nothing)
    py = _guard(() -> _tbjl.functional_model(model))
    names = pyconvert(Vector{String}, py.param_names)
    buffers = pyconvert(Vector{String}, py.buffer_names)
    out = output === nothing ? nothing : Symbol(output)
    empty = Ref{Union{Nothing, _OutputCache}}(nothing)
    return FunctionalModel(py, names, buffers, input_grads, out, empty)
end

function FunctionalModel(
    m::TorchModel;
    input_grads::Bool = m.input_grads,
    output = m.output,
)
    return FunctionalModel(m.py.module; input_grads = input_grads, output = output)
end

function FunctionalModel(
    id::AbstractString;
    input_grads::Bool = true,
    output = nothing,
    kwargs...,
)
    module_ = _guard(() -> _tb.load_model(id; kwargs...))
    try
        return FunctionalModel(module_; input_grads = input_grads, output = output)
    finally
        PythonCall.pydel!(module_)
    end
end

function Base.show(io::IO, f::FunctionalModel)
    print(io, "FunctionalModel(", length(f.param_names), " params, ")
    print(io, length(f.buffer_names), " buffers)")
    return nothing
end

# The twin of a stateful model: its module called functionally on its own
# parameters and buffers (what a TorchModel called on duals uses). Made once per
# model, by Python (`FunctionalModel.twin`).
_twin(m::TorchModel) = FunctionalModel(m.py; input_grads = m.input_grads, output = m.output)

"""
    TorchBridge.initial_parameters(f::FunctionalModel) -> Vector

Fresh Julia copies of the module's trainable parameters, in `f.param_names`
order, dims reversed (a torch `(out, in)` weight is Julia `(in, out)`).
"""
initial_parameters(f::FunctionalModel) = _initial(f, "param")

"""
    TorchBridge.initial_buffers(f::FunctionalModel) -> Vector

Fresh Julia copies of the module's buffers (BatchNorm statistics ...), in
`f.buffer_names` order.
"""
initial_buffers(f::FunctionalModel) = _initial(f, "buffer")

function _initial(f::FunctionalModel, kind::String)
    state = _guard(() -> _tbjl.functional_state(f.py))
    try
        tensors = state[kind * "s"]
        return _receive(
            tensors,
            _specs(state[kind * "_layouts"]),
            state[kind * "_addresses"],
        )
    finally
        PythonCall.pydel!(state)
    end
end

##  Names as a tree  ##

# torch's dotted names as paths of Symbols ("layer1.0.conv1.weight" ->
# [:layer1, Symbol("0"), :conv1, :weight]).
_paths(names) = [Symbol.(split(n, '.')) for n in names]

"""
    TorchBridge.nest(names, values) -> NamedTuple

The nested `NamedTuple` of a module's tree: `nest(["0.weight", "0.bias"], [w, b])`
is `(var"0" = (weight = w, bias = b),)`. Keys are torch's module and tensor
names (`Symbol("0")` for a numbered child), in torch's order.
"""
function nest(names::AbstractVector{<:AbstractString}, values::AbstractVector)
    length(names) == length(values) ||
        throw(ArgumentError("nest: $(length(names)) names for $(length(values)) values"))
    return _nest(_paths(names), values)
end

function _nest(paths::Vector{Vector{Symbol}}, values::AbstractVector)
    isempty(paths) && return NamedTuple()
    keys_ = Symbol[]
    groups = Dict{Symbol, Tuple{Vector{Vector{Symbol}}, Vector{Any}}}()
    for (path, value) in zip(paths, values)
        key = path[1]
        if !haskey(groups, key)
            push!(keys_, key)
            groups[key] = (Vector{Symbol}[], Any[])
        end
        rest, vals = groups[key]
        push!(rest, path[2:end])
        push!(vals, value)
    end
    entries = map(keys_) do key
        rest, vals = groups[key]
        length(rest) == 1 && isempty(rest[1]) ? only(vals) : _nest(rest, vals)
    end
    return NamedTuple{Tuple(keys_)}(Tuple(entries))
end

"""
    TorchBridge.flatten(names, tree) -> Tuple

The leaves of a tree that [`nest`](@ref) made (or any value with the same
property paths: a `ComponentArray`), in the order of `names`.
"""
flatten(names::AbstractVector{<:AbstractString}, tree) = _leaves(_paths(names), tree)

_leaves(paths::Vector{Vector{Symbol}}, tree) = Tuple(_leaf(tree, path) for path in paths)

function _leaf(tree, path::Vector{Symbol})
    node = tree
    for key in path
        node = getproperty(node, key)
    end
    return node
end

# A NamedTuple tree: its gradient is the same tree of the leaves' gradients,
# built at once rather than by the AD walking every `getproperty`.
function ChainRulesCore.rrule(
    ::typeof(_leaves),
    paths::Vector{Vector{Symbol}},
    tree::NamedTuple,
)
    function leaves_pullback(Δ)
        Δ = unthunk(Δ)
        Δ isa AbstractZero && return NoTangent(), NoTangent(), Δ
        grads = [g isa AbstractZero || g === nothing ? nothing : unthunk(g) for g in Δ]
        any(!isnothing, grads) ||
            return NoTangent(), NoTangent(), ChainRulesCore.ZeroTangent()
        return NoTangent(), NoTangent(), _tree_tangent(tree, _nest(paths, grads))
    end
    return _leaves(paths, tree), leaves_pullback
end

# a nested NamedTuple of gradients (nothing for none) as a structural tangent of `tree`
_tree_tangent(tree::NamedTuple, grads::NamedTuple) = Tangent{typeof(tree)}(; (
    k => _tree_tangent(getproperty(tree, k), getproperty(grads, k))
    for k in keys(grads)
)...)
_tree_tangent(_, ::Nothing) = ChainRulesCore.ZeroTangent()
_tree_tangent(_, g) = g

##  The call  ##

# Dual numbers (the ForwardDiff extension): how many partials an array's
# elements carry, the array as its values' type with the partials in a leading
# dimension (what crosses, NOTE [dual numbers cross packed]), and a received
# packed array back as duals like `template`'s.
_partials(x) = 0
_packed(x) = x
_unpacked(template, packed) = packed

_same_duals(template, x) = true

# Arrays without values (Lux's `Nil`, the Lux extension): a call on them gives
# sizes only, as arrays of the same kind (`_nil_array(template, dims)`).
_sizes_only(x) = false
_nil_array(template, dims) = throw(ArgumentError(
    "no array without values like $(typeof(template))",
))

# The first array of duals among `values`, or nothing. Every other one must
# carry the same tag and number of partials: duals of two nested ForwardDiff
# calls cannot cross in one call without mixing their partials.
function _dual_template(values)
    template = _first_dual(values...)
    template === nothing && return nothing
    for v in values
        _partials(v) > 0 && !_same_duals(template, v) && _mixed_duals(template, v)
    end
    return template
end

_first_dual() = nothing
_first_dual(x, rest...) = _partials(x) > 0 ? x : _first_dual(rest...)

function _mixed_duals(a, b)
    msg = "a call's arrays of duals have different tags or numbers of partials " *
        "($(eltype(a)) and $(eltype(b))): nested forward mode (ForwardDiff over ForwardDiff) " *
        "cannot cross to torch in one call. Differentiate the inner function with a " *
        "reverse-mode AD (SecondOrder(AutoForwardDiff(), AutoZygote()))."
    throw(TorchBridgeError(:UnsupportedDTypeError, msg))
end

"""
    TorchBridge.functional_call(f, params, buffers, training, xs, kw) -> (y, new_buffers)

One functional call (NOTE [functional calls from Julia]): `params` a `Tuple`
of arrays in `f.param_names` order (`nothing`: the module's own), `buffers`
one per buffer (`nothing`: the module's own), `training` a `Bool` (`nothing`:
the module's mode), `xs` the positional inputs, `kw` the keyword inputs (a
`NamedTuple`). `y` is what a `TorchModel` returns for the same module;
`new_buffers` the buffers after a training-mode call (a `Tuple`), `nothing`
in evaluation mode. Differentiable with respect to `params` and `xs` (and the
arrays of `kw`); arrays of ForwardDiff duals run through torch's forward mode.
"""
function functional_call(
    f::FunctionalModel,
    params::Union{Nothing, Tuple},
    buffers::Union{Nothing, Tuple},
    training::Union{Nothing, Bool},
    xs::Tuple,
    kw::NamedTuple,
)
    ys, state, pullback = _functional(f, params, buffers, training, xs, kw, false)
    pullback === nothing || _tbjl.release(pullback)
    return _select_functional(f, ys), state
end

# One functional call through Python. Returns the outputs as the caller sees
# them (before `f.output` selects one), the new buffers (or nothing) and the
# Python pullback (nothing when `grad` is false). Arrays of duals cross packed.
function _functional(
    f::FunctionalModel,
    params,
    buffers,
    training,
    xs::Tuple,
    kw::NamedTuple,
    grad::Bool,
)
    template = _dual_template((something(params, ())..., xs..., values(kw)...))
    template === nothing &&
        return _functional_packed(
            f,
            params,
            buffers,
            training,
            xs,
            kw,
            grad,
            nothing,
            identity,
        )
    flags = _packed_flags(params, xs, kw)
    crossing(v) = v === nothing ? v : map(_packed, v)
    unpack(y) = _unpacked(template, y)
    return _functional_packed(
        f,
        crossing(params),
        buffers,
        training,
        map(_packed, xs),
        map(_packed, kw),
        grad,
        flags,
        unpack,
    )
end

# `_functional` on arrays as they cross: `packed` is nothing, or the flags of
# the arrays that are packed (parameters, inputs); `unpack` turns each packed
# result back into what the caller sees.
function _functional_packed(
    f::FunctionalModel,
    params,
    buffers,
    training,
    xs::Tuple,
    kw::NamedTuple,
    grad::Bool,
    packed,
    unpack,
)
    key = (
        map(x -> (typeof(x), size(x)), xs),
        map(_kw_key, values(kw)),
        params === nothing ? nothing : map(typeof, params),
    )
    last = f.outputs[]
    cached = last !== nothing && isequal(last.key, key) ? last : nothing
    expected = cached === nothing ? pybuiltins.None : cached.layouts
    flags = packed === nothing ? pybuiltins.None : _pyflags(packed)
    result = _functional_request(
        f,
        expected,
        params,
        buffers,
        training,
        xs,
        kw,
        grad,
        flags,
    )
    outputs, pullback, layouts, addresses = result[0], result[1], result[2], result[3]
    state, state_layouts, state_addresses = result[4], result[5], result[6]
    PythonCall.pydel!(result)
    kept = false
    try
        if _isnone(layouts)
            specs, names = cached.specs, cached.names
        else
            specs, names = _specs(layouts), _output_names(f.py)
            f.outputs[] = _OutputCache(key, layouts, specs, names)
            kept = true
        end
        ys = _receive(outputs, specs, addresses)
        packed === nothing || (ys = [y === nothing ? nothing : unpack(y) for y in ys])
        new_state = if _isnone(state)
            nothing
        else
            Tuple(_receive(state, _specs(state_layouts), state_addresses))
        end
        pb = _isnone(pullback) ? nothing : pullback
        return _outputs(ys, names), new_state, pb
    catch
        _tbjl.release(pullback)
        rethrow()
    finally
        PythonCall.pydel!(outputs)
        PythonCall.pydel!(addresses)
        PythonCall.pydel!(state)
        PythonCall.pydel!(state_layouts)
        PythonCall.pydel!(state_addresses)
        kept || PythonCall.pydel!(layouts)
    end
end

function _functional_request(f, expected, params, buffers, training, xs, kw, grad, packed)
    param_shares = params === nothing ? Any[] : _share_all(params)
    buffer_shares = Any[]
    shares = kwshares = Any[]
    handles = Py[]
    try
        buffers === nothing || (buffer_shares = _share_all(buffers))
        shares = _share_all(xs)
        isempty(kw) || (kwshares = _share_all(values(kw)))
        ps = params === nothing ? pybuiltins.None : _handle!(handles, pytuple(param_shares))
        bs = buffers === nothing ?
            pybuiltins.None :
            _handle!(handles, pytuple(buffer_shares))
        inputs = _handle!(handles, pytuple(shares))
        kwinputs = if isempty(kw)
            pybuiltins.None
        else
            _handle!(handles, pydict(zip(map(string, keys(kw)), kwshares)))
        end
        mode = training === nothing ? pybuiltins.None : training
        return _guard(
            () -> _tbjl.functional_apply(
                f.py,
                expected,
                ps,
                bs,
                inputs,
                kwinputs,
                grad,
                mode,
                f.input_grads,
                packed,
            ),
        )
    finally
        foreach(PythonCall.pydel!, handles)
        _release_shares(param_shares)
        _release_shares(buffer_shares)
        _release_shares(shares)
        _release_shares(kwshares)
    end
end

_handle!(handles::Vector{Py}, h::Py) = (push!(handles, h); h)

# Which parameters and inputs are arrays of duals, as (param_flags, input_flags).
function _packed_flags(params, xs, kw)
    pflags = params === nothing ? () : map(p -> _partials(p) > 0, params)
    return pflags, map(x -> _partials(x) > 0, (xs..., values(kw)...))
end

_pyflags((pflags, iflags)) = pytuple((pytuple(pflags), pytuple(iflags)))

_select_functional(f::FunctionalModel, ys) = f.output === nothing ?
    ys :
    _select_named(f.output, ys)

##  Reverse mode  ##

function ChainRulesCore.rrule(
    ::typeof(functional_call),
    f::FunctionalModel,
    params::Union{Nothing, Tuple},
    buffers::Union{Nothing, Tuple},
    training::Union{Nothing, Bool},
    xs::Tuple,
    kw::NamedTuple,
)
    y, state, back = _functional_rrule(f, params, buffers, training, xs, kw)
    function functional_call_pullback(Δ)
        Δ = unthunk(Δ)
        dparams, dinputs = back(Δ isa AbstractZero ? Δ : Δ[1])
        dps = params === nothing ? NoTangent() : Tangent{typeof(params)}(dparams...)
        dxs = Tangent{typeof(xs)}(dinputs[1:length(xs)]...)
        dkw = isempty(kw) ?
            NoTangent() :
            Tangent{typeof(kw)}(; zip(keys(kw), dinputs[(length(xs) + 1):end])...)
        return NoTangent(), NoTangent(), dps, NoTangent(), NoTangent(), dxs, dkw
    end
    return (y, state), functional_call_pullback
end

# One differentiated functional call: what the caller sees, the new buffers,
# and a pullback from the outputs' cotangent to the parameters' and the
# inputs' tangents (two Vectors, `ZeroTangent()` where torch gave none).
# One-shot unless made inside a reusable scope, like a TorchModel's.
function _functional_rrule(
    f::FunctionalModel,
    params,
    buffers,
    training,
    xs::Tuple,
    kw::NamedTuple,
)
    reusable = _in_reusable_scope()
    ys, state, pullback = _functional(f, params, buffers, training, xs, kw, true)
    template = _dual_template((something(params, ())..., xs..., values(kw)...))
    nparams = length(f.param_names)
    used = Ref(false)
    function back(Δy)
        if used[] && !reusable
            throw(TorchBridgeError(:PullbackReleasedError, _ONE_SHOT))
        end
        used[] = true
        Δy = f.output === nothing ? unthunk(Δy) : NamedTuple{(f.output,)}((unthunk(Δy),))
        grads = _functional_pullback(pullback, ys, Δy, template; release = !reusable)
        tangents = map(_tangent_or_zero, grads)
        return tangents[1:nparams], tangents[(nparams + 1):end]
    end
    return _select_functional(f, ys), state, back
end

const _ONE_SHOT = "pullback: this functional pullback already ran and its graph is freed; a " *
    "pullback is one-shot. Call the model again for another gradient, or run the AD inside " *
    "`TorchBridge.scope(f; reusable = true)` to call the pullback several times " *
    "(Zygote.jacobian and DifferentiationInterface's jacobian with AutoZygote do)."

_tangent_or_zero(g) = g === nothing ? ChainRulesCore.ZeroTangent() : g

# Run a functional pullback on the cotangents of `ys`; one Julia-owned gradient
# (or nothing) per parameter, then per input. Duals cross packed, both ways.
function _functional_pullback(pullback::Py, ys, Δ, template; release::Bool = true)
    shares = ()
    ran = false
    try
        cotangents = _cotangents(ys, Δ)
        shares = _share_all(map(_packed, cotangents))
        packed = if template === nothing
            pybuiltins.None
        else
            pytuple(map(c -> c !== nothing && _partials(c) > 0, cotangents))
        end
        cots = pytuple(shares)
        result = try
            _guard(() -> _tbjl.functional_pullback(pullback, cots, packed))
        finally
            PythonCall.pydel!(cots)
        end
        ran = true
        grads, layouts, addresses = result[0], result[1], result[2]
        PythonCall.pydel!(result)
        try
            received = _receive(grads, _specs(layouts), addresses)
            template === nothing && return received
            return [g === nothing ? nothing : _unpacked(template, g) for g in received]
        finally
            PythonCall.pydel!(grads)
            PythonCall.pydel!(layouts)
            PythonCall.pydel!(addresses)
        end
    finally
        if release
            ran || _tbjl.release(pullback)
            PythonCall.pydel!(pullback)
        end
        _release_shares(shares)
    end
end

##  Sizes without running  ##

# The Julia sizes of `f`'s outputs for inputs of Julia `sizes` (fake tensors,
# no data), and their names.
function _output_sizes(f::FunctionalModel, sizes)
    result = _guard(() -> _tbjl.output_sizes(f.py, pytuple(map(pytuple, sizes))))
    try
        outs = [Tuple(pyconvert(Vector{Int}, s)) for s in result[0]]
        names = _optional(Vector{String}, result[1])
        return outs, names
    finally
        PythonCall.pydel!(result)
    end
end

##  Forward mode for frule-reading ADs  ##

# A ChainRules frule: one direction, each array with a tangent crossing as a
# pair (Julia size `(2, dims...)`: the value, then the tangent; the packed form
# of NOTE [dual numbers cross packed] with one partial).
function ChainRulesCore.frule(
    (_, _, Δparams, _, _, Δxs, Δkw),
    ::typeof(functional_call),
    f::FunctionalModel,
    params::Union{Nothing, Tuple},
    buffers::Union{Nothing, Tuple},
    training::Union{Nothing, Bool},
    xs::Tuple,
    kw::NamedTuple,
)
    dps = params === nothing || Δparams isa AbstractZero ? nothing : Tuple(unthunk(Δparams))
    dxs = Δxs isa AbstractZero ? map(_ -> nothing, xs) : Tuple(unthunk(Δxs))
    dkw = Δkw isa AbstractZero ?
        map(_ -> nothing, kw) :
        map(k -> getproperty(unthunk(Δkw), k), keys(kw))
    y, dy, state = _pushforward(f, params, dps, buffers, training, xs, dxs, kw, dkw)
    return (y, state), Tangent{Tuple{typeof(y), typeof(state)}}(dy, NoTangent())
end

function ChainRulesCore.frule((_, Δxs...), m::TorchModel, xs::AbstractArray...)
    y, dy, _ = _pushforward(_twin(m), nothing, nothing, nothing, nothing, xs, Δxs, (;), (;))
    return y, dy
end

function _pushforward(
    f::FunctionalModel,
    params,
    dparams,
    buffers,
    training,
    xs,
    dxs,
    kw,
    dkw,
)
    pair(x, dx) = x isa AbstractArray && _has_tangent(dx) ? _pair(x, unthunk(dx)) : x
    paired(x, dx) = x isa AbstractArray && _has_tangent(dx)
    ps = params === nothing ?
        nothing :
        dparams === nothing ? params : map(pair, params, dparams)
    pflags = params === nothing ?
        () :
        dparams === nothing ? map(_ -> false, params) : map(paired, params, dparams)
    kwvalues = values(kw)
    dkwvalues = Tuple(dkw)
    iflags = (map(paired, xs, Tuple(dxs))..., map(paired, kwvalues, dkwvalues)...)
    if !any(pflags) && !any(iflags)
        ys, state, _ = _functional(f, params, buffers, training, xs, kw, false)
        y = _select_functional(f, ys)
        return y, ChainRulesCore.ZeroTangent(), state
    end
    pxs = map(pair, xs, Tuple(dxs))
    pkw = NamedTuple{keys(kw)}(map(pair, kwvalues, dkwvalues))
    ys, state, _ = _functional_packed(
        f,
        ps,
        buffers,
        training,
        pxs,
        pkw,
        false,
        (pflags, iflags),
        identity,
    )
    primal(A) = A === nothing ? nothing : copy(selectdim(A, 1, 1))
    tangent(A) = A === nothing ? nothing : copy(selectdim(A, 1, 2))
    y = _select_functional(f, _map_outputs(primal, ys))
    dy = _select_functional(f, _map_outputs(tangent, ys))
    return y, dy, state
end

_has_tangent(dx) = !(dx === nothing || unthunk(dx) isa AbstractZero)

function _pair(x::AbstractArray{T}, dx) where {T}
    A = Array{T}(undef, 2, size(x)...)
    copyto!(selectdim(A, 1, 1), x)
    copyto!(selectdim(A, 1, 2), dx)
    return A
end

_map_outputs(f, y::AbstractArray) = f(y)
_map_outputs(f, ys::Union{Tuple, NamedTuple}) = map(f, ys)

# The Julia sizes of the module's parameters ("param") or buffers ("buffer").
function _layout_sizes(f::FunctionalModel, kind::String)
    state = _guard(() -> _tbjl.functional_state(f.py))
    try
        return [Tuple(pyconvert(Vector{Int}, l[0])) for l in state[kind * "_layouts"]]
    finally
        PythonCall.pydel!(state)
    end
end

"""
    TorchLayer(id_or_model; input_grads = true, output = nothing, kwargs...)

A torch model as a Lux layer (needs `using Lux` or `using LuxCore`): explicit
parameters `ps` (the module's trainable parameters, a nested `NamedTuple` by
torch's names, Julia dims) and state `st` (`(buffers = ..., training =
Val(true))`), called as `y, st′ = layer(x, ps, st)` with torch running on the
`ps` passed in. `id_or_model` is a registry id (other keyword arguments go to
[`load_model`](@ref)'s builder), a Python `torch.nn.Module`, a
[`TorchModel`](@ref) or a `TorchBridge.FunctionalModel`. See `docs/julia.md`,
"Lux".
"""
function TorchLayer end

TorchLayer(args...; kw...) = throw(ArgumentError(
    "TorchLayer needs LuxCore: `using Lux` (or `using LuxCore`) first.",
))
