"""Every module of hero/ imports on its own, and no modules import each other in a cycle.

A cycle counts wherever its imports are: at the top of a module, inside a function
(a deferred import that hides the cycle), or under `if TYPE_CHECKING:` (a seam the type
checker sees go both ways). Each module is imported in a process where no other
module of hero/ was imported before it: a child forked from an interpreter that has
loaded only the third-party packages hero/ uses (loading those once keeps this fast).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

HERO = Path(__file__).resolve().parents[1] / "hero"

# Cycles that another piece of work is removing; each must name that work. Delete an entry when its
# cycle is gone (the test says so).
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(HERO.parent).with_suffix("").parts
    return ".".join(parts[:-1] if path.name == "__init__.py" else parts)


MODULES = {module_name(p): p for p in sorted(HERO.rglob("*.py"))}


def imported(module: str, path: Path) -> set[str]:
    """The hero modules `module` imports anywhere in its source (top level, functions, TYPE_CHECKING)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if name in MODULES else base)
    targets = set()
    for name in found:
        parts = name.split(".")
        # importing a.b.c runs a and a.b first: their __init__ count too, unless they are the importer's own packages
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in MODULES and target != module and not module.startswith(target + "."):
                targets.add(target)
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_hero_is_in_an_import_cycle():
    graph = {module: imported(module, path) for module, path in MODULES.items()}
    found = {frozenset(c): c for c in cycles(graph)}
    new = [" <-> ".join(c) for key, c in found.items() if key not in KNOWN_CYCLES]
    assert not new, "import cycles: " + "; ".join(new)
    gone = [" <-> ".join(sorted(key)) for key in KNOWN_CYCLES if key not in found]
    assert not gone, f"cycles gone, delete them from KNOWN_CYCLES in {Path(__file__).name}: " + "; ".join(gone)


def test_cycle_finder_sees_a_cycle_through_a_type_checking_import(tmp_path: Path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hero.store.qss import QSS\n")
    assert imported("hero.store.m", source) >= {"hero.store.qss"}


CHILD = """
import importlib, json, os, sys, traceback
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # a package hero/ imports only where it is installed; its own module says so when imported
failed = {}
for module in json.loads(sys.argv[2]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc()[-2000:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        failed[module] = error or f"exit status {status}"
print(json.dumps(failed))
"""


def test_every_module_of_hero_imports_on_its_own():
    third_party = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                third_party.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                third_party.add(node.module.split(".")[0])
    third_party -= {"hero", "__future__"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(sorted(third_party)), json.dumps(sorted(MODULES))],
        capture_output=True, text=True, timeout=240, cwd=HERO.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, "\n\n".join(f"{module}:\n{error}" for module, error in failed.items())
