"""TabNet (Arik & Pfister, "TabNet: Attentive Interpretable Tabular Learning", AAAI 2021).

A compact implementation of the published architecture:

- an input batch norm, then ``n_steps`` decision steps;
- each step's *attentive transformer* turns the previous step's attention features ``a`` into a
  sparse feature mask ``M = sparsemax(BN(FC(a)) * prior)`` (or 1.5-entmax); the prior
  ``prior <- prior * (gamma - M)`` discourages reusing a feature (``gamma`` is the relaxation
  factor: 1 forces each feature into at most one step);
- each step's *feature transformer* reads the masked features ``M * x`` through GLU blocks
  (``FC -> BN -> GLU``, residual ``(x + f(x)) * sqrt(0.5)``): ``n_shared`` blocks whose FC weights
  are shared by every step, then ``n_independent`` blocks of its own; its output splits into
  ``d`` (``n_d`` wide, summed over steps through a ReLU into the decision) and ``a`` (``n_a``
  wide, feeding the next mask);
- ghost batch norm normalises training batches in chunks of ``virtual_batch_size`` rows;
- the sparsity regulariser is the masks' mean entropy, ``sum_steps sum_j -M log(M + eps)``
  averaged over rows and steps; the trainer adds ``lambda_sparse`` times it to the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from fxml.models.deep.params import TabNetParams as P
from fxml.models.deep.sparse import SPARSE_MAPS

NormFactory = Callable[[int], nn.Module]


class GhostBatchNorm(nn.Module):
    """Batch norm over virtual batches: a training batch is split into chunks of about
    ``virtual_batch_size`` rows, each normalised with its own statistics (running statistics
    are updated chunk by chunk). In eval mode it is a plain batch norm on the running stats."""

    def __init__(self, width: int, virtual_batch_size: int | None, momentum: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, momentum=momentum)
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x: Tensor) -> Tensor:
        size = self.virtual_batch_size
        if not self.training or size is None or x.shape[0] <= size:
            return self.norm(x)
        chunks = x.chunk(math.ceil(x.shape[0] / size), dim=0)
        return torch.cat([self.norm(chunk) for chunk in chunks], dim=0)


class GLUBlock(nn.Module):
    """``GLU(BN(FC(x)))``: FC to twice the width, half of it gating the other half."""

    def __init__(self, fc: nn.Linear, norm: NormFactory) -> None:
        super().__init__()
        self.fc = fc
        self.norm = norm(fc.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(self.norm(self.fc(x)), dim=-1)


class FeatureTransformer(nn.Module):
    """The shared GLU blocks (FC weights shared across steps, batch norms not) followed by the
    step's own blocks; every block after the first is residual, scaled by sqrt(0.5)."""

    def __init__(self, n_inputs: int, width: int, shared: list[nn.Linear], n_independent: int,
                 norm: NormFactory) -> None:
        super().__init__()
        blocks = [GLUBlock(fc, norm) for fc in shared]
        for _ in range(n_independent):
            n_in = n_inputs if not blocks else width
            blocks.append(GLUBlock(nn.Linear(n_in, 2 * width, bias=False), norm))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks[0](x)
        for block in self.blocks[1:]:
            x = (x + block(x)) * math.sqrt(0.5)
        return x


class AttentiveTransformer(nn.Module):
    """``M = sparse_map(BN(FC(a)) * prior)``: one sparse mask over the features per row."""

    def __init__(self, n_attention: int, n_features: int, norm: NormFactory,
                 mask_map: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fc = nn.Linear(n_attention, n_features, bias=False)
        self.norm = norm(n_features)
        self.mask_map = mask_map

    def forward(self, attention: Tensor, prior: Tensor) -> Tensor:
        return self.mask_map(self.norm(self.fc(attention)) * prior)


class TabNet(nn.Module):
    """TabNet encoder with a linear regression head; ``forward`` returns
    ``(outputs, sparsity_loss)``, ``masks`` the per-step masks."""

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        # defaults: the model family's (fxml.models.deep.params), never written here
        n_d: int = P.n_d,
        n_a: int = P.n_a,
        n_steps: int = P.n_steps,
        gamma: float = P.gamma,
        n_shared: int = P.n_shared,
        n_independent: int = P.n_independent,
        mask_type: str = P.mask_type,
        ghost_batch_norm: bool = P.ghost_batch_norm,
        virtual_batch_size: int = P.virtual_batch_size,
        momentum: float = P.momentum,
        epsilon: float = 1e-15,
    ) -> None:
        super().__init__()
        if n_shared + n_independent < 1:
            raise ValueError("TabNet needs at least one GLU block per step")
        self.n_d, self.n_steps, self.gamma, self.epsilon = n_d, n_steps, gamma, epsilon
        vbs = virtual_batch_size if ghost_batch_norm else None

        def norm(width: int) -> nn.Module:
            return GhostBatchNorm(width, vbs, momentum)

        width = n_d + n_a
        self.input_norm = nn.BatchNorm1d(n_inputs, momentum=0.01)
        shared = [nn.Linear(n_inputs if i == 0 else width, 2 * width, bias=False) for i in range(n_shared)]
        self.shared = nn.ModuleList(shared)
        # the first transformer only produces the attention features of step 1
        self.initial = FeatureTransformer(n_inputs, width, shared, n_independent, norm)
        self.steps = nn.ModuleList(
            FeatureTransformer(n_inputs, width, shared, n_independent, norm)
            for _ in range(n_steps)
        )
        self.attention = nn.ModuleList(
            AttentiveTransformer(n_a, n_inputs, norm, SPARSE_MAPS[mask_type]) for _ in range(n_steps)
        )
        self.head = nn.Linear(n_d, n_outputs)

    def _run(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.input_norm(x)
        prior = torch.ones_like(x)
        attention = self.initial(x)[:, self.n_d :]
        decision = x.new_zeros(x.shape[0], self.n_d)
        masks = []
        for transformer, attentive in zip(self.steps, self.attention, strict=True):
            mask = attentive(attention, prior)
            masks.append(mask)
            prior = prior * (self.gamma - mask)
            features = transformer(mask.to(x.dtype) * x)
            decision = decision + F.relu(features[:, : self.n_d])
            attention = features[:, self.n_d :]
        return self.head(decision), masks

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        output, masks = self._run(x)
        entropy = torch.stack([(-mask * torch.log(mask + self.epsilon)).sum(dim=1).mean()
                               for mask in masks])
        return output, entropy.mean()

    @torch.no_grad()
    def masks(self, x: Tensor) -> list[Tensor]:
        """The feature mask of each decision step, (rows, features), each row summing to 1."""
        return self._run(x)[1]
