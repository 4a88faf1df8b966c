"""The package's shape: imports run one way (commands -> inference, training -> data, module -> the core) and
never in a circle. Read from the source with ``ast``, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import dae

PACKAGE = Path(dae.__file__).resolve().parent

# Each group of modules and its level: a module may import its own group and the groups of lower levels; the
# core (level 0) may import itself, without circles.
LEVELS = {
    "dae.__main__": 4,
    "dae.commands": 3,
    "dae.inference": 2,
    "dae.training": 2,
    "dae.data": 1,
    "dae.module": 1,
    "dae.nets": 0,
    "dae.noise": 0,
    "dae.objectives": 0,
    "dae.baselines": 0,
    "dae.seeding": 0,
    "dae.pixels": 0,
    "dae.moved": 0,
    "dae": 0,  # the package itself
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(name: str) -> str:
    """The group of a module: the longest entry of LEVELS that is the module or a package above it."""
    candidates = [g for g in LEVELS if name == g or name.startswith(g + ".")]
    return max(candidates, key=len)


def dae_imports(path: Path) -> set[str]:
    """The dae modules that a source file imports (``from dae.x import y`` counts as dae.x, or dae.x.y where
    that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "dae")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dae":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
IMPORTS = {name: dae_imports(path) for name, path in MODULES.items()}


def test_every_module_belongs_to_a_group_of_the_layout():
    assert all(group(name) for name in MODULES)
    assert {group(name) for name in MODULES} == set(LEVELS)


def test_imports_run_one_way():
    wrong = []
    for name, imported in IMPORTS.items():
        for target in imported:
            own, theirs = group(name), group(target)
            if own == theirs or LEVELS[own] == LEVELS[theirs] == 0:
                continue
            if LEVELS[theirs] >= LEVELS[own]:
                wrong.append(f"{name} imports {target} ({theirs}, level {LEVELS[theirs]} >= {LEVELS[own]})")
    assert not wrong, "\n".join(wrong)


def test_the_data_layer_does_not_import_the_lightning_module():
    assert not [name for name, imported in IMPORTS.items()
                if group(name) == "dae.data" and any(group(t) == "dae.module" for t in imported)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as the modules along it."""
    found, seen = [], set()

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                circle = path[path.index(target):]
                key = frozenset(circle)
                if key not in seen:
                    seen.add(key)
                    found.append([*circle, target])
            elif target in graph and len(path) < len(graph):
                visit(target, [*path, target])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_no_module_imports_itself_through_others():
    graph = {name: {t for t in imported if t in MODULES and t != name} for name, imported in IMPORTS.items()}
    # A package's __init__ importing its own modules is how it re-exports them; those edges go one way already.
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
