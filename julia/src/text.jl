##  Text models: tokens in and out  ##
#
# Token ids are Julia `Int64` arrays of size `(seq, batch)`, the reverse of
# torch's `(batch, seq)`, and stay 0-based as the tokenizer makes them: pass
# them to a model as they are (`m(; input_ids, attention_mask)`), never add 1.

"""
    tokenize(id, texts; padding = true, truncation = true, max_length = nothing, trust_remote_code = false) -> NamedTuple

The model's own (fast) tokenizer on `texts` (one string, or a vector of them:
a batch). Returns `(; input_ids, attention_mask)`, and `token_type_ids` where
the model uses them: Julia-owned `Matrix{Int64}` of size `(seq, batch)`, ids
0-based. `padding`: `true` (to the longest), `"max_length"` or `false`.
A tokenizer that needs its repository's own Python code (an `auto_map` in its
`config.json` or `tokenizer_config.json`) throws a `TorchBridgeError` of kind
`:RemoteCodeError` unless `trust_remote_code = true`; nothing ever asks on
standard input.
"""
function tokenize(
    id::AbstractString,
    texts;
    padding = true,
    truncation::Bool = true,
    max_length = nothing,
    trust_remote_code::Bool = false,
)
    batch = texts isa AbstractString ?
        String(texts) :
        PythonCall.pylist(String.(collect(texts)))
    encoded = _guard(
        () -> _tbjl.tokenize(
            String(id),
            batch;
            padding = padding,
            truncation = truncation,
            max_length = max_length,
            trust_remote_code = trust_remote_code,
        ),
    )
    try
        names = pyconvert(Vector{String}, PythonCall.pylist(encoded.keys()))
        arrays = Tuple(pyconvert(Matrix{Int64}, encoded[name]) for name in names)
        return NamedTuple{Tuple(Symbol.(names))}(arrays)
    finally
        PythonCall.pydel!(encoded)
    end
end

"""
    decode(id, ids; skip_special_tokens = true, trust_remote_code = false) -> Vector{String}

The texts of 0-based token ids: a `(seq, batch)` matrix gives one text per
column, a `(seq,)` vector one text. `trust_remote_code` as for [`tokenize`](@ref).
"""
function decode(
    id::AbstractString,
    ids::AbstractVecOrMat{<:Integer};
    skip_special_tokens = true,
    trust_remote_code::Bool = false,
)
    share = to_torch(ids)
    try
        texts = _guard(
            () -> _tbjl.decode(
                String(id),
                share;
                skip_special_tokens = skip_special_tokens,
                trust_remote_code = trust_remote_code,
            ),
        )
        return pyconvert(Vector{String}, texts)
    finally
        PythonCall.pydel!(share)
    end
end

"""
    generate(m::TorchModel, input_ids; attention_mask = nothing, max_new_tokens = 20, do_sample = false, kwargs...) -> Matrix{Int64}

Continue each column of `input_ids` (0-based ids, `(seq, batch)`, or a `(seq,)`
vector for one sequence) with transformers' own `generate` on the causal
language model behind `m` (forward only: no graph, nothing to release).
Greedy unless `do_sample = true`; other keywords go to `generate`
(`num_beams`, `temperature` ...). Returns the ids, prompt included, as a
Julia-owned `(seq + new, batch)` matrix; `decode(id, ids)` gives the texts.
A model that cannot generate throws a `TorchBridgeError`.
"""
function generate(
    m::TorchModel,
    input_ids::AbstractVecOrMat{<:Integer};
    attention_mask = nothing,
    max_new_tokens::Integer = 20,
    do_sample::Bool = false,
    kwargs...,
)
    _before_torch(m)
    ids, mask = _share_all((input_ids, attention_mask))
    try
        out = _guard(
            () -> _tbjl.generate(
                m.py,
                ids;
                attention_mask = mask,
                max_new_tokens = max_new_tokens,
                do_sample = do_sample,
                kwargs...,
            ),
        )
        try
            return pyconvert(Matrix{Int64}, out)
        finally
            PythonCall.pydel!(out)
        end
    finally
        _release_shares((ids, mask))
    end
end
