"""A training job's link to its sweep's trial, without importing Optuna outside a search: a
plain run has no trial, and the library would only add to its memory and start-up time."""

from __future__ import annotations

from typing import Any

from fxml.steps import StepCallback


def trial_reporter(sweep: Any) -> StepCallback | None:
    """A step listener reporting ``sweep.prune_on`` to the running trial; None outside a search
    (see fxml.sweeps.pruning)."""
    if sweep is None or sweep.trial_number is None:
        return None
    from fxml.sweeps.pruning import report_to_trial

    return report_to_trial(sweep)
