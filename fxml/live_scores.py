"""``python -m fxml.live_scores numerai_model=<name>``: Numerai's resolved round scores (CORR, MMC,
TC, payout, as the API gives them) logged onto the fxml submission runs that uploaded each round
and the training runs of their model versions, with the round as step. Re-running adds only new
rounds. See conf/live_scores.yaml and :mod:`fxml.submission.live`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH
from fxml.console import console, quiet_dependencies
from fxml.errors import FxmlError
from fxml.submission import checked

if TYPE_CHECKING:  # MLflow and numerapi load once the config is checked (fast --help)
    from fxml.submission.live import LiveUpdate


@exits_on_user_error
def live_scores_command(cfg: DictConfig) -> LiveUpdate:
    quiet_dependencies()
    settings = checked(cfg)
    import mlflow

    from fxml.submission.credentials import build_client, find_credentials, missing_credentials_hint
    from fxml.submission.live import fetch_round_scores, log_live_scores
    from fxml.submission.submit import numerai_model_id
    from fxml.tracking.mlflow_run import tracking_uri
    from fxml.tracking.stores import store_client

    credentials = find_credentials()
    if credentials is None:
        raise FxmlError(f"{missing_credentials_hint()}; they are needed to find your model's id")
    client = build_client(cfg.api, credentials)
    model_id = numerai_model_id(client, settings.numerai_model, credentials)
    rounds = fetch_round_scores(client, model_id, credentials)
    uri = tracking_uri(settings.tracking_uri)
    mlflow.set_tracking_uri(uri)
    update = log_live_scores(store_client(uri), settings.experiment, settings.numerai_model,
                             rounds, settings.source_runs)
    new = sorted(update.logged)
    console.print(f"{settings.numerai_model}: {len(update.rounds)} resolved round(s) from Numerai; "
                  f"logged {len(new)} new round(s)" + (f" ({', '.join(map(str, new))})" if new else "")
                  + (f"; {len(update.without_run)} round(s) have no fxml submission run"
                     if update.without_run else ""), highlight=False, soft_wrap=True)
    return update


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="live_scores")(
    live_scores_command)


def main() -> None:
    run_cli(hydra_main, "live_scores")


if __name__ == "__main__":
    main()
