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
# - `bridge_over_torch_resnet18`: timm resnet18, batch 8, 224², train mode, a
#   Zygote step over a plain torch step; target <= 1.03.
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
using Optimisers: Optimisers
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

function resnet18(; batch = 8, reps = 20)
    timm = pyimport("timm")
    torch.manual_seed(0)
    plain = timm.create_model("resnet18").train()
    torch.manual_seed(0)
    m = TorchModel(tb.bridge(timm.create_model("resnet18").train()); input_grads = false)
    x = randn(Float32, 224, 224, 3, batch)
    labels = rand(0:999, batch)
    onehot = Float32.(Flux.onehotbatch(labels, 0:999))
    xt, yt = to_torch(x), to_torch(labels)
    bridge_step() = TorchBridge.scope() do
        Zygote.gradient(m -> Flux.logitcrossentropy(m(x), onehot), m)
    end
    plain_step() = PLAIN["ce_step"](plain, xt, yt)
    tb_, tp = interleaved(bridge_step, plain_step; reps = reps, warmup = 2)
    close!(m)
    return Dict(
        "resnet18_step_s_bridge" => tb_,
        "resnet18_step_s_torch" => tp,
        "bridge_over_torch_resnet18" => tb_ / tp,
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
    nn = torch.nn
    tblock(cin, cout) = (
        nn.Conv2d(cin, cout, 3; padding = 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    module_ = nn.Sequential(
        tblock(3, 32)...,
        tblock(32, 64)...,
        tblock(64, 128)...,
        nn.Flatten(),
        nn.Linear(128 * 8 * 8, 10),
    )
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
    "bridge_over_torch_resnet18" => ("<=", 1.03),
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
    only = split(get(ENV, "BENCH_ONLY", "tiny,resnet18,cnn,first"), ',')
    suites = (
        "tiny" => tiny_mlp,
        "first" => first_gradient,
        "resnet18" => resnet18,
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
