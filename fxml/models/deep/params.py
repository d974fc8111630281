"""The deep families' parameters, defaults and range checks, written once (see
:mod:`fxml.models.params`). No PyTorch import here: config schemas register without it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fxml.errors import one_of, require
from fxml.models.params import ModelParams

NORMS, ACTIVATIONS, LOSSES = ("batch", "layer", "none"), ("relu", "silu", "gelu"), ("mse", "corr")


@dataclass
class DeepParams(ModelParams):
    """Training shared by the deep families (PyTorch Lightning, one device)."""

    runtime: ClassVar[tuple[str, ...]] = (*ModelParams.runtime, "devices", "precision",
                                          "max_epochs", "patience")

    devices: int = 1
    precision: str = "32"  # 32 | 16-mixed | bf16-mixed | 64
    max_epochs: int = 20  # epochs at most
    patience: int | None = 5  # epochs without a better valid CORR before stopping; None: no early stop
    loss: str = "mse"  # mse | corr (negative Pearson within each era of a batch)
    # extra outputs trained on auxiliary targets; the first output is scored
    aux_targets: list[str] = field(default_factory=list)
    aux_weight: float = 0.5  # loss = main + aux_weight * mean(auxiliary losses)
    batch_size: int = 1024
    era_batching: bool = False  # true: each batch is eras_per_batch whole eras
    eras_per_batch: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    gradient_clip: float = 0.0  # 0: off

    def __post_init__(self) -> None:
        one_of("model.loss", self.loss, LOSSES)
        require(self.aux_weight >= 0, "model.aux_weight", "must be >= 0", self.aux_weight)
        for key in ("batch_size", "eras_per_batch"):
            require(getattr(self, key) >= 1, f"model.{key}", "must be >= 1", getattr(self, key))
        require(self.learning_rate > 0, "model.learning_rate", "must be > 0", self.learning_rate)
        for key in ("weight_decay", "gradient_clip"):
            require(getattr(self, key) >= 0, f"model.{key}", "must be >= 0", getattr(self, key))
        self.aux_targets = list(self.aux_targets or [])

    def check_dropout(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self, key)
            require(0 <= value < 1, f"model.{key}", "must be in [0, 1)", value)

    def check_width(self, *keys: str) -> None:
        for key in keys:
            require(getattr(self, key) >= 1, f"model.{key}", "must be >= 1", getattr(self, key))


@dataclass
class MLPParams(DeepParams):
    family: ClassVar[str] = "mlp"
    class_path: ClassVar[str] = "fxml.models.deep.MLPModel"

    widths: list[int] = field(default_factory=lambda: [128, 64])  # hidden layer widths
    dropout: float = 0.1
    norm: str = "batch"  # batch | layer | none
    activation: str = "silu"  # relu | silu | gelu
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.widths = list(self.widths)
        require(len(self.widths) >= 1 and min(self.widths) >= 1, "model.widths",
                "must list at least one layer width, each >= 1", self.widths)
        self.check_dropout("dropout")
        one_of("model.norm", self.norm, NORMS)
        one_of("model.activation", self.activation, ACTIVATIONS)


@dataclass
class ResNetParams(DeepParams):
    family: ClassVar[str] = "resnet"
    class_path: ClassVar[str] = "fxml.models.deep.ResNetModel"

    d_main: int = 64  # width of the residual stream
    d_hidden: int = 128  # width inside each block
    n_blocks: int = 2
    dropout: float = 0.3  # inside the blocks
    residual_dropout: float = 0.0  # on each block's output
    norm: str = "batch"  # batch | layer | none
    activation: str = "relu"  # relu | silu | gelu
    weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_width("d_main", "d_hidden", "n_blocks")
        self.check_dropout("dropout", "residual_dropout")
        one_of("model.norm", self.norm, NORMS)
        one_of("model.activation", self.activation, ACTIVATIONS)


@dataclass
class TabNetParams(DeepParams):
    family: ClassVar[str] = "tabnet"
    class_path: ClassVar[str] = "fxml.models.deep.TabNetModel"

    n_d: int = 8  # width of each step's decision output
    n_a: int = 8  # width of each step's attention features
    n_steps: int = 3  # decision steps
    gamma: float = 1.3  # relaxation: 1 = each feature used by at most one step
    n_shared: int = 2  # GLU blocks shared by all steps
    n_independent: int = 2  # GLU blocks of each step
    mask_type: str = "sparsemax"  # sparsemax | entmax (1.5-entmax)
    ghost_batch_norm: bool = True
    virtual_batch_size: int = 128  # ghost batch norm chunk; keep it well below batch_size
    momentum: float = 0.02  # batch norm momentum
    lambda_sparse: float = 1e-3  # weight of the mask entropy (sparsity) penalty
    learning_rate: float = 0.005
    gradient_clip: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_width("n_d", "n_a", "n_steps", "virtual_batch_size")
        require(self.gamma >= 1, "model.gamma", "must be >= 1", self.gamma)
        require(self.n_shared >= 0 and self.n_independent >= 0 and self.n_shared + self.n_independent >= 1,
                "model.n_shared/n_independent", "must be >= 0 with at least one GLU block",
                (self.n_shared, self.n_independent))
        one_of("model.mask_type", self.mask_type, ("sparsemax", "entmax"))
        require(0 < self.momentum < 1, "model.momentum", "must be in (0, 1)", self.momentum)
        require(self.lambda_sparse >= 0, "model.lambda_sparse", "must be >= 0", self.lambda_sparse)
