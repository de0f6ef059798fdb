"""The entry points of a ``hubconf.py``, read without running it (NOTE [static hubconf]).

``torch.hub.list`` imports ``hubconf.py`` and lists its public callables. This
reads the same from the syntax tree: the public functions it defines, and the
names it imports, followed into the modules they come from (next to
``hubconf.py``, or installed) without importing those either. Classes and
modules are not entry points. A name imported from a module that cannot be
read is listed when it looks like a function (a lower-case first letter), with
unknown parameters.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EntryPoint", "read_entry_points"]

_MAX_DEPTH = 8


@dataclass(frozen=True)
class EntryPoint:
    """One public callable of a ``hubconf.py``.

    Attributes:
        name: The entry point's name.
        parameters: Its parameter names, or ``None`` when they cannot be read
            without importing the module that defines it.
        summary: The first line of its docstring ("" without one).
    """

    name: str
    parameters: tuple[str, ...] | None
    summary: str


@dataclass(frozen=True)
class _Binding:
    # "function", "class", "module", "value", "unknown"; or, still to follow,
    # "import" (ref: (module, level, name)) and "alias" (ref: another name)
    kind: str
    node: ast.AST | None = None
    ref: tuple[str, int, str] | str | None = None


_UNKNOWN = _Binding("unknown")


@dataclass
class _Module:
    bound: dict[str, _Binding]  # names bound at the top level, as they stand at its end
    stars: list[tuple[str, int]]  # `from <module> import *`: (module, level)
    exported: frozenset[str] | None  # a literal __all__


def read_entry_points(hubconf: Path) -> list[EntryPoint]:
    """read_entry_points(hubconf) -> list[EntryPoint]: the entry points, sorted by name.

    Raises:
        SyntaxError, ValueError: ``hubconf.py`` does not parse.
        RecursionError, MemoryError: it nests too deeply for Python's parser.
        OSError: it cannot be read.
    """
    hubconf = Path(hubconf)
    reader = _Reader(hubconf.parent)
    module = reader.module(hubconf, strict=True)
    names = set(module.bound)
    for dotted, level in module.stars:
        target = reader.module_file(dotted, level, hubconf)
        if target is not None:
            star = reader.module(target)
            names.update(star.exported if star.exported is not None else star.bound)
    out = []
    for name in sorted(names):
        if name.startswith("_"):
            continue
        binding = reader.lookup(hubconf, name, depth=0) or _UNKNOWN
        if binding.kind == "function" and binding.node is not None:
            out.append(EntryPoint(name, _parameters(binding.node), _summary(binding.node)))
        elif binding.kind == "unknown" and name[:1].islower():
            out.append(EntryPoint(name, None, ""))
    return out


def _parameters(node: ast.AST) -> tuple[str, ...]:
    args = node.args  # type: ignore[attr-defined]
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if args.vararg is not None:
        names.append(args.vararg.arg)
    names.extend(a.arg for a in args.kwonlyargs)
    if args.kwarg is not None:
        names.append(args.kwarg.arg)
    return tuple(names)


def _summary(node: ast.AST) -> str:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return ""
    doc = ast.get_docstring(node) or ""
    lines = [line.strip() for line in doc.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


@functools.lru_cache(maxsize=256)
def _parse(path: str, mtime_ns: int) -> ast.Module:
    source = Path(path).read_bytes()
    return ast.parse(source, filename=path)


class _Reader:
    """Modules and the names they bind, for one repository folder, followed only as far as
    a name asks (a module's other imports are never read)."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._modules: dict[Path, _Module] = {}
        self._busy: set[tuple[Path, str]] = set()

    def module(self, path: Path, *, strict: bool = False) -> _Module:
        """The top-level bindings of a module file (empty when it does not parse)."""
        if path not in self._modules:
            try:
                tree = _parse(str(path), path.stat().st_mtime_ns)
            # a too-deep expression overflows the parser (MemoryError) or the compiler's
            # recursion (RecursionError): that module is as unreadable as a syntax error
            except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
                if strict:
                    raise
                tree = ast.Module(body=[], type_ignores=[])
            module = _Module({}, [], None)
            _collect(tree.body, module)
            self._modules[path] = module
        return self._modules[path]

    def lookup(self, path: Path, name: str, *, depth: int) -> _Binding | None:
        """What ``name`` is in the module at ``path``, following imports and aliases."""
        key = (path, name)
        if depth > _MAX_DEPTH or key in self._busy:
            return None
        self._busy.add(key)
        try:
            module = self.module(path)
            binding = module.bound.get(name)
            if binding is not None:
                return self._follow(binding, path, depth)
            for dotted, level in reversed(module.stars):  # the last star import wins
                target = self.module_file(dotted, level, path)
                if target is None:
                    continue
                star = self.module(target)
                if name not in (star.exported if star.exported is not None else {name}):
                    continue
                found = self.lookup(target, name, depth=depth + 1)
                if found is not None:
                    return found
            return None
        finally:
            self._busy.discard(key)

    def _follow(self, binding: _Binding, path: Path, depth: int) -> _Binding:
        if binding.kind == "alias":
            return self.lookup(path, str(binding.ref), depth=depth + 1) or _UNKNOWN
        if binding.kind != "import":
            return binding
        dotted, level, name = binding.ref  # type: ignore[misc]
        target = self.module_file(dotted, level, path)
        if target is None:
            return _UNKNOWN
        found = self.lookup(target, name, depth=depth + 1)
        if found is not None:
            return found
        if target.name == "__init__.py":  # `from package import submodule`
            submodule = f"{dotted}.{name}" if dotted else name
            if self.module_file(submodule, level, path) is not None:
                return _Binding("module")
        return _UNKNOWN

    def module_file(self, dotted: str, level: int, importer: Path) -> Path | None:
        """The file of a module, found as the import system would, without importing."""
        parts = [p for p in dotted.split(".") if p]
        if level > 0:
            base = importer.parent
            for _ in range(level - 1):
                base = base.parent
            return _in_folders([base], parts) if parts else _package_file(base)
        if not parts:
            return None
        # hubconf's own folder comes first on sys.path while it is imported
        local = _in_folders([self.repo], parts)
        if local is not None:
            return local
        try:
            spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is imported
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if spec.submodule_search_locations:
            folders = [Path(p) for p in spec.submodule_search_locations]
            return _in_folders(folders, parts[1:]) if parts[1:] else _package_file(folders[0])
        if len(parts) == 1 and spec.origin and spec.origin.endswith(".py"):
            return Path(spec.origin)
        return None


def _collect(body: list[ast.stmt], module: _Module) -> None:
    """Record what the statements bind, in order (both branches of if and try)."""
    bound = module.bound
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bound[stmt.name] = _Binding("function", stmt)
        elif isinstance(stmt, ast.ClassDef):
            bound[stmt.name] = _Binding("class", stmt)
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                bound[alias.asname or alias.name.partition(".")[0]] = _Binding("module")
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if alias.name == "*":
                    module.stars.append((stmt.module or "", stmt.level))
                else:
                    ref = (stmt.module or "", stmt.level, alias.name)
                    bound[alias.asname or alias.name] = _Binding("import", ref=ref)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                if not isinstance(target, ast.Name):
                    continue
                if target.id == "__all__":
                    module.exported = _literal_names(stmt.value)
                bound[target.id] = _value_binding(stmt.value)
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    bound.pop(target.id, None)
        elif isinstance(stmt, ast.If):
            _collect(stmt.body, module)
            _collect(stmt.orelse, module)
        elif isinstance(stmt, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            _collect(stmt.body, module)
            for handler in stmt.handlers:
                _collect(handler.body, module)
            _collect(stmt.orelse, module)
            _collect(stmt.finalbody, module)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            _collect(stmt.body, module)


def _literal_names(value: ast.expr | None) -> frozenset[str] | None:
    if isinstance(value, (ast.List, ast.Tuple)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
    ):
        return frozenset(e.value for e in value.elts)  # type: ignore[attr-defined]
    return None


def _in_folders(folders: list[Path], parts: list[str]) -> Path | None:
    for folder in folders:
        *packages, last = parts
        base = folder.joinpath(*packages)
        for candidate in (base / f"{last}.py", base / last / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _package_file(folder: Path) -> Path | None:
    init = folder / "__init__.py"
    return init if init.is_file() else None


def _value_binding(value: ast.expr | None) -> _Binding:
    if isinstance(value, ast.Name):
        return _Binding("alias", ref=value.id)
    if isinstance(value, ast.Lambda):
        return _Binding("function", value)
    if isinstance(value, ast.Attribute):
        return _UNKNOWN  # `resnet = models.resnet18`: likely a function
    if isinstance(value, ast.Call):
        called = value.func.attr if isinstance(value.func, ast.Attribute) else value.func
        if getattr(called, "id", called) == "partial":
            return _UNKNOWN  # functools.partial(entry, ...): callable, parameters unknown
    return _Binding("value")
