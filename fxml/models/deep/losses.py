"""Training objectives: MSE and the per-era correlation loss, for one or several targets.

Targets arrive as a (rows, targets) block whose first column is the main target; auxiliary
targets may be NaN, and a NaN cell takes no part in any loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSSES = ("mse", "corr")


def _segment_sum(values: Tensor, codes: Tensor, n_groups: int) -> Tensor:
    out = values.new_zeros((n_groups, *values.shape[1:]))
    return out.index_add_(0, codes, values)


def era_pearson(predictions: Tensor, targets: Tensor, codes: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Pearson correlation of each column inside each era present in the batch.

    ``predictions`` and ``targets`` are (rows, k), ``codes`` the rows' era codes in
    ``[0, n_groups)``. Returns (correlations (n_groups, k), valid (n_groups, k)): a cell is valid
    when the era has at least two rows with a known target and neither side is constant.
    """
    known = ~torch.isnan(targets)
    weight = known.to(predictions.dtype)
    targets = torch.where(known, targets, torch.zeros_like(targets))
    count = _segment_sum(weight, codes, n_groups)
    safe_count = count.clamp(min=1.0)
    mean_p = _segment_sum(weight * predictions, codes, n_groups) / safe_count
    mean_t = _segment_sum(weight * targets, codes, n_groups) / safe_count
    centred_p = (predictions - mean_p[codes]) * weight
    centred_t = (targets - mean_t[codes]) * weight
    covariance = _segment_sum(centred_p * centred_t, codes, n_groups)
    var_p = _segment_sum(centred_p * centred_p, codes, n_groups)
    var_t = _segment_sum(centred_t * centred_t, codes, n_groups)
    valid = (count >= 2) & (var_p > 0) & (var_t > 0)
    correlation = covariance / torch.sqrt(torch.where(valid, var_p * var_t, torch.ones_like(var_p)))
    return torch.where(valid, correlation, torch.zeros_like(correlation)), valid


def correlation_loss(predictions: Tensor, targets: Tensor, codes: Tensor, n_groups: int) -> Tensor:
    """Negative mean per-era Pearson correlation, per target column (shape (k,)); a column with
    no valid era contributes 0."""
    correlation, valid = era_pearson(predictions, targets, codes, n_groups)
    n_valid = valid.sum(dim=0)
    return -correlation.sum(dim=0) / n_valid.clamp(min=1)


def mse_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error per target column over its known cells (shape (k,))."""
    known = ~torch.isnan(targets)
    error = torch.where(known, predictions - targets, torch.zeros_like(predictions))
    return (error * error).sum(dim=0) / known.sum(dim=0).clamp(min=1)


class Objective:
    """``loss(main) + aux_weight * mean(loss(aux))``; the main target is column 0."""

    def __init__(self, kind: str = "mse", aux_weight: float = 0.5, n_groups: int = 1) -> None:
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r} (choose from {', '.join(LOSSES)})")
        self.kind, self.aux_weight, self.n_groups = kind, aux_weight, n_groups

    def per_target(self, predictions: Tensor, targets: Tensor, codes: Tensor) -> Tensor:
        predictions, targets = predictions.float(), targets.float()
        if self.kind == "corr":
            return correlation_loss(predictions, targets, codes, self.n_groups)
        return mse_loss(predictions, targets)

    def __call__(self, predictions: Tensor, targets: Tensor, codes: Tensor) -> Tensor:
        losses = self.per_target(predictions, targets, codes)
        if losses.shape[0] == 1:
            return losses[0]
        return losses[0] + self.aux_weight * losses[1:].mean()
