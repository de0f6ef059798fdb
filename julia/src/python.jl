##  Python handles  ##
#
# The only place TorchBridge imports Python modules. The handles are NULL until
# `__init__` fills them (PythonCall's module-constant pattern: `pynew()` at top
# level, `pycopy!` at load time), so nothing touches Python during
# precompilation. Every call into Python in this package goes through one of
# them, which is what `tests/test_julia_contract.py` checks against the Python
# signatures:
#
# - `_torch`: `torch`, used only for `torch.from_dlpack`;
# - `_tb`: the `torchbridge` package (its public names);
# - `_tbjl`: `torchbridge.julia_support`, one round trip per Julia operation.

const _torch = PythonCall.pynew()
const _tb = PythonCall.pynew()
const _tbjl = PythonCall.pynew()

function _init_python()
    PythonCall.pycopy!(_torch, PythonCall.pyimport("torch"))
    PythonCall.pycopy!(_tb, PythonCall.pyimport("torchbridge"))
    PythonCall.pycopy!(_tbjl, PythonCall.pyimport("torchbridge.julia_support"))
    return nothing
end

##  Errors  ##

"""
    TorchBridgeError(kind::Symbol, msg::String)

An error raised by the `torchbridge` Python package on purpose, with the name of
its Python class as `kind` (`:UnknownModelError`, `:InputShapeError`,
`:PullbackReleasedError`, `:WeightsNotFoundError` ...; see `docs/protocol.md`)
and its message, which says what was wrong and how to fix it.

Errors that TorchBridge detects on the Julia side are thrown as
`TorchBridgeError` too, with the kind the Python side would have used.
Other Python exceptions (bugs, errors from a model's own `forward`) propagate
as `PythonCall.PyException`.
"""
struct TorchBridgeError <: Exception
    kind::Symbol
    msg::String
end

function Base.showerror(io::IO, e::TorchBridgeError)
    print(io, "TorchBridgeError(:", e.kind, "): ", e.msg)
    return nothing
end

# The TorchBridgeError for a Python exception raised by torchbridge, or nothing.
function _python_error(e)
    e isa PythonCall.PyException || return nothing
    pyisinstance(e.v, _tb.errors.TorchBridgeError) || return nothing
    kind = Symbol(pyconvert(String, pytype(e.v).__name__))
    return TorchBridgeError(kind, pyconvert(String, pystr(e.v)))
end

# Run `f()`, turning torchbridge's Python errors into `TorchBridgeError`.
function _guard(f)
    try
        return f()
    catch e
        err = _python_error(e)
        err === nothing && rethrow()
        throw(err)
    end
end

_isnone(x::Py) = pyis(x, pybuiltins.None)
_optional(::Type{T}, x::Py) where {T} = _isnone(x) ? nothing : pyconvert(T, x)
