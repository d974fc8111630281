"""Step callbacks: how training reports progress to whoever listens (progress bars, MLflow step
metrics, Optuna pruning). A leaf module, so models and the layers above share one signature
without importing each other."""

from __future__ import annotations

from collections.abc import Callable

# on_step(step, total_steps, metrics), called by a model after each boosting round or epoch
StepCallback = Callable[[int, int, dict[str, float]], None]
