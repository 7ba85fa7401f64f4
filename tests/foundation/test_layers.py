"""The layer rule, checked on the source: a module imports only its own layer or lower ones.

Layers, top to bottom (README, "Architecture"):
  cli        the `distill` command, the stage table, the Ray job entrypoint
  stages     one module per command: what `distill <command>` does
  libraries  engines (teacher backends, serving, the engine builder), training helpers,
             curation libraries, the Ray Jobs client
  core       config, errors, run dir and its artifact registry, atomic IO, models, Ray init, logs

Every import counts, also one inside a function, since that is how cycles used to hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("distill", "teachers", "students", "ray_jobs")
LAYERS = ("core", "libraries", "stages", "cli")  # lowest first

# Longest prefix wins; a module no prefix names fails `test_every_module_has_a_layer`.
LAYER_OF = {
    "distill.core": "core",
    "distill.curation": "libraries", "distill.data": "libraries", "distill.metrics": "libraries",
    "distill.stats": "libraries", "distill.packaged_data": "libraries",
    "distill.judge": "libraries",
    "distill.engines": "libraries", "distill.contenders": "libraries",
    "distill.latency": "libraries", "distill.server_queue": "libraries",
    "teachers": "libraries", "teachers.generate": "stages",
    "students": "libraries", "students.sft": "stages", "students.dpo": "stages",
    "students.opd": "stages", "students.prune": "stages",
    "students.export": "stages",
    "distill.decision": "libraries",
    "distill.forgetting": "libraries", "distill.ifbench_checks": "libraries",
    "ray_jobs": "libraries", "ray_jobs.submit": "stages", "ray_jobs.status": "stages",
    "ray_jobs.logs": "stages", "ray_jobs.schedule": "stages", "ray_jobs.entrypoint": "cli",
    "distill.prompts": "stages", "distill.check": "stages", "distill.curate": "stages", "distill.pairs": "stages",
    "distill.eval": "stages", "distill.bench": "stages", "distill.report": "stages",
    "distill.refresh": "stages", "distill.promote": "stages",
    "distill.serve": "stages", "distill.drift": "stages",
    "distill.serving": "libraries", "distill.drift_stats": "libraries",
    "distill.drift_report": "libraries",
    "distill.cli": "cli", "distill.pipeline": "cli", "distill.config_docs": "cli",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def layer(module: str) -> str | None:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")),
               key=len, default=None)
    return LAYER_OF.get(best) if best else None


def imports(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports (a `from pkg import mod` counts as `pkg.mod`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES and name not in PACKAGES:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m not in PACKAGES and layer(m) is None]
    assert not unplaced, f"add these to LAYER_OF (and the README's table): {unplaced}"


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} ({layer(m)}) imports {d} ({layer(d)})"
              for m, deps in graph().items() if m not in PACKAGES for d in sorted(deps)
              if LAYERS.index(layer(d)) > LAYERS.index(layer(m))]
    assert not upward, "\n".join(upward)


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_of(module: str) -> str:
    """The packages of the import graph; distill's core is its own node, the bottom one."""
    return "distill.core" if module.startswith("distill.core") else module.split(".")[0]


def test_no_import_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for m, deps in graph().items():
        edges.setdefault(package_of(m), set()).update(
            package_of(d) for d in deps if package_of(d) != package_of(m))
    assert _find_cycle(edges) is None, f"package cycle: {_find_cycle(edges)}"
    assert edges["distill.core"] == set(), "distill.core must import none of the packages"


def test_no_import_cycle_between_modules():
    assert _find_cycle(graph()) is None, f"module cycle: {_find_cycle(graph())}"


@pytest.mark.parametrize("bad", [{"a": {"b"}, "b": {"a"}}, {"a": {"b"}, "b": {"c"}, "c": {"a"}}])
def test_the_cycle_finder_finds_cycles(bad):
    assert _find_cycle(bad) is not None
