"""Honest devices: a GPU that is not there is one line before any work, for every family; a tree
library that cannot use the GPU it was asked for says so in the log and in a tag."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import Workspace, assert_one_line_error

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")


def test_trainer_gpu_without_a_gpu_fails_before_loading_data(tmp_path) -> None:
    """The same line for every family (the command's config and task, in-process)."""
    families = ("lgbm", "xgboost", "ridge", "mlp")
    workspaces = {model: Workspace(tmp_path / model) for model in families}
    for model, workspace in workspaces.items():
        workspace.root.mkdir(exist_ok=True)
        result = workspace.train(f"model={model}", "trainer=gpu")
        assert_one_line_error(result, "trainer.accelerator=gpu but PyTorch sees no such device",
                              "use trainer=cpu")
        assert not (workspaces[model].root / "data").exists(), f"{model}: no data was read or made"
        assert workspaces[model].runs() == [], f"{model}: no MLflow run was started"


@pytest.mark.parametrize(("model", "family", "reason"), [
    ("xgboost", "XGBoost", "XGBoost asked for the GPU but trains on CPU: no CUDA GPU is visible"),
    ("lgbm", "LightGBM", "LightGBM asked for the GPU but trains on CPU: no GPU learner could run (cuda: "),
])
def test_a_tree_model_falling_back_to_cpu_says_so(workspace: Workspace, model: str, family: str,
                                                  reason: str) -> None:
    # the model asks for CUDA directly (as on a GPU machine whose library build lacks it)
    name = f"fallback-{model}"
    result = workspace.train(f"model={model}", "model.device=cuda", "model.n_estimators=5",
                             "tracking.log_model=false", f"tracking.run_name={name}")
    assert result.returncode == 0, result.stderr
    shown = " ".join((result.stdout + result.logs).split())
    assert reason in shown
    # the last word on the device is the one it trained on (LightGBM tries its GPU learners first)
    assert shown.rsplit(f"model: {family} on ", 1)[1].startswith("cpu"), shown
    run = next(r for r in workspace.runs() if r.info.run_name == name)
    assert run.data.tags["device_fallback"].startswith(reason)
    if family == "XGBoost":
        assert "XGBoost on cuda" not in shown
    else:  # after the CUDA learner, the OpenCL one that PyPI's wheels carry was tried too
        assert "; gpu: " in run.data.tags["device_fallback"]
    assert run.data.params["model.device"] == "cuda"
