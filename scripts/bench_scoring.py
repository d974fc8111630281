"""Benchmark fxml.scoring.score_eras against numerai-tools applied era by era.

Usage: python scripts/bench_scoring.py [--rows 1000000 --eras 200 --features 42] [--comparison]
       python scripts/bench_scoring.py --features 2748 --rows-per-era 6000 --eras 24

Default mode: both sides score the same synthetic data (corr, mmc, bmc, fnc, feature
exposure); the table gives the seconds each took, the speed ratio and the largest
absolute difference per metric. ``--comparison`` also times MPC (in a portfolio of the model
and 5 benchmark models) and the comparison diagnostics as the scorer runs them (after the core
metrics), as what they add to the core scoring time (wall and CPU), and against numerai-tools
(pandas for exposure dissimilarity, which numerai-tools lacks) era by era.

Full-width mode (``--rows-per-era``): eras of equal size at full feature width; fxml's
FNC + feature exposure per era over ``--eras`` eras against numerai-tools'
``feature_neutral_corr`` and ``max_feature_correlation`` per era on the first
``--reference-eras`` of them, and fxml's time extrapolated to a full validation set
(``--full-eras`` x ``--full-rows-per-era`` rows). fxml is timed on full-rank features and
on features with exact dependencies (duplicated, mirrored and constant columns: the
pivoted fallback), numerai-tools on the latter.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd
from numerai_tools.scoring import (
    correlation_contribution,
    feature_neutral_corr,
    max_feature_correlation,
    numerai_corr,
)

from fxml.scoring import SCORE_COLUMNS, score_eras

try:
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

BINS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
BIN_SHARES = np.array([0.05, 0.2, 0.5, 0.2, 0.05])


def varying_era_sizes(n_rows: int, n_eras: int) -> np.ndarray:
    """Era sizes that vary smoothly by +-25 % around the mean, summing to ``n_rows``."""
    weights = 1.0 + 0.25 * np.sin(np.linspace(0.0, 6.0, n_eras))
    sizes = np.floor(weights / weights.sum() * n_rows).astype(np.int64)
    sizes[-1] += n_rows - sizes.sum()
    return sizes


def synthetic_data(sizes: np.ndarray, n_features: int, seed: int = 42) -> dict:
    """Numerai-shaped data: eras of the given sizes, int8 features 0..4, binned targets."""
    rng = np.random.default_rng(seed)
    n_eras, n_rows = sizes.size, int(sizes.sum())
    eras = np.repeat(np.arange(1, n_eras + 1), sizes)
    targets = np.empty(n_rows)
    start = 0
    for size in sizes:  # exact 5/20/50/20/5 % bins in every era
        counts = np.floor(BIN_SHARES * size).astype(np.int64)
        counts[2] += size - counts.sum()
        targets[start : start + size] = rng.permutation(np.repeat(BINS, counts))
        start += size
    features = rng.integers(0, 5, size=(n_rows, n_features), dtype=np.int8)
    exposure = (features[:, : min(5, n_features)].mean(axis=1) - 2.0) / 2.0
    signal = targets - 0.5
    noise = rng.standard_normal((3, n_rows))
    predictions = 0.5 + 0.04 * signal + 0.02 * exposure + 0.1 * noise[0]
    meta_model = 0.5 + 0.03 * signal + 0.5 * (predictions - 0.5) + 0.08 * noise[1]
    benchmark = 0.5 + 0.03 * signal + 0.01 * exposure + 0.1 * noise[2]
    targets[rng.random(n_rows) < 0.005] = np.nan  # a few unresolved targets
    return {
        "predictions": predictions,
        "targets": targets,
        "eras": eras,
        "meta_model": meta_model,
        "benchmark": benchmark,
        "features": features,
    }


def reference_inputs(data: dict) -> list[dict]:
    """The per-era pandas objects numerai-tools expects (built outside the timed part)."""
    names = [f"feature_{j}" for j in range(data["features"].shape[1])]
    boundaries = np.flatnonzero(np.diff(data["eras"])) + 1
    per_era = []
    for rows in np.split(np.arange(data["eras"].size), boundaries):
        ids = pd.Index([f"id{row:09d}" for row in rows])
        per_era.append(
            {
                "era": int(data["eras"][rows[0]]),
                "predictions": pd.DataFrame({"prediction": data["predictions"][rows]}, index=ids),
                "targets": pd.Series(data["targets"][rows], index=ids, name="target"),
                "meta_model": pd.Series(data["meta_model"][rows], index=ids, name="meta_model"),
                "benchmark": pd.Series(data["benchmark"][rows], index=ids, name="benchmark"),
                "features": pd.DataFrame(data["features"][rows], index=ids, columns=names),
            }
        )
    return per_era


REFERENCE_METRICS = {
    "corr": lambda e: numerai_corr(e["predictions"], e["targets"])["prediction"],
    "mmc": lambda e: correlation_contribution(e["predictions"], e["meta_model"], e["targets"])[
        "prediction"
    ],
    "bmc": lambda e: correlation_contribution(e["predictions"], e["benchmark"], e["targets"])[
        "prediction"
    ],
    "fnc": lambda e: feature_neutral_corr(e["predictions"], e["features"], e["targets"])[
        "prediction"
    ],
    "feature_exposure": lambda e: max_feature_correlation(
        e["predictions"]["prediction"], e["features"]
    )[1],
}


def with_dependent_columns(features: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """A copy whose columns include exact linear dependencies, as real eras have: a
    ``fraction`` of columns duplicated, as many mirrored (4 - x), and two constant."""
    features = features.copy()
    n_features = features.shape[1]
    count = max(1, int(fraction * n_features))
    if n_features < 4 * count + 2:
        return features
    sources = np.arange(count)
    features[:, count : 2 * count] = features[:, sources]
    features[:, 2 * count : 3 * count] = 4 - features[:, sources]
    features[:, 3 * count : 3 * count + 2] = 2
    return features


def single_blas_thread() -> contextlib.AbstractContextManager:
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def core_scores(data: dict, references: bool = True) -> pd.DataFrame:
    """fxml's core metrics of ``data`` (MMC and BMC only with ``references``)."""
    return score_eras(data["predictions"], data["targets"], data["eras"],
                      meta_model=data["meta_model"] if references else None,
                      benchmark=data["benchmark"] if references else None,
                      features=data["features"])


def time_fxml(
    data: dict, repeats: int, references: bool = True
) -> tuple[pd.DataFrame, list[float], list[float]]:
    """fxml's scores, and wall-clock and CPU seconds (all threads) of each run."""
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        ours = core_scores(data, references)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return ours, seconds, cpu_seconds


def time_reference(per_era: list[dict], metrics: tuple[str, ...]) -> tuple[pd.DataFrame, dict]:
    """numerai-tools era by era: the per-era scores and per-metric wall-clock seconds
    (CPU seconds of all metrics under "cpu")."""
    seconds: dict[str, float] = {}
    scores: dict[str, list[float]] = {}
    cpu_started = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for metric in metrics:
            started = time.perf_counter()
            scores[metric] = [float(REFERENCE_METRICS[metric](era)) for era in per_era]
            seconds[metric] = time.perf_counter() - started
    seconds["cpu"] = time.process_time() - cpu_started
    index = pd.Index([e["era"] for e in per_era], name="era")
    return pd.DataFrame(scores, index=index), seconds


def largest_difference(ours: pd.DataFrame, expected: pd.DataFrame, metric: str) -> str:
    difference = np.nanmax(np.abs(ours[metric].to_numpy() - expected[metric].to_numpy()))
    nan_mismatch = int((ours[metric].isna() != expected[metric].isna()).sum())
    note = f"  ({nan_mismatch} NaN mismatches)" if nan_mismatch else ""
    return f"{difference:.1e}{note}"


COMPARISON_BENCHMARKS = 5
TOP_BOTTOM = 200


def comparison_inputs(data: dict, seed: int = 7) -> np.ndarray:
    """Benchmark models for the portfolio: the core benchmark plus noisier variants of it."""
    rng = np.random.default_rng(seed)
    extra = data["benchmark"][:, None] + 0.1 * rng.standard_normal(
        (data["benchmark"].size, COMPARISON_BENCHMARKS - 1))
    return np.column_stack([data["benchmark"], extra])


def run_comparison(data: dict, benchmarks: np.ndarray, prepared: tuple | None = None) -> tuple:
    """fxml's MPC and diagnostics; ``prepared`` (codes, grid, portfolio, meta) skips the
    model-independent preparation, as for every model after the first on a split."""
    from fxml.scoring.comparison import comparison_scores, meta_reference, scored_grid
    from fxml.scoring.eras import encode_eras
    from fxml.scoring.portfolio import prepare_portfolio

    if prepared is None:
        codes = encode_eras(data["eras"])
        grid = scored_grid(codes, data["targets"])
        portfolio = prepare_portfolio(benchmarks, np.ones(benchmarks.shape[1]), data["targets"],
                                      codes.codes, codes.n_eras, grid=grid)
        prepared = (codes, grid, portfolio,
                    meta_reference(codes, grid, data["meta_model"], data["features"]))
    codes, grid, portfolio, meta = prepared
    scores = comparison_scores(data["predictions"], data["targets"], codes, grid,
                               portfolio=portfolio, meta=meta, top_bottom=TOP_BOTTOM)
    return scores, prepared


def reference_comparison(data: dict, benchmarks: np.ndarray, per_era: list[dict]) -> tuple:
    """numerai-tools era by era: meta_portfolio_contribution, numerai_corr(top_bottom),
    spearman_correlation; exposure dissimilarity with pandas' corrwith (numerblox's formula)."""
    from numerai_tools.scoring import meta_portfolio_contribution, spearman_correlation

    boundaries = np.flatnonzero(np.diff(data["eras"])) + 1
    names = [f"bench_{k}" for k in range(benchmarks.shape[1])]
    stakes = pd.Series(1.0, index=["prediction", *names])
    values: dict[str, list[float]] = {"mpc": [], f"tb{TOP_BOTTOM}_corr": [],
                                      "meta_model_rank_corr": [], "exposure_dissimilarity": []}
    seconds = dict.fromkeys(values, 0.0)
    for era, rows in zip(per_era, np.split(np.arange(data["eras"].size), boundaries), strict=True):
        index = era["predictions"].index
        targets = era["targets"]
        started = time.perf_counter()
        portfolio = pd.concat([era["predictions"], pd.DataFrame(benchmarks[rows], index=index,
                                                                columns=names)], axis=1)
        kept = index[targets.notna().to_numpy()]
        values["mpc"].append(float(meta_portfolio_contribution(
            portfolio, stakes, pd.DataFrame(index=kept), pd.Series(1.0, index=kept),
            targets)["prediction"]))
        seconds["mpc"] += time.perf_counter() - started
        started = time.perf_counter()
        values[f"tb{TOP_BOTTOM}_corr"].append(float(numerai_corr(
            era["predictions"], targets, top_bottom=TOP_BOTTOM)["prediction"]))
        seconds[f"tb{TOP_BOTTOM}_corr"] += time.perf_counter() - started
        scored = era["predictions"]["prediction"].loc[kept]
        started = time.perf_counter()
        values["meta_model_rank_corr"].append(float(spearman_correlation(
            era["meta_model"].loc[kept], scored)))
        seconds["meta_model_rank_corr"] += time.perf_counter() - started
        started = time.perf_counter()
        features = era["features"].loc[kept]
        model_exposure = features.corrwith(scored).to_numpy()
        meta_exposure = features.corrwith(era["meta_model"].loc[kept]).to_numpy()
        usable = ~np.isnan(model_exposure) & ~np.isnan(meta_exposure)
        values["exposure_dissimilarity"].append(float(1 - model_exposure[usable] @ meta_exposure[usable]
                                                      / (meta_exposure[usable] @ meta_exposure[usable])))
        seconds["exposure_dissimilarity"] += time.perf_counter() - started
    index = pd.Index([e["era"] for e in per_era], name="era")
    return pd.DataFrame(values, index=index), seconds


def _clocked(work) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Wall-clock and CPU seconds (all threads of the process) of ``work()``."""
    started, cpu_started = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - started, time.process_time() - cpu_started


def comparison_report(data: dict, per_era: list[dict], repeats: int) -> None:
    """--comparison: what MPC and the diagnostics add to the core scoring time, and their
    agreement with numerai-tools.

    Timed as fxml's scorer runs them: after the core metrics, on the same thread,
    for the first model on a split (the model-independent parts prepared), the first model of a
    later run (those parts loaded from ``.fxml-cache``) and each further model in a process.
    Each repeat measures the core metrics alone right before, so both see the same load; wall
    and CPU seconds (all threads) are reported, and the comparison alone after them."""
    import tempfile
    from pathlib import Path

    from fxml.data.references import PreparedParts
    from fxml.scoring.comparison import scored_grid
    from fxml.scoring.diagnostics import MetaReference
    from fxml.scoring.eras import encode_eras
    from fxml.scoring.portfolio import BenchmarkPortfolio
    from fxml.scoring.prepared import as_arrays, from_arrays

    benchmarks = comparison_inputs(data)
    ours, prepared = run_comparison(data, benchmarks)
    parts = PreparedParts(Path(tempfile.mkdtemp()), "bench")
    parts.save("portfolio", as_arrays(prepared[2]))
    parts.save("meta", as_arrays(prepared[3]))

    def later_run() -> None:  # a new process: encode eras and the grid, load the prepared parts
        codes = encode_eras(data["eras"])
        run_comparison(data, benchmarks, (codes, scored_grid(codes, data["targets"]),
                                          from_arrays(BenchmarkPortfolio, parts.load("portfolio") or {}),
                                          from_arrays(MetaReference, parts.load("meta") or {})))

    cases = {
        "first model on a split (prepares the benchmark portfolio and the meta model's side)":
            lambda: run_comparison(data, benchmarks),
        "first model of a later run (prepared parts loaded from .fxml-cache)": later_run,
        "each further model on the same split": lambda: run_comparison(data, benchmarks, prepared),
    }
    core: list[tuple[float, float]] = []
    together: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    alone: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, side in cases.items():
            core.append(_clocked(lambda: core_scores(data)))
            together[name].append(_clocked(lambda side=side: (core_scores(data), side())))
            alone[name].append(_clocked(side))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, seconds = reference_comparison(data, benchmarks, per_era)
    print(f"\n{'comparison metric':<24}{'numerai-tools s':>16}{'max |diff|':>14}")
    for metric in expected.columns:
        difference = np.nanmax(np.abs(ours[metric].reindex(expected.index).to_numpy()
                                      - expected[metric].to_numpy()))
        print(f"{metric:<24}{seconds[metric]:>16.2f}{difference:>14.1e}")
    print(f"MPC: model + {benchmarks.shape[1]} benchmark models, equal stakes; numerai-tools per era "
          f"(exposure dissimilarity: pandas corrwith)")
    core_wall, core_cpu = np.median(core, axis=0)
    print(f"\ncore metrics alone: {core_wall:.3f} s wall, {core_cpu:.3f} s CPU (median of {len(core)})")
    print(f"{'MPC + diagnostics, added to the core metrics':<88}{'wall':>8}{'CPU':>8}"
          f"{'alone s':>9}{'alone CPU':>10}")
    for name in cases:
        wall, cpu = np.median(together[name], axis=0)
        alone_wall, alone_cpu = np.median(alone[name], axis=0)
        print(f"  {name:<86}{100 * (wall / core_wall - 1):>+7.0f}%{100 * (cpu / core_cpu - 1):>+7.0f}%"
              f"{alone_wall:>9.3f}{alone_cpu:>10.3f}")
    first_alone = float(np.median([w for w, _ in alone[next(iter(cases))]]))
    print(f"speed ratio (numerai-tools / fxml first model, alone): "
          f"{sum(seconds.values()) / first_alone:.0f}x")


def default_benchmark(args: argparse.Namespace) -> None:
    data = synthetic_data(varying_era_sizes(args.rows, args.eras), args.features)
    print(
        f"data: {args.rows:,} rows, {args.eras} eras, {args.features} int8 features, "
        f"{int(np.isnan(data['targets']).sum()):,} NaN targets"
    )
    ours, fxml_seconds, _ = time_fxml(data, args.repeats)
    tracemalloc.start()
    time_fxml(data, 1)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    per_era = reference_inputs(data)
    # score_eras limits BLAS to one thread for its many small per-era products at few
    # features; give numerai-tools' per-era lstsq the same setting (it is several times
    # faster that way on a small or busy machine), so the ratio compares the algorithms.
    with single_blas_thread():
        expected, reference_seconds = time_reference(per_era, tuple(REFERENCE_METRICS))

    typical = float(np.median(fxml_seconds))
    total_reference = sum(reference_seconds[metric] for metric in REFERENCE_METRICS)
    print(f"\n{'metric':<18}{'numerai-tools s':>16}{'max |diff|':>14}")
    for metric in SCORE_COLUMNS:
        difference = largest_difference(ours, expected, metric)
        print(f"{metric:<18}{reference_seconds[metric]:>16.2f}{difference:>14}")
    print(f"{'all (numerai-tools)':<18}{total_reference:>15.2f}")
    blas = "1 BLAS thread" if threadpool_limits is not None else "default BLAS threads"
    print(f"numerai-tools: era by era, {len(per_era)} eras, {blas}, pandas inputs prebuilt")
    print(
        f"\nfxml score_eras, all five metrics: {typical:.3f} s (median of {args.repeats} runs: "
        + ", ".join(f"{s:.3f}" for s in fxml_seconds)
        + f"), peak traced memory {peak_mb:.0f} MB"
    )
    print(f"speed ratio (numerai-tools all / fxml median): {total_reference / typical:.0f}x")
    if args.comparison:
        comparison_report(data, per_era, args.repeats)


def subset_eras(data: dict, n_eras: int) -> dict:
    """The first ``n_eras`` eras of ``data`` (rows are sorted by era)."""
    rows = data["eras"] <= np.unique(data["eras"])[n_eras - 1]
    return {name: values[rows] for name, values in data.items()}


def full_width_benchmark(args: argparse.Namespace) -> None:
    sizes = np.full(args.eras, args.rows_per_era, dtype=np.int64)
    data = synthetic_data(sizes, args.features)
    dependent = dict(data, features=with_dependent_columns(data["features"]))
    print(
        f"data: {args.eras} eras x {args.rows_per_era:,} rows, {args.features} int8 features "
        f"(full-width mode: FNC + feature exposure; CORR, computed too, costs milliseconds)"
    )
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    time_fxml(subset_eras(data, 1), 1, references=False)  # warm-up: imports, thread pools
    tracemalloc.start()
    time_fxml(subset_eras(dependent, min(2, args.eras)), 1, references=False)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    timings, cpu_timings = {}, {}
    for label, variant in (("full-rank features", data), ("with dependent columns", dependent)):
        ours, seconds, cpu_seconds = time_fxml(variant, args.repeats, references=False)
        timings[label] = float(np.median(seconds)) / args.eras
        cpu_timings[label] = float(np.median(cpu_seconds)) / args.eras
        print(
            f"fxml, {label}: {timings[label]:.3f} s per era, CPU {cpu_timings[label]:.3f} s "
            f"(median of {args.repeats} runs over {args.eras} eras; wall: "
            + ", ".join(f"{s / args.eras:.3f}" for s in seconds)
            + ")"
        )
    print(f"fxml peak traced memory (2 eras): {peak_mb:.0f} MB")

    reference_eras = min(args.reference_eras, args.eras)
    per_era = reference_inputs(subset_eras(dependent, reference_eras))
    # numerai-tools on one BLAS thread: on this 2-core machine shared with other work, its
    # large per-era lstsq ran faster so than on two (as in the default mode)
    with single_blas_thread():
        expected, reference_seconds = time_reference(per_era, ("fnc", "feature_exposure"))
    reference_per_era = (reference_seconds["fnc"] + reference_seconds["feature_exposure"]) / (
        reference_eras
    )
    reference_cpu = reference_seconds["cpu"] / reference_eras
    print(
        f"numerai-tools, with dependent columns, first {reference_eras} eras: "
        f"{reference_per_era:.2f} s per era, CPU {reference_cpu:.2f} s (fnc "
        f"{reference_seconds['fnc'] / reference_eras:.2f}, feature exposure "
        f"{reference_seconds['feature_exposure'] / reference_eras:.2f}; 1 BLAS thread)"
    )
    worst = timings["with dependent columns"]
    print(
        f"speed ratio (numerai-tools / fxml per era, with dependent columns): "
        f"{reference_per_era / worst:.0f}x wall, "
        f"{reference_cpu / cpu_timings['with dependent columns']:.0f}x CPU"
    )
    compared = ours.loc[expected.index]
    for metric in ("fnc", "feature_exposure"):
        print(f"max |diff| {metric}: {largest_difference(compared, expected, metric)}")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")

    full_rows = args.full_eras * args.full_rows_per_era
    scale = args.full_rows_per_era / args.rows_per_era * args.full_eras
    print(
        f"\nextrapolated full validation set ({args.full_eras} eras x "
        f"{args.full_rows_per_era:,} rows = {full_rows / 1e6:.1f}M rows, {args.features} "
        "features; time per era linear in rows; CPU seconds of all threads, about the wall "
        "time on otherwise idle cores):"
    )
    for label in timings:
        wall, cpu = timings[label] * scale, cpu_timings[label] * scale
        print(f"  fxml, {label}: {wall / 60:.1f} min at this load, {cpu / 60:.1f} min CPU")
    wall, cpu = reference_per_era * scale, reference_cpu * scale
    print(f"  numerai-tools: {wall / 3600:.1f} h at this load, {cpu / 3600:.1f} h CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--eras", type=int, default=200)
    parser.add_argument("--features", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3, help="fxml timing: median of N runs")
    parser.add_argument("--comparison", action="store_true",
                        help="also MPC and the comparison diagnostics (see comparison_report)")
    parser.add_argument(
        "--rows-per-era", type=int, default=None, help="full-width mode: rows in each era"
    )
    parser.add_argument(
        "--reference-eras", type=int, default=2, help="full-width mode: eras numerai-tools scores"
    )
    parser.add_argument("--full-eras", type=int, default=600, help="extrapolation: eras")
    parser.add_argument(
        "--full-rows-per-era", type=int, default=6000, help="extrapolation: rows per era"
    )
    args = parser.parse_args()
    if args.rows_per_era is None:
        default_benchmark(args)
    else:
        full_width_benchmark(args)


if __name__ == "__main__":
    main()
