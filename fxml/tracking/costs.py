"""What a run cost: wall and CPU seconds per stage, peak memory, logged as the run's metrics.

Metrics ``<stage>_seconds`` and ``<stage>_cpu_seconds`` (CPU time of every thread of the process,
so a fit on 8 threads for 10 s shows about 80), ``peak_rss_gib`` (the process's and its finished
children's, such as the int8 store writer) and, where CUDA was used, ``peak_gpu_memory_gib``. Runs
on different machines or memory plans compare by them, in the MLflow UI and in fxml's report.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
GIB = 1024**3


class StageCosts:
    """Costs of a command's stages, gathered as they end and logged together (``logged``), so a
    stage that runs before the MLflow run opens (reading the release) is counted too."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.metrics[f"{name}_seconds"] = time.perf_counter() - wall
            self.metrics[f"{name}_cpu_seconds"] = time.process_time() - cpu

    @contextmanager
    def logged(self) -> Iterator[None]:
        """Log the costs when the block ends, however it ends (a failed run keeps what it cost)."""
        import mlflow  # here: a stage may be timed before MLflow is loaded (fast config errors)

        try:
            yield
        finally:
            self.metrics.update(peak_memory())
            if mlflow.active_run() is not None:
                # never hide the error that ended the block behind one about logging its costs
                with contextlib.suppress(Exception):
                    mlflow.log_metrics(self.metrics)


def peak_memory() -> dict[str, float]:
    """``peak_rss_gib`` and, where torch used CUDA in this process, ``peak_gpu_memory_gib``."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peaks = {"peak_rss_gib": max(own, children) * 1024 / GIB}  # ru_maxrss is in KiB on Linux
    torch = sys.modules.get("torch")  # only measured where a deep model already loaded it
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / GIB
    return peaks
