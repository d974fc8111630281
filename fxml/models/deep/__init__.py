"""Deep tabular families on PyTorch Lightning: MLP, tabular ResNet and TabNet (the ``deep`` extra)."""

from fxml.extras import require_extra

# a guard, not work: without the extra, model=mlp|resnet|tabnet is one line naming it
require_extra("deep", "the deep models (model=mlp, resnet, tabnet)")

from fxml.models.deep.model import DeepTabularModel, MLPModel, ResNetModel, TabNetModel  # noqa: E402

__all__ = ["DeepTabularModel", "MLPModel", "ResNetModel", "TabNetModel"]
