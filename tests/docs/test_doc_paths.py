"""Every file path and every `python -m <module>` that README.md and docs/*.md name exists, so a
moved file cannot leave the docs pointing at nothing. A failure names the doc, the line and the path.

A path resolves against the repository root, the doc's own folder (Markdown links), or the two
package roots the docs abbreviate from (`core/vlm.py` is megatron_ext/core/vlm.py, `rose/vrmg.py`
megatron_ext/methods/rose/vrmg.py). Not checked: what a command creates (runs/, out/, .venv*/,
checkpoints/...), patterns (step_XXXXXX, <prefix>-NNNNNN.tar, *.yaml, {a,b}), alternatives
(`<key>.jpg/.txt/.json`), URLs, absolute paths, a lone directory name (`wandb/`: an output or a
package, ambiguous), and ALLOWED below, each with its reason."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BASES = (ROOT, ROOT / "megatron_ext", ROOT / "megatron_ext" / "methods")

# a relative path with at least one folder: dir/.../file.ext or dir/.../dir/
PATH = re.compile(r"(?<![\w/.:$<>{}@~*-])((?:\.{1,2}/)?(?:[\w.-]+/)+(?:[\w.-]*\.[A-Za-z]\w*)?)(?![\w/*{<$-])")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")  # Markdown link targets
MODULE = re.compile(r"(?:python3?|torchrun\b[^`\n]*?)\s+-m\s+([A-Za-z_][\w.]*)")  # python -m X, torchrun ... -m X
OUTPUTS = ("runs/", "out/", "logs/", "checkpoints/", ".venv", "/", "~")
PATTERN = re.compile(r"XXXX|NNNN|/\.|\.\.\.|%")

ALLOWED = {  # path or module -> why it is named but not in this repository
    "pydoc_data/topics.py": "in CPython's standard library (the held-out text's source)",
    "llava/model/VLoRA/weights_generater.py": "in the VLoRA authors' repository, cited",
    "report/index.html": "written by the data pipeline under its output_dir",
    "30_filter/features.parquet": "written by the data pipeline's filter stage under its output_dir",
    "40_shards/": "written by the data pipeline's shard stage under its output_dir",
    "lmms_eval": "lmms-eval lives in its own environment (.venv-lmms, docs/EVALUATION.md)",
    "vllm": "vLLM lives in its own environment (scripts/setup_vllm.sh)",
}


def _exists(path: str, doc: Path) -> bool:
    return any((base / path).exists() for base in (*BASES, doc.parent))


def _paths(line: str):
    for m in PATH.finditer(line):
        yield m.group(1)
    for m in LINK.finditer(line):
        if "://" not in m.group(1) and not m.group(1).startswith("mailto:"):
            yield m.group(1)


def _checked(path: str) -> bool:
    if path.startswith(OUTPUTS) or PATTERN.search(path) or path in ALLOWED:
        return False
    return path.rstrip("/").count("/") >= 1 or not path.endswith("/")  # a lone dir name is ambiguous


def _module_exists(module: str) -> bool:
    local = ROOT / module.replace(".", "/")
    if local.with_suffix(".py").is_file() or (local / "__init__.py").is_file():
        return True
    top = module.split(".")[0]
    if (ROOT / top).is_dir() or (ROOT / f"{top}.py").is_file():
        return False  # the project's own package: the module must be in it
    return importlib.util.find_spec(top) is not None  # an installed tool (pytest, pip, torch...)


def problems(docs: list[Path]) -> list[tuple[Path, int, str]]:
    """(doc, line number, what is wrong) for every path or module that does not exist."""
    out = []
    for doc in docs:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for path in _paths(line):
                if _checked(path) and not _exists(path, doc):
                    out.append((doc, number, f"{path} does not exist"))
            for m in MODULE.finditer(line):
                module = m.group(1).rstrip(".")
                if module.split(".")[0] not in ALLOWED and not _module_exists(module):
                    out.append((doc, number, f"python -m {module}: no such module"))
    return out


def test_docs_name_only_files_and_modules_that_exist():
    found = problems(DOCS)
    assert not found, ("docs name what does not exist (paths resolve against the repo root, the doc's "
                       "folder, megatron_ext/ and megatron_ext/methods/; see this file's docstring):\n"
                       + "\n".join(f"{doc.relative_to(ROOT)}:{n}: {what}" for doc, n, what in found))


def test_the_check_finds_a_moved_file_and_passes_what_exists(tmp_path):
    doc = tmp_path / "GUIDE.md"
    doc.write_text("Run `python -m megatron_ext.no_such_entry`.\n\nThe model is in megatron_ext/vlm.py; "
                   "outputs go to runs/x/y.json, shards to <prefix>-NNNNNN.tar, see [data](DATA.md).\n"
                   "Fine: core/vlm.py, rose/vrmg.py, configs/train/, `python -m pytest`, `python -m megatron_ext.train`.\n"
                   "A link to a missing page: [gone](GONE.md).\n")
    (tmp_path / "DATA.md").write_text("")
    assert [(n, what) for _, n, what in problems([doc])] == [
        (1, "python -m megatron_ext.no_such_entry: no such module"),
        (3, "megatron_ext/vlm.py does not exist"),
        (5, "GONE.md does not exist")]
