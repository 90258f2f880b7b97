"""The package's import graph has no cycle, counting the imports inside functions too.

Every ``import`` and ``from ... import`` of every module of ``lightning_multiloss`` (at module
level or inside a function, where a lazy import could otherwise hide a cycle) is an edge to the
package module it names: ``from lightning_multiloss.weighting import Fixed`` points at
``lightning_multiloss.weighting`` (its ``__init__``), ``from lightning_multiloss.weighting._base
import Weighting`` at ``lightning_multiloss.weighting._base``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import lightning_multiloss

PACKAGE = "lightning_multiloss"
ROOT = Path(lightning_multiloss.__file__).parent


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join((PACKAGE, *parts))] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name``'s source imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name if is_package else name.rsplit(".", 1)[0]
                base = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin for alias in node.names
            ]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    # The check itself must be able to fail: a lazy import inside a function closes a cycle.
    (tmp_path / "a.py").write_text("import lightning_multiloss.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from lightning_multiloss.a import x\n")
    known = {f"{PACKAGE}.a", f"{PACKAGE}.b"}
    graph = {name: imported_modules(name, tmp_path / f"{name.rsplit('.', 1)[1]}.py", known) for name in known}
    assert find_cycle(graph) == [f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.a"]


def test_every_module_of_the_graph_is_a_real_module() -> None:
    # The graph is built from the files; each must be importable under the name it was given
    # (the optional `lightning` callback module only where `lightning` is installed).
    for name in import_graph():
        if name == f"{PACKAGE}.lightning" and importlib.util.find_spec("lightning") is None:
            continue
        assert importlib.util.find_spec(name) is not None, name


def test_every_strategy_file_is_registered_by_importing_the_package() -> None:
    # A new strategy is one file: weighting/__init__ imports every file of its folder.
    from lightning_multiloss.weighting import WEIGHTINGS

    files = {path.stem for path in (ROOT / "weighting").glob("*.py") if not path.stem.startswith("_")}
    registered_from = {cls.__module__.rsplit(".", 1)[1] for cls in WEIGHTINGS.values()}
    assert files <= registered_from
