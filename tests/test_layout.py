"""The house: the repository root holds the Hub runtime (what `trust_remote_code` loads) and thin entry points only;
the runtime imports nothing but its siblings (relatively) and third-party libraries; the tools live in `illada/`;
no import cycle; `illada-demo/` carries exactly the runtime files, identical to the root's."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "illada-demo"
RUNTIME = {
    "cache_illada",
    "configuration_illada",
    "generation_config_illada",
    "generation_illada",
    "loading_illada",
    "masks_illada",
    "modeling_illada",
    "pipeline_illada",
    "sampler_illada",
    "scoring_illada",
    "utils_illada",
}
ENTRY_POINTS = {"train_sft", "train_vrpo", "demo", "run_lm_eval"}
MAX_ENTRY_POINT_STATEMENTS = 6  # docstring, imports, `if __name__ == "__main__": main()`
# What a Hub file may import besides its siblings: the standard library and the model's runtime dependencies.
RUNTIME_THIRD_PARTY = {"torch", "transformers", "safetensors", "tqdm", "numpy"}


def imports(path: Path) -> list[tuple[int, str]]:
    """`(level, module)` of every import in `path`, lazy ones inside functions included; `from . import x` gives
    `(1, "x")`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module is None:
                found += [(node.level, alias.name) for alias in node.names]
            else:
                found.append((node.level, node.module))
    return found


def hub_import_violations(path: Path) -> list[str]:
    """The imports of a Hub file that would not resolve in transformers' remote-code package."""
    bad = []
    for level, module in imports(path):
        top = module.split(".")[0]
        if level == 1 and top in RUNTIME:
            continue
        if level == 0 and (top in sys.stdlib_module_names or top in RUNTIME_THIRD_PARTY):
            continue
        bad.append(("." * level) + module)
    return bad


def test_root_holds_the_runtime_and_thin_entry_points_only():
    found = {path.stem for path in ROOT.glob("*.py")}
    assert found == RUNTIME | ENTRY_POINTS, (
        f"unexpected at the root: {sorted(found - RUNTIME - ENTRY_POINTS)}; missing: "
        f"{sorted(RUNTIME | ENTRY_POINTS - found)}. Tools belong in the `illada/` package."
    )


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_are_thin_and_call_the_package(name):
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    assert len(tree.body) <= MAX_ENTRY_POINT_STATEMENTS, (
        f"{name}.py has {len(tree.body)} statements: move code to illada/"
    )
    assert all(
        level == 0 and module.split(".")[0] in {"illada", "sys"} for level, module in imports(ROOT / f"{name}.py")
    )
    assert not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in tree.body)


@pytest.mark.parametrize("name", sorted(RUNTIME))
def test_hub_files_import_only_siblings_relatively_and_runtime_libraries(name):
    assert hub_import_violations(ROOT / f"{name}.py") == []


def test_the_import_check_can_fail(tmp_path):
    """A checkout-style absolute sibling import, a tool import and a training library are each caught."""
    path = tmp_path / "bad.py"
    path.write_text(
        "import json\nfrom .masks_illada import x\nfrom modeling_illada import y\n"
        "def f():\n    from illada.trainer import z\n    import trl\n"
    )
    assert hub_import_violations(path) == ["modeling_illada", "illada.trainer", "trl"]


def test_no_script_is_imported_as_a_library():
    scripts = ENTRY_POINTS | {f"illada.{name}" for name in ENTRY_POINTS - {"demo"}}  # illada.demo: the package
    for path in [*ROOT.glob("*.py"), *(ROOT / "illada").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        used = {module for _, module in imports(path)} & scripts
        assert not used, f"{path.relative_to(ROOT)} imports the script(s) {sorted(used)}"


def package_graph() -> dict[str, set[str]]:
    """Module -> the repository modules it imports (runtime files by their `illada.` name)."""
    modules = {f"illada.{name}": ROOT / f"{name}.py" for name in RUNTIME}
    for path in (ROOT / "illada").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for level, module in imports(path):
            if level:
                base = package.rsplit(".", level - 1)[0] if level > 1 else package
                module = f"{base}.{module}"
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a path whose first and last entries are equal, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child) :] + [child]
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
    graph = {
        "modeling": {"generation", "configuration"},
        "generation": {"cache", "modeling"},
        "cache": set(),
        "configuration": set(),
    }
    assert find_cycle(graph) == ["generation", "modeling", "generation"]
    graph["generation"] = {"cache"}
    assert find_cycle(graph) is None


def test_no_import_cycle():
    graph = package_graph()
    assert {"illada.modeling_illada", "illada.trainer", "illada.demo.cli"} <= set(graph)
    assert "illada.configuration_illada" in graph["illada.modeling_illada"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.skipif(not DEMO.is_dir(), reason="no illada-demo/ folder")
def test_demo_folder_carries_exactly_the_runtime_files():
    assert {path.stem for path in DEMO.glob("*.py")} == RUNTIME
    for name in sorted(RUNTIME):
        assert (DEMO / f"{name}.py").read_text() == (ROOT / f"{name}.py").read_text(), (
            f"illada-demo/{name}.py differs from the root's: copy it over (cp {name}.py illada-demo/)"
        )


def test_no_reference_to_files_outside_the_repository():
    for path in [*ROOT.glob("*.py"), *(ROOT / "illada").rglob("*.py"), ROOT / "README.md"]:
        assert "ILLADA.md" not in path.read_text(), f"{path.relative_to(ROOT)} cites a file outside the repository"


FRESH_IMPORTS = """
import importlib, json, sys
package, names = sys.argv[1], sys.argv[2:]
failures = {}
for name in names:
    for loaded in [m for m in sys.modules if m.startswith(package + ".")]:
        del sys.modules[loaded]  # each module is imported first, alone, as in a fresh process
    try:
        importlib.import_module(f"{package}.{name}")
    except Exception as error:
        failures[name] = repr(error)
print(json.dumps(failures))
"""


def test_each_hub_module_imports_first_and_alone_as_remote_code(tmp_path):
    """The runtime files copied alone into a package, as transformers' remote-code loader does: each imports first,
    in one interpreter with the other modules dropped from `sys.modules` before each import."""
    package = tmp_path / "hub_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in RUNTIME:
        (package / f"{name}.py").write_text((ROOT / f"{name}.py").read_text())
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, package.name, *sorted(RUNTIME)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}
