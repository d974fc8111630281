"""fxml.scoring against numerai-tools applied era by era.

Observed max absolute difference against numerai-tools on these fixtures (seeds 0-5):
6.4e-16 over all columns (corr, mmc, bmc, fnc, feature_exposure); the assertions use the
1e-6 hard bound. At 300 features with dependent columns (make_wide_data): 2.6e-16,
asserted below 1e-12.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from numerai_tools.scoring import (
    correlation_contribution,
    feature_neutral_corr,
    max_feature_correlation,
    numerai_corr,
    sharpe_ratio,
)
from threadpoolctl import threadpool_limits

from fxml.data.references import PortfolioInputs, ScoringInputs
from fxml.scoring import SCORE_COLUMNS, corr_by_era, score_eras, summarize, transforms
from fxml.scoring import metrics as scoring_metrics
from fxml.scoring.eras import encode_eras, order_within_eras
from fxml.scoring.scorer import NumeraiScorer
from fxml.scoring.summary import CONSTANT_PREDICTIONS, LEVELS
from fxml.scoring.transforms import (
    centre_gram_upper,
    neutralizing_coefficients,
    raw_gram_upper,
    tie_kept_rank,
)

TOLERANCE = 1e-6
BINS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
BIN_PROBABILITIES = np.array([0.05, 0.2, 0.5, 0.2, 0.05])


def make_data(seed: int = 0, n_features: int = 12) -> dict[str, np.ndarray]:
    """Eras of different sizes with every awkward case the scorer must survive."""
    rng = np.random.default_rng(seed)
    era_numbers = np.array([3, 4, 5, 7, 8, 9, 11, 12, 15])
    sizes = np.array([240, 410, 300, 520, 180, 350, 260, 390, 200])
    eras = np.repeat(era_numbers, sizes)
    n = eras.size
    targets = rng.choice(BINS, size=n, p=BIN_PROBABILITIES)
    signal = targets - 0.5
    # rounded to 2 decimals: many ties
    predictions = np.round(np.clip(0.5 + 0.08 * signal + 0.1 * rng.standard_normal(n), 0, 1), 2)
    meta_model = 0.5 + 0.05 * signal + 0.1 * rng.standard_normal(n) + 0.3 * (predictions - 0.5)
    benchmark = np.round(0.5 + 0.04 * signal + 0.1 * rng.standard_normal(n), 3)
    features = rng.integers(0, 5, size=(n, n_features)).astype(np.int8)
    features[:, 0] = 2  # constant everywhere: rank-deficient with the constant column
    features[eras == 7, 1] = 4  # constant inside one era only
    features[:, 2] = np.clip(features[:, 3] + (rng.random(n) < 0.1), 0, 4)  # near-collinear
    features[:, 4] = features[:, 5]  # duplicate column: exactly collinear
    features[:, 6] = 4 - features[:, 7]  # mirrored column: exactly collinear

    # an era fully tied but one row
    tied = np.flatnonzero(eras == 5)
    predictions[tied] = 0.5
    predictions[tied[17]] = 0.75
    # NaN targets: a few rows in some eras (under numerai-tools' 20% filter limit), all in one
    for era, fraction in ((4, 0.15), (8, 0.08), (12, 0.05)):
        rows = np.flatnonzero(eras == era)
        targets[rng.choice(rows, size=int(fraction * rows.size), replace=False)] = np.nan
    targets[eras == 15] = np.nan
    # NaN meta model and benchmark on a few rows
    for era in (3, 8, 11):
        rows = np.flatnonzero(eras == era)
        meta_model[rng.choice(rows, size=rows.size // 10, replace=False)] = np.nan
    rows = np.flatnonzero(eras == 9)
    benchmark[rng.choice(rows, size=rows.size // 8, replace=False)] = np.nan

    # unsorted input rows
    shuffle = rng.permutation(n)
    return {
        "predictions": predictions[shuffle],
        "targets": targets[shuffle],
        "eras": eras[shuffle],
        "meta_model": meta_model[shuffle],
        "benchmark": benchmark[shuffle],
        "features": features[shuffle],
    }


def reference_per_era(data: dict[str, np.ndarray], with_features: bool = True) -> pd.DataFrame:
    """numerai-tools, one era at a time, on the pandas inputs it expects."""
    records = []
    n_features = data["features"].shape[1]
    feature_names = [f"feature_{j}" for j in range(n_features)]
    for era in np.unique(data["eras"]):
        rows = np.flatnonzero(data["eras"] == era)
        if np.isnan(data["targets"][rows]).all():
            continue
        ids = pd.Index([f"id{row:08d}" for row in rows])  # ascending rows: sorted ids
        predictions = pd.DataFrame({"prediction": data["predictions"][rows]}, index=ids)
        targets = pd.Series(data["targets"][rows], index=ids, name="target")
        record = {"era": int(era)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            record["corr"] = numerai_corr(predictions, targets)["prediction"]
            for name, column in (("mmc", "meta_model"), ("bmc", "benchmark")):
                reference = pd.Series(data[column][rows], index=ids, name=column)
                record[name] = correlation_contribution(predictions, reference, targets)[
                    "prediction"
                ]
            if with_features:
                features = pd.DataFrame(data["features"][rows], index=ids, columns=feature_names)
                record["fnc"] = feature_neutral_corr(predictions, features, targets)["prediction"]
                record["feature_exposure"] = max_feature_correlation(
                    predictions["prediction"], features
                )[1]
        records.append(record)
    return pd.DataFrame(records).set_index("era")


def score(data: dict[str, np.ndarray], features: np.ndarray | None = None) -> pd.DataFrame:
    return score_eras(
        data["predictions"],
        data["targets"],
        data["eras"],
        meta_model=data["meta_model"],
        benchmark=data["benchmark"],
        features=data["features"] if features is None else features,
    )


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return make_data()


@pytest.fixture(scope="module")
def expected(data: dict[str, np.ndarray]) -> pd.DataFrame:
    return reference_per_era(data)


def max_difference(actual: pd.DataFrame, reference: pd.DataFrame, column: str) -> float:
    a = actual[column].to_numpy()
    b = reference[column].to_numpy(dtype=np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), column
    both = ~np.isnan(a)
    return float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0


def test_per_era_scores_match_numerai_tools(data, expected):
    actual = score(data)
    assert list(actual.columns) == list(SCORE_COLUMNS)
    assert actual.index.name == "era"
    assert actual.index.is_monotonic_increasing
    assert np.issubdtype(actual.index.dtype, np.integer)
    # era 15 has only NaN targets: absent
    assert list(actual.index) == [3, 4, 5, 7, 8, 9, 11, 12]
    assert list(actual.index) == list(expected.index)
    for column in SCORE_COLUMNS:
        difference = max_difference(actual, expected, column)
        assert difference < TOLERANCE, (column, difference)
    # the fixture must exercise real values, not NaN everywhere
    assert actual.notna().all().all()


def test_feature_memory_order_and_chunking_do_not_change_scores(data, expected, monkeypatch):
    c_order = np.ascontiguousarray(data["features"])
    f_order = np.asfortranarray(data["features"])
    assert f_order.flags.f_contiguous and not f_order.flags.c_contiguous
    from_c = score(data, c_order)
    from_f = score(data, f_order)
    # eras split into float blocks of 40 rows (and syrk passes of 80)
    monkeypatch.setattr(scoring_metrics, "FLOAT_BLOCK_BYTES", 8 * 40 * data["features"].shape[1])
    row_blocks = score(data, f_order)
    for frame in (from_c, from_f, row_blocks):
        for column in ("fnc", "feature_exposure"):
            assert max_difference(frame, expected, column) < TOLERANCE, column


def test_only_requested_columns():
    data = make_data(seed=1)
    actual = score_eras(data["predictions"], data["targets"], data["eras"])
    assert list(actual.columns) == ["corr"]
    expected = reference_per_era(data, with_features=False)
    assert max_difference(actual, expected, "corr") < TOLERANCE
    with_mm = score_eras(
        data["predictions"], data["targets"], data["eras"], meta_model=data["meta_model"]
    )
    assert list(with_mm.columns) == ["corr", "mmc"]
    assert max_difference(with_mm, expected, "mmc") < TOLERANCE


def test_degenerate_eras_give_nan():
    data = make_data(seed=2)
    eras = data["eras"]
    data["meta_model"][eras == 4] = np.nan  # no meta model in era 4
    # constant predictions in era 9; 0.3 is a value whose float mean is not exactly 0.3
    data["predictions"][eras == 9] = 0.3
    actual = score(data)
    assert np.isnan(actual.loc[4, "mmc"])
    assert not np.isnan(actual.loc[4, "corr"]) and not np.isnan(actual.loc[4, "bmc"])
    # constant predictions: every score of the era is NaN (MMC and BMC too, not 0), flagged
    for column in SCORE_COLUMNS:
        assert np.isnan(actual.loc[9, column]), column
    assert actual[CONSTANT_PREDICTIONS].to_dict() == {era: float(era == 9) for era in actual.index}
    others = actual.drop(index=[4, 9])
    assert others.notna().all().all()


def release_like_inputs(data: dict[str, np.ndarray], rows: np.ndarray) -> ScoringInputs:
    """What the data layer hands the scorer for a validation split: features, meta model,
    benchmark and three benchmark models for MPC, on ``rows`` of ``data``."""
    n_features = data["features"].shape[1]
    benchmarks = np.random.default_rng(7).random((data["eras"].size, 3))
    return ScoringInputs(
        "validation",
        data["targets"][rows],
        data["eras"][rows],
        data["features"][rows],
        [f"feature_{j}" for j in range(n_features)],
        meta_model=data["meta_model"][rows],
        benchmark=data["benchmark"][rows],
        benchmark_name="bench_0",
        portfolio=PortfolioInputs(["bench_0", "bench_1", "bench_2"], benchmarks[rows], None, None),
    )


CONSTANT_WARNING = (
    "scoring: the predictions are constant in {count} era(s) ({eras}); every score of those "
    "eras is NaN, so each summary leaves them out"
)


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == logger and record.levelno == logging.WARNING
    ]


def test_constant_prediction_era_is_left_out_of_every_score_and_summary(caplog):
    data = make_data(seed=1)
    eras = data["eras"]
    data["predictions"][eras == 9] = 0.3
    others = np.flatnonzero(eras != 9)
    # numerai-tools gives NaN CORR but zero MMC and BMC there (the inconsistency fixed here);
    # its FNC fails on constant predictions, so the full reference covers the other eras
    constant_era = reference_per_era(data, with_features=False).loc[9]
    assert np.isnan(constant_era["corr"])
    assert constant_era["mmc"] == 0.0 and constant_era["bmc"] == 0.0
    expected = reference_per_era({name: values[others] for name, values in data.items()})
    scorer = NumeraiScorer(top_bottom=50)
    with caplog.at_level(logging.WARNING):
        scores = scorer.score(data["predictions"], release_like_inputs(data, np.arange(eras.size)))
    assert warnings_of(caplog, "fxml.scoring.metrics") == [
        CONSTANT_WARNING.format(count=1, eras="9")
    ]
    per_era = scores.per_era
    score_columns = [column for column in per_era if column != CONSTANT_PREDICTIONS]
    assert {"corr", "mmc", "bmc", "fnc", "payout", "mpc", "tb50_corr"} <= set(score_columns)
    assert per_era.loc[9, score_columns].isna().all()
    assert per_era[CONSTANT_PREDICTIONS].to_dict() == {era: float(era == 9) for era in per_era.index}

    varying = per_era.drop(index=9)
    assert varying[score_columns].notna().all().all()
    for column in SCORE_COLUMNS:
        difference = max_difference(varying, expected, column)
        assert difference < TOLERANCE, (column, difference)
    # the other eras are exactly what they are when the constant era is not scored at all
    alone = scorer.score(data["predictions"][others], release_like_inputs(data, others)).per_era
    assert CONSTANT_PREDICTIONS not in alone
    pd.testing.assert_frame_equal(varying[score_columns], alone, rtol=0, atol=0)

    # every summary covers the same seven eras: numerai-tools' MMC mean would count era 9's 0
    summary = scores.summary
    assert summary["n_eras"] == 7 and summary["constant_prediction_eras"] == 1.0
    assert summary["corr_mean"] == pytest.approx(expected["corr"].mean(), abs=TOLERANCE)
    assert summary["mmc_mean"] == pytest.approx(expected["mmc"].mean(), abs=TOLERANCE)
    with_zero = np.append(expected["mmc"].to_numpy(), constant_era["mmc"]).mean()
    assert summary["mmc_mean"] != pytest.approx(with_zero, abs=TOLERANCE)
    for column in score_columns:
        assert summary[f"{column}_mean"] == pytest.approx(varying[column].mean(), rel=1e-12), column
    assert f"{CONSTANT_PREDICTIONS}_mean" not in summary


def test_constant_prediction_warning_names_the_first_eras_once(caplog):
    data = make_data(seed=4)
    for era in (3, 4, 5, 7, 8, 11):
        data["predictions"][data["eras"] == era] = 0.6
    # constant over the rows with a target, not over the era: its NaN-target rows differ
    rows = np.flatnonzero(data["eras"] == 12)
    data["predictions"][rows] = np.where(np.isnan(data["targets"][rows]), 0.9, 0.2)
    with caplog.at_level(logging.WARNING):
        actual = score(data)
    assert warnings_of(caplog, "fxml.scoring.metrics") == [
        CONSTANT_WARNING.format(count=7, eras="3, 4, 5, 7, 8, ...")
    ]
    assert list(actual.index[actual[CONSTANT_PREDICTIONS] == 1.0]) == [3, 4, 5, 7, 8, 11, 12]
    assert actual.loc[[3, 4, 5, 7, 8, 11, 12], list(SCORE_COLUMNS)].isna().all().all()
    assert actual.loc[9, list(SCORE_COLUMNS)].notna().all()
    assert summarize(actual)["constant_prediction_eras"] == 7.0


def test_varying_predictions_add_no_flag_nor_warning(data, caplog):
    with caplog.at_level(logging.WARNING):
        actual = score(data)
    assert warnings_of(caplog, "fxml.scoring.metrics") == []
    assert list(actual.columns) == list(SCORE_COLUMNS)
    assert summarize(actual)["constant_prediction_eras"] == 0.0


def test_summary_counts_constant_prediction_eras_of_concatenated_folds():
    index = pd.Index([1, 2, 3], name="era")
    flagged = pd.DataFrame(
        {"corr": [0.1, np.nan, 0.2], CONSTANT_PREDICTIONS: [0.0, 1.0, 0.0]}, index=index
    )
    plain = pd.DataFrame({"corr": [0.3, -0.1]}, index=pd.Index([4, 5], name="era"))
    flagged_again = flagged.set_axis(pd.Index([6, 7, 8], name="era")).assign(
        constant_predictions=[1.0, 0.0, 0.0], corr=[np.nan, 0.1, 0.1]
    )
    summary = summarize(pd.concat([flagged, plain, flagged_again]))
    assert summary["constant_prediction_eras"] == 2.0
    assert summary["n_eras"] == 6
    assert summary["corr_mean"] == pytest.approx(0.7 / 6)
    assert not [key for key in summary if key.startswith(CONSTANT_PREDICTIONS)]


FNC_WARNING = (
    "scoring: FNC left out of {count} era(s) with no more rows than the {features} features "
    "and the constant they are neutralised against"
)


def test_fnc_is_nan_in_eras_with_no_more_rows_than_features_and_constant(caplog):
    # 12 features: eras of 9, 12 and 13 rows are fitted exactly (13 coefficients with the
    # constant), so the residual is rounding noise; 14 rows leave one degree of freedom
    rng = np.random.default_rng(8)
    n_features = 12
    sizes = np.array([9, 12, 13, 14, 17, 200])
    eras = np.repeat(np.array([1, 2, 3, 4, 5, 6]), sizes)
    n = eras.size
    data = {
        "predictions": np.round(rng.random(n), 3),
        "targets": rng.choice(BINS, size=n, p=BIN_PROBABILITIES),
        "eras": eras,
        "features": rng.integers(0, 5, size=(n, n_features)).astype(np.int8),
    }
    with caplog.at_level(logging.WARNING):
        actual = score_features(data, data["features"])
    assert warnings_of(caplog, "fxml.scoring.metrics") == [
        FNC_WARNING.format(count=3, features=n_features)
    ]
    expected = reference_feature_metrics(data)
    # numerai-tools gives a number in the exactly fitted eras too
    assert expected.loc[[1, 2, 3], "fnc"].notna().all()
    assert actual.loc[[1, 2, 3], "fnc"].isna().all()
    fitted = actual.drop(index=[1, 2, 3])
    assert fitted["fnc"].notna().all()
    assert np.abs(fitted["fnc"] - expected["fnc"].drop([1, 2, 3])).max() < WIDE_TOLERANCE
    # only FNC is left out: CORR and exposure (no regression) stay as numerai-tools gives them
    assert actual["corr"].notna().all()
    assert max_difference(actual, expected, "feature_exposure") < WIDE_TOLERANCE


def test_nan_predictions_raise(data):
    predictions = data["predictions"].copy()
    predictions[[3, 10]] = np.nan
    with pytest.raises(ValueError, match=r"predictions contain 2 NaN"):
        score_eras(predictions, data["targets"], data["eras"])


def test_bad_shapes_raise(data):
    with pytest.raises(ValueError, match="targets"):
        score_eras(data["predictions"], data["targets"][:-1], data["eras"])
    with pytest.raises(ValueError, match="features"):
        score_eras(
            data["predictions"], data["targets"], data["eras"], features=data["features"][:5]
        )
    with pytest.raises(ValueError, match="integer"):
        score_eras(data["predictions"], data["targets"], data["eras"].astype(str))


def test_tie_kept_rank_equals_pandas_average_rank():
    rng = np.random.default_rng(5)
    eras = rng.integers(0, 6, size=3000) * 10 + 100
    values = np.round(rng.random(3000), 1)  # heavy ties
    # era 110 repeats era 100's largest value: a run of equal values across an era boundary
    values[eras == 110] = values[eras == 100].max()
    codes = encode_eras(eras)
    order = order_within_eras(values, codes.codes, codes.n_eras)
    ranks = tie_kept_rank(values, codes.codes, codes.n_eras, order)
    frame = pd.DataFrame({"era": eras, "value": values})
    grouped = frame.groupby("era")["value"]
    expected = (grouped.rank(method="average") - 0.5) / grouped.transform("count")
    np.testing.assert_array_equal(ranks, expected.to_numpy())


def test_summary_matches_numerai_tools_and_pandas(data, expected):
    summary = summarize(score(data))
    for column in SCORE_COLUMNS:
        series = expected[column].dropna()
        cumulative = series.cumsum()
        drawdown = (cumulative.expanding(min_periods=1).max() - cumulative).max()
        assert summary[f"{column}_mean"] == pytest.approx(series.mean(), abs=TOLERANCE)
        assert summary[f"{column}_std"] == pytest.approx(np.std(series, ddof=0), abs=TOLERANCE)
        if column in LEVELS:  # a level (feature exposure) has no sharpe nor drawdown
            assert f"{column}_sharpe" not in summary and f"{column}_max_drawdown" not in summary
            continue
        assert summary[f"{column}_sharpe"] == pytest.approx(sharpe_ratio(series), abs=TOLERANCE)
        assert summary[f"{column}_max_drawdown"] == pytest.approx(drawdown, abs=TOLERANCE)
    assert summary["feature_exposure_max"] == pytest.approx(
        expected["feature_exposure"].mean(), abs=TOLERANCE
    )
    assert summary["n_eras"] == len(expected)


def test_summary_skips_nan_eras_and_measures_drawdown_from_first_peak():
    per_era = pd.DataFrame(
        {
            "corr": [0.1, -0.2, np.nan, 0.05, -0.1, 0.3],
            "mmc": [-0.1, -0.1, 0.0, 0.0, 0.0, 0.0],
            "payout": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06],  # a column a caller added
        },
        index=pd.Index([1, 2, 3, 4, 5, 6], name="era"),
    )
    summary = summarize(per_era)
    # cumulative corr 0.1, -0.1, -0.05, -0.15, 0.15: deepest fall 0.25 below the 0.1 peak
    assert summary["corr_max_drawdown"] == pytest.approx(0.25)
    assert summary["corr_mean"] == pytest.approx(0.03)
    assert summary["n_eras"] == 5
    # the running peak starts at the first era's score (-0.1), not at zero
    assert summary["mmc_max_drawdown"] == pytest.approx(0.1)
    assert "fnc_mean" not in summary
    assert summary["payout_mean"] == pytest.approx(0.035)
    assert summary["payout_max_drawdown"] == 0.0


def make_wide_data(seed: int = 0, n_features: int = 300) -> dict[str, np.ndarray]:
    """Three eras at a realistic feature count, with the dependencies real eras have:
    constant features (everywhere, in one era), duplicates, mirrors (4 - x), an exact sum of
    two features and a near-duplicate. Every era has more rows than features, so the
    neutralized residual is well defined (with fewer, it is rounding noise)."""
    rng = np.random.default_rng(seed)
    sizes = np.array([700, 1000, 1300])
    eras = np.repeat(np.array([21, 22, 23]), sizes)
    n = eras.size
    # correlated features: quantised (latent group factor + noise), like Numerai's bins
    latent = rng.standard_normal((n, 10))
    groups = rng.integers(0, 10, n_features)
    raw = 0.7 * latent[:, groups] + rng.standard_normal((n, n_features))
    features = np.digitize(raw, np.quantile(raw, [0.2, 0.4, 0.6, 0.8])).astype(np.int8)
    features[:, 0] = 2  # constant everywhere
    features[eras == 22, 1] = 0  # constant in one era
    features[:, 10:20] = features[:, 20:30]  # duplicates
    features[:, 30:35] = 4 - features[:, 35:40]  # mirrors
    halves = rng.integers(0, 3, (n, 2)).astype(np.int8)
    features[:, 40], features[:, 41], features[:, 42] = halves[:, 0], halves[:, 1], halves.sum(1)
    flips = rng.random(n) < 0.02
    features[:, 43] = np.where(flips, 4 - features[:, 44], features[:, 44])  # near-duplicate

    targets = rng.choice(BINS, size=n, p=BIN_PROBABILITIES)
    signal = targets - 0.5
    exposure = (features[:, 50:60].mean(axis=1) - 2.0) / 2.0
    predictions = 0.5 + 0.05 * signal + 0.1 * exposure + 0.1 * rng.standard_normal(n)
    predictions = np.round(predictions, 3)  # ties
    targets[rng.choice(n, size=n // 50, replace=False)] = np.nan
    shuffle = rng.permutation(n)
    return {
        "predictions": predictions[shuffle],
        "targets": targets[shuffle],
        "eras": eras[shuffle],
        "features": features[shuffle],
    }


def reference_feature_metrics(data: dict[str, np.ndarray]) -> pd.DataFrame:
    """numerai-tools' feature_neutral_corr and max_feature_correlation, era by era."""
    names = [f"feature_{j}" for j in range(data["features"].shape[1])]
    records = []
    for era in np.unique(data["eras"]):
        rows = np.flatnonzero(data["eras"] == era)
        ids = pd.Index([f"id{row:08d}" for row in rows])
        predictions = pd.DataFrame({"prediction": data["predictions"][rows]}, index=ids)
        targets = pd.Series(data["targets"][rows], index=ids, name="target")
        features = pd.DataFrame(data["features"][rows], index=ids, columns=names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            records.append(
                {
                    "era": int(era),
                    "fnc": feature_neutral_corr(predictions, features, targets)["prediction"],
                    "feature_exposure": max_feature_correlation(
                        predictions["prediction"], features
                    )[1],
                }
            )
    return pd.DataFrame(records).set_index("era")


WIDE_TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def wide_data() -> dict[str, np.ndarray]:
    return make_wide_data()


@pytest.fixture(scope="module")
def wide_expected(wide_data) -> pd.DataFrame:
    return reference_feature_metrics(wide_data)


def score_features(data: dict[str, np.ndarray], features: np.ndarray) -> pd.DataFrame:
    return score_eras(data["predictions"], data["targets"], data["eras"], features=features)


def test_fnc_and_exposure_match_numerai_tools_at_300_features_with_dependencies(
    wide_data, wide_expected
):
    actual = score_features(wide_data, wide_data["features"])
    assert list(actual.index) == [21, 22, 23]
    for column in ("fnc", "feature_exposure"):
        difference = max_difference(actual, wide_expected, column)
        assert difference < WIDE_TOLERANCE, (column, difference)
    assert actual[["fnc", "feature_exposure"]].notna().all().all()
    # neutralizing changed the score: the comparison is not CORR against CORR
    assert ((actual["fnc"] - actual["corr"]).abs() > 1e-3).any()


@pytest.mark.slow
def test_fnc_and_exposure_match_numerai_tools_at_2748_features():
    # v5.2's `all` width; one era with more rows than features (numerai-tools' lstsq on it
    # takes tens of seconds, hence slow), with duplicated and constant columns
    rng = np.random.default_rng(6)
    n_rows, n_features = 2900, 2748
    latent = rng.standard_normal((n_rows, 40))
    raw = 0.7 * latent[:, rng.integers(0, 40, n_features)] + rng.standard_normal(
        (n_rows, n_features)
    )
    features = np.digitize(raw, np.quantile(raw, [0.2, 0.4, 0.6, 0.8])).astype(np.int8)
    features[:, :20] = features[:, 20:40]
    features[:, 40:45] = 2
    targets = rng.choice(BINS, size=n_rows, p=BIN_PROBABILITIES)
    exposure = (features[:, 100:110].mean(axis=1) - 2.0) / 2.0
    predictions = 0.5 + 0.05 * (targets - 0.5) + 0.1 * exposure + 0.1 * rng.standard_normal(n_rows)
    data = {
        "predictions": predictions,
        "targets": targets,
        "eras": np.full(n_rows, 700),
        "features": features,
    }
    actual = score_features(data, features)
    with threadpool_limits(limits=1, user_api="blas"):  # far faster on busy cores
        expected = reference_feature_metrics(data)
    for column in ("fnc", "feature_exposure"):
        difference = max_difference(actual, expected, column)
        assert difference < WIDE_TOLERANCE, (column, difference)


def test_threads_row_blocks_and_float_features_give_the_same_scores(
    wide_data, wide_expected, monkeypatch
):
    # threaded BLAS and a float copy of each era split into 200-row blocks
    monkeypatch.setattr(scoring_metrics, "THREADED_MIN_FEATURES", 1)
    monkeypatch.setattr(scoring_metrics, "FLOAT_BLOCK_BYTES", 8 * 200 * 300)
    threaded_blocks = score_features(wide_data, wide_data["features"])
    # non-integer features take the float64 Gram path; FNC and |corr| are invariant to
    # an affine map of each feature
    scaled = wide_data["features"] * 0.37 + 1.1
    from_floats = score_features(wide_data, scaled)
    for frame in (threaded_blocks, from_floats):
        for column in ("fnc", "feature_exposure"):
            difference = max_difference(frame, wide_expected, column)
            assert difference < WIDE_TOLERANCE, (column, difference)


@pytest.mark.parametrize("int8_product", [True, False])
def test_integer_gram_is_exact_in_passes(int8_product, monkeypatch):
    if int8_product:
        if transforms.int8_gram_product() is None:
            pytest.skip("torch's int8 matrix product does not run here")
        monkeypatch.setattr(transforms, "INT8_MATMUL_MIN_FEATURES", 0)
        monkeypatch.setattr(transforms, "INT8_MATMUL_MIN_ROWS", 0)
    else:
        monkeypatch.setattr(transforms, "int8_gram_product", lambda: None)
    rng = np.random.default_rng(3)
    features = rng.integers(-128, 128, size=(2500, 7)).astype(np.int8)
    # float32: |x| up to 128 allows 2**24 / 128**2 = 1024 rows per exact pass, so three
    # passes; int32: the 1,000 rows asked for, three passes as well
    gram = raw_gram_upper(features, rows_per_pass=1000)
    wide = features.astype(np.int64)
    np.testing.assert_array_equal(np.triu(gram), np.triu(wide.T @ wide).astype(np.float64))


@pytest.mark.parametrize(
    "case", ["independent", "nearly dependent", "duplicated", "dependent"]
)
def test_neutralizing_residual_equals_lstsq_with_rcond(case, monkeypatch):
    rng = np.random.default_rng(4)
    n_rows = 2000
    features = rng.integers(0, 5, size=(n_rows, 30)).astype(np.int8)
    if case == "nearly dependent":  # 1 - R^2 ~ 2e-4: too close for float32, kept in double
        features[:, 5] = features[:, 6]
        features[0, 5], features[0, 6] = 2, 1  # 1 - R^2 = 1 / (2000 x variance)
    if case in ("duplicated", "dependent"):  # exact pairs: dropped before the fast solve
        features[:, 5] = features[:, 6]
        features[:, 10] = 4 - features[:, 11]
    if case == "dependent":  # and a sum of two: the pivoted Cholesky drops it
        halves = rng.integers(0, 3, size=(n_rows, 2)).astype(np.int8)
        features[:, 7], features[:, 8], features[:, 9] = halves[:, 0], halves[:, 1], halves.sum(1)
    paths = []  # which solves ran: float32 refined (or rejected), pivoted Cholesky
    refined = transforms.refined_single_precision_solution

    def spy_refined(*args):
        solution = refined(*args)
        paths.append("refined" if solution is not None else "rejected")
        return solution

    def spy_pivoted(*args, **kwargs):
        paths.append("pivoted")
        return pivoted(*args, **kwargs)

    pivoted = transforms.lapack.dpstrf
    monkeypatch.setattr(transforms, "refined_single_precision_solution", spy_refined)
    monkeypatch.setattr(transforms.lapack, "dpstrf", spy_pivoted)

    values = rng.standard_normal(n_rows)
    sums = features.sum(axis=0, dtype=np.float64)
    centred_values = values - values.mean()
    cross = features.T.astype(np.float64) @ centred_values - sums * centred_values.sum() / n_rows
    gram = centre_gram_upper(raw_gram_upper(features, 10_000), sums, n_rows)
    with_constant = np.column_stack([features, np.ones(n_rows)])
    tolerance = 1e-12 * np.linalg.norm(with_constant, 2) ** 2
    coefficients = neutralizing_coefficients(gram, cross, tolerance)
    residual = centred_values - (features @ coefficients - sums @ coefficients / n_rows)

    solution = np.linalg.lstsq(with_constant, values, rcond=1e-6)[0]
    np.testing.assert_allclose(residual, values - with_constant @ solution, rtol=0, atol=1e-12)
    assert (coefficients == 0).any() == (case in ("duplicated", "dependent"))
    expected_paths = {
        "independent": ["refined"],
        "nearly dependent": ["rejected", "pivoted"],
        "duplicated": ["rejected", "refined"],
        "dependent": ["rejected", "rejected", "pivoted"],
    }
    assert paths == expected_paths[case]


def test_era_threads_measure_one_against_all_and_keep_the_faster(monkeypatch):
    monkeypatch.setattr(scoring_metrics, "RETUNE_ERAS", 4)
    threads = scoring_metrics._EraThreads(n_features=scoring_metrics.THREADED_MIN_FEATURES)
    used = []

    def run_era(seconds_per_row: dict) -> None:
        choice = threads._next()
        used.append(choice)
        threads._record(choice, seconds_per_row[choice])

    all_faster = {None: 0.5, 1: 1.0}
    for _ in range(4):
        run_era(all_faster)
    # warm-up on one thread, a probe of each, then the faster one (all threads)
    assert used == [1, None, 1, None]
    one_faster = {None: 2.0, 1: 1.0}
    for _ in range(4):
        run_era(one_faster)
    assert used[4:] == [None, None, 1, 1]  # re-measured: the cores got busy
    narrow = scoring_metrics._EraThreads(n_features=scoring_metrics.THREADED_MIN_FEATURES - 1)
    assert narrow._next() == 1


def test_scoring_leaves_torch_threads_as_it_found_them(wide_data):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    wide = np.repeat(wide_data["features"], 4, axis=1)  # 1,200 features: thread choice runs
    score_features(wide_data, wide)
    assert torch.get_num_threads() == before


def test_corr_by_era_is_score_eras_corr_without_its_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """What training's per-round checks and the other targets' CORR use: the same numbers, and no
    warning each time they are computed."""
    rng = np.random.default_rng(5)
    eras = np.repeat(np.arange(6), 50)
    predictions = rng.normal(size=len(eras))
    predictions[eras == 2] = 0.5  # constant in one era
    target = rng.choice([0, 0.25, 0.5, 0.75, 1.0], len(eras))
    target[::9] = np.nan
    with caplog.at_level(logging.WARNING):
        corr = corr_by_era(predictions, target, eras)
    assert caplog.records == []
    expected = score_eras(predictions, target, eras)["corr"]
    pd.testing.assert_series_equal(corr, expected, check_exact=True)
    assert np.isnan(corr.loc[2]) and corr.drop(2).notna().all()
