"""The house drawn from the imports: every module of fxml and of the sweeper plugin is parsed with
``ast`` (nothing is imported) and each import must point to the module's own layer or one below.
docs/development.md's "Layout and layers" section describes the same table."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = (REPO / "fxml", REPO / "hydra_plugins")

# lowest first: a module may import its own layer and the layers below it, never one above
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaf", ("fxml", "fxml.errors", "fxml.extras", "fxml.steps", "fxml.interrupts", "fxml.secrets",
              "fxml.console")),
    ("data", ("fxml.data",)),
    ("scoring", ("fxml.scoring",)),
    ("models", ("fxml.models",)),
    ("config", ("fxml.config",)),
    ("tracking", ("fxml.tracking",)),
    ("sweeps, submission", ("fxml.sweeps", "fxml.submission")),
    ("entry points", ("fxml.cli", "fxml.crossval", "fxml.job", "fxml.run", "fxml.submit", "fxml.promote",
                      "fxml.refit", "fxml.report", "fxml.live_scores", "fxml.export_model",
                      "hydra_plugins")),
]
# packages that share a layer but not a concern stay independent of each other
PEERS = ("fxml.sweeps", "fxml.submission")
# third-party packages that belong to one layer and above only
OWNED = {"optuna": "sweeps, submission", "mlflow": "tracking"}
LAYER_RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[str, str] | None:
    """(layer, the prefix that placed it): the longest prefix wins; ``fxml`` itself matches only
    the package's own ``__init__``."""
    best: tuple[str, str] | None = None
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "fxml"
            if (module == prefix or inside) and (best is None or len(prefix) > len(best[1])):
                best = (layer, prefix)
    return best


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, at any depth: a lazy import inside a
    function is a dependency too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.append((node.lineno, base))
    return found


def all_modules() -> list[tuple[Path, str]]:
    return [(path, module_name(path)) for source in SOURCES for path in sorted(source.rglob("*.py"))]


def violations() -> list[str]:
    problems = []
    for path, module in all_modules():
        placed = layer_of(module)
        if placed is None:
            problems.append(f"{module}: in no layer (add it to LAYERS and docs/development.md)")
            continue
        layer, prefix = placed
        for line, target in imported_modules(path, module):
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            top = target.split(".")[0]
            if top in OWNED and LAYER_RANK[layer] < LAYER_RANK[OWNED[top]]:
                problems.append(f"{where}: {top} belongs to layer {OWNED[top]!r}, above {layer!r}")
            if top not in ("fxml", "hydra_plugins"):
                continue
            target_placed = layer_of(target)
            if target_placed is None:
                problems.append(f"{where}: target in no layer")
                continue
            target_layer, target_prefix = target_placed
            if LAYER_RANK[target_layer] > LAYER_RANK[layer]:
                problems.append(f"{where}: {layer!r} -> {target_layer!r} points upward")
            elif (prefix in PEERS and target_prefix in PEERS and prefix != target_prefix):
                problems.append(f"{where}: peers {prefix} and {target_prefix} stay independent")
    return problems


def test_every_import_points_to_its_own_layer_or_below() -> None:
    problems = violations()
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: a models module importing tracking (even lazily) is reported."""
    fake = tmp_path / "fxml" / "models" / "leaky.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from fxml.tracking.mlflow_run import log_frame\n    import optuna\n")
    (tmp_path / "fxml" / "scoring").mkdir()
    (tmp_path / "fxml" / "scoring" / "peek.py").write_text("from ..models import base\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", (tmp_path / "fxml",))
    problems = violations()
    assert problems == [
        "fxml/models/leaky.py:2 imports fxml.tracking.mlflow_run: 'models' -> 'tracking' points upward",
        "fxml/models/leaky.py:3 imports optuna: optuna belongs to layer 'sweeps, submission', "
        "above 'models'",
        "fxml/scoring/peek.py:1 imports fxml.models: 'scoring' -> 'models' points upward",
    ]


# --- import has no side effects ----------------------------------------------------------------

IMPORT_EVERYTHING = """
import os, sys, matplotlib
backend = dict.__getitem__(matplotlib.rcParams, "backend")  # as set, before any resolution
environment = dict(os.environ)
import fxml.run, fxml.job, fxml.submit, fxml.promote, fxml.report, fxml.live_scores, fxml.export_model
import fxml.data.loader, fxml.data.memory, fxml.scoring.scorer, fxml.scoring.importance
import fxml.tracking.plots, fxml.tracking.report, fxml.tracking.stores
import fxml.models.gbdt, fxml.models.linear, fxml.models.ensemble
from hydra.core.config_store import ConfigStore
print(sorted(name for name in ConfigStore.instance().repo if name.startswith("fxml_schema")))
print(dict.__getitem__(matplotlib.rcParams, "backend") == backend, "matplotlib.pyplot" in sys.modules)
trim_opened = fxml.data.memory._malloc_trim.cache_info().currsize  # the C library, opened on first use
from fxml.cli import PROCESS_ENVIRONMENT  # what a command sets when it starts, not an import
print(sorted(name for name, value in PROCESS_ENVIRONMENT.items() if value in os.environ.get(name, "")),
      trim_opened)
"""


def test_importing_fxml_registers_nothing_and_leaves_the_process_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    schemas, matplotlib_state, process_state = result.stdout.strip().splitlines()[-3:]
    assert schemas == "[]"  # schemas enter Hydra's ConfigStore when a command runs
    assert matplotlib_state == "True False"  # no backend chosen, no pyplot
    assert process_state == "[] 0"  # no environment variable set, no C library opened


PLAIN_RUN_IMPORTS = """
import sys
import fxml.run
from hydra.core.plugins import Plugins
Plugins.instance()  # Hydra imports every plugin module when any command starts
import hydra_plugins.fxml_optuna_sweeper.optuna_sweeper as sweeper
import hydra_plugins.fxml_ray_launcher.ray_launcher as launcher
print(sweeper.FxmlOptunaSweeper.__name__, "optuna" in sys.modules)
print(launcher.FxmlRayLauncher.__name__, "ray" in sys.modules)
"""


def test_a_plain_run_does_not_import_optuna_or_ray() -> None:
    # Optuna and the search load only in a sweep, Ray only in a multirun on it: a plain run would
    # hold them for nothing
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", PLAIN_RUN_IMPORTS], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FxmlOptunaSweeper", "False", "FxmlRayLauncher", "False"]
