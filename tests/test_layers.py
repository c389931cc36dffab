"""The package's layers (docs/architecture.md): each module imports only its own layer and the layers below.

    core  <-  parallel, compression  <-  coordination  <-  engine, trainer  <-  commands

`simulator` is below everything and imports no torch and nothing of `llama_course`. Imports are read from
the source (an import inside a function counts), so a cycle or an upward import fails here, not at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# layer of a module: the first folder under llama_course/, or the module itself at the top
RANK = {"core": 0, "parallel": 1, "compression": 1, "coordination": 2, "engine": 3, "trainer": 3,
        "commands": 4, "__main__": 5, "__init__": 0}

# Upward imports allowed: none (the composable engine and the one launcher untied the last ones). It may
# only stay empty.
ALLOWED_UPWARD: set = set()


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def package_modules(root: str):
    for path in sorted((ROOT / root).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield ".".join(p for p in rel.parts if p != "__init__"), path


def test_no_module_imports_a_layer_above_its_own():
    upward = set()
    for module, path in package_modules("llama_course"):
        mine = RANK[layer_of(module)]
        for target in imports(path):
            if target.startswith("llama_course.") and layer_of(target) in RANK:
                if RANK[layer_of(target)] > mine and (module, layer_of(target)) not in ALLOWED_UPWARD:
                    upward.add(f"{module} -> {target}")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_simulator_imports_no_torch_and_no_runtime():
    bad = {f"{m} -> {t}" for m, p in package_modules("simulator") for t in imports(p)
           if t.split(".")[0] in ("torch", "llama_course")}
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = {}
    known = dict(package_modules("llama_course"))
    for module, path in known.items():
        graph[module] = set()
        for target in imports(path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    seen, on_path, cycles = set(), [], []

    def visit(v):
        on_path.append(v)
        for w in graph[v]:
            if w in on_path:
                cycles.append(" -> ".join(on_path[on_path.index(w):] + [w]))
            elif w not in seen:
                visit(w)
        on_path.pop()
        seen.add(v)

    for v in graph:
        if v not in seen:
            visit(v)
    assert not cycles, "\n".join(cycles)


def test_layer_table_covers_every_folder():
    folders = {p.name for p in (ROOT / "llama_course").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(RANK), f"a folder without a layer: {folders - set(RANK)}"
