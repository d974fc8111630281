"""The feed-forward families: an MLP and the tabular ResNet.

The ResNet follows Gorishniy et al., "Revisiting Deep Learning Models for Tabular Data" (NeurIPS
2021): a linear stem, residual blocks ``x + Dropout(Linear(Dropout(act(Linear(Norm(x))))))`` and a
``Norm -> act -> Linear`` head.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fxml.models.deep.params import MLPParams as M
from fxml.models.deep.params import ResNetParams as R

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
NORMS = ("batch", "layer", "none")


def make_norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class MLP(nn.Module):
    """``[Linear -> Norm -> activation -> Dropout] * len(widths)`` then a linear head."""

    # defaults: the model family's (fxml.models.deep.params), never written here
    def __init__(self, n_inputs: int, n_outputs: int, widths: Sequence[int],
                 dropout: float = M.dropout, norm: str = M.norm, activation: str = M.activation) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = n_inputs
        for width in widths:
            layers += [nn.Linear(previous, width), make_norm(norm, width), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = width
        layers.append(nn.Linear(previous, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float, residual_dropout: float,
                 norm: str, activation: str) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            make_norm(norm, width),
            nn.Linear(width, hidden),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
            nn.Dropout(residual_dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class ResNet(nn.Module):
    """Tabular ResNet: ``d_main`` wide residual stream, ``d_hidden`` wide blocks."""

    def __init__(self, n_inputs: int, n_outputs: int, d_main: int = R.d_main, d_hidden: int = R.d_hidden,
                 n_blocks: int = R.n_blocks, dropout: float = R.dropout,
                 residual_dropout: float = R.residual_dropout, norm: str = R.norm,
                 activation: str = R.activation) -> None:
        super().__init__()
        self.stem = nn.Linear(n_inputs, d_main)
        self.blocks = nn.Sequential(*(
            ResidualBlock(d_main, d_hidden, dropout, residual_dropout, norm, activation)
            for _ in range(n_blocks)
        ))
        self.head = nn.Sequential(make_norm(norm, d_main), ACTIVATIONS[activation](),
                                  nn.Linear(d_main, n_outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def scale_features(features: Tensor) -> Tensor:
    """Raw feature values 0..4 onto [-1, 1]."""
    return features * 0.5 - 1.0


def run_network(network: nn.Module, features: Tensor) -> tuple[Tensor, Tensor | None]:
    """Outputs (rows, targets) and the network's regularisation term (TabNet's mask sparsity,
    else None) for raw feature values 0..4."""
    result = network(scale_features(features))
    return result if isinstance(result, tuple) else (result, None)
