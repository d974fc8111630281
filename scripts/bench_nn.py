"""Benchmark the deep models' feeding path against a plain ``DataLoader(TensorDataset(...))``.

Usage: python scripts/bench_nn.py [--rows 200000 --features 42 --batch-size 1024 --widths 128,64
                                   --dropout 0.1 --seconds 5 --device auto --threads 0]

Every path trains the same MLP (same seed, batch size, AdamW, MSE) on the same Numerai-shaped
data (int8 features 0..4, binned targets, eras) for about ``--seconds`` seconds after a warm-up,
and reports training samples per second:

- ``DataLoader(TensorDataset)``: the usual PyTorch recipe; a float32 copy of the features,
  rows fetched one ``__getitem__`` at a time and stacked by the default collate, then moved to
  the device batch by batch;
- ``fxml BatchFeeder``: fxml's path; the int8 matrix kept in memory (on the GPU when it fits),
  one ``index_select`` per batch, converted to float on the device;
- ``fxml BatchFeeder, era batches``: the same, each batch one whole era;
- ``fxml BatchFeeder from the int8 store file``: what a run does on the CPU, the same batches
  read from a store file (one read per run of consecutive rows) instead of an in-memory matrix;
- ``fxml MLPModel.fit (Lightning)``: the whole fxml model (Lightning loop, per-epoch hooks, no
  validation) fed by the BatchFeeder, timed after a warm-up fit so imports are not counted.

Feeding-only rows (no model) show the data path alone. On CUDA it also reports the device
name and the peak GPU memory of each path.
"""

from __future__ import annotations

# fxml first: it sets OMP_WAIT_POLICY=PASSIVE before torch's OpenMP runtime loads, as in a run
import fxml  # noqa: F401  # isort: skip

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fxml.data.loader import DataSplit
from fxml.models.deep import MLPModel
from fxml.models.deep.device import choose_device
from fxml.models.deep.feeding import BatchFeeder
from fxml.models.deep.networks import MLP, scale_features


def numerai_like(rows: int, features: int, eras: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=(rows, features), dtype=np.int8)
    signal = (x[:, : min(8, features)].astype(np.float32) - 2).sum(axis=1) + rng.normal(0, 6, rows)
    ranks = signal.argsort().argsort() / rows
    y = np.digitize(ranks, [0.05, 0.25, 0.75, 0.95]).astype(np.float32) / 4
    era = np.sort(rng.integers(1, eras + 1, rows)).astype(np.int32)
    return x, y, era


def batches_forever(make_epoch: Callable[[], Iterable]) -> Iterator:
    while True:
        yield from make_epoch()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], int], device: torch.device, seconds: float, warmup: int = 5) -> float:
    """Samples per second of ``step`` (one batch, returns its size), run for ``seconds``."""
    for _ in range(warmup):
        step()
    sync(device)
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        samples += step()
    sync(device)
    return samples / (time.perf_counter() - started)


def train_steps(batches: Iterator, network: nn.Module, device: torch.device) -> Callable[[], int]:
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)

    def step() -> int:
        features, targets = next(batches)[:2]
        features = features.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True).reshape(len(features), -1)
        loss = nn.functional.mse_loss(network(scale_features(features)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(features)

    return step


def feed_steps(batches: Iterator, device: torch.device) -> Callable[[], int]:
    def step() -> int:
        features = next(batches)[0].to(device, non_blocking=True)
        return len(features)

    return step


def fresh_mlp(args: argparse.Namespace, device: torch.device) -> nn.Module:
    torch.manual_seed(args.seed)
    return MLP(args.features, 1, args.widths, dropout=args.dropout).to(device)


def lightning_rate(x: np.ndarray, y: np.ndarray, era: np.ndarray, args: argparse.Namespace,
                   accelerator: str) -> float:
    split = DataSplit("train", np.arange(len(x)).astype(str), era, x, y,
                      [f"feature_{i}" for i in range(x.shape[1])])
    options = dict(widths=args.widths, dropout=args.dropout, batch_size=args.batch_size,
                   patience=None, seed=args.seed, device=accelerator, n_jobs=args.threads or -1)
    MLPModel(max_epochs=1, **options).fit(split)  # warm-up: imports, allocator
    batches_per_epoch = max(len(x) // args.batch_size, 1)
    epochs = max(1, int(args.epochs_for_fit))
    started = time.perf_counter()
    MLPModel(max_epochs=epochs, **options).fit(split)
    return epochs * batches_per_epoch * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=42)
    parser.add_argument("--eras", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[128, 64])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--epochs-for-fit", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "gpu", "mps"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("fxml").setLevel(logging.ERROR)  # fit's "no validation rows" warning
    if args.threads:
        torch.set_num_threads(args.threads)
    choice = choose_device(args.device)
    device = choice.torch_device
    x, y, era = numerai_like(args.rows, args.features, args.eras, args.seed)
    print(f"device: {choice.description}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"CPU thread(s); {args.rows:,} rows x {args.features} int8 features, batch "
          f"{args.batch_size}, MLP {args.widths} dropout {args.dropout}")

    def baseline_epoch() -> Iterable:
        dataset = TensorDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y))
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                          pin_memory=device.type == "cuda")

    baseline_loader = baseline_epoch()
    feeder = BatchFeeder(x, y, era, args.batch_size, device, seed=args.seed)
    store_folder = tempfile.TemporaryDirectory()
    stored = np.memmap(Path(store_folder.name) / "train.int8", dtype=np.int8, mode="w+", shape=x.shape)
    stored[:] = x
    stored.flush()
    stored = np.memmap(stored.filename, dtype=np.int8, mode="r", shape=x.shape)
    # on an accelerator with room, the store goes to the device whole and this is ``feeder`` again
    store_feeder = BatchFeeder(stored, y, era, args.batch_size, device, seed=args.seed)
    era_feeder = BatchFeeder(x, y, era, args.batch_size, device, era_batches=True, seed=args.seed)
    paths: list[tuple[str, Callable[[], Callable[[], int]]]] = [
        ("feed only: DataLoader(TensorDataset)",
         lambda: feed_steps(batches_forever(lambda: baseline_loader), device)),
        ("feed only: fxml BatchFeeder", lambda: feed_steps(batches_forever(lambda: feeder), device)),
        ("feed only: fxml BatchFeeder from the int8 store file",
         lambda: feed_steps(batches_forever(lambda: store_feeder), device)),
        ("train: DataLoader(TensorDataset)",
         lambda: train_steps(batches_forever(lambda: baseline_loader),
                             fresh_mlp(args, device), device)),
        ("train: fxml BatchFeeder",
         lambda: train_steps(batches_forever(lambda: feeder),
                             fresh_mlp(args, device), device)),
        ("train: fxml BatchFeeder from the int8 store file",
         lambda: train_steps(batches_forever(lambda: store_feeder),
                             fresh_mlp(args, device), device)),
        ("train: fxml BatchFeeder, era batches",
         lambda: train_steps(batches_forever(lambda: era_feeder),
                             fresh_mlp(args, device), device)),
    ]
    results: list[tuple[str, float, float | None]] = []
    for name, build in paths:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rate = timed(build(), device, args.seconds)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        results.append((name, rate, peak))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rate = lightning_rate(x, y, era, args, choice.kind)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    results.append(("train: fxml MLPModel.fit (Lightning)", rate, peak))

    store_folder.cleanup()
    baselines = {"feed": results[0][1], "train": results[3][1]}
    print()
    print("| path | device | samples/s | vs DataLoader | peak GPU MiB |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, rate, peak in results:
        ratio = rate / baselines[name.split(":")[0].split()[0]]
        shown_peak = f"{peak:,.0f}" if peak is not None else "n/a"
        print(f"| {name} | {choice.kind} | {rate:,.0f} | {ratio:.1f}x | {shown_peak} |")


if __name__ == "__main__":
    main()
