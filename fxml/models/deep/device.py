"""Which device a deep model trains on, from ``trainer.accelerator`` / ``precision`` / ``devices``.

- ``cpu``: the CPU.
- ``cuda``: an NVIDIA GPU, or an AMD GPU under ROCm (PyTorch's ROCm build exposes it as cuda).
- ``gpu``: CUDA/ROCm, else Apple's MPS.
- ``mps``: Apple's MPS.
- ``auto``: CUDA/ROCm, else MPS, else the CPU.

Asking for an accelerator that is not there (anything but cpu and auto) is a user error: one
line saying what PyTorch found, rather than a silent run on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from fxml.errors import FxmlError

log = logging.getLogger(__name__)
LightningPrecision = Literal["32-true", "64-true", "16-mixed", "bf16-mixed"]
# trainer.precision -> Lightning's precision names
LIGHTNING_PRECISION: dict[str, LightningPrecision] = {
    "32": "32-true", "64": "64-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}


@dataclass(frozen=True)
class DeviceChoice:
    kind: str  # "cpu" | "cuda" | "mps": Lightning's accelerator name and torch's device type
    description: str

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind if self.kind == "cpu" else f"{self.kind}:0")


def _cuda() -> DeviceChoice | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    runtime = f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
    count = torch.cuda.device_count()
    return DeviceChoice("cuda", f"cuda ({name}, {runtime}, {count} visible)")


def _mps() -> DeviceChoice | None:
    if not (torch.backends.mps.is_available() and torch.backends.mps.is_built()):
        return None
    return DeviceChoice("mps", "mps (Apple Metal)")


def found_accelerators() -> str:
    found = [choice.description for choice in (_cuda(), _mps()) if choice is not None]
    return ", ".join(found) or f"no CUDA/ROCm/MPS found, torch {torch.__version__}"


def choose_device(accelerator: str) -> DeviceChoice:
    """The device for ``trainer.accelerator``; raises FxmlError when the one asked for is absent."""
    if accelerator == "cpu":
        return DeviceChoice("cpu", "cpu (trainer.accelerator=cpu)")
    candidates = {"cuda": (_cuda,), "mps": (_mps,), "gpu": (_cuda, _mps), "auto": (_cuda, _mps)}
    for probe in candidates[accelerator]:
        choice = probe()
        if choice is not None:
            return choice
    if accelerator == "auto":
        return DeviceChoice("cpu", f"cpu ({found_accelerators()})")
    raise FxmlError(f"trainer.accelerator={accelerator} but PyTorch sees no such device "
                    f"({found_accelerators()}); use trainer=cpu or trainer.accelerator=auto")


def check_precision(choice: DeviceChoice, precision: str, devices: int) -> LightningPrecision:
    """Lightning's name for ``precision`` on ``choice``; one-line errors for what cannot run."""
    if devices != 1:
        raise FxmlError(f"trainer.devices={devices}: deep models train on one device per run "
                        "(run several jobs, e.g. a Hydra multirun, to use more)")
    if precision == "16-mixed" and choice.kind == "cpu":
        raise FxmlError("trainer.precision=16-mixed needs a GPU; on the CPU use 32 or bf16-mixed")
    if precision == "bf16-mixed" and choice.kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise FxmlError(f"trainer.precision=bf16-mixed is not supported by {choice.description}; "
                        "use 16-mixed")
    if precision == "64" and choice.kind == "mps":
        raise FxmlError("trainer.precision=64 is not supported on MPS; use 32")
    return LIGHTNING_PRECISION[precision]
