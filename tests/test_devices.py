"""Honest devices: a GPU that is not there is one line before any work, for every family; a tree
library that cannot use the GPU it was asked for says so in the log and in a tag."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import Workspace, assert_one_line_error

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")


@pytest.mark.parametrize("model", ["lgbm", "xgboost", "ridge", "mlp"])
def test_trainer_gpu_without_a_gpu_fails_before_loading_data(tmp_path, model: str) -> None:
    workspace = Workspace(tmp_path)
    result = workspace.run(f"model={model}", "trainer=gpu")
    assert_one_line_error(result, "trainer.accelerator=gpu but PyTorch sees no such device",
                          "use trainer=cpu")
    assert not (tmp_path / "data").exists(), "no data was read or generated"
    assert workspace.runs() == [], "no MLflow run was started"


@pytest.mark.parametrize(("model", "family", "reason"), [
    ("xgboost", "XGBoost", "XGBoost asked for the GPU but trains on CPU: no CUDA GPU is visible"),
    ("lgbm", "LightGBM", "LightGBM asked for the GPU but trains on CPU: no GPU support in this build"),
])
def test_a_tree_model_falling_back_to_cpu_says_so(workspace: Workspace, model: str, family: str,
                                                  reason: str) -> None:
    # the model asks for CUDA directly (as on a GPU machine whose library build lacks it)
    name = f"fallback-{model}"
    result = workspace.run(f"model={model}", "model.device=cuda", "model.n_estimators=5",
                           "tracking.log_model=false", f"tracking.run_name={name}")
    assert result.returncode == 0, result.stderr
    shown = " ".join((result.stdout + result.stderr).split())
    assert reason in shown
    # the last word on the device is the one it trained on (LightGBM tries CUDA first)
    assert shown.rsplit(f"model: {family} on ", 1)[1].startswith("cpu"), shown
    if family == "XGBoost":
        assert "XGBoost on cuda" not in shown
    run = next(r for r in workspace.runs() if r.info.run_name == name)
    assert run.data.tags["device_fallback"].startswith(reason)
    assert run.data.params["model.device"] == "cuda"
