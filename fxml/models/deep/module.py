"""The Lightning side of a deep model: the training step, the per-epoch report and early
stopping on validation CORR with the best weights kept in memory (no checkpoint files, no
Lightning logger: the runner's ``on_step`` hook logs to the run already open)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from fxml.models.deep.feeding import Batch
from fxml.models.deep.losses import Objective
from fxml.models.deep.networks import run_network
from fxml.steps import StepCallback

log = logging.getLogger(__name__)


class TabularModule(pl.LightningModule):
    def __init__(self, network: nn.Module, objective: Objective, learning_rate: float,
                 weight_decay: float, lambda_sparse: float = 0.0) -> None:
        super().__init__()
        self.network, self.objective = network, objective
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.lambda_sparse = lambda_sparse
        self.loss_sum: Tensor | None = None
        self.n_batches = 0

    def on_train_epoch_start(self) -> None:
        self.loss_sum, self.n_batches = None, 0

    def training_step(self, batch: Batch, batch_index: int) -> Tensor:
        features, targets, codes = batch
        outputs, penalty = run_network(self.network, features)
        loss = self.objective(outputs, targets, codes)
        if penalty is not None and self.lambda_sparse:
            loss = loss + self.lambda_sparse * penalty
        # summed on the device: no host sync per step
        self.loss_sum = loss.detach() if self.loss_sum is None else self.loss_sum + loss.detach()
        self.n_batches += 1
        return loss

    def epoch_loss(self) -> float:
        return float(self.loss_sum / self.n_batches) if self.loss_sum is not None else math.nan

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.network.parameters(), lr=self.learning_rate,
                                 weight_decay=self.weight_decay)


class BestState:
    """Early stopping on a score to maximise, keeping a copy of the best weights."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best_score = -math.inf
        self.best_epoch = 0
        self.state: dict[str, Tensor] | None = None
        self.stale_epochs = 0

    def update(self, epoch: int, score: float, network: nn.Module) -> bool:
        """Record ``epoch``'s score; True when training should stop."""
        if not math.isnan(score) and score > self.best_score:
            self.best_score, self.best_epoch, self.stale_epochs = score, epoch, 0
            self.state = copy.deepcopy(network.state_dict())
        else:
            self.stale_epochs += 1
        return self.patience is not None and self.stale_epochs >= self.patience

    def restore(self, network: nn.Module) -> None:
        if self.state is not None:
            network.load_state_dict(self.state)


class EpochReport(pl.Callback):
    """After each epoch: train loss, validation CORR, ``on_step``, early stopping."""

    def __init__(self, max_epochs: int, evaluate: Callable[[], float] | None,
                 best: BestState, on_step: StepCallback | None) -> None:
        self.max_epochs, self.evaluate, self.best, self.on_step = max_epochs, evaluate, best, on_step
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        assert isinstance(module, TabularModule)
        epoch = trainer.current_epoch + 1
        metrics = {"train_loss": module.epoch_loss()}
        if self.evaluate is not None:
            metrics["valid_corr"] = self.evaluate()
            if self.best.update(epoch, metrics["valid_corr"], module.network):
                trainer.should_stop = True
        self.history.append(metrics)
        if self.on_step is not None:
            self.on_step(epoch, self.max_epochs, metrics)
