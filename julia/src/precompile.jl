##  Compiled ahead of time  ##
#
# The first forward and pullback of a session compile the bridge's call paths
# (PythonCall calls with keywords, DLPack shares, receiving results), which
# costs seconds before the first gradient. These directives compile them into
# the package image for the usual element types and ranks. They compile only:
# nothing here runs Python (see `python.jl`). The model-independent paths are
# not specialised on the model's type (`@nospecialize` in `models.jl`), so the
# instances below serve every TorchModel.

for T in (Float32, Float64), N in 1:5
    precompile(to_torch, (Array{T, N},))
    precompile(_forward, (TorchModel, Tuple{Array{T, N}}, Bool))
    precompile(_cotangents, (Array{T, N}, Array{T, N}))
    precompile(_pullback, (Py, Array{T, N}, Array{T, N}, Int))
    precompile(_receive, (Py, Vector{Union{Nothing, _Spec}}))
    precompile(_bridge_rrule, (TorchModel, Tuple{Array{T, N}}, NamedTuple{(), Tuple{}}))
end
precompile(_specs, (Py,))
precompile(_output_names, (TorchModel,))
precompile(TorchModel, (Py,))
precompile(memory_stats, ())
