"""Sparse alternatives to softmax for TabNet's feature masks: sparsemax and 1.5-entmax.

Both map a score vector onto the probability simplex (every row sums to 1) and, unlike softmax,
give exact zeros to low scores, which is what lets a TabNet step ignore most features.

- sparsemax (Martins & Astudillo, 2016): the Euclidean projection onto the simplex,
  ``p = max(z - tau, 0)`` with ``tau`` chosen so that ``p`` sums to 1.
- 1.5-entmax (Peters, Niculae & Martins, 2019): ``p = max(z / 2 - tau, 0) ** 2``, between softmax
  and sparsemax in sparsity; ``tau`` has a closed form found from the sorted scores.

Both thresholds are found exactly by sorting, and each has a hand-written backward pass (the
Jacobians are ``diag(s) - s s^T / sum(s)`` with ``s`` the support indicator for sparsemax and
``sqrt(p)`` for 1.5-entmax), so no gradient flows through the sort.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _ranks(z: Tensor) -> Tensor:
    """1, 2, ..., n along the last axis, broadcastable against ``z``."""
    n = z.shape[-1]
    return torch.arange(1, n + 1, device=z.device, dtype=z.dtype)


def sparsemax_threshold(z: Tensor) -> Tensor:
    """The ``tau`` of sparsemax along the last axis (shape ``z.shape[:-1] + (1,)``)."""
    ordered, _ = torch.sort(z, dim=-1, descending=True)
    cumulative = ordered.cumsum(dim=-1) - 1.0
    ranks = _ranks(z)
    in_support = ranks * ordered > cumulative
    support = in_support.sum(dim=-1, keepdim=True)
    return cumulative.gather(-1, support - 1) / support.to(z.dtype)


def entmax15_threshold(z: Tensor) -> Tensor:
    """The ``tau`` of 1.5-entmax for already halved scores ``z`` (``p = max(z - tau, 0) ** 2``)."""
    ordered, _ = torch.sort(z, dim=-1, descending=True)
    ranks = _ranks(z)
    mean = ordered.cumsum(dim=-1) / ranks
    mean_square = (ordered * ordered).cumsum(dim=-1) / ranks
    spread = ranks * (mean_square - mean * mean)
    delta = ((1.0 - spread) / ranks).clamp(min=0.0)
    tau = mean - delta.sqrt()
    support = (tau <= ordered).sum(dim=-1, keepdim=True)
    return tau.gather(-1, support - 1)


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        z = z - z.max(dim=-1, keepdim=True).values  # same result, smaller numbers
        p = (z - sparsemax_threshold(z)).clamp(min=0.0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad.dtype)
        mean = (grad * support).sum(dim=-1, keepdim=True) / support.sum(dim=-1, keepdim=True)
        return support * (grad - mean)


class _Entmax15(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        z = z / 2.0
        z = z - z.max(dim=-1, keepdim=True).values
        p = (z - entmax15_threshold(z)).clamp(min=0.0) ** 2
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        root = p.sqrt()
        weighted = grad * root
        shift = weighted.sum(dim=-1, keepdim=True) / root.sum(dim=-1, keepdim=True)
        return weighted - shift * root


def _full_precision(z: Tensor) -> Tensor:
    # under mixed precision the sort and cumulative sums would run in 16 bits: too coarse
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def sparsemax(z: Tensor) -> Tensor:
    """Sparsemax along the last axis (16-bit input is computed, and returned, in float32)."""
    return _Sparsemax.apply(_full_precision(z))


def entmax15(z: Tensor) -> Tensor:
    """1.5-entmax along the last axis (16-bit input is computed, and returned, in float32)."""
    return _Entmax15.apply(_full_precision(z))


SPARSE_MAPS = {"sparsemax": sparsemax, "entmax": entmax15}
