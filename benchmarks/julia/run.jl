# TorchBridge.jl's benchmarks, side by side with plain torch in the same process:
#
#     make bench-julia      # writes benchmarks/julia/results.json
#
# Figures are medians of interleaved steps (plain torch and the bridge take
# turns, so load on a shared machine hits both alike), reported as ratios or
# differences measured in this one run; they are reports, not pass/fail tests.
# Plain torch is called through PythonCall: one Python call per step, as any
# Julia program driving torch directly would make.
#
# - `overhead_us_tiny_mlp`: a Zygote.gradient step through a TorchModel (MLP
#   16 => 32 => 4, batch 8, `input_grads = false`, in `TorchBridge.scope`)
#   minus the same step in plain torch (forward, loss, backward); target <= 30.
# - `forward_overhead_us_tiny_mlp`: the same for a forward alone; target <= 15.
# - `torch_native_overhead_us_tiny_mlp`: the torch-native step (`TorchTrainer`:
#   loss, backward and an SGD update in torch, one Python call) minus the same
#   step in plain torch; the path for small models (docs/julia.md, "Speed").
# - `bridge_over_torch_cnn`, `bridge_over_torch_resnet18` (and `_1thread`): a
#   Zygote step through the bridge with the update in torch (`TorchOptimiser`
#   of Optimisers.jl's Adam) over plain torch's own step (forward, loss,
#   backward, Adam), at the machine's torch threads and at one; the
#   three-block BatchNorm CNN below (64×64×3×32) and timm resnet18 (batch 8,
#   224²), train mode; target <= 1.05. `torch_native_over_torch_*`: the same
#   with the torch-native step (`train_step!`). `zygote_optimisers_over_torch_*`:
#   the update in Julia (Optimisers.jl's Adam on the arrays over torch's memory).
# - `lux_step_over_torchmodel_step`: the CNN as a `TorchLayer` under a Lux
#   `Chain`, one `Lux.Training.single_train_step!` with Optimisers.jl's Adam,
#   over the same model's TorchModel + Zygote + Optimisers.jl step; target
#   <= 1.05.
# - `jvp_over_torch_func_jvp`: one forward-mode direction through the CNN in
#   evaluation mode from Julia (ForwardDiff's duals) over torch's own
#   `torch.func.jvp` of the same functional call.
# - `flux_over_torchbridge_cnn`: the same three-block BatchNorm CNN (64×64×3×32,
#   Adam) trained natively in Flux and in torch through TorchBridge, per step,
#   and the first (compiling) step of each.
# - `first_gradient_s`: from a fresh Julia process's start to its first
#   gradient of timm resnet18 (batch 8, 224²): `using TorchBridge, Zygote`,
#   `load_model`, `Zygote.gradient`; target <= 5. Beside it, the floor: a fresh
#   Python process's first gradient of the same model, and a fresh Julia
#   process's first Zygote gradient of a Julia model (Zygote's own compilation).

using TorchBridge
using PythonCall: pyconvert, pyimport, pyexec, pydict
using Zygote: Zygote
using Flux: Flux
using ForwardDiff: ForwardDiff
using Lux: Lux
using Optimisers: Optimisers
using Random: Random
using Statistics: median

const torch = pyimport("torch")
const tb = pyimport("torchbridge")

# Plain torch steps, defined once in Python: what a Julia program calling torch
# itself would run.
const PLAIN = pydict()
pyexec(
    """
    import torch
    import torch.nn.functional as F

    def forward(module, x):
        with torch.no_grad():
            return module(x)

    def step(module, x, y):
        module.zero_grad(set_to_none=True)
        loss = F.mse_loss(module(x), y)
        loss.backward()
        return loss

    def ce_step(module, x, y):
        module.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        return loss

    def adam_ce_step(module, opt, x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        opt.step()
        return loss

    def func_jvp(module, x, dx):
        params = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        params = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            return torch.func.jvp(
                lambda x: torch.func.functional_call(module, params, (x,)), (x,), (dx,)
            )

    def sgd_step(module, opt, x, y):
        opt.zero_grad(set_to_none=True)
        out = module(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        opt.step()
        return loss.item(), out.detach()
    """,
    PLAIN,
)

function timed(f)
    t = time_ns()
    f()
    return (time_ns() - t) / 1.0e9
end

# Medians of `reps` interleaved pairs, alternating which goes first (ABBA).
function interleaved(a, b; reps, warmup = 3)
    for _ in 1:warmup
        a()
        b()
    end
    ta, tb_ = Float64[], Float64[]
    for i in 1:reps
        if isodd(i)
            push!(ta, timed(a))
            push!(tb_, timed(b))
        else
            push!(tb_, timed(b))
            push!(ta, timed(a))
        end
    end
    return median(ta), median(tb_)
end

function tiny_mlp(; reps = 2000)
    torch.manual_seed(0)
    nn = torch.nn
    make() = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    plain = make()
    m = TorchModel(tb.bridge(make()); input_grads = false)
    x, y = randn(Float32, 16, 8), randn(Float32, 4, 8)
    xt, yt = to_torch(x), to_torch(y) # the plain side gets torch tensors once
    bridge_step() = TorchBridge.scope() do
        Zygote.gradient(m -> Flux.mse(m(x), y), m)
    end
    plain_step() = PLAIN["step"](plain, xt, yt)
    tb_, tp = interleaved(bridge_step, plain_step; reps = reps)
    fb, fp = interleaved(() -> m(x), () -> PLAIN["forward"](plain, xt); reps = reps)
    trainer = TorchTrainer(m, Optimisers.Descent(0.01), Flux.mse)
    sgd = torch.optim.SGD(plain.parameters(); lr = 0.01)
    nb, np_ = interleaved(
        () -> train_step!(trainer, x, y),
        () -> PLAIN["sgd_step"](plain, sgd, xt, yt);
        reps = reps,
    )
    close!(m)
    return Dict(
        "tiny_mlp_torch_native_us_bridge" => nb * 1.0e6,
        "tiny_mlp_torch_native_us_torch" => np_ * 1.0e6,
        "torch_native_overhead_us_tiny_mlp" => (nb - np_) * 1.0e6,
        "tiny_mlp_step_us_bridge" => tb_ * 1.0e6,
        "tiny_mlp_step_us_torch" => tp * 1.0e6,
        "overhead_us_tiny_mlp" => (tb_ - tp) * 1.0e6,
        "tiny_mlp_forward_us_bridge" => fb * 1.0e6,
        "tiny_mlp_forward_us_torch" => fp * 1.0e6,
        "forward_overhead_us_tiny_mlp" => (fb - fp) * 1.0e6,
    )
end

# The torch CNN of `cnn_comparison`: three conv => BatchNorm => relu => maxpool
# blocks and a linear head, 64×64×3 images, 10 classes.
function torch_cnn()
    nn = torch.nn
    block(cin, cout) = (
        nn.Conv2d(cin, cout, 3; padding = 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    return nn.Sequential(
        block(3, 32)...,
        block(32, 64)...,
        block(64, 128)...,
        nn.Flatten(),
        nn.Linear(128 * 8 * 8, 10),
    )
end

# A training step of `make()`'s model through the bridge (Zygote, the update in
# torch or in Julia, the torch-native step) beside plain torch's own (forward,
# cross-entropy, backward, Adam), interleaved, at `threads` torch threads.
function model_steps(name, make, x, classes; threads, reps)
    previous = pyconvert(Int, torch.get_num_threads())
    torch.set_num_threads(threads)
    try
        labels = rand(1:classes, size(x, ndims(x)))
        onehot = Float32.(Flux.onehotbatch(labels, 1:classes))
        xt, yt = to_torch(x), to_torch(labels .- 1)
        torch.manual_seed(0)
        plain = make().train()
        adam = torch.optim.Adam(plain.parameters(); lr = 1.0e-3)
        plain_step() = PLAIN["adam_ce_step"](plain, adam, xt, yt)
        torch.manual_seed(0)
        m = TorchModel(tb.bridge(make().train()); input_grads = false)
        tstate = Optimisers.setup(TorchOptimiser(Optimisers.Adam(1.0f-3)), m)
        torch_update() = TorchBridge.scope() do
            g = Zygote.gradient(m -> Flux.logitcrossentropy(m(x), onehot), m)[1]
            Optimisers.update!(tstate, m, g)
        end
        jstate = Optimisers.setup(Optimisers.Adam(1.0f-3), m)
        julia_update() = TorchBridge.scope() do
            g = Zygote.gradient(m -> Flux.logitcrossentropy(m(x), onehot), m)[1]
            Optimisers.update!(jstate, m, g)
        end
        trainer = TorchTrainer(m, Optimisers.Adam(1.0f-3), Flux.logitcrossentropy)
        native() = train_step!(trainer, x, onehot)
        tz, tp = interleaved(torch_update, plain_step; reps = reps, warmup = 2)
        tj, tp2 = interleaved(julia_update, plain_step; reps = reps, warmup = 2)
        tn, tp3 = interleaved(native, plain_step; reps = reps, warmup = 2)
        close!(m)
        suffix = threads == 1 ? "_1thread" : ""
        return Dict(
            "$(name)_step_s_torch$suffix" => tp,
            "$(name)_step_s_bridge$suffix" => tz,
            "bridge_over_torch_$name$suffix" => tz / tp,
            "zygote_optimisers_over_torch_$name$suffix" => tj / tp2,
            "torch_native_over_torch_$name$suffix" => tn / tp3,
        )
    finally
        torch.set_num_threads(previous)
    end
end

function model_steps()
    timm = pyimport("timm")
    machine = pyconvert(Int, torch.get_num_threads())
    figures = Dict{String, Any}()
    cnn_x = randn(Float32, 64, 64, 3, 32)
    resnet_x = randn(Float32, 224, 224, 3, 8)
    for threads in unique((machine, 1))
        merge!(figures, model_steps("cnn", torch_cnn, cnn_x, 10; threads, reps = 20))
        merge!(
            figures,
            model_steps(
                "resnet18",
                () -> timm.create_model("resnet18"),
                resnet_x,
                1000;
                threads,
                reps = 10,
            ),
        )
    end
    return figures
end

# Lux: the CNN as a TorchLayer under a Lux Chain, a Lux.Training step with
# Optimisers.jl's Adam, over the same model's TorchModel + Zygote + Optimisers.jl
# step; and forward mode: one direction through the CNN from Julia over
# torch.func.jvp of the same call.
function lux_and_forward_mode(; reps = 20)
    x = randn(Float32, 64, 64, 3, 32)
    labels = rand(1:10, 32)
    onehot = Float32.(Flux.onehotbatch(labels, 1:10))
    torch.manual_seed(0)
    layer = TorchLayer(
        torch_cnn().train();
        input_grads = false,
    ) # data in, as the TorchModel
    model = Lux.Chain(layer)
    ps, st = Lux.setup(Random.Xoshiro(0), model)
    ts = Lux.Training.TrainState(model, ps, st, Optimisers.Adam(1.0f-3))
    lossfn = Lux.CrossEntropyLoss(; logits = Val(true))
    lux_step() = (
        ts = Lux.Training.single_train_step!(Lux.AutoZygote(), lossfn, (x, onehot), ts)[4]
    )
    torch.manual_seed(0)
    m = TorchModel(tb.bridge(torch_cnn().train()); input_grads = false)
    jstate = Optimisers.setup(Optimisers.Adam(1.0f-3), m)
    model_step() = TorchBridge.scope() do
        g = Zygote.gradient(m -> Flux.logitcrossentropy(m(x), onehot), m)[1]
        Optimisers.update!(jstate, m, g)
    end
    tl, tm = interleaved(lux_step, model_step; reps = reps, warmup = 2)
    close!(m)
    # forward mode, evaluation mode (no statistics updated)
    torch.manual_seed(0)
    cnn = torch_cnn().eval()
    e = TorchModel(tb.bridge(cnn); input_grads = true)
    dx = randn(Float32, size(x))
    duals = ForwardDiff.Dual{Nothing}.(x, dx)
    xt, dxt = to_torch(x), to_torch(dx)
    julia_jvp() = ForwardDiff.partials.(e(duals), 1)
    torch_jvp() = PLAIN["func_jvp"](cnn, xt, dxt)
    tj, tt = interleaved(julia_jvp, torch_jvp; reps = reps, warmup = 2)
    close!(e)
    return Dict(
        "lux_step_s" => tl,
        "torchmodel_step_s" => tm,
        "lux_step_over_torchmodel_step" => tl / tm,
        "jvp_s_julia" => tj,
        "jvp_s_torch_func" => tt,
        "jvp_over_torch_func_jvp" => tj / tt,
    )
end

# Three conv => BatchNorm => relu => maxpool blocks and a dense head, in Flux
# and in torch, trained with Adam on 64×64×3×32 batches.
function cnn_comparison(; steps = 10)
    x = randn(Float32, 64, 64, 3, 32)
    labels = rand(1:10, 32)
    onehot = Float32.(Flux.onehotbatch(labels, 1:10))
    block(cin, cout) = (
        Flux.Conv((3, 3), cin => cout; pad = 1),
        Flux.BatchNorm(cout, Flux.relu),
        Flux.MaxPool((2, 2)),
    )
    flux = Flux.Chain(
        block(3, 32)...,
        block(32, 64)...,
        block(64, 128)...,
        Flux.flatten,
        Flux.Dense(128 * 8 * 8 => 10),
    )
    state = Optimisers.setup(Optimisers.Adam(1.0f-3), flux)
    flux_step() = begin
        g = Zygote.gradient(f -> Flux.logitcrossentropy(f(x), onehot), flux)[1]
        Optimisers.update!(state, flux, g)
    end
    module_ = torch_cnn()
    m = TorchModel(tb.bridge(module_); input_grads = false)
    tstate = Optimisers.setup(TorchOptimiser(Optimisers.Adam(1.0f-3)), m)
    torch_step() = TorchBridge.scope() do
        g = Zygote.gradient(m -> Flux.logitcrossentropy(m(x), onehot), m)[1]
        Optimisers.update!(tstate, m, g)
    end
    first_flux = timed(flux_step)
    first_torch = timed(torch_step)
    tf, tt = interleaved(flux_step, torch_step; reps = steps, warmup = 1)
    close!(m)
    return Dict(
        "cnn_step_s_flux" => tf,
        "cnn_step_s_torchbridge" => tt,
        "flux_over_torchbridge_cnn" => tf / tt,
        "cnn_first_step_s_flux" => first_flux,
        "cnn_first_step_s_torchbridge" => first_torch,
    )
end

# A fresh process: Julia's start to its first gradient, and the steps between.
# Two fresh processes give the floor under it: Python alone (import torch and
# timm, load, one forward and backward of the same loss) and Zygote alone (the
# first gradient of the same loss through a one-matrix Julia model, which
# compiles Zygote's and ChainRules' own code as the first TorchBridge gradient
# does).
function first_gradient()
    script = """
    t0 = time()
    using TorchBridge, Zygote
    t1 = time()
    m = load_model("timm/resnet18"; num_classes = 10, input_grads = false)
    t2 = time()
    x = randn(Float32, 224, 224, 3, 8)
    Zygote.gradient(m -> sum(m(x)), m)
    t3 = time()
    Zygote.gradient(m -> sum(m(x)), m)
    t4 = time()
    println(join((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t3), " "))
    """
    project = Base.active_project()
    julia = `$(Base.julia_cmd()) --startup-file=no --project=$project`
    start = time()
    using_s, load_s, gradient_s, second_s, first_done = _last_line(`$julia -e $script`)
    # the same clock on both sides: the process's start to its first gradient
    total = first_done - start
    return Dict(
        "first_gradient_s" => total,
        "first_gradient_using_s" => using_s,
        "first_gradient_load_model_s" => load_s,
        "first_gradient_gradient_s" => gradient_s,
        "second_gradient_s" => second_s,
        "first_gradient_python_only_s" => _first_gradient_python(),
        "first_gradient_zygote_only_s" => _first_gradient_zygote(julia),
    )
end

function _first_gradient_python()
    script = """
    import time
    import torch, torchbridge
    m = torchbridge.bridge(torchbridge.load_model("timm/resnet18", num_classes=10))
    (y,), pullback = m.forward(torch.randn(8, 3, 224, 224), input_grads=False)
    pullback(torch.ones_like(y))
    print(time.time())
    """
    python = pyconvert(String, pyimport("sys").executable)
    start = time()
    return only(_last_line(`$python -c $script`)) - start
end

function _first_gradient_zygote(julia)
    script = """
    using Zygote
    struct Dense1; w::Matrix{Float32}; end
    (d::Dense1)(x) = d.w * x
    d, x = Dense1(randn(Float32, 10, 64)), randn(Float32, 64, 8)
    Zygote.gradient(d -> sum(d(x)), d)
    println(time())
    """
    start = time()
    return only(_last_line(`$julia -e $script`)) - start
end

# The numbers on the last line a command prints (its timings).
_last_line(cmd) = parse.(Float64, split(strip(last(split(strip(read(cmd, String)), '\n')))))

# JSON for nested dicts of numbers and strings, keys sorted, as benchmarks/run.py writes.
_json(x::Bool, _ = "") = string(x)
_json(x::Real, _ = "") = isfinite(x) ? string(Float64(x)) : "null"
_json(x::Integer, _ = "") = string(x)
_json(x::AbstractString, _ = "") = "\"" * escape_string(x) * "\""
function _json(d::AbstractDict, indent = "")
    inner = indent * "  "
    items = ("$inner\"$k\": " * _json(d[k], inner) for k in sort!(collect(keys(d))))
    return "{\n" * join(items, ",\n") * "\n$indent}"
end

const TARGETS = Dict(
    "overhead_us_tiny_mlp" => ("<=", 30.0),
    "forward_overhead_us_tiny_mlp" => ("<=", 15.0),
    "bridge_over_torch_resnet18" => ("<=", 1.05),
    "bridge_over_torch_resnet18_1thread" => ("<=", 1.05),
    "bridge_over_torch_cnn" => ("<=", 1.05),
    "bridge_over_torch_cnn_1thread" => ("<=", 1.05),
    "lux_step_over_torchmodel_step" => ("<=", 1.05),
    "first_gradient_s" => ("<=", 5.0),
)

function main(path)
    results = Dict{String, Any}("machine" => Dict(
        "julia" => string(VERSION),
        "torch" => pyconvert(String, torch.__version__),
        "julia_threads" => Threads.nthreads(),
        "torch_threads" => pyconvert(Int, torch.get_num_threads()),
        "cpus" => Sys.CPU_THREADS,
    ))
    only = split(get(ENV, "BENCH_ONLY", "tiny,steps,lux,cnn,first"), ',')
    suites = (
        "tiny" => tiny_mlp,
        "first" => first_gradient,
        "steps" => model_steps,
        "lux" => lux_and_forward_mode,
        "cnn" => cnn_comparison,
    )
    for (name, suite) in suites
        name in only || continue
        t = time()
        figures = suite()
        figures["suite_seconds"] = time() - t
        results[name] = figures
        for key in sort!(collect(keys(figures)))
            target = get(TARGETS, key, nothing)
            note = target === nothing ? "" : "  (target $(target[1]) $(target[2]))"
            println(rpad("$name.$key", 48), round(figures[key]; sigdigits = 4), note)
        end
    end
    write(path, _json(results) * "\n")
    println("wrote $path")
    return results
end

main(get(ARGS, 1, joinpath(@__DIR__, "results.json")))
