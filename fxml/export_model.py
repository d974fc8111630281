"""``python -m fxml.export_model``: the pickle Numerai's hosted compute runs each round.

Writes ``output`` (a cloudpickled ``predict(live_features, live_benchmark_models)``), checks it in a
fresh Python process that cannot import fxml, with ``target_image=py3.12`` (or a requirements
file) also with the pinned packages of Numerai's image, and with ``upload=true`` sends it with
numerapi's ``model_upload``. See conf/export_model.yaml, :mod:`fxml.submission.export` and
:mod:`fxml.submission.image`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH
from fxml.console import console, quiet_dependencies
from fxml.errors import FxmlError, describe
from fxml.submission import checked

if TYPE_CHECKING:  # MLflow, pandas and the rest load once the config is checked (fast --help)
    import pandas as pd

    from fxml.submission.image import ImagePins
    from fxml.submission.registry import LoadedModel


@exits_on_user_error
def export_command(cfg: DictConfig) -> dict[str, Any]:
    quiet_dependencies()
    settings = checked(cfg)
    import mlflow

    from fxml.submission.export import check_in_fresh_process, write_pickle
    from fxml.submission.image import THIS_PYTHON, image_pins
    from fxml.submission.registry import load_logged_model
    from fxml.tracking.mlflow_run import tracking_uri

    pins = image_pins(settings.target_image) if settings.target_image is not None else None
    mlflow.set_tracking_uri(tracking_uri(settings.tracking_uri))
    loaded = load_logged_model(settings.model_uri)
    output = Path(settings.file)
    size = write_pickle(loaded.model, loaded.features, output)
    console.print(f"wrote {output} ({size / 1024:.0f} KiB) from {settings.model_uri}: "
                  "predict(live_features, live_benchmark_models) -> prediction in (0, 1); "
                  f"made with Python {THIS_PYTHON}, use a Numerai hosted image with the same Python",
                  highlight=False, soft_wrap=True)
    checked_python = None
    if settings.check:
        live, benchmark = _check_frames(settings, loaded.features)
        try:
            report = check_in_fresh_process(output, loaded.model, loaded.features, live, benchmark)
            console.print(f"checked: a fresh Python process without fxml unpickled it and predicted "
                          f"{report.rows} live-shaped rows, valid and equal to the registered model; "
                          f"the pickle imports {', '.join(report.imports) or 'nothing else'}",
                          highlight=False, soft_wrap=True)
            if pins is not None:
                checked_python = _check_image(settings, pins, output, loaded, live, benchmark,
                                              report.imports)
        except FxmlError:
            output.unlink(missing_ok=True)
            raise
    if settings.upload:
        if pins is not None and pins.python not in (None, checked_python):
            raise FxmlError(f"wrote and checked {output} but did not upload it: {pins.label} runs "
                            f"Python {pins.python} and the pickle holds Python {THIS_PYTHON} code "
                            "(the Python minor version differs)")
        _upload(settings, output)
    return {"file": str(output), "model_uri": settings.model_uri, "checked": settings.check,
            "checked_in_image": pins.label if pins is not None else None, "uploaded": settings.upload}


def _check_image(settings: DictConfig, pins: ImagePins, output: Path, loaded: LoadedModel,
                 live: pd.DataFrame, benchmark: pd.DataFrame, imports: list[str]) -> str:
    """The check with the image's packages; returns the Python minor version it ran with."""
    from fxml.submission.image import THIS_PYTHON, check_in_image, checking_interpreter, default_cache

    interpreter = checking_interpreter(pins)
    if pins.python is None:
        console.print(f"note: {pins.label} names no Python version (a '# python: 3.x' line), so it "
                      f"is checked with Python {interpreter.python}", highlight=False, soft_wrap=True)
    elif interpreter.python != pins.python:
        console.print(f"note: the Python minor version differs: {pins.label} runs Python {pins.python}, "
                      f"which is not installed here, so its packages are checked with Python "
                      f"{interpreter.python}; fxml's code in the pickle is Python {THIS_PYTHON} bytecode, "
                      f"which another minor version cannot run (export with Python {pins.python} for "
                      "that image)", highlight=False, soft_wrap=True)
    cache = Path(settings.image_cache).expanduser() if settings.image_cache else default_cache()
    checked = check_in_image(output, loaded.model, loaded.features, live, benchmark, pins, imports,
                             interpreter, cache)
    environment = checked.environment
    packages = ", ".join(f"{name} {version}" for name, version in environment.installed.items())
    how = "reused" if environment.seconds is None else f"built in {environment.seconds:.0f} s"
    console.print(f"checked in {pins.label}: with its {packages} (Python {interpreter.python}) the "
                  f"pickle predicted {checked.rows} rows equal to the training environment's; "
                  f"environment {environment.folder} ({how})", highlight=False, soft_wrap=True)
    return interpreter.python


def _check_frames(settings: DictConfig, features: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    from fxml.submission.export import live_shaped

    if settings.live is None:
        return live_shaped(features, settings.check_rows)
    path = Path(settings.live)
    if not path.is_file():
        raise FxmlError(f"live={path}: no such file")
    live = pd.read_parquet(path)
    benchmark = live[[]].assign(v5_lgbm_ender20=0.5)
    return live, benchmark


def _upload(settings: DictConfig, output: Path) -> None:
    from fxml.submission.credentials import build_client, find_credentials, missing_credentials_hint
    from fxml.submission.submit import numerai_model_id

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
    run_cli(hydra_main, "export_model")


if __name__ == "__main__":
    main()
