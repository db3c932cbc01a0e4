"""The package stack runs one way (docs/ARCHITECTURE.md, "The stack"): a module imports only from
its own layer or the layers below it, never from a layer above. Every `import` counts, at the top
of a module or inside a function, so a deferred import cannot hide an upward edge.

Where the layers sit and why:
- shipped: the modeling code an export copies flat beside the weights (hf/remote); it imports
  nothing of the project, only its flat siblings.
- platform: pvcommon (errors, CLI parsing, config files), device.py, compat/ (Megatron-Core on a
  CPU) and parallel.py (process groups): what any layer may lean on.
- core: the injected GPT model, layer specs, projections, context, presets, LLM families, FLOPs
  counts, parameter groups, the weights' checkpoint layout.
- hf: Hugging Face formats over core: the decoder converter, vision towers, tokenizer
  conventions; below methods, whose exports and towers use it.
- methods: the registry and one package per method.
- data: loaders, which take what they need from a method's spec.
- training: the Trainer and its parts.
- entry points: the command lines (train, export, flops, evaluate) and the programs built on the
  package (mainjob, pipeline, recaption, bench, scripts), which may use any layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("megatron_ext", "mainjob", "pipeline", "recaption", "pvcommon", "bench", "scripts")

# bottom to top; a module's layer is that of its longest listed prefix
LAYERS = (
    ("shipped", ("megatron_ext.hf.remote",)),
    ("platform", ("pvcommon", "megatron_ext.device", "megatron_ext.compat", "megatron_ext.parallel")),
    ("core", ("megatron_ext.core",)),
    ("hf", ("megatron_ext.hf",)),
    ("methods", ("megatron_ext.methods",)),
    ("data", ("megatron_ext.data",)),
    ("training", ("megatron_ext.training",)),
    ("entry points", ("megatron_ext.train", "megatron_ext.export", "megatron_ext.flops",
                      "megatron_ext.evaluate", "mainjob", "pipeline", "recaption", "bench", "scripts")),
)
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}
# the package root alone (its __init__ imports nothing), not as a prefix: every module under it
# has its own entry above
ROOT_PACKAGE = ("megatron_ext", "platform")


def layer_of(module: str) -> str | None:
    """The layer of a project module (None: not a project module)."""
    if module == ROOT_PACKAGE[0]:
        return ROOT_PACKAGE[1]
    best, found = -1, None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), name
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool):
    """(line, imported module) for every import statement anywhere in the module, relative ones
    resolved; `from X import name` counts as X.name, which is X's own layer or a submodule's."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}" if alias.name != "*" else source


def project_files() -> list[Path]:
    files = []
    for top in SCANNED:
        files += sorted((ROOT / top).rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def parse(path: Path, source: str) -> ast.Module:
    """ast.parse, once more on CPython 3.11's "AST constructor recursion depth mismatch": its AST
    converter keeps one recursion counter for every thread (gh-106905), and a thread an earlier
    test left in this worker (Ray's) can move it mid-parse. A second parse reads the same file."""
    try:
        return ast.parse(source, filename=str(path))
    except SystemError:
        return ast.parse(source, filename=str(path))


def upward_imports(path: Path, source: str) -> list[str]:
    """'file:line (its layer) imports X (X's layer)' for each import of `source` (the text of the
    module at `path`) that reaches above the module's layer."""
    module = module_name(path)
    mine = layer_of(module)
    found = []
    if mine is None:  # test_every_project_module_has_a_layer names it
        return found
    for line, target in imported_modules(parse(path, source), module, path.name == "__init__.py"):
        theirs = layer_of(target)
        if theirs is not None and RANK[theirs] > RANK[mine]:
            found.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    return found


def test_every_project_module_has_a_layer():
    missing = [str(f.relative_to(ROOT)) for f in project_files() if layer_of(module_name(f)) is None]
    assert not missing, f"add these modules' packages to LAYERS in {Path(__file__).name}: {missing}"


def test_imports_run_down_the_stack():
    found = [edge for f in project_files() for edge in upward_imports(f, f.read_text())]
    assert not found, "imports against the stack (move the name down, or the importer up):\n" + "\n".join(found)


def import_time_edges(files) -> dict[str, set]:
    """{module: the project modules it imports at import time}: the imports of the module's own
    body (not those inside functions), each resolved to the module file it names."""
    known = {module_name(f) for f in files}
    edges = {}
    for path in files:
        module = module_name(path)
        tree = parse(path, path.read_text())
        body = ast.Module(body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                            ast.ClassDef))], type_ignores=[])
        targets = set()
        for _, target in imported_modules(body, module, path.name == "__init__.py"):
            while target and target not in known:  # `from pkg import name`: the package itself
                target = target.rpartition(".")[0]
            if target and target != module:
                targets.add(target)
        edges[module] = targets
    return edges


def cycles(edges: dict[str, set]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module), Tarjan's way."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    """No two modules import each other at import time, directly or through others."""
    found = cycles(import_time_edges(project_files()))
    assert not found, "import circles (break them by moving the shared name down):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("source, upward", [
    # an upward edge, at the top of a module or inside a function, absolute or relative
    ("from megatron_ext.training.config import ConfigError\n", True),
    ("def f():\n    import megatron_ext.data.loader\n", True),
    ("def f():\n    from ...training import stages\n", True),
    # downward and same-layer edges, and what is not the project's
    ("from megatron_ext.core.specs import stage_layers\nfrom megatron_ext.methods.rose import config\n", False),
    ("from . import rotation\nfrom pvcommon.errors import ConfigError\nimport torch\n", False),
])
def test_the_check_sees_upward_edges(source, upward):
    """The check itself, on a module in methods/rose/ with the given imports."""
    found = upward_imports(ROOT / "megatron_ext" / "methods" / "rose" / "probe.py", source)
    assert bool(found) is upward, found
