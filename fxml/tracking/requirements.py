"""What a logged model needs where it is loaded, read from fxml's own source.

A logged model carries fxml's code (MLflow ``code_paths``), so its environment needs only public
distributions: those that the modules it loads import at module level, starting from the pyfunc
wrapper and the model's own class (and the classes of the models it wraps: post-processing,
ensemble members). They are found by parsing those modules with ``ast`` (nothing is imported),
mapped to distributions with ``importlib.metadata`` and pinned to the versions installed here, so
a LightGBM model asks for LightGBM and not for PyTorch, Polars, Hydra or Optuna. Imports inside
functions (training-only code such as Hydra in an ensemble's ``fit``) are not followed.
"""

from __future__ import annotations

import ast
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import fxml

FXML_SOURCE = Path(fxml.__file__).resolve().parent
# the module that MLflow unpickles the python_model from where the model loads
LOADER_MODULE = "fxml.tracking.pyfunc"


def model_modules(model: Any) -> list[str]:
    """The modules of ``model``'s class and of every model inside it."""
    inner = [getattr(model, "inner", None), *getattr(model, "models", [])]
    return [type(model).__module__, *(m for part in inner if part is not None
                                      for m in model_modules(part))]


def _source_path(module: str) -> Path | None:
    """The source file of an fxml module, found in fxml's folder (nothing is imported)."""
    parts = module.split(".")
    if parts[0] != "fxml":
        return None
    base = FXML_SOURCE.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at import: the body, and what sits in its ifs and trys."""
    out: list[ast.stmt] = []
    for node in body:
        if _type_checking_only(node):
            continue
        out.append(node)
        if isinstance(node, ast.If):
            out += _module_level_statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level_statements(node.body + node.orelse + node.finalbody)
    return out


def imports_at_load(module: str) -> set[str]:
    """Absolute names of the modules ``module`` imports when it is imported."""
    path = _source_path(module)
    if path is None or path.suffix != ".py":
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _module_level_statements(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # ``from package import submodule`` imports the submodule too
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if _source_path(f"{base}.{alias.name}"))
    return {name for name in found if name and name != "__future__"}


def load_closure(roots: list[str]) -> tuple[set[str], set[str]]:
    """fxml modules imported when ``roots`` load, and the top-level names of everything else."""
    own: set[str] = set()
    others: set[str] = set()
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in own:
            continue
        own.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        for name in [*imports_at_load(module), *parents]:
            if name.split(".")[0] == "fxml":
                pending.append(name)
            else:
                others.add(name.split(".")[0])
    return own, others


def public_version(version: str) -> str:
    """Without a local label: ``2.13.0+cpu`` is served as ``2.13.0`` by the public index."""
    return version.split("+", 1)[0]


def pinned_distributions(top_level_names: set[str]) -> list[str]:
    providers = metadata.packages_distributions()
    pins: dict[str, str] = {}
    for name in sorted(top_level_names - set(sys.stdlib_module_names)):
        candidates = providers.get(name, [])
        # mlflow/ is installed by both mlflow and mlflow-skinny: name the one the import is called
        same = [dist for dist in candidates if dist.lower().replace("_", "-") == name.replace("_", "-")]
        for dist in same or candidates:
            pins[dist.lower()] = f"{dist}=={public_version(metadata.version(dist))}"
    return sorted(pins.values(), key=str.lower)


def pip_requirements(model: Any) -> list[str]:
    """Pinned public distributions that loading ``model`` and predicting with it import (no fxml:
    its code ships with the model)."""
    _, others = load_closure([LOADER_MODULE, *model_modules(model)])
    return pinned_distributions(others)


def copy_fxml_code(destination: Path) -> Path:
    """fxml's Python modules (no caches, configs or data) under ``destination/fxml``, for
    ``code_paths``: the logged model imports fxml from there."""
    def skipped(folder: str, names: list[str]) -> list[str]:
        return [name for name in names
                if not (name.endswith(".py") or (Path(folder, name).is_dir() and name != "__pycache__"))]

    target = destination / "fxml"
    shutil.copytree(FXML_SOURCE, target, ignore=skipped)
    return target
