"""The GPU paths, on a machine with a CUDA GPU (skipped elsewhere; tests/test_devices.py checks a
machine without one): XGBoost on CUDA, LightGBM's GPU learners, the deep models at 32 and
bf16-mixed precision. Each trains on the GPU (the log's last word on the device, no fallback tag),
scores about what the CPU scores, and its MLflow model reloads to the predictions it logged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import Workspace, assert_reloads_to_logged_predictions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEEP = ("trainer.max_epochs=3", "trainer.patience=2")


def _train(workspace: Workspace, name: str, *overrides: str):  # type: ignore[no-untyped-def]
    result = workspace.train(*overrides, f"tracking.run_name={name}")
    assert result.returncode == 0, result.stdout + result.stderr
    run = next(r for r in workspace.runs() if r.info.run_name == name)
    assert run.info.status == "FINISHED"
    return " ".join((result.stdout + result.logs).split()), run


def _corr(run) -> float:  # type: ignore[no-untyped-def]
    value = run.data.metrics["corr_mean"]
    assert math.isfinite(value)
    return value


def test_xgboost_trains_on_cuda_and_scores_as_on_the_cpu(workspace: Workspace) -> None:
    shown, gpu = _train(workspace, "xgb-gpu", "model=xgboost", "trainer=gpu")
    assert shown.rsplit("model: XGBoost on ", 1)[1].startswith("cuda"), shown
    assert "device_fallback" not in gpu.data.tags
    _, cpu = _train(workspace, "xgb-cpu", "model=xgboost")
    # the same hist algorithm: CUDA sums gradients in another order, so the trees differ a little
    # (validation CORR 0.0129 apart on this small set, on an H100)
    on_gpu, on_cpu = (workspace.artifact_frame(run, "predictions/validation.parquet").set_index("id")
                      for run in (gpu, cpu))
    similarity = np.corrcoef(on_gpu["prediction"], on_cpu.loc[on_gpu.index, "prediction"])[0, 1]
    assert similarity > 0.9, similarity
    assert math.isfinite(_corr(gpu))
    assert_reloads_to_logged_predictions(workspace, gpu)


def test_lightgbm_trains_on_a_gpu_learner(workspace: Workspace) -> None:
    shown, run = _train(workspace, "lgbm-gpu", "model=lgbm", "trainer=gpu")
    fallback = run.data.tags.get("device_fallback", "")
    if "no GPU learner could run" in fallback:
        pytest.skip(f"this LightGBM has neither a CUDA build nor an OpenCL driver here: {fallback}")
    learner = shown.rsplit("model: LightGBM on ", 1)[1].split()[0].rstrip(",")
    assert learner in ("cuda", "gpu"), shown
    assert math.isfinite(_corr(run))
    assert_reloads_to_logged_predictions(workspace, run)


@pytest.mark.parametrize(("model", "precision"), [
    ("mlp", "32"), ("mlp", "bf16-mixed"), ("mlp", "16-mixed"), ("resnet", "bf16-mixed"),
    ("tabnet", "bf16-mixed"),
])
def test_deep_models_train_on_cuda(workspace: Workspace, model: str, precision: str) -> None:
    name = f"{model}-{precision}"
    shown, run = _train(workspace, name, f"model={model}", "trainer=gpu",
                        f"trainer.precision={precision}", *DEEP)
    assert f"device: cuda ({torch.cuda.get_device_name(0)}" in shown, shown
    assert f"precision {precision}" in shown
    assert run.data.params["trainer.precision"] == precision
    assert -0.2 < _corr(run) < 0.3
    assert_reloads_to_logged_predictions(workspace, run)
