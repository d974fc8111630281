"""``python -m fxml.submit``: this round's live predictions from a registered model, validated and
uploaded to Numerai with numerapi, logged as an MLflow run. See conf/submit.yaml and
:mod:`fxml.submission.submit` for the order of work and what stops it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH
from fxml.console import quiet_dependencies
from fxml.submission import checked

if TYPE_CHECKING:  # MLflow and numerapi load once the config is checked (fast --help)
    from fxml.submission.submit import Submission


@exits_on_user_error
def submit_command(cfg: DictConfig) -> Submission:
    quiet_dependencies()
    checked(cfg)
    from fxml.submission.submit import submit

    return submit(cfg)


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="submit")(
    submit_command)


def main() -> None:
    run_cli(hydra_main, "submit")


if __name__ == "__main__":
    main()
