"""Honest devices, for every model family.

- ``trainer=gpu`` (or ``trainer.accelerator=cuda|mps``) on a machine without that device is one
  line before any data is loaded, whatever the model.
- When XGBoost or LightGBM cannot use the GPU that was asked for (a build without GPU support),
  they train on the CPU, and the log and the run's ``device_fallback`` tag say so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fxml.extras import installed

log = logging.getLogger("fxml.models")
FALLBACK_TAG = "device_fallback"
_fallbacks: list[str] = []


def require_accelerator(accelerator: str) -> None:
    """Fail early (FxmlError) when the accelerator asked for is absent; cpu and auto always run.
    PyTorch is imported only when a device must be probed."""
    if accelerator in ("cpu", "auto") or not installed("deep"):
        # without PyTorch there is no probe: the GBDTs check their own GPU support and record a
        # CPU fallback, and a deep model fails on its missing extra
        return
    from fxml.models.deep.device import choose_device

    choose_device(accelerator)


def cpu_fallback(family: str, reason: str) -> None:
    """Record (and log) that ``family`` trains on the CPU although a GPU was asked for."""
    note = f"{family} asked for the GPU but trains on CPU: {reason}"
    log.warning("model: %s", note)
    _fallbacks.append(note)


def taken_fallbacks() -> dict[str, str]:
    """The fallbacks since the last call, as MLflow tags (empty when none)."""
    notes = list(dict.fromkeys(_fallbacks))
    _fallbacks.clear()
    return {FALLBACK_TAG: "; ".join(notes)} if notes else {}


def cuda_visible() -> bool:
    if not installed("deep"):
        # no PyTorch to ask: the NVIDIA driver lists each GPU it sees here (Linux)
        gpus = Path("/proc/driver/nvidia/gpus")
        return gpus.is_dir() and any(gpus.iterdir())
    import torch

    return bool(torch.cuda.is_available())


def xgboost_device(wants_gpu: bool) -> str:
    """``cuda`` when asked for and usable, else ``cpu`` (recorded as a fallback when asked for):
    XGBoost itself would only warn and quietly run on the CPU."""
    if not wants_gpu:
        return "cpu"
    import xgboost as xgb

    if not xgb.build_info().get("USE_CUDA", False):
        cpu_fallback("XGBoost", f"this XGBoost {xgb.__version__} build has no CUDA support")
        return "cpu"
    if not cuda_visible():
        cpu_fallback("XGBoost", "no CUDA GPU is visible")
        return "cpu"
    return "cuda"
