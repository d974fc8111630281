"""``python -m fxml.report``: one self-contained HTML file comparing MLflow runs side by side.

``experiment=<name>`` (its finished scored runs), ``sweep=<parent run id>`` (a sweep's jobs) or
``runs=<id>,<id>``. See conf/report.yaml and :mod:`fxml.tracking.report`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import mlflow
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH
from fxml.console import console, quiet_dependencies
from fxml.submission import checked
from fxml.tracking.mlflow_run import tracking_uri
from fxml.tracking.report import select_runs, write_report
from fxml.tracking.stores import store_client


@exits_on_user_error
def report_command(cfg: DictConfig) -> Path:
    quiet_dependencies()
    settings = checked(cfg)
    uri = tracking_uri(settings.tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = store_client(uri)
    run_ids = [r for r in (settings.runs or []) if r]
    runs = select_runs(client, settings.experiment, settings.sweep, run_ids, settings.max_runs)
    what = (f"experiment {settings.experiment}" if settings.experiment
            else f"sweep {settings.sweep}" if settings.sweep else f"{len(runs)} runs")
    title = settings.title or f"fxml: {what}"
    path = write_report(client, runs, title, Path(settings.output))
    console.print(f"wrote {path} ({len(runs)} runs, {path.stat().st_size / 1024:.0f} KiB, "
                  "self-contained: open it in any browser)", highlight=False, soft_wrap=True)
    return path


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
