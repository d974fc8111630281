"""Deep tabular models behind the common ``TabularModel`` contract.

``MLPModel``, ``ResNetModel`` and ``TabNetModel`` differ only in the network they build; training
(PyTorch Lightning, one device), feeding, losses, early stopping and the state round-trip are
shared here. The runner treats them like any other family.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fxml.data.memory import MemoryProfile, read_rows
from fxml.data.split import DataSplit, TrainingRows, training_rows
from fxml.errors import FxmlError
from fxml.models.base import StepCallback, TabularModel, labelled_rows, predict_chunk_rows
from fxml.models.deep.device import DeviceChoice, check_precision, choose_device
from fxml.models.deep.networks import MLP, ResNet, run_network, scale_features
from fxml.models.deep.params import DeepParams, MLPParams, ResNetParams, TabNetParams
from fxml.models.deep.tabnet import TabNet
from fxml.scoring import corr_by_era

log = logging.getLogger(__name__)
STATE_FILE, SHAPE_FILE = "network.pt", "network.json"


def validation_corr(predictions: np.ndarray, split: DataSplit) -> float:
    """Mean over eras of the per-era Numerai CORR (NaN when predictions are NaN or constant)."""
    if not np.isfinite(predictions).all():
        return math.nan
    assert split.target is not None
    return float(corr_by_era(predictions, split.target, split.eras).mean())


def cluster_environment() -> Any:
    """Lightning's cluster environment, chosen rather than detected: SLURM's inside a SLURM
    allocation (a job fxml was started in), the plain one elsewhere. Lightning's own detection
    warns on every machine with ``srun`` on the PATH (any cluster's login node), though fxml
    trains on one device and needs no ``srun``."""
    from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment

    if not os.environ.get("SLURM_JOB_ID"):
        return LightningEnvironment()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*srun.*")  # one device needs no srun
        return SLURMEnvironment()


class DeepTabularModel(TabularModel):
    """Shared training and inference; subclasses name their network and its options."""

    network_class: ClassVar[type[nn.Module]]
    network_keys: ClassVar[tuple[str, ...]] = ()
    params: DeepParams
    # batches are read from the int8 store each epoch (fxml.models.deep.feeding); traced at full
    # size (2.75M training rows): the batch feeder's per-row arrays (targets, eras, the epoch's
    # order) took 0.57 GiB by the start of training, and importing PyTorch and Lightning 0.33 GiB
    memory = MemoryProfile(reads_rows_from_store=True, bytes_per_train_row=208,
                           library_bytes=340 * 2**20)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.network: nn.Module | None = None
        self.shape: dict[str, int] = {}
        self.history: list[dict[str, float]] = []
        self.best_epoch = 0
        self._device: torch.device | None = None

    # -- network -------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.params.precision == "64" else torch.float32

    def build_network(self, n_inputs: int, n_outputs: int) -> nn.Module:
        options = {key: getattr(self.params, key) for key in self.network_keys}
        self.shape = {"n_inputs": n_inputs, "n_outputs": n_outputs}
        return self.network_class(n_inputs, n_outputs, **options).to(self.dtype)

    def network_summary(self) -> str:
        shown = ", ".join(f"{key}={getattr(self.params, key)}" for key in self.network_keys)
        return f"{self.network_class.__name__}({shown})"

    # -- training ------------------------------------------------------------------------------

    def targets_read(self) -> dict[str, str]:
        return {name: "model.aux_targets" for name in self.params.aux_targets}

    def _targets(self, rows: TrainingRows, split: str) -> np.ndarray:
        columns = [rows.target]
        for name in self.params.aux_targets:
            if name not in rows.extra:
                carried = ", ".join(sorted(rows.extra)) or "none"
                raise FxmlError(f"model.aux_targets: {name} is not loaded with the {split} "
                                f"split (auxiliary columns loaded: {carried})")
            columns.append(rows.extra[name])
        return np.column_stack(columns).astype(np.float32)

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> DeepTabularModel:
        import lightning.pytorch as pl

        from fxml.models.deep.feeding import BatchFeeder
        from fxml.models.deep.losses import Objective
        from fxml.models.deep.module import BestState, EpochReport, TabularModule

        o = self.params
        choice = choose_device(o.device)
        precision = check_precision(choice, o.precision, o.devices)
        if o.n_jobs > 0:
            torch.set_num_threads(o.n_jobs)
        log.info("device: %s, precision %s", choice.description, o.precision)
        self._device = choice.torch_device
        torch.manual_seed(o.seed)
        rows = training_rows(train)
        targets = self._targets(rows, train.name)
        self.network = self.build_network(rows.n_features, targets.shape[1])
        feeder = BatchFeeder(rows.features, targets, rows.eras, o.batch_size, self._device,
                             era_batches=o.era_batching, eras_per_batch=o.eras_per_batch,
                             seed=o.seed, dtype=self.dtype, positions=rows.positions)
        valid = None
        if validation is not None and validation.target is not None:
            valid = labelled_rows(validation)
            valid = valid if len(valid) else None
        if valid is None:
            log.warning("no labelled validation rows: no early stopping, the last epoch is kept")

        def evaluate(rows: DataSplit) -> float:
            return validation_corr(self._predict(rows.features), rows)

        best = BestState(o.patience)
        report = EpochReport(o.max_epochs, partial(evaluate, valid) if valid is not None else None, best,
                             on_step)
        module = TabularModule(self.network, Objective(o.loss, o.aux_weight, feeder.n_eras),
                               o.learning_rate, o.weight_decay, getattr(o, "lambda_sparse", 0.0))
        plan = (f"era batches of {o.eras_per_batch} era(s)" if o.era_batching
                else f"batches of {o.batch_size}")
        log.info("model: %s, %d outputs, loss %s, %s, up to %d epochs on %s rows", self.network_summary(),
                 targets.shape[1], o.loss, plan, o.max_epochs, f"{len(rows):,}")
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        trainer = pl.Trainer(
            accelerator=choice.kind, devices=1, precision=precision, max_epochs=o.max_epochs,
            logger=False, enable_progress_bar=False, enable_checkpointing=False,
            enable_model_summary=False, num_sanity_val_steps=0,
            gradient_clip_val=o.gradient_clip or None, callbacks=[report],
            plugins=[cluster_environment()],
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning")
            trainer.fit(module, train_dataloaders=feeder)
        self.history = report.history
        if best.state is not None:
            best.restore(self.network)
            self.best_epoch = best.best_epoch
            log.info("model: best epoch %d of %d (valid_corr %.5f)", best.best_epoch,
                     len(self.history), best.best_score)
        else:
            self.best_epoch = len(self.history)
        self.network.to(self._device).eval()
        return self

    # -- inference -----------------------------------------------------------------------------

    def _inference_device(self) -> torch.device:
        if self._device is None:
            try:
                choice = choose_device(self.params.device)
            except FxmlError:
                choice = DeviceChoice("cpu", "cpu")
                log.warning("model trained on %s, predicting on the CPU", self.params.device)
            self._device = choice.torch_device
        return self._device

    @torch.no_grad()
    def _predict(self, features: np.ndarray) -> np.ndarray:
        """The main target's output for each row; int8 rows go to the device as int8."""
        assert self.network is not None, "the model is not fitted"
        device = self._inference_device()
        network = self.network.to(device)
        training = network.training
        network.eval()
        out = np.empty(len(features), dtype=np.float64)
        rows = predict_chunk_rows(features.shape[1])
        for start in range(0, len(features), rows):
            # the inner holdout is predicted every epoch: from the store it is read, not mapped
            block = torch.from_numpy(np.ascontiguousarray(read_rows(features, start, start + rows)))
            outputs, _ = run_network(network, block.to(device).to(self.dtype))
            out[start : start + len(block)] = outputs[:, 0].double().cpu().numpy()
        network.train(training)
        return out

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self._predict(np.asarray(features, dtype=np.float32))

    def predict(self, features: np.ndarray, eras: np.ndarray | None = None) -> np.ndarray:
        return self._predict(features)

    # -- state ---------------------------------------------------------------------------------

    def save_state(self, directory: Path) -> None:
        assert self.network is not None, "the model is not fitted"
        state = {key: value.detach().cpu() for key, value in self.network.state_dict().items()}
        torch.save(state, directory / STATE_FILE)
        (directory / SHAPE_FILE).write_text(json.dumps(
            {**self.shape, "best_epoch": self.best_epoch, "history": self.history}, indent=1))

    def load_state(self, directory: Path) -> None:
        saved = json.loads((directory / SHAPE_FILE).read_text())
        self.history, self.best_epoch = saved["history"], saved["best_epoch"]
        self.network = self.build_network(saved["n_inputs"], saved["n_outputs"])
        self.network.load_state_dict(torch.load(directory / STATE_FILE, map_location="cpu",
                                                weights_only=True))
        self.network.eval()


class MLPModel(DeepTabularModel):
    params_class = MLPParams
    network_class = MLP
    network_keys = ("widths", "dropout", "norm", "activation")


class ResNetModel(DeepTabularModel):
    params_class = ResNetParams
    network_class = ResNet
    network_keys = ("d_main", "d_hidden", "n_blocks", "dropout", "residual_dropout", "norm",
                    "activation")


class TabNetModel(DeepTabularModel):
    params_class = TabNetParams
    network_class = TabNet
    network_keys = ("n_d", "n_a", "n_steps", "gamma", "n_shared", "n_independent", "mask_type",
                    "ghost_batch_norm", "virtual_batch_size", "momentum")

    def feature_masks(self, features: np.ndarray) -> list[np.ndarray]:
        """Each decision step's feature mask for int8 rows: (rows, features), rows sum to 1."""
        assert isinstance(self.network, TabNet), "the model is not fitted"
        device = self._inference_device()
        self.network.to(device).eval()
        block = torch.from_numpy(np.ascontiguousarray(features)).to(device).to(self.dtype)
        return [mask.cpu().numpy() for mask in self.network.masks(scale_features(block))]
