"""Deep tabular families on PyTorch Lightning: MLP, tabular ResNet and TabNet (the ``deep`` extra).

The model classes load on first use, so ``fxml.models.deep.params`` (their parameters, read by
the config schemas) imports without PyTorch; without the extra, the first use is one line naming it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DeepTabularModel", "MLPModel", "ResNetModel", "TabNetModel"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fxml.extras import require_extra

        require_extra("deep", "the deep models (model=mlp, resnet, tabnet)")
        from fxml.models.deep import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
