# Finetune a large causal language model from Julia: a LoRA adapter on a
# bfloat16 model with gradient checkpointing, trained with Zygote and
# Optimisers.jl, then with whole steps in torch; saved alone, merged into the
# weights and exported. docs/transformers.md ("Finetune a large model") walks
# through it.
#
#     MODEL=hf/meta-llama/Llama-3.2-1B julia --project=julia examples/finetune_large.jl
#
# Needs Flux, Optimisers and Zygote in an environment on the load path, the
# Python side with peft (pip install 'torchbridge[hf,lora]'), and the model in
# the Hugging Face cache (or network access). STEPS sets the number of steps
# of each loop, OUT the folder for the adapter and the ONNX file.

using TorchBridge
using Flux: Flux
using Optimisers: Optimisers
using Zygote: Zygote

model_id = get(ENV, "MODEL", "hf/meta-llama/Llama-3.2-1B")
steps = parse(Int, get(ENV, "STEPS", "20"))
out = get(ENV, "OUT", mktempdir())

## 1. The model: a bfloat16 base, frozen, with a Float32 LoRA adapter

# dtype: the base's weights in bfloat16, half the memory;
# gradient_checkpointing: activations recomputed in the backward pass
m = load_model(
    model_id;
    pretrained = true,
    dtype = :bfloat16,
    gradient_checkpointing = true,
    lora = (r = 8, alpha = 16, dropout = 0.0, target = ["q_proj", "v_proj"]),
    output = :logits,
)
TorchBridge.trainmode!(m)
println(length(m.params), " adapter arrays: ", sum(length, m.params), " values train")

## 2. Next-token prediction: inputs, and the same tokens one position on

texts = ["the movie was a great story", "the book was long and boring"]
tokens = tokenize(model_id, texts) # (seq, batch) Int64, 0-based
n = size(tokens.input_ids, 1) - 1
x = (; input_ids = tokens.input_ids[1:n, :], attention_mask = tokens.attention_mask[1:n, :])
y = tokens.input_ids[2:end, :]
vocab = size(m(x), 1) # logits: (vocab, seq, batch), BFloat16
targets = Flux.onehotbatch(y, 0:(vocab - 1))

## 3. Zygote and Optimisers.jl: the state is the adapter's alone

loss(m) = Flux.logitcrossentropy(Float32.(m(x)), targets) # the loss in Float32
state = Optimisers.setup(Optimisers.Adam(1.0f-3), m)
for step in 1:steps
    # each step's graph is freed at the end of its scope
    TorchBridge.scope() do
        g = Zygote.gradient(loss, m)[1]
        Optimisers.update!(state, m, g)
    end
end
println("loss after Zygote steps: ", loss(m))

## 4. Or the whole step in torch: forward, float32 loss, backward, Adam

# the targets are the next tokens' ids, 0-based, as torch's loss takes them
trainer = TorchTrainer(m, Optimisers.Adam(1.0f-3), Flux.logitcrossentropy)
for step in 1:steps
    train_step!(trainer, x, y)
end
println("loss after torch steps: ", loss(m))

## 5. Save the adapter alone, load it back, merge it into the weights, export

# the adapter's files, beside a reference to model_id and its arguments
register_local_model("my-lora", m; directory = out, overwrite = true)
close!(m)
# the base again, in float32 for onnxruntime, with the adapter restored
again = load_model("local/my-lora"; dtype = :float32, output = :logits)
merged = merge_adapter(again) # a plain model: the adapter folded into its weights
report = export_onnx(merged, joinpath(out, "my-lora.onnx")) # checked by onnxruntime
println("exported ", report.path, ", max |onnx - torch| = ", report.max_abs_diff)
close!(merged)
