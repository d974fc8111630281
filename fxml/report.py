"""``python -m fxml.report``: one self-contained HTML file comparing MLflow runs side by side.

``experiment=<name>`` (its top-level runs, best first), ``sweep=<study name or parent run id>`` (a
sweep's trials and the settings it searched) or ``runs=<id>,<id>``. See conf/report.yaml and
:mod:`fxml.tracking.report`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH
from fxml.console import console, quiet_dependencies
from fxml.errors import FxmlError
from fxml.submission import checked

if TYPE_CHECKING:  # MLflow, Plotly and pandas load once the config is checked (fast --help)
    import mlflow
    from mlflow.entities import Run

    from fxml.tracking.report import Selection, SweepView


def sweep_view(client: mlflow.MlflowClient, parent: Run) -> SweepView:
    """How the sweep ranked its trials: an Optuna search's recorded objective; a grid's is the
    first of GRID_OBJECTIVES its jobs logged (as its terminal table)."""
    from fxml.sweeps.objective import Objective
    from fxml.sweeps.parent import GRID_OBJECTIVES
    from fxml.tracking.report import SweepView, sweep_name

    label = parent.data.tags.get("objective")
    if not label:
        logged = {key for run in client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            for key in run.data.metrics}
        label = next((name for name in GRID_OBJECTIVES if name in logged), GRID_OBJECTIVES[0])
    objective = Objective.parse(label)

    def score(metrics: Mapping[str, float]) -> float | None:
        try:
            return objective.value(metrics)
        except FxmlError:  # a trial that did not log every term
            return None

    return SweepView(parent, sweep_name(parent), objective.label, score)


def selected(client: mlflow.MlflowClient, settings: Any) -> tuple[Selection, SweepView | None, str]:
    """The runs to compare, the sweep they belong to (if one was asked for), the default title."""
    from fxml.submission.choice import sweep_parent
    from fxml.tracking.report import experiment_selection, given_selection, sweep_selection

    given = [name for name in ("experiment", "sweep", "runs") if getattr(settings, name)]
    if len(given) != 1:
        raise FxmlError("give exactly one of experiment=<name>, sweep=<study name or parent run id> "
                        f"or runs=<id>,<id> (got {', '.join(given) or 'none'})")
    if settings.sweep:
        sweep = sweep_view(client, sweep_parent(client, settings.sweep))
        selection = sweep_selection(client, sweep, settings.max_runs)
        return (selection, sweep,
                f"fxml sweep {sweep.name}: {len(selection.trials)} trials, objective {sweep.objective}")
    if settings.experiment:
        selection = experiment_selection(client, settings.experiment, settings.max_runs, settings.nested)
        shown = len(selection.runs)
        count = f"best {shown} of {selection.qualified}" if selection.qualified > shown else str(shown)
        return selection, None, f"fxml experiment {settings.experiment}: {count} runs"
    selection = given_selection(client, [run for run in settings.runs if run])
    return selection, None, f"fxml: {len(selection.runs)} runs"


@exits_on_user_error
def report_command(cfg: DictConfig) -> dict[str, Any]:
    quiet_dependencies()
    settings = checked(cfg)
    import mlflow

    from fxml.tracking.mlflow_run import tracking_uri
    from fxml.tracking.report import report_summary, write_report
    from fxml.tracking.stores import store_client

    uri = tracking_uri(settings.tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = store_client(uri)
    selection, sweep, title = selected(client, settings)
    title = settings.title or title
    path = write_report(client, selection, title, Path(settings.file), sweep)
    console.print(f"wrote {path} ({len(selection.runs)} runs, {path.stat().st_size / 1024:.0f} KiB, "
                  "self-contained: open it in any browser)", highlight=False, soft_wrap=True)
    return report_summary(path, selection, title)


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")(
    report_command)


def runs_as_list(arguments: list[str]) -> list[str]:
    """Hydra reads ``runs=a,b`` as a sweep over two values; here it means a list of run ids (and
    ``runs=a`` a list of one)."""
    return [f"runs=[{arg.removeprefix('runs=')}]"
            if arg.startswith("runs=") and "[" not in arg and arg != "runs=null" else arg
            for arg in arguments]


def main() -> None:
    sys.argv[1:] = runs_as_list(sys.argv[1:])
    run_cli(hydra_main, "report")


if __name__ == "__main__":
    main()
