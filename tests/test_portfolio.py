"""MPC and the comparison diagnostics against numerai-tools, per era, and end to end from a run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from numerai_tools.scoring import meta_portfolio_contribution, numerai_corr, spearman_correlation

from fxml.data.benchmarks import benchmark_predictions
from fxml.scoring import diagnostics
from fxml.scoring.diagnostics import (
    calmar_ratio,
    churn,
    compounded_annual_return,
    exposure_dissimilarity_by_era,
    rank_correlation_by_era,
    top_bottom_corr_by_era,
)
from fxml.scoring.eras import encode_eras
from fxml.scoring.portfolio import meta_portfolio_contribution_by_era, neutralizer_basis
from tests.conftest import Workspace, assert_one_line_error

MODELS = ["model", "bench_a", "bench_b", "bench_c"]


@pytest.fixture(scope="module")
def portfolio_data() -> dict:
    rng = np.random.default_rng(7)
    eras = np.repeat([3, 4, 8, 11], [600, 450, 700, 520])
    n = eras.size
    signal = rng.standard_normal(n)
    predictions = signal[:, None] * [0.2, 0.5, 0.3, 0.1] + rng.standard_normal((n, 4))
    predictions[:, [0, 1]] = np.round(predictions[:, [0, 1]], 1)  # ties
    predictions[rng.random(n) < 0.02, 2] = np.nan  # a benchmark missing some ids
    targets = np.digitize(signal * 0.1 + rng.standard_normal(n), [-1.6, -0.7, 0.7, 1.6]) / 4.0
    targets[rng.random(n) < 0.04] = np.nan
    features = rng.integers(0, 5, (n, 5)).astype(np.int8)
    features[eras == 4, 3] = 2  # constant in one era
    ids = np.array([f"n{row:07d}" for row in range(n)])
    return {"eras": eras, "predictions": predictions, "targets": targets, "features": features,
            "ids": ids, "weights": rng.uniform(0.5, 2.0, n)}


def reference_mpc(data: dict, era: int, stakes: np.ndarray, neutralize: bool, weighted: bool) -> np.ndarray:
    rows = np.flatnonzero(data["eras"] == era)
    index = pd.Index(data["ids"][rows])
    predictions = pd.DataFrame(data["predictions"][rows], index=index, columns=MODELS)
    targets = pd.Series(data["targets"][rows], index=index)
    kept = index[predictions.notna().all(axis=1).to_numpy() & targets.notna().to_numpy()]
    weights = pd.Series(data["weights"][rows] if weighted else 1.0, index=index).loc[kept]
    if neutralize:
        keep_rows = rows[np.isin(index, kept)]
        neutralizers = pd.DataFrame(neutralizer_basis(data["features"][keep_rows]), index=kept)
    else:
        neutralizers = pd.DataFrame(index=kept)
    result = meta_portfolio_contribution(predictions, pd.Series(stakes, index=MODELS), neutralizers,
                                         weights, targets)
    return result.to_numpy()


@pytest.mark.parametrize("neutralize", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("stakes", [[1.0, 3.0, 0.5, 2.0], [2.0, 0.0, 0.5, 1.0]])
def test_mpc_equals_numerai_tools_per_era(portfolio_data: dict, neutralize: bool, weighted: bool,
                                          stakes: list[float]) -> None:
    data = portfolio_data
    stakes = np.array(stakes)  # the second: a benchmark without stake
    codes = encode_eras(data["eras"])
    ours = meta_portfolio_contribution_by_era(
        data["predictions"], stakes, data["targets"], codes.codes, codes.n_eras,
        sample_weights=data["weights"] if weighted else None,
        neutralizers=data["features"] if neutralize else None)
    expected = [reference_mpc(data, int(era), stakes, neutralize, weighted)[0] for era in codes.labels]
    assert ours == pytest.approx(expected, abs=1e-9)
    assert np.abs(expected).min() > 1e-5  # real, non-zero contributions were compared


def test_mpc_depends_on_stakes(portfolio_data: dict) -> None:
    data = portfolio_data
    codes = encode_eras(data["eras"])
    equal = meta_portfolio_contribution_by_era(data["predictions"], np.ones(4), data["targets"],
                                               codes.codes, codes.n_eras)
    heavy = meta_portfolio_contribution_by_era(data["predictions"], np.array([10.0, 1, 1, 1]),
                                               data["targets"], codes.codes, codes.n_eras)
    assert np.abs(equal - heavy).max() > 1e-4


@pytest.mark.parametrize("columns_at_a_time", [512, 2])
def test_diagnostics_equal_numerai_tools_per_era(portfolio_data: dict, columns_at_a_time: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnostics, "EXPOSURE_COLUMNS", columns_at_a_time)
    data = portfolio_data
    prediction, meta = data["predictions"][:, 1], data["predictions"][:, 2]  # ties; NaNs
    codes = encode_eras(data["eras"])
    top_bottom = top_bottom_corr_by_era(prediction, data["targets"], codes.codes, codes.n_eras, 100)
    rank_corr = rank_correlation_by_era(prediction, meta, codes.codes, codes.n_eras)
    dissimilarity = exposure_dissimilarity_by_era(prediction, meta, data["features"], codes.codes,
                                                  codes.n_eras)
    for position, era in enumerate(codes.labels):
        rows = np.flatnonzero(data["eras"] == era)
        index = pd.Index(data["ids"][rows])
        frame = pd.DataFrame({"prediction": prediction[rows]}, index=index)
        targets = pd.Series(data["targets"][rows], index=index, name="target")
        expected = numerai_corr(frame, targets, top_bottom=100)["prediction"]
        assert top_bottom[position] == pytest.approx(expected, abs=1e-12)
        both = ~np.isnan(meta[rows])
        expected_rank = spearman_correlation(pd.Series(meta[rows][both], index=index[both]),
                                             pd.Series(prediction[rows][both], index=index[both]))
        assert rank_corr[position] == pytest.approx(expected_rank, abs=1e-12)
        features = pd.DataFrame(data["features"][rows][both], index=index[both]).astype(float)
        model_exposure = features.corrwith(pd.Series(prediction[rows][both], index=index[both]))
        meta_exposure = features.corrwith(pd.Series(meta[rows][both], index=index[both]))
        usable = model_exposure.notna() & meta_exposure.notna()
        expected_dissimilarity = 1 - (model_exposure[usable] @ meta_exposure[usable]) / (
            meta_exposure[usable] @ meta_exposure[usable])
        assert dissimilarity[position] == pytest.approx(expected_dissimilarity, abs=1e-10)


def test_churn_apy_and_calmar_by_hand() -> None:
    assert churn({"a": 0.1, "b": 0.2, "c": 0.3}, {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.0}) == 0.0
    assert churn({"a": 0.1, "b": 0.2, "c": 0.3}, {"a": 0.3, "b": 0.2, "c": 0.1}) == pytest.approx(2.0)
    assert np.isnan(churn({"a": 1.0}, {"b": 1.0}))
    assert compounded_annual_return(np.full(26, 0.01)) == pytest.approx(1.01**52 - 1)
    # annualised mean 52 * 0.01 over the drawdown 0.02 of the cumulative score
    assert calmar_ratio(np.array([0.02, -0.02, 0.03])) == pytest.approx(52 * 0.01 / 0.02)


def test_benchmark_predictions_aligned_by_id(tmp_path) -> None:
    path = tmp_path / "validation_benchmark_models.parquet"
    pd.DataFrame({"id": ["b", "a", "c"], "era": ["0001"] * 3, "data_type": ["validation"] * 3,
                  "m1": [0.2, 0.1, 0.3], "m2": [0.5, 0.4, np.nan]}).to_parquet(path)
    names, matrix = benchmark_predictions(path, np.array(["a", "z", "c"]))
    assert names == ["m1", "m2"]
    np.testing.assert_array_equal(matrix, [[0.1, 0.4], [np.nan, np.nan], [0.3, np.nan]])


@pytest.fixture(scope="module")
def mpc_run(workspace: Workspace):
    result = workspace.train("tracking.run_name=mpc-run", "model.n_estimators=40", "scorer.top_bottom=50",
                           "scorer.mpc_own_stake=2.0")
    assert result.returncode == 0, result.stderr
    run = next(r for r in workspace.runs() if r.info.run_name == "mpc-run")
    return result, run


def assert_logged_mpc_equals_numerai_tools(workspace: Workspace, run, own_stake: float) -> dict:
    """Recompute a run's per-era MPC with numerai-tools from its logged predictions and the
    release's benchmark file."""
    logged = {m.step: m.value for m in workspace.client().get_metric_history(run.info.run_id, "era_mpc")}
    frame = workspace.artifact_frame(run, "predictions/validation.parquet")
    release = next((workspace.root / "data" / "synthetic").glob("*/validation_benchmark_models.parquet"))
    benchmarks = pd.read_parquet(release)
    models = [c for c in benchmarks.columns if c not in ("era", "data_type")]
    assert len(models) >= 2  # a real portfolio
    frame = frame.set_index("id").join(benchmarks[models])
    stakes = pd.Series([own_stake] + [1.0] * len(models), index=["prediction", *models])
    expected = {}
    for era, rows in frame.groupby("era"):
        rows = rows.dropna(subset=["target"])
        if rows.empty:
            continue
        kept = rows.index[rows[stakes.index].notna().all(axis=1)]
        contribution = meta_portfolio_contribution(
            rows[stakes.index], stakes, pd.DataFrame(index=kept), pd.Series(1.0, index=kept),
            rows["target"])
        expected[int(era)] = contribution["prediction"]
    assert sorted(logged) == sorted(expected)
    for era, value in expected.items():
        assert logged[era] == pytest.approx(value, abs=1e-9)
    return expected


def test_run_logs_mpc_equal_to_numerai_tools_from_logged_predictions(workspace: Workspace,
                                                                    mpc_run) -> None:
    result, run = mpc_run
    assert "MPC (local portfolio, not TC)" in result.stdout
    expected = assert_logged_mpc_equals_numerai_tools(workspace, run, own_stake=2.0)
    metrics = run.data.metrics
    assert metrics["mpc_mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-9)
    for name in ("mpc_sharpe", "mpc_std", "mpc_max_drawdown", "meta_model_rank_corr_mean",
                 "exposure_dissimilarity_mean", "tb50_corr_mean", "payout_apy", "payout_calmar"):
        assert np.isfinite(metrics[name]), name
    assert not any("tc" in name.split("_") for name in metrics)


def test_a_later_run_reuses_the_prepared_portfolio_and_stays_exact(workspace: Workspace,
                                                                   mpc_run) -> None:
    cached = list((workspace.root / "data" / "synthetic" / ".fxml-cache").glob("*.npz"))
    assert len(cached) >= 2  # the benchmark portfolio and the meta model's side
    stamps = {path: path.stat().st_mtime_ns for path in cached}
    result = workspace.train("model=ridge", "tracking.run_name=mpc-ridge", "tracking.log_model=false",
                           "scorer.top_bottom=50", "scorer.mpc_own_stake=2.0")
    assert result.returncode == 0, result.stderr
    run = next(r for r in workspace.runs() if r.info.run_name == "mpc-ridge")
    assert_logged_mpc_equals_numerai_tools(workspace, run, own_stake=2.0)
    assert {path: path.stat().st_mtime_ns for path in cached} == stamps  # loaded, not rebuilt


def test_run_logs_diagnostics_equal_to_numerai_tools(workspace: Workspace, mpc_run) -> None:
    _, run = mpc_run
    per_era = workspace.artifact_frame(run, "metrics/per_era.csv").set_index("era")
    frame = workspace.artifact_frame(run, "predictions/validation.parquet").astype({"target": float})
    for era, rows in frame.dropna(subset=["target"]).groupby("era"):
        rows = rows.set_index("id").sort_index()
        top_bottom = numerai_corr(rows[["prediction"]], rows["target"], top_bottom=50)["prediction"]
        assert per_era.loc[int(era), "tb50_corr"] == pytest.approx(top_bottom, abs=1e-9)
    for era, rows in frame.groupby("era"):
        rows = rows.set_index("id").dropna(subset=["meta_model"]).sort_index()
        if int(era) in per_era.index and len(rows):
            expected = spearman_correlation(rows["meta_model"], rows["prediction"])
            assert per_era.loc[int(era), "meta_model_rank_corr"] == pytest.approx(expected, abs=1e-9)


def test_mpc_stake_for_an_unknown_benchmark_is_one_line(workspace: Workspace) -> None:
    result = workspace.train("model=ridge", "tracking.log_model=false", "+scorer.mpc_stakes.nope=2.0")
    assert_one_line_error(result, "scorer.mpc_stakes names nope")


def test_run_with_neutralizers_and_sample_weights_equals_numerai_tools(workspace: Workspace,
                                                                       mpc_run) -> None:
    release = next((workspace.root / "data" / "synthetic").glob("*/validation.parquet")).parent
    validation = pd.read_parquet(release / "validation.parquet")
    small = json.loads((release / "features.json").read_text())["feature_sets"]["small"]
    weights = pd.DataFrame({"id": validation.index.astype(str),
                            "weight": np.linspace(0.5, 1.5, len(validation))})
    weights_path = workspace.root / "weights.parquet"
    weights.to_parquet(weights_path, index=False)
    result = workspace.train("model=ridge", "tracking.run_name=mpc-neutral", "tracking.log_model=false",
                           "scorer.mpc_neutralizers=small", f"scorer.mpc_sample_weights={weights_path}")
    assert result.returncode == 0, result.stderr
    run = next(r for r in workspace.runs() if r.info.run_name == "mpc-neutral")
    logged = {m.step: m.value for m in workspace.client().get_metric_history(run.info.run_id, "era_mpc")}
    frame = workspace.artifact_frame(run, "predictions/validation.parquet").set_index("id")
    benchmarks = pd.read_parquet(release / "validation_benchmark_models.parquet")
    models = [c for c in benchmarks.columns if c not in ("era", "data_type")]
    frame = frame.join(benchmarks[models]).join(validation[small]).join(weights.set_index("id"))
    stakes = pd.Series(1.0, index=["prediction", *models])
    compared = 0
    for era, rows in frame.dropna(subset=["target"]).groupby("era"):
        kept = rows.index[rows[stakes.index].notna().all(axis=1)]
        basis = pd.DataFrame(neutralizer_basis(rows.loc[kept, small].to_numpy()), index=kept)
        expected = meta_portfolio_contribution(rows[stakes.index], stakes, basis,
                                               rows.loc[kept, "weight"], rows["target"])
        assert logged[int(era)] == pytest.approx(expected["prediction"], abs=1e-9)
        compared += 1
    assert compared == len(logged) > 0
