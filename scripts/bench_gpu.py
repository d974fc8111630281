"""Wall time of ``fxml.run`` on the GPU against the same run on the CPU, on a v5.2-shaped release.

Writes the release of ``scripts/bench_scale.py`` at ``--fraction`` of v5.2's rows, then runs, each
as its own process, every model asked for with ``trainer=cpu`` (the baseline, measured in the same
run) and ``trainer=gpu`` (the deep models at each ``--precisions``). For each it prints the wall
time of the whole run (loading, training, predicting and scoring validation, logging), its ratio to
the CPU run of the same model, the device the log says it trained on, the validation CORR mean and
the peak GPU memory in use (``nvidia-smi``, sampled every 0.2 s).

    python scripts/bench_gpu.py                                  # 1/32 of the rows, all features
    python scripts/bench_gpu.py --fraction 0.0625 --models xgboost --n-estimators 300
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_scale import REPO, write_release


def gpu_memory_used_mib() -> float:
    if shutil.which("nvidia-smi") is None:
        return float("nan")
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.split()
    return float(out[0]) if out else float("nan")


class GpuMemoryPeak(threading.Thread):
    """The largest GPU memory in use while a run lasts, above what was in use before it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.idle = gpu_memory_used_mib()
        self.peak = self.idle
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, gpu_memory_used_mib())

    def stop(self) -> float:
        self.done.set()
        self.join()
        return (self.peak - self.idle) / 1024


def device_of(output: str, model: str) -> str:
    """The log's last word on where the model trained."""
    pattern = {"xgboost": r"model: XGBoost on (\w+)", "lgbm": r"model: LightGBM on (\w+)"}.get(
        model, r"device: (\w+)")
    found = re.findall(pattern, output)
    return found[-1] if found else "?"


def corr_of(output: str) -> float:
    found = re.search(r"│ CORR\s+│\s+(-?[\d.]+)", output)
    return float(found.group(1)) if found else float("nan")


def last_train_seconds(store: Path) -> float:
    """The ``train_seconds`` metric of the run logged last (fitting alone, no loading or scoring)."""
    with sqlite3.connect(store) as db:
        row = db.execute("SELECT value FROM metrics WHERE key = 'train_seconds' "
                         "ORDER BY timestamp DESC LIMIT 1").fetchone()
    return float(row[0]) if row else float("nan")


def timed_run(overrides: list[str], cwd: Path) -> dict[str, object]:
    # the caller's PYTHONPATH stays after the repository's (a LightGBM built with CUDA, say)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    memory = GpuMemoryPeak()
    memory.start()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fxml.run", *overrides], cwd=cwd, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    gpu_gib = memory.stop()
    output = result.stdout + result.stderr
    if result.returncode != 0:
        tail = [line for line in output.splitlines() if line.strip()][-12:]
        print("  failed:\n    " + "\n    ".join(tail), flush=True)
    return {"rc": result.returncode, "wall_s": wall, "gpu_gib": gpu_gib, "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=1 / 32, help="share of v5.2's rows (default 1/32)")
    parser.add_argument("--feature-set", default="all")
    parser.add_argument("--models", default="xgboost,lgbm,mlp")
    parser.add_argument("--precisions", default="32,bf16-mixed", help="deep models' precisions on the GPU")
    parser.add_argument("--n-estimators", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3, help="deep models' epochs (no early stop)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fxml-bench-gpu")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.workdir / "release"
    if not (folder / "v5.2" / "features.json").is_file():
        write_release(folder, args.fraction)
    common = ["data=v5", "data.version=v5.2", f"data.directory={folder}",
              f"data.feature_set={args.feature_set}", "data.every_nth_era=1",
              f"tracking.uri=sqlite:///{args.workdir}/mlflow.db", "tracking.log_model=false",
              "tracking.experiment=bench-gpu", *args.extra]
    rows = []
    for model in args.models.split(","):
        deep = model in ("mlp", "resnet", "tabnet")
        size = ([f"trainer.max_epochs={args.epochs}", f"trainer.patience={args.epochs}"] if deep
                else [f"model.n_estimators={args.n_estimators}"])
        variants = [("cpu", "32")] + [("gpu", p) for p in (args.precisions.split(",") if deep else ["32"])]
        baseline = None
        for trainer, precision in variants:
            overrides = [*common, f"model={model}", f"trainer={trainer}", *size]
            if deep:
                overrides.append(f"trainer.precision={precision}")
            print(f"{model} trainer={trainer} precision={precision} ...", flush=True)
            result = timed_run(overrides, args.workdir)
            train_s = last_train_seconds(args.workdir / "mlflow.db") if result["rc"] == 0 else float("nan")
            baseline = baseline or (result["wall_s"], train_s)
            rows.append((model, trainer, precision if deep else "", device_of(result["output"], model),
                         result["wall_s"], result["wall_s"] / baseline[0], train_s, train_s / baseline[1],
                         corr_of(result["output"]), result["gpu_gib"], result["rc"]))
    print(f"\nrelease {folder} ({args.feature_set}); the whole run's wall time and the fit's "
          "(train_seconds), each with its ratio to the CPU run of the model")
    print(f"{'model':8} {'trainer':7} {'precision':10} {'device':7} {'run s':>7} {'ratio':>6} "
          f"{'fit s':>7} {'ratio':>6} {'CORR':>7} {'GPU GiB':>8} rc")
    for model, trainer, precision, device, wall, ratio, fit, fit_ratio, corr, gpu, rc in rows:
        print(f"{model:8} {trainer:7} {precision:10} {device:7} {wall:7.1f} {ratio:6.2f} {fit:7.1f} "
              f"{fit_ratio:6.2f} {corr:7.4f} {gpu:8.2f} {rc}")


if __name__ == "__main__":
    main()
