"""Every default is written once: the command line (composed presets), the schema dataclasses and
objects built in Python with no arguments agree, and a preset never repeats a default.

Configs are composed in-process, as ``python -m fxml.run`` composes them; one subprocess checks
that a bad value reads the same on the command line as in Python.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from fxml.config import register_schemas
from fxml.config.schema import SCHEMAS, TRAINER_WIRING, TrainerConfig
from fxml.data.layout import NEWEST_VERSION
from fxml.data.synthetic import SyntheticSpec
from fxml.errors import FxmlError
from fxml.models.params import MEMBER_TARGET, ModelParams, model_families
from tests.conftest import REPO, Workspace, assert_one_line_error

CONF_DIR = REPO / "conf"
GROUPS = ("model", "trainer", "cv", "memory", "scorer", "postprocess", "data")
FAMILIES = model_families()
# keys only Hydra reads, never a parameter of the object it builds
HYDRA_KEYS = ("_target_", "_recursive_")
# a key every model schema adds for ensemble members (its own training target), never a parameter
NOT_PARAMETERS = (*HYDRA_KEYS, MEMBER_TARGET)
# presets that are another family's configuration (an ensemble of members on their own targets)
PRESET_FAMILY = {"target_ensemble": "ensemble"}
DEEP = ("mlp", "resnet", "tabnet")
# what a preset is about may equal the default and still be set: trainer=cpu means the CPU
DEFINING = {("trainer", "cpu"): {"accelerator"}}


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def composed(group: str, option: str) -> dict[str, Any]:
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[f"{group}={option}"])
    node = OmegaConf.to_container(cfg[group], resolve=True)
    assert isinstance(node, dict)
    return node


def preset_values(group: str, option: str) -> dict[str, Any]:
    """What the preset file itself sets (beyond selecting its schema)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    assert isinstance(raw, dict)
    return {key: value for key, value in raw.items() if key != "defaults"}


def schema_of(group: str, option: str) -> type:
    raw = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    selected = [entry for entry in raw.defaults if str(entry).startswith("/fxml_schema_")]
    assert len(selected) == 1, f"{group}/{option}.yaml must select exactly one schema"
    name = str(selected[0]).split("@")[0].removeprefix(f"/fxml_schema_{group}_")
    return SCHEMAS[group][name]


def field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


def plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


def test_every_model_preset_is_a_family_and_every_family_has_a_preset() -> None:
    assert {PRESET_FAMILY.get(preset, preset) for preset in options("model")} == set(FAMILIES)
    assert set(FAMILIES) <= set(options("model"))
    for family, params in FAMILIES.items():
        assert SCHEMAS["model"][family].__mro__[1] is params  # derived, not rewritten


def assert_repeats_no_default(where: str, values: dict[str, Any], schema: type,
                              defining: set[str] | tuple = ()) -> None:
    defaults = field_defaults(schema)
    for key, value in values.items():
        if key in defining:
            continue
        assert key in defaults, f"{where} sets {key}, which its schema lacks"
        if isinstance(value, dict) and dataclasses.is_dataclass(defaults[key]):
            value = {k: v for k, v in value.items() if plain(defaults[key]).get(k) != v}
            assert value, f"{where} repeats the defaults of {key}"
            continue
        assert value != plain(defaults[key]), f"{where} repeats {key}: {value!r}"


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_presets_repeat_no_default(group: str, option: str) -> None:
    """A preset sets only what differs from its schema's defaults."""
    assert_repeats_no_default(f"{group}/{option}.yaml", preset_values(group, option),
                              schema_of(group, option), DEFINING.get((group, option), ()))


@pytest.mark.parametrize("command", sorted(SCHEMAS["command"]))
def test_command_configs_repeat_no_default(command: str) -> None:
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{command}.yaml"))
    assert isinstance(raw, dict)
    values = {key: value for key, value in raw.items() if key not in ("defaults", "hydra")}
    assert_repeats_no_default(f"{command}.yaml", values, SCHEMAS["command"][command])


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_composed_values_are_the_schema_defaults(group: str, option: str) -> None:
    """Every value the command line uses is its schema's default, unless the preset sets it, or
    it is a model parameter wired to the trainer group (and then equals the trainer's value)."""
    node = composed(group, option)
    own = preset_values(group, option)
    defaults = {key: plain(value) for key, value in field_defaults(schema_of(group, option)).items()}
    trainer = composed("trainer", "cpu")
    for key, value in node.items():
        if key in own:
            continue
        if group == "model" and key in TRAINER_WIRING:
            assert value == trainer[TRAINER_WIRING[key].strip("${}").split(".")[1]]
            continue
        assert value == defaults[key], f"{group}={option}: {key} is {value!r}, the schema says " \
                                       f"{defaults[key]!r}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_model_built_in_python_trains_as_the_command_line(family: str) -> None:
    """``Model()`` with no arguments has exactly the parameters ``model=<family>`` composes."""
    if family in DEEP:
        pytest.importorskip("torch")
    params = FAMILIES[family]
    node = composed("model", family)
    model_class = get_class(node["_target_"])
    assert model_class.params_class is params
    assert node[MEMBER_TARGET] is None
    command_line = {key: value for key, value in node.items() if key not in NOT_PARAMETERS}
    assert {f.name for f in dataclasses.fields(params)} == set(command_line)
    # an ensemble's members are the preset's own
    built = model_class(members=command_line["members"]) if family == "ensemble" else model_class()
    assert isinstance(built.params, params)
    python = dataclasses.asdict(built.params)
    spec = {key: value for key, value in node.items() if key != MEMBER_TARGET}
    assert python == dataclasses.asdict(instantiate(spec, _convert_="all").params)
    assert python == {**field_defaults(params), **({"members": python["members"]}
                                                    if family == "ensemble" else {})}
    assert python == command_line


def test_trainer_defaults_are_the_model_parameters_they_set() -> None:
    trainer, deep = field_defaults(TrainerConfig), field_defaults(FAMILIES["mlp"])
    for parameter, interpolation in TRAINER_WIRING.items():
        assert trainer[interpolation.strip("${}").split(".")[1]] == deep[parameter]


@pytest.mark.parametrize("option", options("cv") + options("memory") + options("scorer"))
def test_objects_built_in_python_equal_the_command_line(option: str) -> None:
    """cv, memory and scorer objects built with no arguments equal the composed ones."""
    group = next(g for g in ("cv", "memory", "scorer") if option in options(g))
    node = composed(group, option)
    from_cli, in_python = instantiate(node), get_class(node["_target_"])()
    assert vars(from_cli) == vars(in_python)


def test_synthetic_source_defaults_are_the_generator_defaults() -> None:
    source = {k: v for k, v in composed("data", "synthetic")["source"].items() if k != "_target_"}
    assert SyntheticSpec(version=NEWEST_VERSION, **source) == SyntheticSpec()


def test_parameters_are_checked_in_python_as_on_the_command_line(tmp_path: Path) -> None:
    from fxml.models.xgboost_model import XGBoostModel

    with pytest.raises(FxmlError) as raised:
        XGBoostModel(reg_lambda=-0.5)
    message = str(raised.value)
    assert message == "model.reg_lambda must be >= 0 (got -0.5)"
    result = Workspace(tmp_path).run("model=xgboost", "model.reg_lambda=-0.5")
    assert_one_line_error(result, message)
    with pytest.raises(TypeError, match="reg_lamda"):
        XGBoostModel(reg_lamda=1.0)


@pytest.mark.parametrize("params", [*FAMILIES.values()], ids=list(FAMILIES))
def test_parameter_modules_need_no_training_library(params: type[ModelParams]) -> None:
    """Schemas register without LightGBM, XGBoost or PyTorch: the parameter modules import none."""
    import ast

    source = Path(inspect.getfile(params)).read_text()
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not imported & {"torch", "lightning", "lightgbm", "xgboost"}
