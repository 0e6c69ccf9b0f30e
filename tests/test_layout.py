"""The package layout is the architecture: imports flow one way, no module imports itself back, and the
launching process stays light.

Reads every module of ``fedspine_ray`` with :mod:`ast` (function-level and ``TYPE_CHECKING`` imports
included: a lazy import is still a dependency a reader must follow), so these checks need no Ray and no
torch. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fedspine_ray

PACKAGE = Path(fedspine_ray.__file__).parent

#: Layers, bottom first: a package may import its own layer and the layers below, never one above.
LAYERS: list[set[str]] = [
    {"config"},
    {"data", "pruning", "bandits"},
    {"modeling"},
    {"devices"},
    {"messages"},
    {"rounds"},
    {"strategies"},
    {"runtime"},
    {"launch"},
    {"runner", "cli"},
]
#: Entry points that start work of the layers above them: Tune's trainable runs a federated run.
UPWARD_ALLOWED = {("launch.tune", "runner")}
#: Packages that implement algorithms: testable in one process, so no Ray and no runtime.
ALGORITHM_PACKAGES = {
    "config",
    "data",
    "pruning",
    "bandits",
    "modeling",
    "messages",
    "devices",
    "rounds",
    "strategies",
}
#: What may sit at the top of the package besides subpackages.
TOP_LEVEL_MODULES = {"__init__", "cli", "runner", "messages"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__") or "__init__"
        found[name] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """fedspine_ray modules (relative names) and third-party roots that ``path`` imports anywhere."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
                names.add("fedspine_ray." + target if target else "fedspine_ray")
                names.update(f"fedspine_ray.{target}.{a.name}" if target else a.name for a in node.names)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(path, name):
            if imported.startswith("fedspine_ray."):
                rel = imported.removeprefix("fedspine_ray.")
                while rel and rel not in modules:
                    rel = rel.rpartition(".")[0]
                if rel and rel != name:
                    deps.add(rel)
        graph[name] = deps
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"module fedspine_ray.{module} is in no layer of tests/test_layout.py: place it")


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.endswith("__init__") or dep == "__init__":
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_flow_down_the_layers():
    wrong = []
    for module, deps in _graph().items():
        if module == "__init__":
            continue
        for dep in deps:
            if dep == "__init__" or (module, dep) in UPWARD_ALLOWED:
                continue
            if _layer(dep) > _layer(module):
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports that go up a layer: " + ", ".join(sorted(wrong))


def test_algorithm_packages_import_neither_ray_nor_the_runtime():
    wrong = []
    for module, path in _modules().items():
        if module.split(".")[0] not in ALGORITHM_PACKAGES:
            continue
        for imported in _imports(path, module):
            if (
                imported == "ray"
                or imported.startswith("ray.")
                or imported.startswith("fedspine_ray.runtime")
            ):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong


def test_top_level_holds_only_entry_points_and_the_wire_types():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL_MODULES, sorted(top - TOP_LEVEL_MODULES)
    for sub in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text()))
        assert doc and "May import" in doc, (
            f"fedspine_ray/{sub.name}/__init__.py must say its role and imports"
        )


def test_launcher_modules_do_not_load_torch():
    """The CLI, the runner and the sweep driver (with a trial's placement group) stay small processes."""
    code = (
        "import sys\n"
        "import fedspine_ray.cli, fedspine_ray.runner, fedspine_ray.launch.tune as tune\n"
        "from fedspine_ray.launch.sweep_spec import sweep_from_dict\n"
        "spec = sweep_from_dict({'base_config': 'package:fedspine.yaml', 'search_space': {'seed': [0]}})\n"
        "tune.trial_bundles(spec, {'seed': 0})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'deepspeed') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
