# A torch-native training phase for FluxTraining: the forward pass, the loss,
# the backward pass and the optimiser step all run in torch (a `TorchTrainer`),
# and only the batch crosses the boundary. Callbacks see the step as usual
# (`xs`, `ys`, `ŷs`, `loss`); there are no Julia gradients (`step.grads` is not
# set), so callbacks that read them belong with FluxTraining's own
# `TrainingPhase` (Zygote through the TorchModel's rrule), which keeps working
# for the same learner.
module TorchBridgeFluxTrainingExt

using FluxTraining: FluxTraining
using TorchBridge: TorchBridge, TorchModel, TorchOptimiser, TorchTrainer, train_step!

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
