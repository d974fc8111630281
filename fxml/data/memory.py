"""Memory policies: which training eras are loaded, given their row counts.

A policy sees the era row counts and the bytes one row of int8 features takes, and returns the
eras to read. Later policies (automatic choice, external-memory training) plug in here.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

log = logging.getLogger(__name__)
GIB = 1024**3


class MemoryPolicy(Protocol):
    def select_train_eras(self, rows_per_era: dict[int, int], row_bytes: int) -> list[int]: ...


class InMemory:
    """Every selected training era, fully in memory (features stay int8)."""

    def select_train_eras(self, rows_per_era: dict[int, int], row_bytes: int) -> list[int]:
        return sorted(rows_per_era)


class EraSubsample:
    """Every nth era; with ``every=None`` the smallest stride whose feature matrix fits ``max_gib``."""

    def __init__(self, every: int | None = None, max_gib: float = 4.0) -> None:
        self.every = every
        self.max_gib = max_gib

    def select_train_eras(self, rows_per_era: dict[int, int], row_bytes: int) -> list[int]:
        eras = sorted(rows_per_era)
        every = self.every or self._stride_for_budget(rows_per_era, row_bytes)
        chosen = eras[::every]
        log.info("memory: keeping 1 training era in %d (%d of %d)", every, len(chosen), len(eras))
        return chosen

    def _stride_for_budget(self, rows_per_era: dict[int, int], row_bytes: int) -> int:
        total = sum(rows_per_era.values()) * row_bytes
        return max(1, math.ceil(total / (self.max_gib * GIB)))

