"""Deep tabular families on PyTorch Lightning: MLP, tabular ResNet and TabNet.

The model classes load on first use, so ``fxml.models.deep.params`` (their parameters, read by
the config schemas) imports without PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DeepTabularModel", "MLPModel", "ResNetModel", "TabNetModel"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fxml.models.deep import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
