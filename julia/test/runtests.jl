# The TorchBridge.jl test suite. Run from the repository root with
#
#     julia --project=julia -e 'using Pkg; Pkg.test()'
#
# It needs the Python side (torch, timm, torchbridge) that CondaPkg installs from
# julia/CondaPkg.toml, or an existing Python (JULIA_CONDAPKG_BACKEND=Null,
# JULIA_PYTHONCALL_EXE=...). Set HF_HUB_OFFLINE=1 to keep the registry offline.

using Test
using TorchBridge
using PythonCall: PythonCall, pyconvert, pyimport
using ChainRulesCore: ChainRulesCore, NoTangent
using ChainRulesTestUtils: ChainRulesTestUtils, test_rrule, ⊢
using Zygote: Zygote
using FiniteDifferences: FiniteDifferences, central_fdm
using Optimisers: Optimisers
using Flux: Flux
using Random: Random
using Serialization: deserialize
using Sockets: Sockets

# FluxTraining 0.3 pins Flux 0.14 and Optimisers 0.3: an environment that
# resolves to newer ones has no FluxTraining, and its testsets are skipped.
const HAS_FLUXTRAINING = Base.find_package("FluxTraining") !== nothing
HAS_FLUXTRAINING && @eval using FluxTraining: FluxTraining

# FastAI.jl is not a test dependency; in an environment that has it, the FastAI
# extension loads and its testset runs when that FastAI has a model registry.
if Base.find_package("FastAI") !== nothing
    @eval using FastAI: FastAI
end

const torch = pyimport("torch")
const tb = pyimport("torchbridge")

# How many torch tensors Python holds right now (its cyclic GC tracks them).
const LIVE_TENSORS = Ref{PythonCall.Py}()
let scope = PythonCall.pydict()
    PythonCall.pyexec(
        """
        import gc, torch, warnings
        def live_tensors():
            with warnings.catch_warnings():  # isinstance on torch's deprecated aliases warns
                warnings.simplefilter("ignore", FutureWarning)
                return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())
        """,
        scope,
    )
    LIVE_TENSORS[] = scope["live_tensors"]
end

# A small torch MLP, (features = 3, batch) -> (2, batch) in Julia order.
function tiny_model(; T = Float32, seed = 0)
    torch.manual_seed(seed)
    nn = torch.nn
    module_ = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    T == Float64 && module_.double()
    return TorchModel(tb.bridge(module_)), module_
end

torch_param(module_, i, name) = pyconvert(
    Array,
    getproperty(module_[i], name).detach().numpy(),
)

# Finite differences over a TorchModel perturb its parameters: a point of the
# model's parameter space, callable like the model (it writes its parameters
# into torch's memory first), whose `params` the model's tangent is compared to.
# Its `params` is a structural tangent of the parameter tuple, as the rrule's is.
struct ParamsPoint{M, P}
    model::M
    params::P
end
(p::ParamsPoint)(xs...) = (foreach(copyto!, p.model.params, p.params); p.model(xs...))
function FiniteDifferences.to_vec(m::TorchModel)
    v, back = FiniteDifferences.to_vec(map(collect, m.params))
    point(w) = ParamsPoint(m, ChainRulesCore.Tangent{typeof(m.params)}(back(w)...))
    return v, point
end

@testset verbose = true "TorchBridge" begin
    @testset "the precompile directives name methods" begin
        for (f, types) in TorchBridge._precompile_signatures()
            @test precompile(f, types)
        end
    end

    @testset "zero-copy parameters" begin
        m, module_ = tiny_model()
        @test TorchBridge.parameter_names(m) == ["0.weight", "0.bias", "2.weight", "2.bias"]
        # Julia (in, out) is torch's (out, in)
        @test size(m.params[1]) == (3, 5)
        @test m.params[1] == permutedims(torch_param(module_, 0, "weight"))
        # mutate from Julia, seen by torch
        m.params[2] .= 7.0f0
        @test all(==(7.0f0), torch_param(module_, 0, "bias"))
        # mutate from torch, seen by Julia
        module_[2].bias.data.fill_(-1.0)
        @test all(==(-1.0f0), m.params[4])
        close!(m)
    end

    @testset "forward matches torch, dims reversed" begin
        m, module_ = tiny_model()
        x = randn(Float32, 3, 4) # (features, batch)
        y = m(x)
        @test y isa Matrix{Float32} && size(y) == (2, 4)
        ref = from_torch(module_(to_torch(x)).detach())
        @test y ≈ ref
        # an image-like batch: Julia (W, H, C, N) is torch (N, C, H, W)
        t = to_torch(zeros(Float32, 5, 4, 3, 2))
        @test pyconvert(Vector{Int}, t.shape) == [2, 3, 4, 5]
        PythonCall.pydel!(t)
        # outputs whose sizes change between calls, and back: each call's own values
        for n in (4, 5, 4, 1)
            xn = randn(Float32, 3, n)
            yn = m(xn)
            @test size(yn) == (2, n) && yn ≈ from_torch(module_(to_torch(xn)).detach())
        end
        close!(m)
        # a module returning a non-contiguous view (a transpose) and a Bool mask
        PythonCall.pyexec(
            """
            import torch
            class Transposed(torch.nn.Module):
                def forward(self, x):
                    return x.t() * 2, x > 0
            """,
            Main,
        )
        t = TorchModel(tb.bridge(PythonCall.pyeval("Transposed()", Main)))
        x = randn(Float32, 3, 4)
        for _ in 1:2
            # the second call reuses the first's layouts
            doubled, mask = t(x)
            @test doubled == permutedims(2 .* x) && mask == (x .> 0)
        end
        close!(t)
        # inputs cross without a copy: an Array (the buffer protocol) and a
        # strided view (DLPack) alike are torch's input memory
        PythonCall.pyexec(
            """
            class Doubling(torch.nn.Module):
                def forward(self, x):
                    return x.mul_(2).sum(dim=-1)
            """,
            Main,
        )
        d = TorchModel(tb.bridge(PythonCall.pyeval("Doubling()", Main)))
        a = randn(Float32, 3, 4)
        a0 = copy(a)
        @test d(a) ≈ vec(sum(2 .* a0; dims = 1)) && a == 2 .* a0
        v = view(a, :, 2:3)
        @test !(v isa Array) && d(v) ≈ vec(sum(4 .* a0[:, 2:3]; dims = 1))
        @test a[:, 2:3] == 4 .* a0[:, 2:3] && a[:, 1] == 2 .* a0[:, 1]
        close!(d)
        # a raw Julia array torch cannot view (no buffer) is refused, not copied
        err = try
            tb.to_torch(view(a, [1, 3], :))
        catch e
            e
        end
        @test err isa PythonCall.PyException && occursin("without copying", string(err.v))
        # a Python value passed as a keyword input stays the caller's
        PythonCall.pyexec(
            """
            class Scaled(torch.nn.Module):
                def forward(self, x, scale=None):
                    return x if scale is None else x * scale
            """,
            Main,
        )
        s = TorchModel(tb.bridge(PythonCall.pyeval("Scaled()", Main)))
        three = PythonCall.Py(3.0f0)
        @test s(x; scale = three) == 3 .* x && pyconvert(Float32, three) == 3
        @test s(x; scale = PythonCall.pybuiltins.None) == x
        @test s(x; scale = PythonCall.pybuiltins.None) == x # None itself still valid
        close!(s)
    end

    @testset "Zygote gradients vs finite differences" begin
        m, _ = tiny_model(; T = Float64)
        x = randn(3, 4)
        loss(m, x) = sum(abs2, m(x))
        gm, gx = Zygote.gradient(loss, m, x)
        fdm = central_fdm(5, 1)
        @test gx ≈ FiniteDifferences.grad(fdm, x -> loss(m, x), x)[1] rtol = 1.0e-6
        for i in eachindex(m.params)
            p0 = copy(m.params[i])
            fd = FiniteDifferences.grad(
                fdm,
                p -> (copyto!(m.params[i], p); loss(m, x)),
                p0,
            )[1]
            copyto!(m.params[i], p0)
            @test gm.params[i] ≈ fd rtol = 1.0e-6
        end
        # the tangent is a copy: the next step does not change it
        g1 = copy(gm.params[1])
        Zygote.gradient(m -> loss(m, 2 .* x), m)
        @test gm.params[1] == g1
        close!(m)
    end

    @testset "a Flux head on a torch backbone" begin
        m, _ = tiny_model()
        model = Flux.Chain(m, Flux.Dense(2 => 1))
        x = randn(Float32, 3, 8)
        grads = Zygote.gradient(model -> sum(model(x)), model)[1]
        @test length(grads.layers[1].params) == 4
        @test size(grads.layers[2].weight) == (1, 2)
        state = Optimisers.setup(Optimisers.Adam(1.0f-2), model)
        before = copy(m.params[1])
        Optimisers.update!(state, model, grads)
        @test m.params[1] != before # torch's weight moved, in place
        close!(m)
    end

    @testset "memory: back at baseline after many steps" begin
        m, _ = tiny_model()
        baseline = memory_stats()
        state = Optimisers.setup(Optimisers.Descent(1.0f-3), m)
        x, y = randn(Float32, 3, 16), randn(Float32, 2, 16)
        for _ in 1:200
            TorchBridge.scope() do
                g = Zygote.gradient(m -> Flux.mse(m(x), y), m)[1]
                Optimisers.update!(state, m, g)
            end
        end
        @test memory_stats() == baseline
        # a pullback never called is released by its scope, not by the GC
        TorchBridge.scope() do
            Zygote.pullback(m -> sum(m(x)), m)
            @test memory_stats().live_pullbacks == baseline.live_pullbacks + 1
        end
        @test memory_stats() == baseline
        # a pullback is one-shot
        _, back = Zygote.pullback(m -> sum(m(x)), m)
        back(1.0f0)
        err = try
            back(1.0f0)
            nothing
        catch e
            e
        end
        @test err isa TorchBridgeError && err.kind === :PullbackReleasedError
        @test memory_stats() == baseline
        close!(m)
        @test memory_stats().open_models == baseline.open_models - 1
    end

    @testset "torch optimisers from Optimisers.jl rules" begin
        @test TorchBridge.optimiser_spec(Optimisers.Adam(1.0e-3)) ==
            Dict{String, Any}(
                "rule" => "Adam",
                "eta" => 1.0e-3,
                "beta" => (0.9, 0.999),
                "epsilon" => 1.0e-8,
            )
        @test TorchBridge.optimiser_spec(Optimisers.Momentum(0.1, 0.8))["rho"] == 0.8
        @test_throws ArgumentError TorchBridge.optimiser_spec(Optimisers.Lion())
        @test TorchBridge.loss_name(Flux.logitcrossentropy) == "logitcrossentropy"
        @test_throws ArgumentError TorchBridge.loss_name(Flux.huber_loss)
        m, _ = tiny_model()
        state = Optimisers.setup(TorchOptimiser(Optimisers.Descent(0.5)), m)
        x = randn(Float32, 3, 4)
        g = Zygote.gradient(m -> sum(m(x)), m)[1]
        expected = m.params[4] .- 0.5f0 .* g.params[4]
        Optimisers.update!(state, m, g)
        @test m.params[4] ≈ expected
        close!(m)
    end

    @testset "TorchTrainer: the torch-native step" begin
        # one step equals the same step taken in Julia: Zygote's gradient of
        # Flux's loss, then Optimisers.jl's Descent
        m, _ = tiny_model()
        reference, _ = tiny_model() # the same seed: the same parameters
        x, y = randn(Float32, 3, 8), randn(Float32, 2, 8)
        before = m(x)
        trainer = TorchTrainer(m, Optimisers.Descent(0.1), Flux.mse)
        loss, ŷ = train_step!(trainer, x, y)
        @test ŷ ≈ before && ŷ isa Matrix{Float32}
        @test loss ≈ Flux.mse(before, y)
        g = Zygote.gradient(r -> Flux.mse(r(x), y), reference)[1]
        Optimisers.update!(
            Optimisers.setup(Optimisers.Descent(0.1), reference),
            reference,
            g,
        )
        @test all(map(≈, m.params, reference.params))
        # a strided view crosses through DLPack, Bool targets as the model's type
        xs = randn(Float32, 3, 16)
        labels = rand(Bool, 2, 8)
        before = m(xs[:, 1:2:16])
        loss, ŷ = train_step!(trainer, view(xs, :, 1:2:16), labels)
        @test ŷ ≈ before
        @test loss ≈ Flux.mse(before, Float32.(labels))
        # every Python result is released by the step itself: with Julia's
        # GC off, no torch tensor outlives its step
        live_tensors() = pyconvert(Int, LIVE_TENSORS[]())
        GC.enable(false)
        counts = try
            before = live_tensors()
            for _ in 1:20
                train_step!(trainer, x, y)
            end
            (before, live_tensors())
        finally
            GC.enable(true)
        end
        @test counts[2] == counts[1]
        close!(m)
        close!(reference)
    end

    @testset "one-shot by default, reusable inside a scope" begin
        m, _ = tiny_model(; T = Float64)
        x = randn(3, 4)
        baseline = memory_stats()
        # a loop of plain Zygote.gradient calls, no scope: every step frees its graph
        for _ in 1:50
            Zygote.gradient(m -> sum(abs2, m(x)), m)
            @test memory_stats() == baseline
        end
        # a second call of a one-shot pullback says how to get a reusable one
        _, back = Zygote.pullback(m -> sum(m(x)), m)
        back(1.0)
        err = try
            back(1.0)
            nothing
        catch e
            e
        end
        @test err isa TorchBridgeError && occursin("reusable = true", err.msg)
        # Zygote.jacobian calls the pullback once per output element
        J = TorchBridge.scope(; reusable = true) do
            Zygote.jacobian(x -> m(x), x)[1]
        end
        @test size(J) == (8, 12)
        @test J ≈
            FiniteDifferences.jacobian(central_fdm(5, 1), x -> m(x), x)[1] rtol = 1.0e-6
        @test memory_stats() == baseline
        close!(m)
    end

    @testset "ChainRulesTestUtils.test_rrule" begin
        m, _ = tiny_model(; T = Float64)
        x = randn(3, 4)
        saved = map(copy, m.params)
        TorchBridge.scope(; reusable = true) do
            # inputs and the model's own tangent against finite differences (the
            # model's through its parameters, see ParamsPoint); test_rrule calls
            # the pullback several times, with thunked and zero cotangents
            zeros_ = ChainRulesCore.Tangent{typeof(m.params)}(map(zero, m.params)...)
            dm = ChainRulesCore.Tangent{typeof(m)}(; params = zeros_)
            test_rrule(m ⊢ dm, x; check_inferred = false, rtol = 1.0e-7, atol = 1.0e-9)
        end
        foreach(copyto!, m.params, saved) # finite differences moved them
        @test memory_stats().live_pullbacks == 0
        close!(m)
    end

    HAS_FLUXTRAINING &&
        @testset "FluxTraining phases set torch's mode" begin
            torch.manual_seed(0)
            nn = torch.nn
            module_ = nn.Sequential(
                nn.Linear(3, 8),
                nn.BatchNorm1d(8),
                nn.Dropout(0.5),
                nn.Linear(8, 2),
            )
            m = TorchModel(tb.bridge(module_))
            running_mean() = pyconvert(Array, module_[1].running_mean.numpy())
            xs = randn(Float32, 3, 64)
            ys = Float32.(Flux.onehotbatch(Int.(xs[1, :] .> 0) .+ 1, 1:2))
            batches = [(xs[:, i:(i + 15)], ys[:, i:(i + 15)]) for i in 1:16:64]
            valid = [(randn(Float32, 3, 16) .+ 5.0f0, ys[:, 1:16])]
            for (fitter, optimiser) in (
                    (FluxTraining.fit!, Optimisers.Adam(0.01)),
                    (fit_torch!, TorchOptimiser(Optimisers.Adam(0.01))),
                )
                learner = FluxTraining.Learner(
                    m,
                    Flux.logitcrossentropy;
                    data = (batches, valid),
                    optimizer = optimiser,
                    usedefaultcallbacks = false,
                )
                TorchBridge.testmode!(m) # the user's mode, restored after fitting
                before = running_mean()
                FluxTraining.epoch!(learner, FluxTraining.ValidationPhase(), valid)
                @test running_mean() == before # validation never updates the statistics
                @test !pyconvert(Bool, m.py.training)
                fitter(learner, 1)
                @test running_mean() != before        # training did, in train mode
                @test !pyconvert(Bool, m.py.training) # the user's eval mode is back
                # validation runs in eval mode: dropout off, the same output twice
                TorchBridge.trainmode!(m)
                after_train = running_mean()
                outputs = []
                FluxTraining.epoch!(learner, FluxTraining.ValidationPhase(), valid)
                push!(outputs, learner.step.ŷs)
                FluxTraining.epoch!(learner, FluxTraining.ValidationPhase(), valid)
                push!(outputs, learner.step.ŷs)
                @test outputs[1] == outputs[2]
                @test running_mean() == after_train
                @test pyconvert(Bool, m.py.training) # and the user's train mode is back
            end
            close!(m)
        end

    HAS_FLUXTRAINING &&
        @testset "FluxTraining: torch-native and Zygote epochs" begin
            m, _ = tiny_model()
            xs = randn(Float32, 3, 256)
            labels = Int.(xs[1, :] .> 0) .+ 1
            ys = Float32.(Flux.onehotbatch(labels, 1:2))
            batches = [(xs[:, i:(i + 31)], ys[:, i:(i + 31)]) for i in 1:32:256]
            learner = FluxTraining.Learner(
                m,
                Flux.logitcrossentropy;
                data = (batches, batches[1:2]),
                optimizer = TorchOptimiser(
                    Optimisers.Adam(0.05);
                    schedule = (schedule = :cosine, steps = 40),
                ),
                usedefaultcallbacks = false,
            )
            loss_before = Flux.logitcrossentropy(m(xs), ys)
            fit_torch!(learner, 5)
            loss_after = Flux.logitcrossentropy(m(xs), ys)
            @test loss_after < 0.5 * loss_before
            # the standard phase, with Zygote through the rrule and an Optimisers.jl rule
            learner2 = FluxTraining.Learner(
                m,
                Flux.logitcrossentropy;
                data = (batches, batches[1:2]),
                optimizer = Optimisers.Adam(0.01),
                usedefaultcallbacks = false,
            )
            FluxTraining.fit!(learner2, 2)
            @test Flux.logitcrossentropy(m(xs), ys) < loss_after * 1.1
            @test memory_stats().live_pullbacks == 0
            close!(m)
        end

    @testset "registry" begin
        rows = models(; source = "torchvision")
        @test !isempty(rows)
        @test all(r -> r.source == "torchvision", rows)
        sized = filter(r -> r.input_size !== nothing, rows)
        @test all(r -> r.input_size == reverse(r.torch_input_size), sized)
        found = search_models("resnet"; limit = 3)
        @test 1 <= length(found) <= 3
        @test model_info(found[1].id).id == found[1].id
        err = try
            model_info("timm/definitely_not_a_model")
            nothing
        catch e
            e
        end
        @test err isa TorchBridgeError && err.kind === :UnknownModelError
        m = load_model("torchvision/resnet18"; num_classes = 3)
        TorchBridge.testmode!(m)
        @test !pyconvert(Bool, m.py.training)
        @test size(m(randn(Float32, 64, 64, 3, 2))) == (3, 2)
        # Flux's mode functions reach torch through a Chain (the Flux extension)
        Flux.trainmode!(Flux.Chain(m, Flux.Dense(3 => 1)))
        @test pyconvert(Bool, m.py.training)
        Flux.testmode!(m)
        @test !pyconvert(Bool, m.py.training)
        close!(m)
    end

    @testset "Flux.outputsize and feature backbones" begin
        baseline = memory_stats()
        # sizes by torch on fake tensors agree with real forwards
        for (id, sizes) in (
                ("torchvision/resnet18", ((64, 64, 3, 2), (96, 80, 3, 1))),
                ("timm/test_resnet.r160_in1k", ((64, 64, 3, 2), (33, 47, 3, 3))),
            )
            m = load_model(id; features = true)
            TorchBridge.testmode!(m)
            for sz in sizes
                @test Flux.outputsize(m, sz) == size(m(rand(Float32, sz...)))
            end
            @test Flux.outputsize(m, (64, 64, 3); padbatch = true) ==
                Flux.outputsize(m, (64, 64, 3, 1))
            @test Flux.outputsize(m, (256, 256, 3, 1))[end - 1] ==
                model_info(id).feature_channels
            close!(m)
        end
        backbone = load_model("torchvision/resnet18"; features = true)
        @test size(backbone(rand(Float32, 224, 224, 3, 2))) == (7, 7, 512, 2)
        @test model_info("torchvision/resnet18").feature_channels == 512
        # inside a Chain, with a Flux head after it
        chain = Flux.Chain(
            backbone,
            Flux.AdaptiveMeanPool((1, 1)),
            Flux.flatten,
            Flux.Dense(512 => 4),
        )
        @test Flux.outputsize(chain, (128, 96, 3, 5)) == (4, 5)
        kind(f) = try
            f()
            nothing
        catch err
            err isa TorchBridgeError ? err.kind : err
        end
        @test kind(() -> Flux.outputsize(backbone, (64, 64, 5, 1))) === :InputShapeError
        @test kind(() -> load_model("torchvision/vit_b_16"; features = true)) ===
            :FeaturesUnavailableError
        close!(backbone)
        # a torch module built here: two inputs, named outputs, a data-dependent one
        PythonCall.pyexec(
            """
            import torch
            class TwoHeads(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
                def forward(self, x, y):
                    h = self.conv(x)
                    return {"map": h, "total": h.mean((2, 3)) + y.sum()}
            class Positive(torch.nn.Module):
                def forward(self, x):
                    return x[x > 0]
            """,
            Main,
        )
        two = TorchModel(tb.bridge(PythonCall.pyeval("TwoHeads()", Main)))
        x, y = rand(Float32, 20, 31, 3, 2), rand(Float32, 7)
        nils = (fill(Flux.NilNumber.nil, size(x)), fill(Flux.NilNumber.nil, size(y)))
        @test map(size, two(nils)) ==
            map(size, two(x, y)) ==
            (map = (9, 15, 8, 2), total = (8, 2))
        positive = TorchModel(tb.bridge(PythonCall.pyeval("Positive()", Main)))
        @test kind(() -> Flux.outputsize(positive, (3, 4))) === :OutputSizeUnknownError
        foreach(close!, (two, positive))
        @test memory_stats() == baseline
    end

    @testset "FastAI's blockmodel recipe: a torch backbone, a Flux head, freeze then thaw" begin
        # FastAI.blockmodel(ImageTensor{2}(3), OneHotTensor{0}(classes), backbone) is
        # Chain(backbone, visionhead(outputsize(backbone, (256, 256, 3, 1))[end-1], n))
        baseline = memory_stats()
        id = "timm/test_resnet.r160_in1k"
        backbone = load_model(id; features = true, input_grads = false)
        outch = Flux.outputsize(backbone, (256, 256, 3, 1))[end - 1]
        head = Flux.Chain(
            Flux.AdaptiveMeanPool((1, 1)),
            Flux.flatten,
            Flux.Dense(outch => 2),
        )
        model = Flux.Chain(backbone, head)
        Random.seed!(1)
        # bright images are class 1, dark ones class 2
        xs = cat(
            rand(Float32, 32, 32, 3, 8) .+ 0.5f0,
            rand(Float32, 32, 32, 3, 8) .- 0.5f0;
            dims = 4,
        )
        ys = Flux.onehotbatch(vcat(fill(1, 8), fill(2, 8)), 1:2)
        loss(m) = Flux.logitcrossentropy(m(xs), ys)
        state = Optimisers.setup(Optimisers.Adam(1.0f-2), model)
        step!() = TorchBridge.scope() do
            l, g = Zygote.withgradient(loss, model)
            Optimisers.update!(state, model, g[1])
            l
        end
        Optimisers.freeze!(state.layers[1]) # the first epochs train the head only
        torch_before = map(copy, backbone.params)
        head_before = copy(head[3].weight)
        losses = [step!() for _ in 1:8]
        @test all(map(==, backbone.params, torch_before)) # torch's parameters did not move
        @test head[3].weight != head_before
        Optimisers.thaw!(state.layers[1])
        append!(losses, [step!() for _ in 1:8])
        @test any(map(!=, backbone.params, torch_before)) # now they do
        @test losses[end] < 0.5 * losses[1]
        close!(backbone)
        @test memory_stats() == baseline
    end

    # Flux.params + Flux.Optimise (Flux 0.14; FastAI.jl's default optimiser and
    # finetune!'s freezing): torch's parameters are implicit parameters too.
    isdefined(Flux, :Optimise) &&
        @testset "implicit parameters (Flux.params) reach torch" begin
            m, _ = tiny_model()
            model = Flux.Chain(m, Flux.Dense(2 => 1))
            x, y = randn(Float32, 3, 8), randn(Float32, 1, 8)
            ps = Flux.params(model)
            implicit = TorchBridge.scope() do
                Zygote.gradient(() -> Flux.mse(model(x), y), ps)
            end
            explicit = TorchBridge.scope() do
                Zygote.gradient(mm -> Flux.mse(mm(x), y), model)[1]
            end
            for (p, g) in zip(m.params, explicit.layers[1].params)
                @test implicit[p] ≈ g
            end
            @test implicit[model[2].weight] ≈ explicit.layers[2].weight
            # FastAI's freezing scales the backbone's gradients by 0 in place
            frozen = IdDict(p => true for p in Flux.params(model[1:1]))
            for p in ps
                haskey(frozen, p) && (implicit[p] .*= 0)
            end
            before = map(copy, m.params)
            Flux.Optimise.update!(Flux.Optimise.Descent(0.1), ps, implicit)
            @test all(map(==, m.params, before))
            # the scaling wrote to copies, not torch's buffers
            @test any(!iszero, m.grads[1])
            # a FluxTraining learner with Flux's own Adam trains the torch layer
            if HAS_FLUXTRAINING
                ys = randn(Float32, 1, 32)
                xs = randn(Float32, 3, 32)
                learner = FluxTraining.Learner(
                    model,
                    Flux.mse;
                    data = ([(xs, ys)], [(xs, ys)]),
                    optimizer = Flux.Adam(0.01),
                    usedefaultcallbacks = false,
                )
                FluxTraining.fit!(learner, 1)
                @test any(map(!=, m.params, before))
            end
            @test memory_stats().live_pullbacks == 0
            close!(m)
        end

    HAS_FLUXTRAINING &&
        @testset "examples/finetune.jl (the tutorial) runs offline" begin
            # a small timm model's weights, written here: no download
            dir = mktempdir()
            weights = joinpath(dir, "resnet10t.safetensors")
            pyimport("safetensors.torch").save_file(
                pyimport("timm").create_model("resnet10t").state_dict(),
                weights,
            )
            example = joinpath(@__DIR__, "..", "..", "examples", "finetune.jl")
            baseline = memory_stats()
            withenv("MODEL" => "timm/resnet10t", "WEIGHTS" => weights, "EPOCHS" => "1") do
                Base.include(Module(:FinetuneExample), example)
            end
            @test memory_stats().live_pullbacks == baseline.live_pullbacks
            @test memory_stats().open_models == baseline.open_models
        end

    @testset "examples/distributed.jl: two ranks equal one process" begin
        example = joinpath(@__DIR__, "..", "..", "examples", "distributed.jl")
        dir = mktempdir()
        withenv("OUT" => joinpath(dir, "one.jls"), "STEPS" => "5") do
            Base.include(Module(:DistributedOne), example) # a world of one
        end
        port, server = Sockets.listenany(Sockets.localhost, 20000)
        close(server)
        cmd = `$(Base.julia_cmd()) --startup-file=no --project=$(Base.active_project()) $example`
        ranks = map(0:1) do rank
            env = merge(
                ENV,
                Dict(
                    "RANK" => "$rank",
                    "WORLD_SIZE" => "2",
                    "LOCAL_RANK" => "$rank",
                    "LOCAL_WORLD_SIZE" => "2",
                    "MASTER_ADDR" => "127.0.0.1",
                    "MASTER_PORT" => "$port",
                    "TORCHBRIDGE_DIST_TIMEOUT" => "120",
                    "OUT" => joinpath(dir, "two.jls"),
                    "STEPS" => "5",
                ),
            )
            log = joinpath(dir, "rank$rank.log")
            run(pipeline(setenv(cmd, env); stdout = log, stderr = log); wait = false)
        end
        deadline = time() + 600 # bounded: a rank that hangs is killed
        while any(process_running, ranks) && time() < deadline
            sleep(0.5)
        end
        foreach(kill, filter(process_running, ranks))
        for (rank, p) in zip(0:1, ranks)
            ok = success(p)
            ok || @info "rank $rank" read(joinpath(dir, "rank$rank.log"), String)
            @test ok
        end
        one = deserialize(joinpath(dir, "one.jls"))
        two = deserialize(joinpath(dir, "two.jls"))
        @test all(map((a, b) -> isapprox(a, b; rtol = 1.0e-5), one, two))
    end

    @testset "an imported ONNX file is a TorchModel" begin
        os = pyimport("os")
        home = mktempdir()
        previous = os.environ.get("TORCHBRIDGE_HOME")
        os.environ[
            "TORCHBRIDGE_HOME",
        ] = home # Python's environment: the local models folder
        try
            torch.manual_seed(0)
            nn = torch.nn
            module_ = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
            path = joinpath(home, "mlp.onnx")
            tb.export_onnx(module_, path; input_size = (3,))
            tb.register_local_model("jl-onnx-mlp", path)
            @test model_info("local/jl-onnx-mlp").task == "onnx"
            m = load_model("local/jl-onnx-mlp")
            x = randn(Float32, 3, 4)
            @test m(x) ≈ from_torch(module_(to_torch(x)).detach()) rtol = 1.0e-5
            g = Zygote.gradient(m -> sum(abs2, m(x)), m)[1]
            @test length(g.params) == length(m.params) > 0
            close!(m)
        finally
            if PythonCall.pyis(previous, PythonCall.pybuiltins.None)
                os.environ.pop("TORCHBRIDGE_HOME")
            else
                os.environ["TORCHBRIDGE_HOME"] = previous
            end
        end
    end

    @testset "a transformers model: tokens in, keyword inputs, named outputs" begin
        # a tiny random BERT laid out as a Hugging Face cache (tests/hf_models.py)
        sys, os = pyimport("sys"), pyimport("os")
        sys.path.insert(0, joinpath(@__DIR__, "..", "..", "tests"))
        hf = pyimport("hf_models")
        pathlib = pyimport("pathlib")
        root = mktempdir()
        folder = pathlib.Path(joinpath(root, "work"))
        reference, _ = hf.make_bert(folder; num_labels = 3)
        hf.cache_repo(pathlib.Path(joinpath(root, "hub")), "test/tiny-bert", folder)
        gpt2_folder = pathlib.Path(joinpath(root, "gpt2"))
        gpt2_reference, _ = hf.make_gpt2(gpt2_folder)
        hf.cache_repo(pathlib.Path(joinpath(root, "hub")), "test/tiny-gpt2", gpt2_folder)
        previous = os.environ.get("HF_HUB_CACHE")
        os.environ["HF_HUB_CACHE"] = joinpath(root, "hub")
        pyimport("torchbridge.registry.core").get_registry().refresh()
        try
            id = "hf/test/tiny-bert"
            tokens = tokenize(id, ["a good movie", "the plot was boring and long"])
            @test tokens.input_ids isa Matrix{Int64}
            @test size(tokens.input_ids, 2) == 2 # (seq, batch)
            @test size(tokens.attention_mask) == size(tokens.input_ids)
            @test decode(id, tokens.input_ids) ==
                ["a good movie", "the plot was boring and long"]
            m = load_model(id; pretrained = true)
            TorchBridge.testmode!(m)
            out = m(; input_ids = tokens.input_ids, attention_mask = tokens.attention_mask)
            @test out isa NamedTuple && keys(out) == (:logits,)
            @test size(out.logits) == (3, 2) # Julia (labels, batch)
            reference.eval()
            expected = reference(
                input_ids = to_torch(tokens.input_ids),
                attention_mask = to_torch(tokens.attention_mask),
            ).logits.detach()
            @test out.logits ≈ from_torch(expected) rtol = 1.0e-5
            # a loss on the named output: Zygote through the keyword call
            baseline = memory_stats()
            loss(m) = sum(
                abs2,
                m(;
                    input_ids = tokens.input_ids,
                    attention_mask = tokens.attention_mask,
                ).logits,
            )
            g = TorchBridge.scope(() -> Zygote.gradient(loss, m)[1])
            @test length(g.params) == length(m.params)
            @test all(isfinite, g.params[1]) && any(!iszero, g.params[end])
            @test memory_stats() == baseline
            # implicit parameters through the keyword call (Flux.Optimise's path)
            if isdefined(Flux, :params)
                ps = Flux.params(m)
                implicit = TorchBridge.scope(() -> Zygote.gradient(() -> loss(m), ps))
                @test all(map((p, gp) -> implicit[p] ≈ gp, m.params, g.params))
            end
            # keyword inputs as one NamedTuple: a float field gets its gradient
            @test m(tokens).logits == out.logits
            embeddings = reference.bert.embeddings.word_embeddings(to_torch(
                tokens.input_ids,
            ))
            e = from_torch(embeddings.detach()) # Julia (hidden, seq, batch)
            mask = tokens.attention_mask
            embed_loss(e) = sum(
                abs2,
                m((; inputs_embeds = e, attention_mask = mask)).logits,
            )
            ge = TorchBridge.scope(() -> Zygote.gradient(embed_loss, e)[1])
            leaf = to_torch(copy(e)).requires_grad_(true)
            reference(inputs_embeds = leaf, attention_mask = to_torch(mask)).logits.
                pow(2).
                sum().
                backward()
            @test size(ge) == size(e)
            @test ge ≈ from_torch(leaf.grad) rtol = 1.0e-4
            # the NamedTuple's integer fields get no tangent
            gnt = TorchBridge.scope(
                () -> Zygote.gradient(nt -> sum(m(nt).logits), tokens)[1],
            )
            @test gnt === nothing || all(v -> v === nothing, values(gnt))
            @test memory_stats() == baseline
            close!(m)
            baseline = memory_stats()
            # one named output as the model's output: FluxTraining's two paths on text batches
            classifier = load_model(id; pretrained = true, output = :logits)
            @test classifier(tokens) isa Matrix{Float32} &&
                size(classifier(tokens)) == (3, 2)
            texts = ["a good movie", "a great film", "the plot was boring", "dull and long"]
            batch = tokenize(id, texts)
            labels = Float32.(Flux.onehotbatch([1, 1, 2, 2], 1:3))
            text_loss() = Flux.logitcrossentropy(classifier(batch), labels)
            if HAS_FLUXTRAINING
                learner = FluxTraining.Learner(
                    classifier,
                    Flux.logitcrossentropy;
                    data = ([(batch, labels)], [(batch, labels)]),
                    optimizer = TorchOptimiser(Optimisers.Adam(0.01)),
                    usedefaultcallbacks = false,
                )
                before = text_loss()
                fit_torch!(learner, 10)
                after = text_loss()
                @test after < 0.5 * before
                learner2 = FluxTraining.Learner(
                    classifier,
                    Flux.logitcrossentropy;
                    data = ([(batch, labels)], [(batch, labels)]),
                    optimizer = Optimisers.Adam(0.01),
                    usedefaultcallbacks = false,
                )
                FluxTraining.fit!(learner2, 5) # Zygote through the NamedTuple call
                @test text_loss() < after
            end
            # exported with dynamic batch and sequence axes, checked by onnxruntime
            report = export_onnx(classifier, joinpath(root, "classifier.onnx"))
            @test isfile(report.path) && report.max_abs_diff <= report.tolerance
            close!(classifier)
            # a Flux head on the encoder's pooled output, Zygote through both
            encoder = load_model(id; pretrained = true, task = "feature-extraction")
            TorchBridge.testmode!(encoder)
            head = Flux.Dense(32 => 2)
            pooled_loss(encoder, head) = Flux.logitcrossentropy(
                head(encoder(batch).pooler_output),
                Flux.onehotbatch([1, 1, 2, 2], 1:2),
            )
            genc, ghead = TorchBridge.scope(
                () -> Zygote.gradient(pooled_loss, encoder, head),
            )
            # the same with the pooled output declared as the model's output
            pooled = load_model(
                id;
                pretrained = true,
                task = "feature-extraction",
                output = :pooler_output,
            )
            TorchBridge.testmode!(pooled)
            @test pooled(batch) == encoder(batch).pooler_output
            declared_loss(pooled, head) = Flux.logitcrossentropy(
                head(pooled(batch)),
                Flux.onehotbatch([1, 1, 2, 2], 1:2),
            )
            gpooled, ghead2 = TorchBridge.scope(
                () -> Zygote.gradient(declared_loss, pooled, head),
            )
            @test all(map(≈, gpooled.params, genc.params)) && ghead2.weight ≈ ghead.weight
            close!(pooled)
            @test size(encoder(batch).pooler_output) == (32, 4) # Julia (hidden, batch)
            @test length(genc.params) == length(encoder.params)
            @test any(!iszero, ghead.weight) && any(g -> any(!iszero, g), genc.params)
            close!(encoder)
            @test memory_stats() == baseline
            # greedy generation from Julia equals torch's
            gid = "hf/test/tiny-gpt2"
            lm = load_model(gid; pretrained = true)
            prompt = tokenize(gid, ["the movie", "a book"])
            generated = generate(lm, prompt.input_ids; max_new_tokens = 4)
            @test generated isa Matrix{Int64}
            @test size(generated) == (size(prompt.input_ids, 1) + 4, 2)
            expected = tb.generate(
                gpt2_reference,
                to_torch(prompt.input_ids);
                max_new_tokens = 4,
            )
            @test generated == permutedims(pyconvert(Matrix{Int64}, expected.numpy()))
            @test generated[1:size(prompt.input_ids, 1), :] == prompt.input_ids
            @test length(decode(gid, generated)) == 2
            @test size(generate(lm, prompt.input_ids[:, 1]; max_new_tokens = 2)) ==
                (size(prompt.input_ids, 1) + 2, 1)
            close!(lm)
            @test memory_stats() == baseline
        finally
            if PythonCall.pyis(previous, PythonCall.pybuiltins.None)
                os.environ.pop("HF_HUB_CACHE")
            else
                os.environ["HF_HUB_CACHE"] = previous
            end
            pyimport("torchbridge.registry.core").get_registry().refresh()
            sys.path.pop(0)
        end
    end

    @testset "Lux, DifferentiationInterface, forward mode, second order" begin
        include("functional.jl")
    end

    @testset "a large model: LoRA, bfloat16, autocast, checkpointing" begin
        # a tiny random Llama laid out as a Hugging Face cache (tests/hf_models.py)
        sys, os = pyimport("sys"), pyimport("os")
        sys.path.insert(0, joinpath(@__DIR__, "..", "..", "tests"))
        hf = pyimport("hf_models")
        pathlib = pyimport("pathlib")
        root = mktempdir()
        folder = pathlib.Path(joinpath(root, "llama"))
        hf.make_llama(folder)
        hf.cache_repo(pathlib.Path(joinpath(root, "hub")), "test/tiny-llama", folder)
        previous = os.environ.get("HF_HUB_CACHE")
        os.environ["HF_HUB_CACHE"] = joinpath(root, "hub")
        pyimport("torchbridge.registry.core").get_registry().refresh()
        # torch-side checks: a module's frozen weights, whether they moved, its size
        helpers = PythonCall.pydict()
        PythonCall.pyexec(
            """
            import torch
            def frozen(module):
                return [p.detach().clone() for p in module.parameters() if not p.requires_grad]
            def unchanged(module, before):
                now = [p for p in module.parameters() if not p.requires_grad]
                return len(now) == len(before) and all(
                    torch.equal(a, b) for a, b in zip(now, before)
                )
            def count(module):
                return sum(p.numel() for p in module.parameters())
            """,
            helpers,
        )
        relerr(a, b) = sqrt(sum(abs2, Float64.(a) .- Float64.(b)) / sum(abs2, Float64.(b)))
        try
            id = "hf/test/tiny-llama"
            texts = ["the movie was a great story", "the book was long and boring"]
            tokens = tokenize(id, texts)
            n = size(tokens.input_ids, 1) - 1
            x = (;
                input_ids = tokens.input_ids[1:n, :],
                attention_mask = tokens.attention_mask[1:n, :],
            )
            y = tokens.input_ids[2:end, :]
            baseline = memory_stats()

            # LoRA: the TorchModel's parameters are the adapter's alone
            spec = (r = 4, alpha = 8, dropout = 0.0, target = ["q_proj", "v_proj"])
            m = load_model(id; pretrained = true, lora = spec, output = :logits)
            names = TorchBridge.parameter_names(m)
            @test length(m.params) == 8 && all(s -> occursin(".lora_", s), names)
            @test all(p -> eltype(p) == Float32, m.params)
            @test 10 * sum(length, m.params) < pyconvert(Int, helpers["count"](m.py.module))
            @test memory_stats().shared_buffers == baseline.shared_buffers + 16
            for (name, p) in zip(names, m.params)
                # B starts at zero: give it values
                occursin("lora_B", name) && (p .= 0.1f0 .* randn(Float32, size(p)))
            end
            # Zygote's gradients equal torch autograd's on a copy of the module
            reference = pyimport("copy").deepcopy(m.py.module)
            g = TorchBridge.scope(() -> Zygote.gradient(m -> sum(abs2, m(x)), m)[1])
            reference(
                input_ids = to_torch(x.input_ids),
                attention_mask = to_torch(x.attention_mask),
            ).logits.
                pow(2).
                sum().
                backward()
            for (i, name) in enumerate(names)
                expected = from_torch(reference.get_parameter(name).grad)
                @test any(!iszero, g.params[i])
                @test g.params[i] ≈ expected rtol = 1.0e-4
            end

            # Optimisers.jl trains the adapter; no base weight moves
            targets = Flux.onehotbatch(y, 0:(size(m(x), 1) - 1))
            loss(m) = Flux.logitcrossentropy(Float32.(m(x)), targets)
            frozen = helpers["frozen"](m.py.module)
            adapter = map(copy, m.params)
            start = loss(m)
            state = Optimisers.setup(Optimisers.Adam(0.01f0), m)
            for _ in 1:5
                TorchBridge.scope() do
                    Optimisers.update!(state, m, Zygote.gradient(loss, m)[1])
                end
            end
            @test loss(m) < start
            @test all(map(!=, m.params, adapter))
            @test pyconvert(Bool, helpers["unchanged"](m.py.module, frozen))
            @test memory_stats().live_pullbacks == baseline.live_pullbacks

            # whole steps in torch through FluxTraining (fit_torch!)
            if HAS_FLUXTRAINING
                data = [(x, Float32.(targets))]
                learner = FluxTraining.Learner(
                    m,
                    Flux.logitcrossentropy;
                    data = (data, data),
                    optimizer = TorchOptimiser(Optimisers.Adam(0.01)),
                    usedefaultcallbacks = false,
                )
                before = loss(m)
                fit_torch!(learner, 3)
                @test loss(m) < before
                @test pyconvert(Bool, helpers["unchanged"](m.py.module, frozen))
            end

            # the adapter alone round-trips through the registry; merged, it exports
            home = mktempdir()
            row = register_local_model("jl-tiny-lora", m; directory = home)
            @test row.id == "local/jl-tiny-lora" && "lora" in row.tags
            @test isfile(joinpath(home, "jl-tiny-lora", "adapter_model.safetensors"))
            again = load_model("local/jl-tiny-lora"; output = :logits)
            @test TorchBridge.parameter_names(again) == names
            @test all(map(==, again.params, m.params))
            expected = m(x)
            @test again(x) == expected
            close!(m)
            merged = merge_adapter(again)
            @test isempty(merged.params)
            @test merged(x) ≈ expected rtol = 1.0e-5
            report = export_onnx(merged, joinpath(home, "merged.onnx"))
            @test isfile(report.path) && report.max_abs_diff <= report.tolerance
            close!(merged)

            # bfloat16 weights: BFloat16 parameters, outputs and gradients, close to Float32's
            plain = load_model(id; pretrained = true, output = :logits)
            TorchBridge.trainmode!(plain)
            g32 = TorchBridge.scope(() -> Zygote.gradient(loss, plain)[1])
            half = load_model(id; pretrained = true, dtype = :bfloat16, output = :logits)
            TorchBridge.trainmode!(half)
            @test all(p -> nameof(eltype(p)) === :BFloat16, half.params)
            @test nameof(eltype(half(x))) === :BFloat16
            g16 = TorchBridge.scope(() -> Zygote.gradient(loss, half)[1])
            for i in eachindex(g32.params)
                @test nameof(eltype(g16.params[i])) === :BFloat16
                @test relerr(g16.params[i], g32.params[i]) < 3.0e-2
            end
            before = map(copy, half.params)
            Optimisers.update!(Optimisers.setup(Optimisers.Descent(0.1), half), half, g16)
            @test any(map(!=, half.params, before))

            # autocast: Float32 weights, outputs and gradients; bfloat16 products
            auto = load_model(id; pretrained = true, autocast = :bfloat16, output = :logits)
            TorchBridge.trainmode!(auto)
            @test all(p -> eltype(p) == Float32, auto.params)
            @test eltype(auto(x)) == Float32 && auto(x) != plain(x)
            gauto = TorchBridge.scope(() -> Zygote.gradient(loss, auto)[1])
            for i in eachindex(g32.params)
                @test eltype(gauto.params[i]) == Float32
                @test relerr(gauto.params[i], g32.params[i]) < 3.0e-2
            end

            # gradient checkpointing: the same gradients
            ckpt = load_model(
                id;
                pretrained = true,
                gradient_checkpointing = true,
                output = :logits,
            )
            TorchBridge.trainmode!(ckpt)
            gckpt = TorchBridge.scope(() -> Zygote.gradient(loss, ckpt)[1])
            @test all(map(
                (a, b) -> isapprox(a, b; rtol = 1.0e-5),
                gckpt.params,
                g32.params,
            ))

            # typed errors
            err = try
                merge_adapter(plain)
                nothing
            catch e
                e
            end
            @test err isa TorchBridgeError && err.kind === :AdapterError
            foreach(close!, (plain, half, auto, ckpt))
            for (kw, kind) in (
                    (; lora = (rank = 4,)) => :AdapterError,
                    (; dtype = :int8) => :PrecisionError,
                    (; autocast = :float32) => :PrecisionError,
                )
                err = try
                    load_model(id; kw...)
                    nothing
                catch e
                    e
                end
                @test err isa TorchBridgeError && err.kind === kind
            end
            @test memory_stats() == baseline

            # examples/finetune_large.jl (docs/transformers.md) runs on the tiny model
            example = joinpath(@__DIR__, "..", "..", "examples", "finetune_large.jl")
            withenv("MODEL" => id, "STEPS" => "3", "OUT" => mktempdir()) do
                Base.include(Module(:FinetuneLargeExample), example)
            end
            @test memory_stats() == baseline
        finally
            if PythonCall.pyis(previous, PythonCall.pybuiltins.None)
                os.environ.pop("HF_HUB_CACHE")
            else
                os.environ["HF_HUB_CACHE"] = previous
            end
            pyimport("torchbridge.registry.core").get_registry().refresh()
            sys.path.pop(0)
        end
    end

    @testset "FastAI model registry" begin
        ext = Base.get_extension(TorchBridge, :TorchBridgeFastAIExt)
        found = ext === nothing ? nothing : ext.model_registry()
        if found === nothing
            @info "no FastAI.jl with a model registry in this environment; skipping"
            @test_skip found !== nothing
        else
            registry, _ = found
            id = "timm/resnet18.a1_in1k"
            @test haskey(registry, id)
            entry = registry[id]
            @test entry.backend === :torch
            @test entry.checkpoints == ["a1_in1k"]
            @test first.(entry.variants) == ["classifier", "backbone"]
            @test ext.register_models!() == 0 # ids already there are skipped
            x = rand(Float32, 64, 64, 3, 2)
            # no checkpoint: timm's random initialisation, no weights needed
            classifier = FastAI.Registries.load(entry)
            @test size(classifier(x)) == (1000, 2)
            backbone = FastAI.Registries.load(entry; variant = "backbone")
            @test size(backbone(x)) == (2, 2, 512, 2)
            headed = FastAI.Registries.load(entry; num_classes = 10)
            @test size(headed(x)) == (10, 2)
            foreach(close!, (classifier, backbone, headed))
        end
    end
end
