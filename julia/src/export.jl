##  ONNX export  ##

"""
    export_onnx(m::TorchModel, path; input_size = nothing, dynamic_batch = true, opset = nothing, verify = true) -> NamedTuple

Export the torch module of `m` to the ONNX file `path` with torchbridge's
exporter, check it with `onnx.checker` and, with `verify`, compare
onnxruntime's outputs with torch's. `input_size` is one sample's size in
**Julia order** without the batch (`(224, 224, 3)` for a `(W, H, C)` image);
it is reversed for torch. Text models need none: their inputs are token ids
with dynamic batch and sequence axes (see `docs/transformers.md`). Returns the
export report as a `NamedTuple`
(`path`, `opset`, `file_size`, `max_abs_diff`, `tolerance`, `verified_with`,
`seconds`, and `notes`: what the export changed to succeed, such as eager
attention for a transformers model, see `docs/export.md`). Failures throw a
`TorchBridgeError` of kind `:ExportError` or `:ExportVerificationError`, whose
message says what to do, and leave no file at `path`.
"""
function export_onnx(
    m::TorchModel,
    path::AbstractString;
    input_size = nothing,
    dynamic_batch::Bool = true,
    opset = nothing,
    verify::Bool = true,
)
    torch_size = input_size === nothing ?
        nothing :
        pytuple(reverse(Tuple(Int.(input_size))))
    report = _guard(
        () -> _tb.export_onnx(
            m.py.module,
            String(path);
            input_size = torch_size,
            dynamic_batch = dynamic_batch,
            opset = opset,
            verify = verify,
        ),
    )
    d = report.to_dict()
    try
        return (
            path = pyconvert(String, d["path"]),
            opset = pyconvert(Int, d["opset"]),
            file_size = pyconvert(Int, d["file_size"]),
            max_abs_diff = _optional(Float64, d["max_abs_diff"]),
            tolerance = _optional(Float64, d["tolerance"]),
            verified_with = _optional(String, d["verified_with"]),
            seconds = pyconvert(Float64, d["seconds"]),
            notes = pyconvert(Vector{String}, d["notes"]),
        )
    finally
        PythonCall.pydel!(d)
        PythonCall.pydel!(report)
    end
end
