"""The package's two parts: the plugin core imports nothing from the app; the app uses only public core names;
each imports nothing beyond its dependencies.

Checked by importing the modules (not by reading their text): what a module really pulls in is
what ``sys.modules`` holds after the import, and what it really uses from the core is what its
globals hold.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import lightning_multiloss

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_multiloss"
APP = f"{PACKAGE}.app"


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def all_modules() -> list[str]:
    """Every module of the package (``lightning_multiloss.lightning`` only where ``lightning`` is installed)."""
    names = [PACKAGE]
    for info in pkgutil.walk_packages(lightning_multiloss.__path__, f"{PACKAGE}."):
        if info.name == f"{PACKAGE}.lightning" and importlib.util.find_spec("lightning") is None:
            continue
        names.append(info.name)
    return sorted(names)


def core_modules() -> list[str]:
    return [name for name in all_modules() if not in_package(name, APP)]


def app_modules() -> list[str]:
    return [name for name in all_modules() if in_package(name, APP)]


def is_public(module_name: str) -> bool:
    return not any(part.startswith("_") for part in module_name.split("."))


def test_the_walk_finds_both_parts() -> None:
    core, app = core_modules(), app_modules()
    for name in ("lightning_multiloss.mixin", "lightning_multiloss.sampling", "lightning_multiloss.weighting.mgda"):
        assert name in core
    for name in ("lightning_multiloss.app.train", "lightning_multiloss.app.results", "lightning_multiloss.app.data"):
        assert name in app


def app_modules_loaded_by(modules: list[str]) -> list[str]:
    """The ``lightning_multiloss.app*`` modules loaded after importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m == {APP!r} or m.startswith({APP + '.'!r}))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_the_core_imports_nothing_from_the_app() -> None:
    loaded = app_modules_loaded_by(core_modules())
    assert loaded == [], f"importing the core loaded app modules: {loaded}"


def core_origin(obj: object) -> str | None:
    """The core module that defines ``obj`` (a module: the module itself), else None."""
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    if isinstance(name, str) and in_package(name, PACKAGE) and not in_package(name, APP):
        return name
    return None


def private_reaches(module: types.ModuleType, public: list[types.ModuleType]) -> list[str]:
    """The globals of ``module`` taken from the core through a private name.

    Fine: an object defined in a public core module, or one that a public core module exports
    under the same (public) name, as ``lightning_multiloss.weighting`` exports ``Weighting``.
    """
    found = []
    for name, obj in vars(module).items():
        origin = core_origin(obj)
        if origin is None or is_public(origin):
            continue
        exported = not name.startswith("_") and any(getattr(m, name, None) is obj for m in public)
        if not exported:
            found.append(f"{module.__name__}.{name} (from {origin})")
    return found


def public_core_modules() -> list[types.ModuleType]:
    return [importlib.import_module(name) for name in core_modules() if is_public(name)]


def test_the_app_uses_only_public_core_names() -> None:
    public = public_core_modules()
    found = [reach for name in app_modules() for reach in private_reaches(importlib.import_module(name), public)]
    assert found == [], "the app reaches private core names: " + ", ".join(found)


def test_the_rules_can_fail() -> None:
    """The checks above report a private reach, and an app module loaded, when there is one."""
    from lightning_multiloss.weighting import Weighting

    home = sys.modules[Weighting.__module__]  # the private module that defines it
    assert not is_public(home.__name__)
    fake = types.ModuleType(f"{APP}.fake")
    fake.__dict__.update(
        {
            "Weighting": Weighting,  # exported by lightning_multiloss.weighting under this name: fine
            "base": home,  # a private module
            "AnotherName": Weighting,  # no public module exports it under this name
        }
    )
    assert private_reaches(fake, public_core_modules()) == [
        f"{APP}.fake.base (from {home.__name__})",
        f"{APP}.fake.AnotherName (from {home.__name__})",
    ]
    assert app_modules_loaded_by([f"{APP}.results"]) == [APP, f"{APP}.results"]


# -- what each part imports from outside the standard library ---------------------------------------
CORE_IMPORTS = {
    "torch",
    "torchmetrics",
    "hydra",
    "omegaconf",
    "matplotlib",
    "lightning",
    "pytorch_lightning",
    "numpy",
    "lightning_utilities",
}
"""What the plugin core may import: its dependencies (omegaconf comes with hydra-core; numpy for the K×K
solvers, lightning_utilities for apply_to_collection) and ``typing_extensions`` (a dependency of torch, listed
below)."""
APP_IMPORTS = CORE_IMPORTS | {"yaml"}
"""The demo also reads its shipped ``.npz`` files with numpy and Hydra's files with yaml (PyYAML, a dependency
of omegaconf); no scikit-learn, no mlxtend."""


def third_party_imports(path: Path) -> set[str]:
    """The top-level packages outside the standard library and this package that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names}
    return found - set(sys.stdlib_module_names) - {"__future__", PACKAGE}


def test_each_part_imports_only_its_dependencies() -> None:
    package = ROOT / PACKAGE
    for path in sorted(package.rglob("*.py")):
        is_app = (package / "app") in path.parents
        allowed = (APP_IMPORTS if is_app else CORE_IMPORTS) | {"typing_extensions"}
        extra = third_party_imports(path) - allowed
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_the_import_check_can_fail(tmp_path: Path) -> None:
    source = "import os\nfrom sklearn.datasets import load_digits\n\n\ndef f():\n    import mlxtend.data\n"
    (tmp_path / "m.py").write_text(source)
    assert third_party_imports(tmp_path / "m.py") == {"sklearn", "mlxtend"}
