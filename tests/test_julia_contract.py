"""The Julia package calls only Python names that exist, with keywords they accept.

TorchBridge.jl reaches Python through three module handles (``julia/src/python.jl``):
``_torch`` (torch), ``_tb`` (torchbridge) and ``_tbjl`` (torchbridge.julia_support),
plus methods of two kinds of returned objects: ``<model>.py.<name>`` is a
``BridgedModel`` and ``report.<name>`` an ``ExportReport``. This test reads every
``.jl`` file under ``julia/src`` and ``julia/ext``, finds each such reference,
resolves it in the installed Python package, and for calls checks the keyword
arguments (and the number of positional ones, when no splat hides it) against
``inspect.signature``. There is no Julia runtime here, so this is what keeps the
two sides of the protocol in step.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

JULIA = Path(__file__).resolve().parent.parent / "julia"

HANDLES = {
    "_torch": "torch",
    "_tb": "torchbridge",
    "_tbjl": "torchbridge.julia_support",
}
# receivers that are not handles: a regex for the receiver, and the Python class it holds
RECEIVERS = {
    r"\.py": ("torchbridge.bridged", "BridgedModel"),
    r"\breport": ("torchbridge.export", "ExportReport"),
}

_REF = re.compile(
    r"(?<![\w.])(?:TorchBridge\.)?(?P<handle>_tbjl|_tb|_torch)(?P<path>(?:\.\w+)+)"
    r"|(?P<recv>" + "|".join(RECEIVERS) + r")\.(?P<attr>\w+)"
)
_KWARG = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)")


@dataclass(frozen=True)
class Reference:
    """One Python name used by the Julia sources."""

    file: str
    line: int
    text: str
    target: tuple[str, tuple[str, ...]]  # (module, attribute path)
    args: str | None  # the call's argument text, None when not called


def strip_julia(source: str) -> str:
    """The source with comments and string literals blanked, line numbers kept."""
    out, i, n = [], 0, len(source)
    while i < n:
        if source.startswith('"""', i):
            j = source.find('"""', i + 3)
            j = n if j < 0 else j + 3
            out.append(re.sub(r"[^\n]", " ", source[i:j]))
            i = j
        elif source[i] == '"':
            j = i + 1
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            out.append('""' + " " * max(0, j - i - 1))
            i = j + 1
        elif source.startswith("#=", i):
            j = source.find("=#", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", source[i:j]))
            i = j
        elif source[i] == "#":
            j = source.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif source[i] == "'" and i > 0 and (source[i - 1].isalnum() or source[i - 1] in ")]_'"):
            out.append("'")  # adjoint, not a char literal
            i += 1
        elif source[i] == "'":
            j = source.find("'", i + 1)
            j = n if j < 0 else j
            out.append("'" + " " * (j - i - 1) + "'")
            i = j + 1
        else:
            out.append(source[i])
            i += 1
    return "".join(out)


def call_arguments(text: str, open_paren: int) -> str:
    """The text between ``text[open_paren] == '('`` and its matching parenthesis."""
    depth = 0
    for j in range(open_paren, len(text)):
        if text[j] in "([{":
            depth += 1
        elif text[j] in ")]}":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1 : j]
    raise ValueError("unbalanced parentheses")


def split_top_level(args: str) -> list[str]:
    """Split an argument list at top-level commas and semicolons."""
    parts, depth, start = [], 0, 0
    for j, c in enumerate(args):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c in ",;" and depth == 0:
            parts.append(args[start:j])
            start = j + 1
    parts.append(args[start:])
    return [p for p in parts if p.strip()]


def find_references(source: str, file: str = "<string>") -> list[Reference]:
    """Every reference to a Python name in one Julia source."""
    code = strip_julia(source)
    refs = []
    for m in _REF.finditer(code):
        if m.group("handle"):
            target = (HANDLES[m.group("handle")], tuple(m.group("path")[1:].split(".")))
        else:
            recv = next(r for r in RECEIVERS if re.fullmatch(r, m.group("recv")))
            module, cls = RECEIVERS[recv]
            target = (module, (cls, m.group("attr")))
        end = m.end()
        args = call_arguments(code, end) if end < len(code) and code[end] == "(" else None
        line = code.count("\n", 0, m.start()) + 1
        refs.append(Reference(file, line, m.group(0), target, args))
    return refs


def julia_references() -> list[Reference]:
    """The references of every .jl file of the package and its extensions."""
    refs = []
    for path in sorted([*JULIA.glob("src/**/*.jl"), *JULIA.glob("ext/**/*.jl")]):
        refs += find_references(path.read_text(), str(path.relative_to(JULIA.parent)))
    return refs


def instance_attributes(cls: type) -> set[str]:
    """Attributes an instance of ``cls`` has without the class having them: dataclass
    fields and ``self.<name> = ...`` assignments in its methods."""
    names = set(getattr(cls, "__dataclass_fields__", {}))
    names |= set(re.findall(r"self\.(\w+)\s*(?::[^=\n]+)?=(?!=)", inspect.getsource(cls)))
    return names


def resolve(target: tuple[str, tuple[str, ...]]):
    """The Python object a reference names; raises AttributeError when it does not exist.

    An instance attribute of a receiver class resolves to ``None`` (it exists, and
    is not called)."""
    module, path = target
    obj = importlib.import_module(module)
    for i, name in enumerate(path):
        if isinstance(obj, type) and not hasattr(obj, name) and i == len(path) - 1:
            if name in instance_attributes(obj):
                return None
        obj = getattr(obj, name)
    return obj


def check(ref: Reference) -> list[str]:
    """Problems with one reference: a missing name, an unknown keyword, a bad arity."""
    where = f"{ref.file}:{ref.line}: {ref.text}"
    try:
        obj = resolve(ref.target)
    except (AttributeError, ImportError) as exc:
        return [f"{where}: {'.'.join((ref.target[0], *ref.target[1]))} does not exist ({exc})"]
    if ref.args is None or obj is None:
        return []
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []  # a builtin without a signature: existence is all we can check
    if ref.target[1][0][:1].isupper() and len(ref.target[1]) == 2 and ref.target[0] != "torch":
        # a method looked up on its class: the receiver fills `self`
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    positional, keywords, splat = 0, [], False
    for part in split_top_level(ref.args):
        if "..." in part:
            splat = True
            continue
        kw = _KWARG.match(part)
        if kw:
            keywords.append(kw.group(1))
        else:
            positional += 1
    problems = []
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for name in keywords:
        p = sig.parameters.get(name)
        if p is None and not accepts_any:
            problems.append(f"{where}: keyword {name!r} is not accepted by {sig}")
        elif p is not None and p.kind is p.POSITIONAL_ONLY:
            problems.append(f"{where}: {name!r} is positional-only in {sig}")
    if not splat and not problems:
        try:
            sig.bind(*([None] * positional), **dict.fromkeys(keywords))
        except TypeError as exc:
            problems.append(f"{where}: {positional} positional argument(s) do not fit {sig}: {exc}")
    return problems


def test_julia_sources_exist():
    """The package and the extensions Project.toml declares are where the contract test looks."""
    assert (JULIA / "src" / "TorchBridge.jl").is_file()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((JULIA / "Project.toml").read_text())
    declared = set(project["extensions"])
    assert declared, "Project.toml declares no extensions"
    assert {p.stem for p in JULIA.glob("ext/*.jl")} == declared
    # every trigger is a weak dependency with a compat bound
    for trigger in project["extensions"].values():
        for name in [trigger] if isinstance(trigger, str) else trigger:
            assert name in project["weakdeps"], name
            assert name in project["compat"], name


def test_handles_are_the_modules_python_jl_imports():
    """python.jl fills each handle with the module this test resolves it in."""
    source = (JULIA / "src" / "python.jl").read_text()
    filled = dict(re.findall(r'pycopy!\((\w+), PythonCall\.pyimport\("([\w.]+)"\)\)', source))
    assert filled == HANDLES


def test_every_handle_is_used():
    """Each Python handle is referenced, so the scan sees the real call sites."""
    used = {ref.target[0] for ref in julia_references()}
    assert set(HANDLES.values()) <= used


def test_julia_calls_match_python_signatures():
    """Every Python name the Julia code uses exists, and every call's keywords are accepted."""
    refs = julia_references()
    assert len(refs) >= 25
    problems = [p for ref in refs for p in check(ref)]
    assert not problems, "\n".join(problems)


class TestTheCheckerItself:
    """The checker flags what it must, on Julia snippets written like the package's code."""

    def test_unknown_name_is_flagged(self):
        """A call to a name julia_support does not define is reported."""
        refs = find_references("x = _guard(() -> _tbjl.no_such_function(m.py, y))")
        assert any("does not exist" in p for r in refs for p in check(r))

    def test_unknown_keyword_is_flagged(self):
        """A keyword the Python function does not take is reported."""
        src = "res = _tbjl.pullback(pb, cots...; accumulate = true, no_such_kw = 1)"
        problems = [p for r in find_references(src) for p in check(r)]
        assert any("no_such_kw" in p for p in problems)

    def test_wrong_arity_is_flagged(self):
        """Too many positional arguments without a splat are reported."""
        problems = [p for r in find_references("_tbjl.release(a, b, c)") for p in check(r)]
        assert any("positional" in p for p in problems)

    def test_bridged_model_method_is_checked(self):
        """A method called on a model's `.py` is checked against BridgedModel."""
        problems = [p for r in find_references("m.py.trian(true)") for p in check(r)]
        assert any("does not exist" in p for p in problems)
        assert not [p for r in find_references("m.py.train(mode)") for p in check(r)]

    def test_valid_calls_and_comments_pass(self):
        """Correct calls pass, and names inside comments or strings are ignored."""
        src = (
            "# _tbjl.not_checked_in_a_comment()\n"
            'msg = "_tbjl.nor_in_a_string()"\n'
            "_tbjl.registry_rows(pattern; source = source, pretrained = nothing, task = t)\n"
            "_tb.memory.release_all()\n"
            "DLPack.share(x, _torch.from_dlpack)\n"
        )
        refs = find_references(src)
        assert len(refs) == 3
        assert not [p for r in refs for p in check(r)]

    @pytest.mark.parametrize("kw", ["grad", "input_grads"])
    def test_keyword_forms(self, kw):
        """Keywords after a comma or a semicolon are both recognised."""
        for src in (
            f"_tbjl.forward(m.py, x, {kw} = true)",
            f"_tbjl.forward(m.py, x; {kw}=true)",
        ):
            (ref,) = [r for r in find_references(src) if r.target[0].endswith("julia_support")]
            assert not check(ref)
