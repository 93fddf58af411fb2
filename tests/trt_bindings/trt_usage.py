"""Every TensorRT attribute, method and enum the project's code touches, found by walking its AST.

No hand list: each use is a chain from a root (`tensorrt` as `trt`, `tensorrt.plugin` as `trtp`)
through attribute steps and calls (with the number of positional arguments and the keyword
names used), e.g. trt . Builder (1) . create_network (1) . get_input (1) . shape. The chains are
resolved against the real bindings in trt_probe.py, one TensorRT version per process.

Typing is what the code itself says: `trt = import_tensorrt()`, `import tensorrt as trt`, a
parameter named `trt`, annotations such as `x: trtp.TensorDesc`, and assignments from typed
expressions; helper parameters that take TensorRT objects (context, engine, ...) are typed by
their names (NAME_TYPES), the convention the runtime modules follow. Version guards are kept with
each use: `if hasattr(obj, "name"):` (and its else, or the code after a body that returns) and
`if trt_major(trt) >= N:`, so a use is checked only in the versions where it runs.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("tqdit_export", "trt_plugins", "benchmarks")
ROOT_MODULES = {"tensorrt": "trt", "tensorrt.plugin": "trtp"}
ROOT_FUNCTIONS = {"import_tensorrt": "trt"}  # project functions that return the tensorrt module
# Parameters (and loop variables) that hold TensorRT objects in helpers taking them untyped.
NAME_TYPES = {"context": "IExecutionContext", "engine": "ICudaEngine", "runtime": "Runtime", "builder": "Builder",
              "network": "INetworkDefinition", "parser": "OnnxParser", "profile": "IOptimizationProfile"}

Step = tuple  # ("attr", name) | ("call", positional count or None when starred, keyword names) | ("inst",)


@dataclass(frozen=True)
class Use:
    """One use of TensorRT at `where`: a chain of steps from a root, and the guards it runs under."""

    root: str
    steps: tuple[Step, ...]
    where: str
    guards: tuple[tuple, ...] = ()

    def as_json(self) -> dict:
        return {"root": self.root, "steps": [list(s) for s in self.steps], "where": self.where,
                "guards": [list(g) if g[0].startswith("major") or g[0] == "module" else [g[0], g[1], [list(s) for s in g[2]], g[3]]
                           for g in self.guards]}

    def text(self) -> str:
        out = self.root
        for s in self.steps:
            out += f".{s[1]}" if s[0] == "attr" else "" if s[0] == "inst" else f"({s[1]}{', ' + ', '.join(s[2]) if s[2] else ''})"
        return out


@dataclass
class _Scope:
    env: dict[str, tuple[str, tuple[Step, ...]]] = field(default_factory=dict)


def _uses_tensorrt(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and (n.startswith("tensorrt") or n in ROOT_FUNCTIONS) for n in names):
                return True
    return False


class _Walker(ast.NodeVisitor):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.uses: list[Use] = []
        self.scopes = [_Scope()]
        self.guards: list[tuple] = []
        self.module_guards: list[tuple] = []  # ("module", name): set after a guarded import, for the scope

    # --- typing ----------------------------------------------------------------------------
    def chain(self, node: ast.AST) -> tuple[str, tuple[Step, ...]] | None:
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope.env:
                    return scope.env[node.id]
            return None
        if isinstance(node, ast.Attribute):
            base = self.chain(node.value)
            return None if base is None else (base[0], base[1] + (("attr", node.attr),))
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in ROOT_FUNCTIONS:
                return ROOT_FUNCTIONS[node.func.id], ()
            base = self.chain(node.func)
            if base is None:
                return None
            starred = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
            return base[0], base[1] + (("call", None if starred else len(node.args),
                                        tuple(sorted(k.arg for k in node.keywords if k.arg))),)
        return None

    def bind(self, name: str, value: tuple[str, tuple[Step, ...]] | None) -> None:
        if value is not None:
            self.scopes[-1].env[name] = value
        else:
            self.scopes[-1].env.pop(name, None)

    def record(self, node: ast.AST) -> None:
        c = self.chain(node)
        if c is not None and c[1]:
            modules = tuple(g for g in self.module_guards if ROOT_MODULES[g[1]] == c[0])
            self.uses.append(Use(c[0], c[1], f"{self.path.relative_to(REPO)}:{node.lineno}",
                                 tuple(self.guards) + modules))

    # --- scopes ----------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scopes.append(_Scope())
        outer_module_guards = list(self.module_guards)
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for a in args + [a for a in (node.args.vararg, node.args.kwarg) if a is not None]:
            if a.annotation is not None:
                self.visit(a.annotation)  # trtp.TensorDesc, Tuple[trtp.Tensor], ...: the names must exist
        for a in args:
            ann = self.chain(a.annotation) if a.annotation is not None else None
            if ann is not None:
                self.bind(a.arg, (ann[0], ann[1] + (("inst",),)))
            elif a.arg in ("trt", "trtp"):
                self.bind(a.arg, (a.arg, ()))
            elif a.arg in NAME_TYPES and a.annotation is None or (
                    a.arg in NAME_TYPES and isinstance(a.annotation, ast.Name) and a.annotation.id == "Any"):
                self.bind(a.arg, ("trt", (("attr", NAME_TYPES[a.arg]), ("inst",))))
        for d in node.decorator_list:
            self.visit(d)
        if node.returns is not None:
            self.visit(node.returns)
        self._block(node.body)
        self.scopes.pop()
        self.module_guards = outer_module_guards

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name in ROOT_MODULES:
                self.bind(a.asname or a.name.split(".")[0], (ROOT_MODULES[a.name], ()))

    def visit_Try(self, node: ast.Try) -> None:
        """`try: import tensorrt.plugin ... except ImportError: raise ...`: the code after runs only
        in versions that have the module (the others get the handler's error), so its uses are
        guarded by the module's existence."""
        catches_import = any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                             and h.body and isinstance(h.body[-1], ast.Raise) for h in node.handlers)
        imported = [a.name for stmt in node.body if isinstance(stmt, ast.Import) for a in stmt.names
                    if a.name in ROOT_MODULES and a.name != "tensorrt"]
        self._block(node.body)
        for h in node.handlers:
            self._block(h.body)
        self._block(node.orelse)
        self._block(node.finalbody)
        if catches_import:
            self.module_guards.extend(("module", m) for m in imported)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        value = self.chain(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if value is None and target.id in NAME_TYPES:  # e.g. context = self.contexts[g]
                    value = ("trt", (("attr", NAME_TYPES[target.id]), ("inst",)))
                self.bind(target.id, value)
            else:
                self.visit(target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        if isinstance(node.target, ast.Name) and node.target.id in NAME_TYPES:
            self.bind(node.target.id, ("trt", (("attr", NAME_TYPES[node.target.id]), ("inst",))))
        self._block(node.body)
        self._block(node.orelse)

    # --- guards ----------------------------------------------------------------------------
    def _guard_of(self, test: ast.AST) -> tuple | None:
        """("has", root, steps, name) for hasattr(obj, "name"); ("major>=", N) for trt_major(trt) >= N."""
        if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "hasattr" \
                and len(test.args) == 2 and isinstance(test.args[1], ast.Constant):
            c = self.chain(test.args[0])
            if c is not None:
                return ("has", c[0], c[1], test.args[1].value)
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Call) \
                and isinstance(test.left.func, ast.Name) and test.left.func.id == "trt_major" \
                and isinstance(test.comparators[0], ast.Constant):
            n, op = test.comparators[0].value, test.ops[0]
            if isinstance(op, ast.GtE):
                return ("major>=", n)
            if isinstance(op, ast.Lt):
                return ("major<", n)
        return None

    @staticmethod
    def _negate(guard: tuple) -> tuple:
        if guard[0] == "has":
            return ("lacks",) + guard[1:]
        return ("major<", guard[1]) if guard[0] == "major>=" else ("major>=", guard[1])

    def _block(self, body: list[ast.stmt]) -> None:
        pushed = 0
        for stmt in body:
            if isinstance(stmt, ast.If):
                guard = self._guard_of(stmt.test)
                if guard is not None:
                    self.guards.append(guard)
                    self._block(stmt.body)
                    self.guards.pop()
                    self.guards.append(self._negate(guard))
                    self._block(stmt.orelse)
                    self.guards.pop()
                    if not stmt.orelse and stmt.body and isinstance(stmt.body[-1], (ast.Return, ast.Raise)):
                        self.guards.append(self._negate(guard))  # the code after it runs only when it did not
                        pushed += 1
                    continue
            self.visit(stmt)  # an If without a guard goes to visit_If
        for _ in range(pushed):
            self.guards.pop()

    def visit_If(self, node: ast.If) -> None:  # an If with no version guard
        self.visit(node.test)
        self._block(node.body)
        self._block(node.orelse)

    def generic_visit(self, node: ast.AST) -> None:
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                self._block(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    # --- uses ------------------------------------------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.record(node)
        self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            for a in node.args[:1]:  # the attribute named by string is optional by construction
                self.visit(a)
            return
        self.record(node)
        self.generic_visit(node)


def project_uses(sources: tuple[str, ...] = SOURCES) -> list[Use]:
    """Every TensorRT use in the project's modules that import tensorrt (or call import_tensorrt)."""
    uses: list[Use] = []
    for top in sources:
        for path in sorted((REPO / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if not _uses_tensorrt(tree):
                continue
            walker = _Walker(path)
            walker.visit(tree)
            uses.extend(walker.uses)
    seen, unique = set(), []
    for u in uses:
        key = (u.root, u.steps, u.guards)
        if key not in seen:
            seen.add(key)
            unique.append(u)
    return unique
