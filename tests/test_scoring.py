"""fxml.scoring against numerai-tools applied era by era.

Observed max absolute difference against numerai-tools on these fixtures (seeds 0-5):
6.4e-16 over all columns (corr, mmc, bmc, fnc, feature_exposure); the assertions use the
1e-6 hard bound.
"""

from __future__ import annotations

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

from fxml.scoring import SCORE_COLUMNS, score_eras, summarize
from fxml.scoring import metrics as scoring_metrics
from fxml.scoring.eras import encode_eras, order_within_eras
from fxml.scoring.transforms import tie_kept_rank

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
    # one era per block instead of all eras in one block
    monkeypatch.setattr(scoring_metrics, "FEATURE_CHUNK_BYTES", 1)
    one_era_blocks = score(data, f_order)
    for frame in (from_c, from_f, one_era_blocks):
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
    for column in ("corr", "fnc", "feature_exposure"):
        assert np.isnan(actual.loc[9, column]), column
    # constant predictions carry no information beyond the meta model: zero contribution
    assert actual.loc[9, "mmc"] == pytest.approx(0.0, abs=1e-12)
    others = actual.drop(index=[4, 9])
    assert others.notna().all().all()


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
