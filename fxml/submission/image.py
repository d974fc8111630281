"""The pickle in Numerai's image: ``target_image`` of ``python -m fxml.export_model``.

Numerai runs a pickle in a pinned image (numerai/numerai-predict, one per Python minor version).
:func:`image_pins` reads the pins of an image fxml ships (``py3.12``: images/py3.12.txt beside
this module) or of a requirements file; :func:`check_in_image` builds a virtual environment with
the pinned versions of the packages the pickle imports (cached under the user's cache folder, one
per set of pins), calls the pickle there and compares its predictions with the training
environment's. A failure is told in one line naming the package version that breaks it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
from filelock import FileLock
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from fxml.errors import FxmlError, child_failure
from fxml.models.base import TabularModel
from fxml.submission.export import PickleRun, prediction_problem, run_pickle

log = logging.getLogger(__name__)
# what Numerai's loader itself uses to read the live data and the pickle (pd.read_parquet,
# pd.read_pickle), whatever the pickle imports
LOADER_DISTRIBUTIONS = ("cloudpickle", "pandas", "pyarrow")
PYTHON_LINE = re.compile(r"^#\s*python:\s*(\d+\.\d+)\s*$", re.MULTILINE)
PYTHON_IN_PATH = re.compile(r"py(?:thon)?-?(3\.\d+)")
READY = "fxml-image.json"  # written last: a folder without it is a build that was cut short
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def shipped_images() -> list[str]:
    folder = resources.files("fxml.submission") / "images"
    return sorted(entry.name.removesuffix(".txt") for entry in folder.iterdir()
                  if entry.name.endswith(".txt"))


@dataclass(frozen=True)
class ImagePins:
    """The pinned packages of one Numerai image."""

    slug: str  # names the image's environments in the cache folder
    label: str  # the image in messages: "Numerai's py3.12 image"
    python: str | None  # the image's Python, major.minor, where the pins say it
    versions: dict[str, str]  # canonical distribution name -> pinned version

    def constraints(self) -> str:
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.versions.items()))


def image_pins(target: str) -> ImagePins:
    """The pins of a shipped image (``py3.12``) or of a requirements file (``name==version``
    lines, as numerai-predict's requirements.txt)."""
    shipped = shipped_images()
    if target in shipped:
        text = (resources.files("fxml.submission") / "images" / f"{target}.txt").read_text()
        return ImagePins(target, f"Numerai's {target} image", _python_of(text, target),
                         parse_pins(text, f"target_image={target}"))
    path = Path(target).expanduser()
    if not path.is_file():
        raise FxmlError(f"target_image={target}: neither one of Numerai's images that fxml knows "
                        f"({', '.join(shipped)}) nor a requirements file")
    text = path.read_text()
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)
    named = f"{path.resolve().parent.name}/{path.name}"  # numerai-predict's py3.12/requirements.txt
    return ImagePins(slug, f"the image pinned in {path}", _python_of(text, named),
                     parse_pins(text, f"target_image={path}"))


def _python_of(text: str, name: str) -> str | None:
    found = PYTHON_LINE.search(text) or PYTHON_IN_PATH.search(name)
    return found.group(1) if found else None


def parse_pins(text: str, where: str) -> dict[str, str]:
    """``name==version`` per line; comments, blank lines and pins whose environment marker does
    not hold here are skipped."""
    versions: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise FxmlError(f"{where}: line {number} ({line!r}) is not a requirement: {error}") from None
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if len(pins) != 1 or len(requirement.specifier) != 1 or "*" in pins[0]:
            raise FxmlError(f"{where}: line {number} ({line!r}) does not pin one version (name==version)")
        if requirement.marker is None or requirement.marker.evaluate():
            versions[canonicalize_name(requirement.name)] = pins[0]
    if not versions:
        raise FxmlError(f"{where}: no pinned package (name==version lines)")
    return versions


@dataclass(frozen=True)
class Interpreter:
    path: str
    python: str  # major.minor


def image_interpreter(python: str | None) -> Interpreter | None:
    """An interpreter of the image's Python: this one when the minor versions agree, else
    ``python3.X`` on PATH if it runs and can make virtual environments; None when there is none."""
    if python is None or python == THIS_PYTHON:
        return Interpreter(sys.executable, THIS_PYTHON)
    found = shutil.which(f"python{python}")
    if found is None:
        return None
    # a pyenv shim or a Debian Python without its venv package is on PATH but of no use
    probe = subprocess.run([found, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    return Interpreter(found, python) if probe.returncode == 0 and probe.stdout.strip() == python else None


def checking_interpreter(pins: ImagePins) -> Interpreter:
    """The image's Python where there is one here, else this interpreter."""
    return image_interpreter(pins.python) or Interpreter(sys.executable, THIS_PYTHON)


def default_cache() -> Path:
    import platformdirs  # here: only an export with target_image and no image_cache needs it

    return platformdirs.user_cache_path("fxml") / "images"


@dataclass(frozen=True)
class ImageEnvironment:
    folder: Path
    python: str  # its interpreter
    installed: dict[str, str]  # distribution -> version, as asked of pip
    seconds: float | None  # the time it took to build, None when it was reused


def image_environment(pins: ImagePins, distributions: list[str], interpreter: Interpreter,
                      cache: Path) -> ImageEnvironment:
    """A virtual environment of ``interpreter`` with the pinned versions of ``distributions`` (pip
    picks their dependencies within the pins), built once per pins, packages and interpreter."""
    installed = {name: pins.versions[name] for name in sorted(distributions)}
    key = json.dumps({"pins": pins.constraints(), "install": installed,
                      "interpreter": os.path.realpath(interpreter.path), "python": interpreter.python})
    folder = cache / f"{pins.slug}-python{interpreter.python}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # two exports at once build it once
        if (folder / READY).is_file():
            return ImageEnvironment(folder, str(python), installed, None)
        start = time.monotonic()
        log.info("installing %s (%s) into %s with Python %s, once: later exports with the same pins "
                 "reuse it", ", ".join(f"{n} {v}" for n, v in installed.items()), pins.label, folder,
                 interpreter.python)
        shutil.rmtree(folder, ignore_errors=True)
        _run([interpreter.path, "-m", "venv", str(folder)],
             f"could not make a virtual environment in {folder} with {interpreter.path}")
        # the packages asked for are pinned on pip's command line, so that a pin pip cannot
        # find is told as such, not as a conflict between a requirement and its constraint
        (folder / "constraints.txt").write_text("".join(
            line for line in pins.constraints().splitlines(keepends=True)
            if canonicalize_name(line.split("==")[0]) not in installed))
        # wheels only, as the image has them; no bytecode up front (half of pip's time), Python
        # writes what the check imports
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
              "--only-binary=:all:", "--no-compile", "-c", str(folder / "constraints.txt"),
              *(f"{name}=={version}" for name, version in installed.items())],
             f"could not install {', '.join(f'{n} {v}' for n, v in installed.items())} "
             f"({pins.label}) into {folder}")
        (folder / READY).write_text(key)
        return ImageEnvironment(folder, str(python), installed, time.monotonic() - start)


def _run(command: list[str], failure: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        # pip's own reason is its last ERROR line but a pointer to its documentation
        errors = [line.removeprefix("ERROR: ") for line in done.stderr.splitlines()
                  if line.startswith("ERROR: ") and not line.startswith("ERROR: ResolutionImpossible")]
        raise FxmlError(f"{failure}: {errors[-1] if errors else child_failure(done.stderr, done.returncode)}")


def distributions_of(modules: list[str]) -> dict[str, str]:
    """module -> the (canonical) distribution that installs it here, for the modules installed."""
    owners = importlib.metadata.packages_distributions()
    return {module: canonicalize_name(owners[module][0]) for module in modules if owners.get(module)}


def training_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def failure_line(pins: ImagePins, run: PickleRun, python: str) -> str:
    """Why the pickle failed in the image, naming what breaks it: the Python version where it
    differs from the one that wrote the pickle (fxml's code is inside as bytecode), else the
    package the failing code belongs to, else the imported packages whose versions differ."""
    what = "does not load" if run.phase in ("start", "load") else "loads, but its predict fails"
    if python != THIS_PYTHON:
        return (f"the pickle {what} with Python {python} ({pins.label}; written with Python "
                f"{THIS_PYTHON}): {run.error}")
    suspect = run.suspect or {}
    name, version = suspect.get("distribution"), suspect.get("version")
    if name and version:
        here = training_version(name)
        written = f"; written with {name} {here}" if here and here != version else ""
        if here != version:
            return f"the pickle {what} with {name} {version} ({pins.label}{written}): {run.error}"
    differ = [f"{name} {version} (here {training_version(name)})" for name, version in run.versions.items()
              if training_version(name) not in (None, version)]
    if differ:
        return f"the pickle {what} in {pins.label}, which has {', '.join(differ)}: {run.error}"
    return f"the pickle {what} in {pins.label}: {run.error}"


@dataclass(frozen=True)
class ImageCheck:
    environment: ImageEnvironment
    rows: int


def check_in_image(output: Path, model: TabularModel, features: list[str], live: pd.DataFrame,
                   benchmark: pd.DataFrame, pins: ImagePins, imports: list[str],
                   interpreter: Interpreter, cache: Path) -> ImageCheck:
    """Call the pickle with ``interpreter`` in an environment of the image's pins (``imports``:
    what it imported in the fresh-process check); its predictions must equal the training
    environment's."""
    owners = distributions_of(imports)
    unpinned = sorted(f"{module} ({owners[module]})" for module in owners
                      if owners[module] not in pins.versions)
    missing = [name for name in LOADER_DISTRIBUTIONS if name not in pins.versions]
    if unpinned or missing:
        raise FxmlError(f"{pins.label} pins no version of {', '.join(unpinned + missing)}, which "
                        f"the pickle or Numerai's loader imports")
    environment = image_environment(pins, sorted({*owners.values(), *LOADER_DISTRIBUTIONS}),
                                    interpreter, cache)
    run = run_pickle(environment.python, output, live, benchmark)
    if run.result is None:
        raise FxmlError(failure_line(pins, run, interpreter.python))
    problem = prediction_problem(run.result, live, model, features)
    if problem is not None:
        raise FxmlError(f"the pickle (in {pins.label}) {problem}")
    return ImageCheck(environment, len(run.result))
