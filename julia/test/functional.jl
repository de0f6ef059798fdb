# Lux layers, every AD behind DifferentiationInterface, forward mode and second
# order, against torch's own `torch.func` on the same functional call. Included
# by runtests.jl, inside its top-level testset.

using ADTypes: AutoForwardDiff, AutoMooncake, AutoZygote
using ComponentArrays: ComponentArray
using DifferentiationInterface: DifferentiationInterface
using ForwardDiff: ForwardDiff
using Lux: Lux
using LuxCore: LuxCore
using Mooncake: Mooncake
const DI = DifferentiationInterface

# torch.func references: each takes Julia arrays (viewed, dims reversed) and
# returns Julia-owned results.
const REF = PythonCall.pydict()
PythonCall.pyexec(
    """
    import copy, torch
    from torch.func import functional_call, grad, jvp, vjp

    def _f(module, names):
        return lambda ps, x: functional_call(module, dict(zip(names, ps)), (x,))

    def vjp_ref(module, names, ps, x, ybar):
        y, back = vjp(_f(module, names), tuple(ps), x)
        gp, gx = back(ybar)
        return y, gp, gx

    def jvp_ref(module, names, ps, x, dps, dx):
        return jvp(_f(module, names), (tuple(ps), x), (tuple(dps), dx))

    def hvp_ref(module, names, ps, x, vps, vx):
        # the Hessian-vector product of sum(f(ps, x)^2), in ps and in x together
        f = _f(module, names)
        loss = lambda ps, x: f(ps, x).pow(2).sum()
        g = grad(loss, argnums=(0, 1))
        _, (hp, hx) = jvp(lambda ps, x: g(ps, x), (tuple(ps), x), (tuple(vps), vx))
        return hp, hx

    def eval_ref(module, names, ps, bnames, bufs, x):
        # the module in evaluation mode on these parameters and buffers
        state = {**dict(zip(names, ps)), **dict(zip(bnames, bufs))}
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                return functional_call(module, state, (x,))
        finally:
            module.train(was)

    def step_ref(module, x, ybar):
        # plain autograd on a copy: gradients and the buffers after one step
        ref = copy.deepcopy(module)
        y = ref(x)
        y.backward(ybar)
        return y.detach(), [p.grad for p in ref.parameters()], list(ref.buffers())

    class Quadratic(torch.nn.Module):
        # x -> x'Ax/2 + b'x per sample, torch (batch, n) -> (batch,)
        def __init__(self, n):
            super().__init__()
            g = torch.Generator().manual_seed(3)
            self.A = torch.nn.Parameter(torch.randn(n, n, generator=g, dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))

        def forward(self, x):
            return 0.5 * ((x @ self.A) * x).sum(-1) + x @ self.b
    """,
    REF,
)

jl(t) = from_torch(t)
# a function over the leaves of a tree of arrays (a NamedTuple of NamedTuples)
treemap(f, nt::NamedTuple) = map(v -> treemap(f, v), nt)
treemap(f, a::AbstractArray) = f(a)
jlall(ts) = [from_torch(t) for t in ts]
tt(x) = to_torch(x)

function mlp64(; seed = 1)
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
end

function bn_cnn64(; seed = 2)
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.
        Sequential(
            nn.Conv2d(2, 4, 3; padding = 1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        ).
        double()
end

@testset "nest and flatten: torch names as a tree" begin
    t = TorchBridge.nest(["0.weight", "0.bias", "2.weight"], [1, 2, 3])
    @test t == (var"0" = (weight = 1, bias = 2), var"2" = (weight = 3,))
    @test TorchBridge.flatten(["0.weight", "0.bias", "2.weight"], t) == (1, 2, 3)
end

@testset "Lux: a TorchLayer's parameters, state and gradients" begin
    baseline = memory_stats()
    module_ = mlp64()
    layer = TorchLayer(module_)
    rng = Random.Xoshiro(0)
    ps, st = LuxCore.setup(rng, layer)
    @test keys(ps) == (Symbol("0"), Symbol("2"))
    @test size(ps[Symbol("0")].weight) == (3, 5) # torch (5, 3), Julia dims
    @test st.training === Val(true) && st.buffers == NamedTuple()
    @test LuxCore.parameterlength(layer) == 3 * 5 + 5 + 5 * 2 + 2
    # copies: writing ps does not touch torch's module
    ps[Symbol("0")].bias .= 7
    @test !any(==(7), pyconvert(Vector{Float64}, module_[0].bias.detach().numpy()))
    ps = LuxCore.initialparameters(rng, layer)
    # the call runs on the ps passed in
    ps2 = treemap(p -> p .+ 0.1, ps)
    x = randn(3, 4)
    y, st2 = layer(x, ps2, st)
    @test st2 === st
    names = TorchBridge.FunctionalModel(module_).param_names
    leaves = TorchBridge.flatten(names, ps2)
    ybar = randn(2, 4)
    ref = REF["vjp_ref"](module_, names, map(tt, leaves), tt(x), tt(ybar))
    @test y ≈ jl(ref[0])
    # Zygote: gradients for ps and x equal torch.func.vjp's
    gps, gx = Zygote.gradient((p, x) -> sum(layer(x, p, st)[1] .* ybar), ps2, x)
    gleaves = TorchBridge.flatten(names, gps)
    @test all(map((g, r) -> g ≈ r, gleaves, jlall(ref[1])))
    @test gx ≈ jl(ref[2])
    # nothing reached torch's own parameters
    @test all(
        p -> PythonCall.pyis(p.grad, PythonCall.pybuiltins.None),
        module_.parameters(),
    )
    @test memory_stats() == baseline
end

@testset "Lux: BatchNorm state comes back, nothing is mutated" begin
    baseline = memory_stats()
    module_ = bn_cnn64()
    layer = TorchLayer(module_)
    ps, st = LuxCore.setup(Random.Xoshiro(0), layer)
    @test haskey(st.buffers[Symbol("1")], :running_mean)
    x = randn(5, 5, 2, 4) # WHCN
    ybar = randn(3, 4)
    before = deepcopy(st)
    own = from_torch(module_[1].running_mean.detach())
    (y, st2), back = Zygote.pullback(p -> layer(x, p, st), ps)
    gps = back((ybar, nothing))[1]
    yref, gref, bref = REF["step_ref"](module_, tt(x), tt(ybar))
    @test y ≈ jl(yref)
    names = TorchBridge.FunctionalModel(module_).param_names
    @test all(map((g, r) -> g ≈ r, TorchBridge.flatten(names, gps), jlall(gref)))
    bnames = TorchBridge.FunctionalModel(module_).buffer_names
    @test all(map((b, r) -> b ≈ r, TorchBridge.flatten(bnames, st2.buffers), jlall(bref)))
    @test st.buffers == before.buffers # the state passed in is not written
    @test from_torch(module_[1].running_mean.detach()) == own # nor torch's module
    @test st2.buffers[Symbol("1")].num_batches_tracked[] ==
        1 # a 0-dim buffer, a 0-dim array
    # test mode: the running statistics of the state passed in are used, and kept
    stt = Lux.testmode(st2)
    yt, st3 = layer(x, ps, stt)
    @test st3 === stt
    expected = REF["eval_ref"](
        module_,
        names,
        map(tt, TorchBridge.flatten(names, ps)),
        bnames,
        map(tt, TorchBridge.flatten(bnames, st2.buffers)),
        tt(x),
    )
    @test yt ≈ jl(expected)
    @test memory_stats() == baseline
end

@testset "Lux: Chain(TorchLayer, Dense) trains with Lux.Training" begin
    baseline = memory_stats()
    model = Lux.Chain(TorchLayer(bn_cnn64()), Lux.Dense(3 => 1))
    ps, st = Lux.setup(Random.Xoshiro(1), model)
    ps = merge(ps, (layer_2 = treemap(p -> Float64.(p), ps.layer_2),))
    rng = Random.Xoshiro(2)
    x, target = randn(rng, 5, 5, 2, 8), randn(rng, 1, 8)
    ts = Lux.Training.TrainState(model, ps, st, Optimisers.Adam(1.0e-2))
    losses = Float64[]
    for _ in 1:15
        _, loss, _, ts = Lux.Training.single_train_step!(
            AutoZygote(),
            Lux.MSELoss(),
            (x, target),
            ts,
        )
        push!(losses, loss)
        @test memory_stats() == baseline
    end
    @test losses[end] < losses[1] / 2 # eight samples, fitted
    @test ts.states.layer_1.buffers[Symbol("1")].num_batches_tracked[] == 15
    # Mooncake differentiates the same chain (through DifferentiationInterface:
    # this Lux's Training has no Mooncake backend) and gives Zygote's gradients
    loss(p) = sum(abs2, first(model(x, p, Lux.testmode(ts.states))) .- target)
    g_zygote = Zygote.gradient(loss, ts.parameters)[1]
    g_mooncake = TorchBridge.scope(
        () -> DI.gradient(loss, AutoMooncake(; config = nothing), ts.parameters),
    )
    @test g_mooncake.layer_2.weight ≈ g_zygote.layer_2.weight
    names = TorchBridge.FunctionalModel(model.layers.layer_1.model.py).param_names
    @test all(map(
        ≈,
        TorchBridge.flatten(names, g_mooncake.layer_1),
        TorchBridge.flatten(names, g_zygote.layer_1),
    ))
    @test memory_stats() == baseline
end

@testset "Lux: ComponentArray parameters and outputsize" begin
    module_ = bn_cnn64()
    layer = TorchLayer(module_)
    ps, st = LuxCore.setup(Random.Xoshiro(0), layer)
    ca = ComponentArray(ps)
    x = randn(5, 5, 2, 4)
    @test layer(x, ca, st)[1] ≈ layer(x, ps, st)[1]
    g = Zygote.gradient(p -> sum(abs2, layer(x, p, st)[1]), ca)[1]
    gnt = Zygote.gradient(p -> sum(abs2, layer(x, p, st)[1]), ps)[1]
    names = TorchBridge.FunctionalModel(module_).param_names
    @test all(map(
        (a, b) -> a ≈ b,
        TorchBridge.flatten(names, g),
        TorchBridge.flatten(names, gnt),
    ))
    # sizes from fake tensors, without the batch dimension, as Lux's own
    @test LuxCore.outputsize(layer, randn(64, 64, 2, 7), Random.Xoshiro(0)) == (3,)
    @test Lux.outputsize(Lux.Chain(layer, Lux.Dense(3 => 4)), x, Random.Xoshiro(0)) == (4,)
end

@testset "DifferentiationInterface: Zygote and Mooncake equal torch autograd" begin
    module_ = mlp64()
    m = TorchModel(tb.bridge(module_))
    baseline = memory_stats()
    x = randn(3, 4)
    ybar = randn(2, 4)
    names = TorchBridge.parameter_names(m)
    ref = REF["vjp_ref"](module_, names, map(tt, m.params), tt(x), tt(ybar))
    f(x) = sum(m(x) .* ybar)
    J_ref = TorchBridge.scope(() -> Zygote.jacobian(m, x)[1]; reusable = true)
    for backend in (AutoZygote(), AutoMooncake(; config = nothing))
        # a scope releases what an AD's preparation ran forward and never pulled back
        TorchBridge.scope() do
            @test DI.gradient(f, backend, x) ≈ jl(ref[2])
            # the model's parameter gradients land in its buffers
            @test all(map((g, r) -> g ≈ r, m.grads, jlall(ref[1])))
            @test only(DI.pullback(m, backend, x, (ybar,))) ≈ jl(ref[2])
        end
        J = TorchBridge.scope(() -> DI.jacobian(m, backend, x); reusable = true)
        @test size(J) == (8, 12) && J ≈ J_ref
        @test memory_stats() == baseline
    end
    # a TorchLayer loss of its parameters, as a ComponentArray
    layer = TorchLayer(module_)
    ps, st = LuxCore.setup(Random.Xoshiro(0), layer)
    ca = ComponentArray(ps)
    loss(p) = sum(layer(x, p, st)[1] .* ybar)
    lref = REF["vjp_ref"](
        module_,
        names,
        map(tt, TorchBridge.flatten(names, ps)),
        tt(x),
        tt(ybar),
    )
    # Zygote's gradient of a ComponentArray is one; Mooncake's tangent of one is
    # a struct, so with Mooncake the parameters are a NamedTuple (as Lux.Training's)
    for (backend, p) in ((AutoZygote(), ca), (AutoMooncake(; config = nothing), ps))
        g = TorchBridge.scope(() -> DI.gradient(loss, backend, p))
        @test all(map((a, r) -> a ≈ r, TorchBridge.flatten(names, g), jlall(lref[1])))
    end
    @test memory_stats() == baseline
    close!(m)
end

@testset "ForwardDiff: forward mode equals torch.func.jvp" begin
    module_ = mlp64()
    m = TorchModel(tb.bridge(module_))
    cnn = bn_cnn64()
    c = TorchModel(tb.bridge(cnn))
    baseline = memory_stats()
    x, dx = randn(3, 4), randn(3, 4)
    names = TorchBridge.parameter_names(m)
    zeros_ps = map(p -> tt(zero(p)), m.params)
    y_ref, t_ref = REF["jvp_ref"](
        module_,
        names,
        map(tt, m.params),
        tt(x),
        zeros_ps,
        tt(dx),
    )
    y, t = DI.value_and_pushforward(m, AutoForwardDiff(), x, (dx,))
    @test y ≈ jl(y_ref) && only(t) ≈ jl(t_ref)
    @test DI.jacobian(m, AutoForwardDiff(), x) ≈
        TorchBridge.scope(() -> Zygote.jacobian(m, x)[1]; reusable = true)
    # a scalar path through the model: DI.derivative
    d = DI.derivative(s -> sum(m(x .+ s .* dx)), AutoForwardDiff(), 0.0)
    @test d ≈ sum(jl(t_ref))
    # the parameters of a TorchLayer, as duals
    layer = TorchLayer(module_)
    ps, st = LuxCore.setup(Random.Xoshiro(0), layer)
    ca = ComponentArray(ps)
    v = ComponentArray(treemap(p -> randn(size(p)), ps))
    pt = DI.pushforward(p -> layer(x, p, st)[1], AutoForwardDiff(), ca, (v,))
    _, tp_ref = REF["jvp_ref"](
        module_,
        names,
        map(tt, TorchBridge.flatten(names, ps)),
        tt(x),
        map(tt, TorchBridge.flatten(names, NamedTuple(v))),
        tt(zero(x)),
    )
    @test only(pt) ≈ jl(tp_ref)
    # the ChainRules frule gives the same
    yf, tf = ChainRulesCore.frule((NoTangent(), dx), m, x)
    @test yf ≈ jl(y_ref) && tf ≈ jl(t_ref)
    # BatchNorm in training mode: forward mode runs one direction at a time
    xc = randn(5, 5, 2, 4)
    Jc = DI.jacobian(c, AutoForwardDiff(), xc)
    Jz = TorchBridge.scope(() -> Zygote.jacobian(c, xc)[1]; reusable = true)
    @test Jc ≈ Jz
    # nested duals are refused, typed
    err = try
        ForwardDiff.derivative(
            s -> ForwardDiff.derivative(r -> sum(m(x .* r .* s)), 1.0),
            1.0,
        )
        nothing
    catch e
        e
    end
    @test err isa TorchBridgeError && err.kind === :UnsupportedDTypeError
    @test memory_stats() == baseline
    close!(m)
    close!(c)
end

@testset "second order: Hessian-vector products equal torch.func's" begin
    module_ = mlp64()
    m = TorchModel(tb.bridge(module_))
    quad = REF["Quadratic"](4)
    q = TorchModel(tb.bridge(quad))
    baseline = memory_stats()
    x, vx = randn(3, 4), randn(3, 4)
    names = TorchBridge.parameter_names(m)
    backend = DI.SecondOrder(AutoForwardDiff(), AutoZygote())
    loss_x(x) = sum(abs2, m(x))
    hv = DI.hvp(loss_x, backend, x, (vx,))
    _, hx = REF["hvp_ref"](
        module_,
        names,
        map(tt, m.params),
        tt(x),
        map(p -> tt(zero(p)), m.params),
        tt(vx),
    )
    @test only(hv) ≈ jl(hx)
    # of the parameters, through a TorchLayer
    layer = TorchLayer(module_)
    ps, st = LuxCore.setup(Random.Xoshiro(0), layer)
    ca = ComponentArray(ps)
    v = ComponentArray(treemap(p -> randn(size(p)), ps))
    loss_p(p) = sum(abs2, layer(x, p, st)[1])
    hvp = only(DI.hvp(loss_p, backend, ca, (v,)))
    hp, _ = REF["hvp_ref"](
        module_,
        names,
        map(tt, TorchBridge.flatten(names, ps)),
        tt(x),
        map(tt, TorchBridge.flatten(names, NamedTuple(v))),
        tt(zero(x)),
    )
    @test all(map((a, r) -> a ≈ r, TorchBridge.flatten(names, hvp), jlall(hp)))
    # a small Hessian: exact for a quadratic model
    A = permutedims(pyconvert(Matrix{Float64}, quad.A.detach().numpy()))
    H = DI.hessian(z -> sum(q(reshape(z, 4, 1))), backend, randn(4))
    @test H ≈ (A + A') / 2
    @test memory_stats() == baseline
    close!(m)
    close!(q)
end

@testset "a tiny transformer as a Lux layer: keyword inputs" begin
    sys, os = pyimport("sys"), pyimport("os")
    sys.path.insert(0, joinpath(@__DIR__, "..", "..", "tests"))
    hf = pyimport("hf_models")
    pathlib = pyimport("pathlib")
    root = mktempdir()
    reference, _ = hf.make_bert(pathlib.Path(joinpath(root, "bert")); num_labels = 2)
    reference.eval()
    layer = TorchLayer(reference; output = :logits)
    ps, st = LuxCore.setup(Random.Xoshiro(0), layer)
    st = Lux.testmode(st)
    vocab = pyconvert(Int, reference.config.vocab_size)
    ids = rand(0:(vocab - 1), 6, 2) # (seq, batch), 0-based token ids
    mask = ones(Int64, 6, 2)
    y, _ = layer((; input_ids = ids, attention_mask = mask), ps, st)
    expected = reference(input_ids = tt(ids), attention_mask = tt(mask)).logits.detach()
    @test y ≈ jl(expected) rtol = 1.0e-5
    g = Zygote.gradient(
        p -> sum(abs2, layer((; input_ids = ids, attention_mask = mask), p, st)[1]),
        ps,
    )[1]
    names = TorchBridge.FunctionalModel(reference).param_names
    leaves = TorchBridge.flatten(names, g)
    @test length(leaves) == length(names) &&
        all(l -> l === nothing || all(isfinite, l), leaves)
    # against torch autograd of the same call
    torch_ps = map(tt, TorchBridge.flatten(names, ps))
    leafs = [t.detach().requires_grad_(true) for t in torch_ps]
    fc = pyimport("torch.func").functional_call
    logits = fc(
        reference,
        PythonCall.pydict(zip(names, leafs)),
        PythonCall.pytuple(()),
        PythonCall.pydict(; input_ids = tt(ids), attention_mask = tt(mask)),
    ).logits
    logits.pow(2).sum().backward()
    i = findfirst(==("classifier.weight"), names)
    @test leaves[i] ≈ jl(leafs[i].grad)
end

@testset "examples/lux_finetune.jl runs offline" begin
    dir = mktempdir()
    weights = joinpath(dir, "resnet10t.safetensors")
    pyimport("safetensors.torch").save_file(
        pyimport("timm").create_model("resnet10t").state_dict(),
        weights,
    )
    example = joinpath(@__DIR__, "..", "..", "examples", "lux_finetune.jl")
    baseline = memory_stats()
    withenv("MODEL" => "timm/resnet10t", "WEIGHTS" => weights, "STEPS" => "3") do
        Base.include(Module(:LuxFinetuneExample), example)
    end
    @test memory_stats().live_pullbacks == baseline.live_pullbacks
end

@testset "docs/julia.md: the Flux, Lux and AD examples run" begin
    doc = read(joinpath(@__DIR__, "..", "..", "docs", "julia.md"), String)
    section(from, to) = doc[first(findfirst(from, doc)):(first(findfirst(to, doc)) - 1)]
    blocks(text) = [m.captures[1] for m in eachmatch(r"```julia\n(.*?)```"s, text)]
    flux = first(blocks(section(
        "## Training with Zygote and Optimisers.jl",
        "## Training with FluxTraining",
    )))
    lux = only(blocks(section("## Lux: explicit parameters and state", "## Every AD")))
    ad = blocks(section("## Every AD", "## Speed"))
    @test length(ad) == 3
    baseline = memory_stats()
    # a module per framework (Flux and Lux export the same names); the AD
    # examples build on each other
    include_string(Module(:FluxExample), flux)
    include_string(Module(:LuxExample), lux)
    examples = Module(:ADExamples)
    foreach(block -> include_string(examples, block), ad)
    @test memory_stats().live_pullbacks == baseline.live_pullbacks
end
