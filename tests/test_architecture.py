"""The package's layering (docs/architecture.md), read from its imports.

Each module belongs to a layer; a module imports only from its own layer or lower ones, the stages never
import each other, and a private name (a `_name` or a `_module`) is imported only inside its own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hskstore"

# Lowest first. The root package (`hskstore/__init__.py`) is the facade over all of them and is not ranked.
LAYERS = {
    "errors": 0, "version": 0, "options": 0,
    "runtime": 1, "data": 1,
    "models": 2,
    "method": 3,
    "store": 4, "configs": 4,
    "stages": 5,
    "experiments": 6,
    "cli": 7, "__main__": 7,
}


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path):
    """(line, imported module, imported names) for every hskstore import in the file, lazy ones included."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "hskstore" or alias.name.startswith("hskstore."):
                    yield node.lineno, alias.name, []
            continue
        else:
            continue
        if target == "hskstore" or target.startswith("hskstore."):
            yield node.lineno, target, names


def _resolve(target: str, name: str, modules: dict) -> str:
    """`from pkg import name`: the module `pkg.name` when it is one, else `pkg` itself."""
    return f"{target}.{name}" if f"{target}.{name}" in modules else target


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _home_package(module: str, modules: dict) -> str:
    """The package a module's names live in: itself for a package, its parent for a file."""
    return module if modules[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def _violations(package: Path = PACKAGE) -> list[str]:
    modules = _modules(package)
    problems = []
    for module, path in modules.items():
        layer = _layer_of(module)
        if layer is None:  # the root facade
            continue
        assert layer in LAYERS, f"{module}: its layer {layer!r} is not in LAYERS (docs/architecture.md)"
        for line, target, names in _imports(module, path):
            where = f"{path.relative_to(package.parent)}:{line}"
            for name in names or [None]:
                imported = _resolve(target, name, modules) if name else target
                if imported not in modules:
                    problems.append(f"{where} imports {imported}, which is not a module of the package")
                    continue
                to_layer = _layer_of(imported)
                if to_layer is None:
                    problems.append(f"{where}: {module} imports the root package; import from the module instead")
                    continue
                if LAYERS[to_layer] > LAYERS[layer]:
                    problems.append(f"{where}: {module} ({layer}) imports {imported} ({to_layer}), a higher layer")
                if layer == "stages" == to_layer and imported != module and imported != "hskstore.stages":
                    problems.append(f"{where}: stage {module} imports stage {imported}; move what they share down")
                importer_package = _home_package(module, modules)
                private_module = any(part.startswith("_") and not part.startswith("__")
                                     for part in imported.split("."))
                private_name = name is not None and imported == target and name.startswith("_") \
                    and not name.startswith("__")
                if (private_module or private_name) and _home_package(imported, modules) != importer_package \
                        and not imported.startswith(importer_package + "."):
                    problems.append(f"{where}: {module} imports the private {imported}{'.' + name if private_name else ''} "
                                    "from outside its package")
    return problems


def test_no_module_imports_upward_across_stages_or_a_private_name_from_another_package():
    assert _violations() == []


def test_every_module_is_in_a_documented_layer():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for layer in {_layer_of(m) for m in _modules()} - {None}:
        assert f"`{layer}" in text, f"docs/architecture.md does not mention the layer {layer!r}"


@pytest.mark.parametrize("line, expected", [
    ("from ..stages.train import Trainer", "imports hskstore.stages.train (stages), a higher layer"),
    ("from ..store._zarr import ZarrStore", "imports the private hskstore.store._zarr from outside its package"),
])
def test_the_checker_catches_an_upward_and_a_private_import(tmp_path, line, expected):
    """The check itself can fail: a method module importing a stage, or the store's private backend."""
    import shutil

    copy = tmp_path / "hskstore"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "method" / "layering_probe.py").write_text(line + "\n")
    assert any(expected in problem for problem in _violations(copy))
