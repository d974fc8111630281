"""Peak memory and CPU time of ``fxml.run`` on a v5.2-shaped release, against a plain script.

Writes a release shaped like Numerai v5.2 (574 training eras, ~3.6M validation rows, 2,748
features: small 42, medium ~820, all 2,748) at ``--fraction`` of the rows with fxml's synthetic
writer, then runs, each as its own process under ``/usr/bin/time -v``:

- ``python -m fxml.run data=v5 data.version=v5.2 ...`` for every model and feature set asked for
  (``target_ensemble``: the preset's LightGBM members, each on its own target, on one matrix);
- ``scripts/plain_lgbm.py``: what the example scripts do (pandas ``read_parquet`` of the needed
  columns, ``LGBMRegressor`` with fxml's default hyperparameters, predict validation), the
  baseline measured in the same run.

For each it prints the int8 payload (train + validation features), peak RSS, peak / payload, CPU
seconds (user + system) and the CPU ratio to the plain script on the same feature set.
``--limit-gib`` runs fxml under a cgroup memory limit (cgroup v1 or v2, needs root), which is
what ``memory=auto`` is for.

    python scripts/bench_scale.py          # 1/8 of the rows; lgbm, xgboost, ridge x small, medium, all
    python scripts/bench_scale.py --fraction 0.0625 --sets all --models lgbm --memory in_memory,auto
    python scripts/bench_scale.py --sets all --memory auto --limit-gib 3
    python scripts/bench_scale.py --fraction 0.0625 --sets all --models lgbm,target_ensemble --no-plain
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fxml.data.synthetic import SyntheticSpec, write_synthetic  # noqa: E402

FULL_ROWS_PER_ERA = 4_791  # 2.75M training rows over 574 eras
TRAIN_ERAS, VALIDATION_ERAS = 574, 750  # 750 eras of the same size make ~3.6M validation rows
N_FEATURES = 2_748


def write_release(root: Path, fraction: float) -> Path:
    spec = SyntheticSpec(version="v5.2", train_eras=TRAIN_ERAS, validation_eras=VALIDATION_ERAS,
                         unresolved_eras=4, rows_per_era=max(20, round(FULL_ROWS_PER_ERA * fraction)),
                         live_rows=6_000, n_features=N_FEATURES, seed=0)
    folder = root / "v5.2"
    started = time.perf_counter()
    write_synthetic(folder, spec)
    print(f"release: {folder} ({spec.rows_per_era} rows per era; ready in "
          f"{time.perf_counter() - started:.0f} s)", flush=True)
    return folder


def timed(command: list[str], cwd: Path, limit_gib: float | None = None) -> dict[str, float]:
    """Run ``command`` under /usr/bin/time -v (in a fresh memory cgroup when limited)."""
    wrapped = ["/usr/bin/time", "-v", *command]
    cgroup = _cgroup(limit_gib) if limit_gib else None
    if cgroup is not None:
        wrapped = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *wrapped]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    try:
        result = subprocess.run(wrapped, cwd=cwd, env=env, capture_output=True, text=True)
    finally:
        if cgroup is not None:
            Path(cgroup).rmdir()
    stats = _time_stats(result.stderr)
    stats["rc"] = result.returncode
    if result.returncode != 0:
        tail = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-12:]
        print("  failed:\n    " + "\n    ".join(tail), flush=True)
    plan = re.search(r"memory: (\w+), ([^:]+):", result.stdout + result.stderr)
    stats["plan"] = f"{plan.group(1)}, {plan.group(2)}" if plan else ""
    return stats


def _cgroup(limit_gib: float) -> str | None:
    limit = str(int(limit_gib * 2**30))
    for parent, limit_file in (("/sys/fs/cgroup/unified", "memory.max"), ("/sys/fs/cgroup", "memory.max"),
                               ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")):
        if not (Path(parent) / "cgroup.procs").is_file():  # not a cgroup hierarchy here
            continue
        folder = Path(parent) / f"fxml-bench-{os.getpid()}-{time.monotonic_ns()}"
        try:
            folder.mkdir()
            (folder / limit_file).write_text(limit)
            return str(folder)
        except OSError:
            if folder.is_dir():
                folder.rmdir()
    print("  (no writable memory cgroup here: running without the limit)")
    return None


def _time_stats(text: str) -> dict[str, float]:
    def number(label: str) -> float:
        match = re.search(rf"{re.escape(label)}: ([\d.]+)", text)
        return float(match.group(1)) if match else float("nan")

    return {"peak_gib": number("Maximum resident set size (kbytes)") / 2**20,
            "cpu_s": number("User time (seconds)") + number("System time (seconds)")}


def payload_bytes(folder: Path, feature_set: str) -> int:
    import pyarrow.parquet as pq

    n_features = len(json.loads((folder / "features.json").read_text())["feature_sets"][feature_set])
    rows = sum(pq.ParquetFile(folder / f"{split}.parquet").metadata.num_rows
               for split in ("train", "validation"))
    return rows * n_features


def ensemble_members(preset: str) -> list[str]:
    """The member names of an ensemble preset of conf/model/."""
    import yaml

    return list(yaml.safe_load((REPO / "conf" / "model" / f"{preset}.yaml").read_text())["members"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=1 / 8, help="share of v5.2's rows (default 1/8)")
    parser.add_argument("--sets", default="small,medium,all")
    parser.add_argument("--models", default="lgbm,xgboost,ridge")
    parser.add_argument("--memory", default="in_memory", help="memory configs, e.g. in_memory,auto")
    parser.add_argument("--limit-gib", type=float, default=None, help="cgroup memory limit for fxml runs")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-script baseline")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fxml-bench-scale")
    parser.add_argument("--n-estimators", type=int, default=300, help="boosting rounds, fxml and plain")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every fxml run")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = write_release(args.workdir / f"release-{args.fraction:.4f}", args.fraction)
    rows = []
    for feature_set in args.sets.split(","):
        payload = payload_bytes(folder, feature_set)
        plain = None
        if not args.no_plain:
            print(f"plain pandas + LGBMRegressor, {feature_set} ...", flush=True)
            plain = timed([sys.executable, str(REPO / "scripts" / "plain_lgbm.py"), str(folder), feature_set,
                           str(args.n_estimators)], args.workdir)
            rows.append(("plain script", "lgbm", feature_set, "pandas", payload, plain))
        for model in args.models.split(","):
            for memory in args.memory.split(","):
                print(f"fxml.run model={model} data.feature_set={feature_set} memory={memory} ...",
                      flush=True)
                command = [sys.executable, "-m", "fxml.run", "data=v5", "data.version=v5.2",
                           f"data.directory={folder.parent}", f"data.feature_set={feature_set}",
                           "data.every_nth_era=1", f"model={model}", f"memory={memory}",
                           f"tracking.uri=sqlite:///{args.workdir}/mlflow.db", "tracking.log_model=false",
                           "tracking.experiment=bench-scale", *args.extra]
                if model in ("lgbm", "xgboost"):
                    command.append(f"model.n_estimators={args.n_estimators}")
                if model == "target_ensemble":
                    command += [f"model.members.{name}.n_estimators={args.n_estimators}"
                                for name in ensemble_members(model)]
                stats = timed(command, args.workdir, args.limit_gib if memory == "auto" else None)
                rows.append(("fxml.run", model, feature_set, memory, payload, stats))
                if plain is not None and model == "lgbm":
                    stats["vs_plain"] = stats["cpu_s"] / plain["cpu_s"]
    print()
    limit = f", fxml auto runs limited to {args.limit_gib:g} GiB" if args.limit_gib else ""
    print(f"v5.2-shaped release at {args.fraction:g} of the rows, {os.cpu_count()} cores, "
          f"{args.n_estimators} boosting rounds{limit}")
    print(f"{'program':<13} {'model':<8} {'set':<7} {'memory':<10} {'payload GiB':>11} {'peak GiB':>9} "
          f"{'peak/payload':>12} {'CPU s':>8} {'CPU vs plain':>12}  plan")
    for program, model, feature_set, memory, payload, stats in rows:
        ratio = f"{stats['vs_plain']:.2f}x" if "vs_plain" in stats else ""
        failed = "" if stats["rc"] == 0 else f"  FAILED rc={stats['rc']}"
        print(f"{program:<13} {model:<8} {feature_set:<7} {memory:<10} {payload / 2**30:>11.2f} "
              f"{stats['peak_gib']:>9.3f} {stats['peak_gib'] * 2**30 / payload:>11.3f}x "
              f"{stats['cpu_s']:>8.0f} "
              f"{ratio:>12}  {stats.get('plan', '')}{failed}")


if __name__ == "__main__":
    main()
