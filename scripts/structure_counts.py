"""The structure counts of issue 25 at a commit, read from git (no checkout), source files only
(tests/ left out unless --with-tests):

    python scripts/structure_counts.py [COMMIT] [--with-tests]

- function-local imports: import statements inside a function body (all, and of the project's own
  packages or relative), and lines of code per one;
- files that edit sys.path (insert, append, assignment);
- get_method(...) call sites and the files holding them;
- modules with an `if __name__ == "__main__"` block, and those of them another module imports.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = ("megatron_ext", "mainjob", "pipeline", "recaption", "pvcommon", "bench", "tests", "scripts")
SYS_PATH = re.compile(r"sys\.path\.(insert|append)|sys\.path\s*\+?=")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def local_imports(tree: ast.AST) -> list:
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def is_own(node) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in OWN
    return node.names[0].name.split(".")[0] in OWN


def imported_names(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def counts(commit: str, with_tests: bool) -> dict:
    files = [f for f in git("ls-tree", "-r", "--name-only", commit).split()
             if f.endswith(".py") and (with_tests or not f.startswith("tests/"))]
    lines, local, own, sys_path, get_method, mains, imported = 0, 0, 0, [], [], [], set()
    for f in files:
        source = git("show", f"{commit}:{f}")
        lines += source.count("\n")
        tree = ast.parse(source)
        found = local_imports(tree)
        local, own = local + len(found), own + sum(map(is_own, found))
        if SYS_PATH.search(source):
            sys_path.append(f)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "get_method":
                get_method.append(f)
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and f not in mains:
                mains.append(f)
        imported |= imported_names(tree)
    as_library = [f for f in mains if f[:-3].replace("/", ".").removesuffix(".__main__") in imported]
    return dict(files=len(files), lines=lines, local=local, own=own, sys_path=sys_path,
                get_method=get_method, mains=mains, as_library=as_library)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("commit", nargs="?", default="HEAD")
    ap.add_argument("--with-tests", action="store_true")
    args = ap.parse_args(argv)
    c = counts(args.commit, args.with_tests)
    print(f"{args.commit}: {c['files']} Python files, {c['lines']} lines")
    print(f"function-local imports: {c['local']} (the project's own: {c['own']}); one per "
          f"{c['lines'] // max(c['local'], 1)} lines")
    print(f"files editing sys.path: {len(c['sys_path'])}: {' '.join(c['sys_path'])}")
    print(f"get_method call sites: {len(c['get_method'])} in {len(set(c['get_method']))} files")
    print(f"__main__ modules: {len(c['mains'])}; imported as libraries: {len(c['as_library'])}: "
          f"{' '.join(c['as_library'])}")


if __name__ == "__main__":
    main()
