"""The layout's rules (README, Layout), read from the source: every import, at module level or inside a
function, counts, so a lazy import cannot hide a circle or a forbidden arrow."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "melo_cli"
MAX_LINES = 300
FORBIDDEN = {
    "bundle": {"torch", "transformers", "model", "training", "tasks", "eval", "jobs", "api", "cli"},
    "router": {"torch", "transformers", "model", "bundle", "training", "eval", "jobs", "api", "cli"},
    "model": {"training", "eval", "bundle", "jobs", "api", "cli"},
    "edits": {"torch", "transformers", "model", "bundle", "router", "training", "eval", "jobs", "api", "cli"},
    "tasks": {"model", "training", "eval", "bundle", "jobs", "api", "cli"},
}
"""Part -> what it may not import. A part is a sub-package of melo_cli or one of its top-level modules;
torch and transformers stand for themselves."""


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The modules `name` imports, absolute, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def _part(module: str) -> str | None:
    """melo_cli.bundle.read -> bundle; torch.nn -> torch; anything else outside melo_cli -> None."""
    head, _, rest = module.partition(".")
    if head == "melo_cli":
        return rest.partition(".")[0] or "melo_cli"
    return head if head in ("torch", "transformers") else None


def _part_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = defaultdict(set)
    for name, path in modules.items():
        source = _part(name)
        for target in _imports(name, path):
            if target in modules or _part(target) in ("torch", "transformers"):
                part = _part(target)
                if part not in (source, "melo_cli"):
                    graph[source].add(part)
    return graph


def test_no_part_imports_what_its_rule_forbids():
    graph = _part_graph()
    broken = {part: sorted(graph[part] & forbidden) for part, forbidden in FORBIDDEN.items() if graph[part] & forbidden}
    assert not broken, broken
    assert not [part for part, targets in graph.items() if "cli" in targets and part != "cli"]


def test_the_parts_import_each_other_without_a_circle():
    graph = _part_graph()
    done, path = set(), []

    def visit(part):
        if part in path:
            raise AssertionError(" -> ".join(path[path.index(part):] + [part]))
        if part in done:
            return
        path.append(part)
        for target in sorted(graph.get(part, ())):
            visit(target)
        path.pop()
        done.add(part)

    for part in sorted(graph):
        visit(part)


def test_no_circle_between_modules_inside_a_part():
    """Within a sub-package too: a module that needs another's names imports it, never the other way."""
    modules = _modules()
    graph = {name: {t for t in _imports(name, path) if t in modules and t != name and not modules[t].name == "__init__.py"}
             for name, path in modules.items() if path.name != "__init__.py"}
    state: dict[str, int] = {}

    def visit(name, trail):
        if state.get(name) == 1:
            raise AssertionError(" -> ".join(trail[trail.index(name):] + [name]))
        if state.get(name) == 2:
            return
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            visit(target, trail + [name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_over_the_line_limit():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize("module", ["melo_cli.bundle", "melo_cli.router", "melo_cli.edits", "melo_cli.jobs.forget",
                                    "melo_cli.jobs.export", "melo_cli.cli.inspect", "melo_cli.cli.main"])
def test_what_never_loads_a_model_never_imports_torch(module):
    """Checked by importing, the way a user's process does: the static rules plus every package face."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout
