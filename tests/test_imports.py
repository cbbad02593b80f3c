"""No import cycle among the top-level modules, and every Hub module imports on its own in a fresh process, both
from a checkout (`import modeling_illada`) and as transformers loads remote code (a package, relative imports)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(path.stem for path in ROOT.glob("*.py"))
HUB_MODULES = sorted(path.stem for path in (ROOT / "illada-demo").glob("*.py") if (ROOT / path.name).is_file())


def sibling_imports(path: Path) -> set[str]:
    """The top-level modules that `path` imports anywhere in its body (lazy imports inside functions included):
    `from .x import y`, `from x import y`, `import x`, and `from . import x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.module is not None and node.level <= 1:
                found.add(node.module.split(".")[0])
            elif node.module is None and node.level == 1:
                found.update(alias.name for alias in node.names)
    return found & set(MODULES) - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {name: sibling_imports(ROOT / f"{name}.py") for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a path whose first and last entries are equal, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    """The check can fail: a graph with a lazy back edge, as generation -> modeling once was, is caught."""
    graph = {"modeling": {"generation", "configuration"}, "generation": {"cache", "modeling"}, "cache": set(),
             "configuration": set()}
    assert find_cycle(graph) == ["generation", "modeling", "generation"]
    graph["generation"] = {"cache"}
    assert find_cycle(graph) is None


def test_sibling_imports_reads_every_import_form(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "MODULES", ["a", "b", "c", "d", "e"])
    (tmp_path / "a.py").write_text(
        "import os\ntry:\n    from .b import x\nexcept ImportError:\n    from b import x\n"
        "def f():\n    import c.sub\n    from . import d\n    from .. import e\n"
    )
    assert sibling_imports(tmp_path / "a.py") == {"b", "c", "d"}


def test_top_level_modules_have_no_import_cycle():
    graph = import_graph()
    assert {"modeling_illada", "configuration_illada"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


FRESH_IMPORTS = """
import importlib, json, sys
root, package, names = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [root]
failures = {}
for name in names:
    for module in (name, f"{package}.{name}"):
        for loaded in [m for m in sys.modules if m.split(".")[0] in set(names) | {package}]:
            del sys.modules[loaded]  # each module is imported first, alone, as in a fresh process
        try:
            importlib.import_module(module)
        except Exception as error:
            failures[module] = repr(error)
print(json.dumps(failures))
"""


def test_each_hub_module_imports_first_and_alone(tmp_path):
    """One interpreter (torch and transformers are imported once, ~8 s), with every repo module dropped from
    `sys.modules` before each import: each Hub module is imported first, from a checkout and as the package
    transformers builds for remote code (where the relative `from .x import` branch runs)."""
    package = tmp_path / "hub_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in HUB_MODULES:
        (package / f"{name}.py").write_text((ROOT / "illada-demo" / f"{name}.py").read_text())
    assert {"modeling_illada", "configuration_illada"} <= set(HUB_MODULES)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, str(ROOT), package.name, *HUB_MODULES],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.slow
@pytest.mark.parametrize("name", HUB_MODULES)
def test_python_c_import_of_each_hub_module(name):
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
