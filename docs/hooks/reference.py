"""MkDocs hook: the configuration reference, written at build time from fxml's own dataclasses.

Every key of every config group and command comes from the schema Hydra checks it against
(``fxml.config.schema.SCHEMAS``, the root config, the Optuna sweeper's config): its type and
default from ``dataclasses.fields``, its meaning from the comment on or above its line in the
source, and each group's options from the YAML presets in ``conf/``. A key added, renamed or
removed in the code changes these pages with it.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import inspect
import io
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
CONFIG_PAGE = "reference/configuration.md"
COMMANDS_PAGE = "reference/commands.md"
CHANGELOG_PAGE = "changelog.md"
OMEGACONF_MISSING = "???"
# keys the config schemas add to a parameter class (fxml.config.schema.model_schema, with_target):
# they have no line of their own in the source to read a comment from
SCHEMA_ONLY_KEYS = {
    "_target_": "the class Hydra builds (not usually changed)",
    "_recursive_": "Hydra option: the ensemble builds its members itself",
    "target": "an ensemble member's own training target (`model.members.<name>.target`); "
              "null: `data.target`",
}
# the root config's groups are documented from their own schemas, in this order
GROUP_ORDER = ("data", "model", "trainer", "memory", "scorer", "cv", "postprocess")


# --- reading the source --------------------------------------------------------------------------


def source_comments(cls: type) -> tuple[str, dict[str, str]]:
    """A class's docstring and, for each field it defines, its comment: the comment lines right
    above the field and the comment after it on its line. Classes without source (built with
    ``make_dataclass``) have neither."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return "", {}
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    lines = source.splitlines()
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef)
    fields: dict[str, str] = {}
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            above: list[str] = []
            line = statement.lineno - 1
            while line >= 1 and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            trailing = comments.get(statement.end_lineno or statement.lineno)
            fields[statement.target.id] = " ".join([*above, *([trailing] if trailing else [])])
    return ast.get_docstring(node) or "", fields


def field_comment(cls: type, name: str) -> str:
    """The comment of field ``name`` in the nearest class of ``cls``'s MRO that comments it."""
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            comment = source_comments(klass)[1].get(name, "")
            if comment:
                return comment
    return ""


def class_docstring(cls: type) -> str:
    """The docstring of ``cls``, or for a schema built with ``make_dataclass`` (no source of its
    own) the docstring of the first class of its MRO that has source: its parameter class."""
    for klass in cls.__mro__:
        try:
            inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        return " ".join(source_comments(klass)[0].split())
    return ""


# --- rendering values ----------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def inline(value: Any) -> str:
    """A value as it is written on the command line or in a YAML file."""
    if isinstance(value, str):
        return value if value else '""'
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return text.removesuffix("...").strip()


def default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return OMEGACONF_MISSING


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: outside its code spans, ``<version>`` is text, not
    an HTML tag, and a pipe does not end the cell."""
    parts = text.replace("\n", " ").split("`")
    for index in range(0, len(parts), 2):
        parts[index] = html.escape(parts[index], quote=False).replace("|", "\\|")
    return "`".join(parts)


def code(text: str) -> str:
    """Text as code inside a table cell (a pipe within a code span does not split the row)."""
    return "`" + text.replace("\n", " ") + "`"


def field_rows(schema: type, prefix: str = "") -> list[str]:
    """One table row per key of ``schema``; a field holding a dataclass becomes its keys."""
    rows = []
    for field in dataclasses.fields(schema):
        default = default_of(field)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            rows += field_rows(type(default), f"{key}.")
            continue
        meaning = field_comment(schema, field.name) or SCHEMA_ONLY_KEYS.get(field.name, "")
        wired = re.fullmatch(r"\$\{(trainer\.\w+)\}", str(default))
        if wired:
            meaning += f" (set from `{wired.group(1)}`)"
        shown = "*required*" if default == OMEGACONF_MISSING else code(inline(default))
        rows.append(f"| {code(key)} | {code(type_name(field.type))} | {shown} | {cell(meaning)} |")
    return rows


def field_table(schema: type, prefix: str = "") -> str:
    header = "| key | type | default | meaning |\n|---|---|---|---|\n"
    return header + "\n".join(field_rows(schema, prefix)) + "\n"


# --- the presets in conf/ ------------------------------------------------------------------------


def preset_comment(path: Path) -> str:
    """The first sentence of a YAML preset's leading comment (its own summary)."""
    text = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# @package") or line.startswith("#  "):
            continue
        text.append(line.lstrip("#").strip())
    # a command's own name and a usage line are said elsewhere on the page
    summary = re.sub(r"^python -m fxml\.\w+: ", "", " ".join(text))
    summary = re.sub(r": python -m fxml\.run .*$", "", summary.split(" Each ")[0])
    # the first sentence: a full stop before a capital ("et al. 2021" does not end one)
    end = re.search(r"\.\s+(?=[A-Z])", summary)
    summary = summary[: end.start() + 1] if end else summary
    return summary[:1].upper() + summary[1:]


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix.rstrip("."): values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def preset(path: Path) -> tuple[list[str], dict[str, Any]]:
    """A preset's composed parts (``members.lgbm`` from ``model=lgbm``) and the values it sets."""
    content = yaml.safe_load(path.read_text()) or {}
    composed = []
    for entry in content.pop("defaults", []):
        if isinstance(entry, str) and "@" in entry and not entry.startswith("/fxml_schema"):
            source, _, target = entry.partition("@")
            group, _, option = source.strip("/").partition("/")
            composed.append(f"{code(target)} from {code(f'{group}={option}')}")
    content.pop("hydra", None)
    return composed, flatten(content)


def preset_summary(path: Path) -> str:
    composed, values = preset(path)
    parts = []
    if composed:
        parts.append("composes " + ", ".join(composed))
    if values:
        parts.append("sets " + ", ".join(code(f"{key}: {inline(value)}") for key, value in values.items()))
    return "; ".join(parts)


def group_options(group: str) -> list[Path]:
    return sorted((CONF / group).glob("*.yaml"))


def schema_of(path: Path) -> str | None:
    """The registered schema a preset extends (``fxml_schema_<group>_<name>``), by name."""
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, str) and entry.lstrip("/").startswith("fxml_schema_"):
            return entry.lstrip("/").split("@")[0].removeprefix("fxml_schema_").split("_", 1)[1]
    return None


# --- the pages -----------------------------------------------------------------------------------


def group_section(group: str, schemas: dict[str, type]) -> str:
    lines = [f"## `{group}`", ""]
    lines += ["| option | what it is | what the preset adds |", "|---|---|---|"]
    options = group_options(group)
    for path in options:
        summary = cell(preset_summary(path))
        lines.append(f"| `{group}={path.stem}` | {cell(preset_comment(path))} | {summary} |")
    lines.append("")
    shown: dict[type, str] = {}
    for path in options:
        name = schema_of(path)
        if name is None or name not in schemas:
            continue
        schema = schemas[name]
        lines += [f"### `{group}={path.stem}`", ""]
        if schema in shown:
            lines += [f"The same keys as {shown[schema]}.", ""]
            continue
        shown[schema] = f"`{group}={path.stem}`"
        docstring = class_docstring(schema)
        if docstring:
            lines += [docstring, ""]
        lines += [f"Schema: `{schema.__name__}`. Keys are set as `{group}.<key>=<value>`.", ""]
        lines.append(field_table(schema))
    return "\n".join(lines)


def configuration_page() -> str:
    from fxml.config.schema import SCHEMAS, RootConfig
    from hydra_plugins.fxml_optuna_sweeper import FxmlOptunaSweeperConf
    from hydra_plugins.fxml_ray_launcher import FxmlRayLauncherConf

    lines = [
        "# Configuration reference",
        "",
        "Generated from fxml's config dataclasses when the site is built, so it always matches "
        "the code. Pick an option of a group with `group=option`, set any key with "
        "`group.key=value`; `python -m fxml.run --cfg job` prints the values a run will use.",
        "A key that does not exist, or a value of the wrong type or out of range, stops the "
        "command before any work with one line naming the key.",
        "",
    ]
    for group in [*GROUP_ORDER, *(g for g in SCHEMAS if g not in GROUP_ORDER and g != "command")]:
        if group in SCHEMAS:
            lines.append(group_section(group, SCHEMAS[group]))
    groups = set(SCHEMAS)
    for field in dataclasses.fields(RootConfig):
        default = default_of(field)
        if field.name in groups:
            continue
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            schema = type(default)
            lines += [f"## `{field.name}`", ""]
            docstring = class_docstring(schema)
            if docstring:
                lines += [docstring, ""]
            lines += [f"Schema: `{schema.__name__}`. Keys are set as `{field.name}.<key>=<value>`.", ""]
            lines.append(field_table(schema, f"{field.name}."))
    top_level = [f for f in dataclasses.fields(RootConfig)
                 if f.name not in groups and not dataclasses.is_dataclass(default_of(f))]
    if top_level:
        lines += ["## Top-level keys", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for field in top_level:
            shown = inline(default_of(field))
            lines.append(f"| {code(field.name)} | {code(type_name(field.type))} | {code(shown)} | "
                         f"{cell(field_comment(RootConfig, field.name))} |")
        lines.append("")
    lines.append(search_section(FxmlOptunaSweeperConf))
    lines.append(launcher_section(FxmlRayLauncherConf))
    return "\n".join(lines)


def search_section(sweeper: type) -> str:
    lines = ["## `hparams_search`", "",
             "Optuna search presets, run with `-m`: `python -m fxml.run -m hparams_search=lgbm`. "
             "Each selects a model, fxml's Optuna sweeper and a search space; every "
             "`hydra.sweeper.*` key below can be overridden on the command line.", "",
             "| option | what it is | model | objective | trials | searched |", "|---|---|---|---|---|---|"]
    for path in group_options("hparams_search"):
        content = yaml.safe_load(path.read_text())
        sweep = content["hydra"]["sweeper"]
        model = next((entry["override /model"] for entry in content.get("defaults", [])
                      if isinstance(entry, dict) and "override /model" in entry), "")
        searched = ", ".join(code(f"{key}: {value}") for key, value in sweep.get("params", {}).items())
        lines.append(f"| `hparams_search={path.stem}` | {cell(preset_comment(path))} | `model={model}` "
                     f"| {code(str(sweep['objective']))} | {sweep['n_trials']} | {searched} |")
    lines += ["", "### `hydra.sweeper` (`hydra/sweeper=fxml_optuna`)", ""]
    lines += [f"Schema: `{sweeper.__name__}`; the presets above set some of these keys.", ""]
    lines.append(field_table(sweeper, "hydra.sweeper."))
    return "\n".join(lines)


def launcher_section(launcher: type) -> str:
    lines = ["## `hydra/launcher=ray`", "",
             f"{class_docstring(launcher)} Runs each job of a multirun (a grid, a search's trials) "
             "as a task on a Ray cluster: `python -m fxml.run -m ... hydra/launcher=ray`, after "
             '`pip install "fxml[ray]"`; see [Scaling out sweeps](../how-to/scale-out.md#a-ray-cluster).',
             "", f"Schema: `{launcher.__name__}`.", ""]
    lines.append(field_table(launcher, "hydra.launcher."))
    return "\n".join(lines)


def commands_page() -> str:
    from fxml.config.schema import SCHEMAS

    lines = [
        "# Command reference",
        "",
        "Every command other than `fxml.run` takes `key=value` arguments checked against the "
        "schema below (generated from the code when the site is built). `--help` prints the "
        "same keys with their values.",
        "",
    ]
    for name, schema in SCHEMAS["command"].items():
        path = CONF / f"{name}.yaml"
        lines += [f"## `python -m fxml.{name}`", ""]
        if path.exists():
            lines += [cell(preset_comment(path)), ""]
            examples = [line[1:].strip() for line in path.read_text().splitlines()
                        if line.startswith("#  ") and "python -m" in line]
            if examples:
                lines += ["```bash", *examples, "```", ""]
            _, values = preset(path)
            if values:
                sets = ", ".join(code(f"{key}: {inline(value)}") for key, value in values.items())
                lines += [f"The command's config file sets {sets}.", ""]
        docstring = class_docstring(schema)
        if docstring:
            lines += [docstring, ""]
        lines += [f"Schema: `{schema.__name__}`.", "", field_table(schema)]
    return "\n".join(lines)


def changelog_page() -> str:
    return (ROOT / "CHANGELOG.md").read_text()


def generated_pages() -> dict[str, str]:
    """Every page this hook adds to the site, by its path under docs/: the reference describes
    the code of the checkout it is built from, whichever fxml is installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return {CONFIG_PAGE: configuration_page(), COMMANDS_PAGE: commands_page(),
            CHANGELOG_PAGE: changelog_page()}


# --- MkDocs events -------------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for src_uri, content in generated_pages().items():
        files.append(File.generated(config, src_uri, content=content))
    return files
