# FluxTraining with torch models.
#
# - A torch-native training phase: the forward pass, the loss, the backward
#   pass and the optimiser step all run in torch (a `TorchTrainer`), and only
#   the batch crosses the boundary. Callbacks see the step as usual (`xs`,
#   `ys`, `ŷs`, `loss`); there are no Julia gradients (`step.grads` is not
#   set), so callbacks that read them belong with FluxTraining's own
#   `TrainingPhase` (Zygote through the TorchModel's rrule), which keeps
#   working for the same learner.
# - Phases set torch's mode. FluxTraining sets no mode itself (Flux layers
#   follow AD automatically; torch has no such notion), so every TorchModel in
#   a learner's model runs training epochs in train mode and validation epochs
#   in eval mode (BatchNorm's running statistics never see validation data,
#   dropout is off), and gets back the mode it had when the epoch ends.
module TorchBridgeFluxTrainingExt

using FluxTraining: FluxTraining
using TorchBridge: TorchBridge, TorchModel, TorchOptimiser, TorchTrainer, train_step!

# The TorchModels inside a learner's model (a TorchModel, a Chain holding one ...).
_torch_models(model) = filter(x -> x isa TorchModel, TorchBridge.Functors.fcollect(model))

# Run `f()` with every TorchModel in `model` in train (`true`) or eval mode,
# then restore each one's mode, also when `f` throws.
function _in_mode(f, model, train::Bool)
    ms = _torch_models(model)
    isempty(ms) && return f()
    before = map(TorchBridge._training, ms)
    foreach(m -> TorchBridge.trainmode!(m, train), ms)
    try
        return f()
    finally
        foreach((m, mode) -> TorchBridge.trainmode!(m, mode), ms, before)
    end
end

_phase_trains(::FluxTraining.AbstractTrainingPhase) = true
_phase_trains(::FluxTraining.AbstractValidationPhase) = false

"""
    TorchTrainingPhase()

A FluxTraining training phase whose step runs entirely in torch. Used by
`TorchBridge.fit_torch!`; `FluxTraining.epoch!(learner, TorchTrainingPhase(), data)`
runs one epoch of it.
"""
struct TorchTrainingPhase <: FluxTraining.AbstractTrainingPhase end

# One TorchTrainer per learner, made at its first torch step, so the torch
# optimiser's state (momenta, schedule position) lasts across epochs.
const TRAINERS = WeakKeyDict{Any, TorchTrainer}()

function _trainer(learner)
    return get!(TRAINERS, learner) do
        model = learner.model
        if !(model isa TorchModel)
            msg = "fit_torch!: the learner's model is a $(typeof(model)), not a TorchModel; the " *
                "torch-native phase trains a whole torch model. Train mixed Julia/torch models " *
                "with fit! (Zygote through the TorchModel's rrule)."
            throw(ArgumentError(msg))
        end
        optimiser = learner.optimizer
        state = learner.params
        if optimiser isa TorchOptimiser && hasproperty(state, :py)
            # the optimiser the Optimisers extension already set up for this learner
            TorchTrainer(model, state.py, learner.lossfn)
        else
            TorchTrainer(model, optimiser, learner.lossfn)
        end
    end
end

function FluxTraining.step!(learner, phase::TorchTrainingPhase, batch)
    xs, ys = batch
    return FluxTraining.runstep(learner, phase, (; xs = xs, ys = ys)) do handle, state
        trainer = _trainer(learner)
        loss, ŷs = train_step!(trainer, state.xs, state.ys)
        state.ŷs = ŷs
        handle(FluxTraining.Events.LossBegin())
        state.loss = loss
        handle(FluxTraining.Events.BackwardBegin())
        handle(FluxTraining.Events.BackwardEnd())
    end
end

# FluxTraining's own phases and the torch-native one: the same epoch, in the
# phase's torch mode.
for Phase in (FluxTraining.TrainingPhase, FluxTraining.ValidationPhase, TorchTrainingPhase)
    @eval function FluxTraining.epoch!(
        learner,
        phase::$Phase,
        dataiter = learner.data[FluxTraining.phasedataiter(phase)],
    )
        return _in_mode(learner.model, _phase_trains(phase)) do
            invoke(
                FluxTraining.epoch!,
                Tuple{Any, FluxTraining.Phase, Any},
                learner,
                phase,
                dataiter,
            )
        end
    end
end

function TorchBridge.fit_torch!(learner, nepochs::Integer, (traindata, validdata))
    for _ in 1:nepochs
        FluxTraining.epoch!(learner, TorchTrainingPhase(), traindata)
        FluxTraining.epoch!(learner, FluxTraining.ValidationPhase(), validdata)
    end
    return learner
end

function TorchBridge.fit_torch!(learner, nepochs::Integer)
    return TorchBridge.fit_torch!(
        learner,
        nepochs,
        (learner.data.training, learner.data.validation),
    )
end

end # module TorchBridgeFluxTrainingExt
