##  Compiled ahead of time  ##
#
# The first forward and pullback of a session compile the bridge's call paths
# (PythonCall calls with keywords, DLPack shares, receiving results), which
# costs seconds before the first gradient. These directives compile them into
# the package image for the usual element types and ranks. They compile only:
# nothing here runs Python (see `python.jl`). The model-independent paths are
# not specialised on the model's type (`@nospecialize` in `models.jl`), so the
# instances below serve every TorchModel. The suite checks that each one still
# names a method (`precompile` returns `false`, silently, when it does not).

function _precompile_signatures()
    signatures = Any[
        (_specs, (Py,)),
        (_receive, (Py, Vector{Union{Nothing, _Spec}})),
        (_receive, (Py, Vector{Union{Nothing, _Spec}}, Py)),
        (_output_names, (TorchModel,)),
        (TorchModel, (Py,)),
        (memory_stats, ()),
    ]
    for T in (Float32, Float64), N in 1:5
        A = Array{T, N}
        push!(signatures, (to_torch, (A,)))
        push!(signatures, (_forward, (TorchModel, Tuple{A}, Bool)))
        push!(
            signatures,
            (_forward_call, (TorchModel, Py, Tuple{A}, NamedTuple{(), Tuple{}}, Bool)),
        )
        push!(signatures, (_copy_from!, (A, UInt)))
        push!(signatures, (_cotangents, (A, A)))
        push!(signatures, (_pullback, (Py, A, A, Int)))
        push!(signatures, (_bridge_rrule, (TorchModel, Tuple{A}, NamedTuple{(), Tuple{}})))
    end
    return signatures
end

for (f, types) in _precompile_signatures()
    precompile(f, types)
end
