"""Deep tabular families on PyTorch Lightning: MLP, tabular ResNet and TabNet."""

from fxml.models.deep.model import DeepTabularModel, MLPModel, ResNetModel, TabNetModel

__all__ = ["DeepTabularModel", "MLPModel", "ResNetModel", "TabNetModel"]
