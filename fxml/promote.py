"""``python -m fxml.promote``: register a run's model in the MLflow registry and move an alias.

``run_id=<id>`` promotes that run; ``sweep=<parent run id | study name>`` a sweep's best trial;
otherwise the best FINISHED run that logged a model by ``metric`` (``mode=max`` or ``min``), within
``experiment`` or the sweep, and optionally a time window (``since``, ``until``) and an MLflow
filter (``filter``). It prints which run it chose and why. ``refit=true`` first trains the chosen
run's configuration on every labelled era (``fxml.refit``) and registers that run instead. See
conf/promote.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH
from fxml.console import console, quiet_dependencies
from fxml.refit import refit_selected, selection_of
from fxml.submission import checked

if TYPE_CHECKING:  # MLflow loads once the config is checked (fast --help)
    from fxml.submission.registry import Promotion


@exits_on_user_error
def promote_command(cfg: DictConfig) -> Promotion:
    quiet_dependencies()
    settings = checked(cfg)
    from fxml.submission.choice import RunSelection
    from fxml.submission.registry import promote

    selection = selection_of(settings)
    if settings.refit:
        # a final fit of the chosen run on every labelled era, registered in its place
        fitted = refit_selected(selection, settings.tracking_uri)
        console.print(f"refit of run {fitted.source_name} ({fitted.source_run_id}, {fitted.reason}) on "
                      f"eras {fitted.fit_eras}: run {fitted.run_name}", highlight=False, soft_wrap=True)
        selection = RunSelection(run_id=fitted.run_id)
    done = promote(selection, settings.name, settings.alias, settings.tracking_uri)
    console.print(f"chose run {done.run_id}: {done.reason}", highlight=False, soft_wrap=True)
    value = "not logged" if done.value is None else f"{done.value:.4f}"
    how = "already registered as" if done.reused else "registered as"
    console.print(f"run {done.run_id} ({done.metric} = {value}) {how} {done.name} version "
                  f"{done.version}", highlight=False, soft_wrap=True)
    if done.previous_version is None:
        moved = f"now on version {done.version}"
    elif done.previous_version == done.version:
        moved = f"already on version {done.version}"
    else:
        moved = f"moved from version {done.previous_version} to version {done.version}"
    console.print(f"alias {done.alias} {moved}: mlflow.pyfunc.load_model('{done.uri}')",
                  highlight=False, soft_wrap=True)
    return done


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="promote")(
    promote_command)


def main() -> None:
    run_cli(hydra_main, "promote")


if __name__ == "__main__":
    main()
