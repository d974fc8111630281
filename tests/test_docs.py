"""The documentation stays true to the code and to CI, cheaply (the site's strict build runs in
.ci/run, not here): README opens with the two commands CI runs, stays short, links only to files
that exist, and the configuration reference, generated from the config dataclasses, names every
key of them."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from fxml.config.schema import ReportConfig, SubmitConfig, TrackingConfig
from fxml.models.params import LightGBMParams

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# the checks .ci/run adds between installing and the suite
CI_CHECKS = ("ruff check .", "mypy", "mkdocs build --strict")


def readme_first_code_block() -> list[str]:
    match = re.search(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "README has no bash block"
    return match.group(1).strip().splitlines()


def ci_test_line() -> str:
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
             if "python -m pytest" in line and not line.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


def reference_hook() -> ModuleType:
    path = REPO / "docs" / "hooks" / "reference.py"
    spec = importlib.util.spec_from_file_location("fxml_docs_reference", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_opens_with_the_run_and_the_ci_test_command() -> None:
    title, blank = README.read_text().splitlines()[:2]
    assert (title, blank) == ("# fxml", "")
    run, test = readme_first_code_block()
    ci_steps = [step for step in ci_test_line().split(" && ") if not step.startswith(CI_CHECKS)]
    assert test.split(" && ") == ci_steps
    assert run == test.replace('".[test]"', '".[deep]"').replace("python -m pytest -q", "python -m fxml.run")


def test_readme_is_short_and_its_links_exist() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert "docs/getting-started.md" in local
    assert [link for link in local if not (REPO / link).is_file()] == []


def test_generated_reference_names_every_key() -> None:
    pages = reference_hook().generated_pages()
    configuration = pages["reference/configuration.md"]
    commands = pages["reference/commands.md"]
    for name in (field.name for field in dataclasses.fields(TrackingConfig)):
        assert f"`tracking.{name}`" in configuration
    for name in (field.name for field in dataclasses.fields(LightGBMParams)):
        assert f"| `{name}` |" in configuration.split("### `model=lgbm`")[1].split("###")[0]
    for schema, section in ((ReportConfig, "fxml.report"), (SubmitConfig, "fxml.submit")):
        text = commands.split(f"## `python -m {section}`")[1].split("\n## ")[0]
        for name in (field.name for field in dataclasses.fields(schema)):
            assert f"| `{name}` |" in text, (section, name)
    # a comment in the source is the key's meaning; a default is shown as typed on the command line
    assert "| `tracking.retry_seconds` | `float` | `30.0` | a tracking server or database" in configuration
    assert "| `max_runs` | `int` | `50` |" in commands
