"""Search spaces written in Hydra's override grammar, turned into Optuna distributions.

``choice(a, b)`` or ``a,b`` is categorical, ``range(lo, hi[, step])`` integer (hi excluded, as
in Hydra), ``interval(lo, hi)`` float, ``tag(log, interval(...))`` log-uniform and
``tag(int, interval(...))`` integer.
"""

from __future__ import annotations

import math
from typing import Any

import optuna.distributions as dist
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from fxml.errors import FxmlError


def parse_overrides(lines: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(lines)


def distribution(override: Override) -> dist.BaseDistribution:
    key, value = override.get_key_element(), override.value()
    if isinstance(value, ChoiceSweep):
        return dist.CategoricalDistribution([_plain(v) for v in value.list])
    if isinstance(value, RangeSweep):
        # Hydra's range() always sets both (range(n) is range(0, n)); its type allows None
        assert value.start is not None and value.stop is not None, "Hydra's range() sets start and stop"
        start, stop, step = value.start, value.stop, value.step
        if step <= 0 or stop <= start:
            raise FxmlError(f"search space {key}: range needs start < stop and a positive step")
        is_int = all(float(x).is_integer() for x in (start, stop, step))
        # Hydra's range excludes stop, like Python's; Optuna's high is the last value taken
        steps = math.ceil((stop - start) / step) - 1
        if is_int:
            first, int_step = int(start), int(step)
            return dist.IntDistribution(first, first + steps * int_step, step=int_step)
        return dist.FloatDistribution(start, start + steps * step, step=step)
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        assert low is not None and high is not None, "Hydra's interval() sets both ends"
        if high <= low:
            raise FxmlError(f"search space {key}: interval needs low < high")
        log = "log" in value.tags
        if "int" in value.tags:
            return dist.IntDistribution(int(low), int(high), log=log)
        return dist.FloatDistribution(low, high, log=log)
    raise FxmlError(f"search space {key}: {override.input_line} is not a choice, range or interval")


def grid(space: dict[str, dist.BaseDistribution]) -> dict[str, list[Any]]:
    """The finite values of each dimension, for the grid sampler."""
    values: dict[str, list[Any]] = {}
    for key, d in space.items():
        if isinstance(d, dist.CategoricalDistribution):
            values[key] = list(d.choices)
        elif isinstance(d, dist.IntDistribution) and not d.log:
            values[key] = list(range(d.low, d.high + 1, d.step))
        else:
            raise FxmlError(f"the grid sampler needs choice() or range() for {key}, not an interval")
    return values


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
