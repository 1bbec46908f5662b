"""The Python package's layout rule: no import circle among
fakequant's modules, counting every module-level import (function-local imports are not
allowed to hide one either: the package has none between its own modules)."""

import ast
from pathlib import Path

import fakequant

PACKAGE = Path(fakequant.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def with_parents(name: str, known: dict) -> list[str]:
    """Importing a.b.c runs a, a.b and a.b.c (those of them that are fakequant modules)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known]


def imports(name: str, path: Path, known: dict, local: bool) -> set[str]:
    """fakequant modules ``name`` imports: at module level, or (``local``) inside functions."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            nodes.append(node)
    top = {id(n) for n in tree.body} | {id(n) for t in tree.body if isinstance(t, (ast.Try, ast.If))
                                         for n in ast.walk(t)}
    out = set()
    for node in nodes:
        if (id(node) in top) == local:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            mod = resolve(name, is_package, node)
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            out.update(m for m in with_parents(t, known) if m != name and not name.startswith(m + "."))
    return out


def test_no_import_circle():
    known = modules()
    graph = {name: imports(name, path, known, local=False) for name, path in known.items()}
    state, stack = {}, []

    def visit(n):
        state[n] = "active"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "active":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_no_function_local_imports_between_own_modules():
    known = modules()
    local = {name: sorted(imports(name, path, known, local=True)) for name, path in known.items()}
    assert {k: v for k, v in local.items() if v} == {}
