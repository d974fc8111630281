"""``python -m fxml.export_model``: the pickle Numerai's hosted compute runs each round.

Writes ``output`` (a cloudpickled ``predict(live_features, live_benchmark_models)``), checks it in a
fresh Python process that cannot import fxml, and with ``upload=true`` sends it with numerapi's
``model_upload``. See conf/export_model.yaml and :mod:`fxml.submission.export`.
"""

from __future__ import annotations

import platform
from pathlib import Path

import hydra
import mlflow
import pandas as pd
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH
from fxml.console import console, quiet_dependencies
from fxml.errors import FxmlError, describe
from fxml.submission import checked
from fxml.submission.credentials import build_client, find_credentials, missing_credentials_hint
from fxml.submission.export import check_in_fresh_process, live_shaped, write_pickle
from fxml.submission.registry import load_logged_model
from fxml.submission.submit import numerai_model_id
from fxml.tracking.mlflow_run import tracking_uri


@exits_on_user_error
def export_command(cfg: DictConfig) -> Path:
    quiet_dependencies()
    settings = checked(cfg)
    mlflow.set_tracking_uri(tracking_uri(settings.tracking_uri))
    loaded = load_logged_model(settings.model_uri)
    output = Path(settings.output)
    size = write_pickle(loaded.model, loaded.features, output)
    python = ".".join(platform.python_version_tuple()[:2])
    console.print(f"wrote {output} ({size / 1024:.0f} KiB) from {settings.model_uri}: "
                  "predict(live_features, live_benchmark_models) -> prediction in (0, 1); "
                  f"made with Python {python}, use a Numerai hosted image with the same Python",
                  highlight=False, soft_wrap=True)
    if settings.check:
        live, benchmark = _check_frames(settings, loaded.features)
        try:
            report = check_in_fresh_process(output, loaded.model, loaded.features, live, benchmark)
        except FxmlError:
            output.unlink(missing_ok=True)
            raise
        console.print(f"checked: a fresh Python process without fxml unpickled it and predicted "
                      f"{report.rows} live-shaped rows, valid and equal to the registered model; "
                      f"the pickle imports {', '.join(report.imports) or 'nothing else'}",
                      highlight=False, soft_wrap=True)
    if settings.upload:
        _upload(settings, output)
    return output


def _check_frames(settings: DictConfig, features: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    if settings.live is None:
        return live_shaped(features, settings.check_rows)
    path = Path(settings.live)
    if not path.is_file():
        raise FxmlError(f"live={path}: no such file")
    live = pd.read_parquet(path)
    benchmark = live[[]].assign(v5_lgbm_ender20=0.5)
    return live, benchmark


def _upload(settings: DictConfig, output: Path) -> None:
    credentials = find_credentials()
    if credentials is None:
        raise FxmlError(f"{missing_credentials_hint()}; wrote and checked {output} but did not upload it")
    client = build_client(settings.api, credentials)
    model_id = numerai_model_id(client, settings.numerai_model, credentials)
    try:
        upload_id = client.model_upload(str(output), model_id=model_id,
                                        data_version=settings.upload_data_version)
    except Exception as error:
        raise FxmlError(f"model_upload failed ({credentials.redact(describe(error))})") from None
    console.print(f"uploaded {output} to Numerai model {settings.numerai_model} (upload {upload_id})",
                  highlight=False, soft_wrap=True)


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export_model")(
    export_command)


def main() -> None:
    run_cli(hydra_main)


if __name__ == "__main__":
    main()
