"""Per-era Numerai metrics (CORR, MMC, BMC, FNC, feature exposure), vectorised across eras.

Each metric equals the numerai-tools function of the same name applied to one era at a
time; here every era is scored in one pass of numpy operations on era codes, and the
feature-heavy metrics (FNC, exposure) run era by era on one Gram matrix and one Cholesky
factorisation each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from fxml.scoring.eras import (
    encode_eras,
    era_count,
    era_order,
    era_starts,
    era_sum,
    order_within_eras,
)
from fxml.scoring.rows import FeatureRows, Features, rows_of
from fxml.scoring.summary import CONSTANT_PREDICTIONS
from fxml.scoring.transforms import (
    center_by_era,
    centre_gram_upper,
    centred_variances,
    clear_features,
    gaussianize,
    neutralizing_coefficients,
    orthogonalize_by_era,
    raw_gram_upper,
    signed_power,
    tie_kept_rank,
)

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # optional: without it BLAS keeps its default thread count
    ThreadpoolController = None

log = logging.getLogger(__name__)

SCORE_COLUMNS: tuple[str, ...] = ("corr", "mmc", "bmc", "fnc", "feature_exposure")

# How many era labels the warning about constant predictions names before "...".
NAMED_ERAS = 5

# Largest float copy of an era's feature rows in FNC and exposure (an era beyond it is
# processed in row blocks). syrk needs many rows per call to run at full speed: one
# 6,000-row era at 2,748 features (66 MB in float32, 132 MB in float64) is one block.
FLOAT_BLOCK_BYTES = 256 * 2**20

# From this many features on, each era's Gram matrix and Cholesky factorisation may run on
# several threads (see _EraThreads): at 1,000 features they took ~0.2 s per 6,000-row era
# on one thread, enough work for threads to pay on idle cores.
THREADED_MIN_FEATURES = 1000
# How often (in eras) the thread count is measured again.
RETUNE_ERAS = 32

# numerai-tools' neutralize: np.linalg.lstsq(..., rcond=1e-6) with a constant column.
NEUTRALIZE_RCOND = 1e-6


def pearson_by_era(a: np.ndarray, b: np.ndarray, codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Pearson correlation inside each era: the final step of every Numerai correlation.
    Eras with fewer than two rows or a constant input get NaN, as pandas gives."""
    a_centred = center_by_era(a, codes, n_eras)
    b_centred = center_by_era(b, codes, n_eras)
    covariance = era_sum(a_centred * b_centred, codes, n_eras)
    a_norm = np.sqrt(era_sum(a_centred * a_centred, codes, n_eras))
    b_norm = np.sqrt(era_sum(b_centred * b_centred, codes, n_eras))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.clip(covariance / a_norm / b_norm, -1.0, 1.0)
    corr[era_count(codes, n_eras) < 2] = np.nan
    return corr


def numerai_corr_by_era(
    gaussian_ranks: np.ndarray, targets: np.ndarray, codes: np.ndarray, n_eras: int
) -> np.ndarray:
    """Numerai's CORR: the 1.5 powers on gaussianized ranks and centred targets weigh the
    tails, where the stakes of the meta model concentrate. Inputs are the scored rows only,
    ``gaussian_ranks`` gaussianized tie-kept ranks over those rows."""
    predictions = signed_power(gaussian_ranks, 1.5)
    centred_targets = signed_power(center_by_era(targets, codes, n_eras), 1.5)
    return pearson_by_era(predictions, centred_targets, codes, n_eras)


def correlation_contribution_by_era(
    gaussian_predictions: np.ndarray,
    gaussian_reference: np.ndarray,
    targets: np.ndarray,
    codes: np.ndarray,
    n_eras: int,
) -> np.ndarray:
    """MMC (reference = meta model) or BMC (reference = benchmark): covariance of the
    target with the part of the predictions the reference does not already contain.
    Targets in [0, 1] are scaled to the buckets -2..2 first, as numerai-tools does per call."""
    orthogonal = orthogonalize_by_era(gaussian_predictions, gaussian_reference, codes, n_eras)
    outside_unit = era_sum(((targets < 0) | (targets > 1)).astype(np.float64), codes, n_eras)
    scale = np.where(outside_unit > 0, 1.0, 4.0)
    centred_targets = center_by_era(targets * scale[codes], codes, n_eras)
    with np.errstate(invalid="ignore", divide="ignore"):
        return era_sum(centred_targets * orthogonal, codes, n_eras) / era_count(codes, n_eras)


class _EraThreads:
    """Threads for each era's Gram matrix and Cholesky factorisation (BLAS and torch).

    Below ``THREADED_MIN_FEATURES`` one thread: per-era calls are too small to gain from
    more, and lose far more on a busy machine (1M rows x 42 features on 2 shared cores:
    2.5-19 s threaded, 1.4 s not). Above it, threads win on idle cores (~1.5x for syrk and
    Cholesky at 2,748 features) but lose ~2x on cores shared with other processes, as
    spinning threads wait for descheduled ones; so the count is measured: every
    ``RETUNE_ERAS`` eras, one era runs on all threads and the next on one, and the faster
    (per row) is kept until the next check. The choice changes timing only, not results
    beyond rounding.
    """

    def __init__(self, n_features: int) -> None:
        tunable = n_features >= THREADED_MIN_FEATURES and (os.cpu_count() or 1) > 1
        # one thread first: it is never far from the best, while threads on busy cores
        # can be 2-3x slower
        self._choices: tuple[int | None, ...] = (1, None) if tunable else (1,)
        self._chosen: int | None = self._choices[0]
        self._seconds_per_row: dict[int | None, float] = {}
        self._eras_done = 0
        self._controller = ThreadpoolController() if ThreadpoolController else None

    def _next(self) -> int | None:
        # era 0 of each round warms up (allocations, thread start); eras 1 and 2 compare
        position = self._eras_done % RETUNE_ERAS
        if len(self._choices) > 1 and position in (1, 2):
            return self._choices[2 - position]
        return self._chosen

    @contextlib.contextmanager
    def era(self, n_rows: int) -> Iterator[None]:
        threads = self._next()
        torch = sys.modules.get("torch")
        torch_threads = torch.get_num_threads() if torch is not None else None
        limits = (
            self._controller.limit(limits=threads, user_api="blas")
            if self._controller is not None
            else contextlib.nullcontext()
        )
        started = time.perf_counter()
        with limits:
            if torch is not None and threads is not None:
                torch.set_num_threads(threads)
            try:
                yield
            finally:
                if torch is not None and threads is not None:
                    torch.set_num_threads(torch_threads)
        self._record(threads, (time.perf_counter() - started) / max(n_rows, 1))

    def _record(self, threads: int | None, seconds_per_row: float) -> None:
        if len(self._choices) > 1 and self._eras_done % RETUNE_ERAS in (1, 2):
            self._seconds_per_row[threads] = seconds_per_row
            if self._eras_done % RETUNE_ERAS == 2:
                self._chosen = min(self._choices, key=self._seconds_per_row.__getitem__)
        self._eras_done += 1


def feature_neutral_residuals_and_exposure(
    predictions: np.ndarray,
    gaussian_predictions: np.ndarray,
    features: Features,
    codes: np.ndarray,
    n_eras: int,
    era_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-neutral gaussianized predictions (per row) and feature exposure (per era),
    one era at a time; only that era's rows are ever converted to float. Rows and eras
    not in ``era_ids`` stay NaN. ``features``: a matrix, or rows read an era at a time."""
    residuals = np.full(predictions.shape, np.nan)
    exposure = np.full(n_eras, np.nan)
    counts = era_count(codes, n_eras)
    starts = era_starts(counts)
    contiguous = era_order(codes, n_eras)
    threads = _EraThreads(features.shape[1])
    for era in era_ids.tolist():
        rows = contiguous[starts[era] : starts[era] + counts[era]]
        with threads.era(rows.size):
            residuals[rows], exposure[era] = _era_feature_scores(
                rows_of(features, rows), gaussian_predictions[rows], predictions[rows]
            )
    return residuals, exposure


class _FloatRows:
    """One era's feature rows as float64 blocks of at most ``block_bytes`` (one block for
    a typical era, kept for the second pass), so no float copy of a large era is ever
    whole."""

    def __init__(self, features: np.ndarray, block_bytes: int) -> None:
        self._features = features
        self._step = max(1, block_bytes // (8 * features.shape[1]))
        self._whole = (
            np.asarray(features, dtype=np.float64) if features.shape[0] <= self._step else None
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._whole is not None:
            yield self._whole
            return
        for start in range(0, self._features.shape[0], self._step):
            yield np.asarray(self._features[start : start + self._step], dtype=np.float64)

    def transposed_times(self, vectors: np.ndarray) -> np.ndarray:
        """``X' V`` for per-row ``vectors`` (rows, m)."""
        product = np.zeros((self._features.shape[1], vectors.shape[1]))
        start = 0
        for block in self:
            product += block.T @ vectors[start : start + block.shape[0]]
            start += block.shape[0]
        return product

    def times(self, coefficients: np.ndarray) -> np.ndarray:
        """``X b`` per row."""
        return np.concatenate([block @ coefficients for block in self])


def _era_feature_scores(
    features: np.ndarray, gaussian_predictions: np.ndarray, predictions: np.ndarray
) -> tuple[np.ndarray, float]:
    """FNC residuals (per row) and feature exposure of one era.

    numerai-tools regresses the gaussianized ranks on the features plus a constant
    (``lstsq``); here that is the centred ranks regressed on the centred features, solved
    from the normal equations with one Gram matrix (exact for integer features, centred
    by a rank-one update) and one Cholesky factorisation. Exposure needs only ``X'p`` and
    the centred column norms, so it costs no solve.
    """
    n_rows, n_features = features.shape
    rows = _FloatRows(features, FLOAT_BLOCK_BYTES)
    sums = features.sum(axis=0, dtype=np.float64)
    # column 0: gaussianized ranks (FNC); column 1: raw predictions (exposure)
    vectors = np.column_stack([gaussian_predictions, predictions])
    centred = vectors - vectors.sum(axis=0) / n_rows
    # the mean term is subtracted because centred vectors sum to zero only up to rounding
    cross = rows.transposed_times(centred) - np.outer(sums, centred.sum(axis=0) / n_rows)

    gram = raw_gram_upper(features, max(1, FLOAT_BLOCK_BYTES // (4 * n_features)))
    raw_diagonal = np.diagonal(gram).copy()
    variances = centred_variances(raw_diagonal, sums, n_rows)
    centre_gram_upper(gram, sums, n_rows)
    # A feature constant in the era has no direction to remove: it leaves the equations.
    # (For integer features its variance is exactly zero; for float ones only nearly.)
    constant = features.min(axis=0) == features.max(axis=0)
    variances[constant] = 0.0
    fnc_cross = cross[:, 0].copy()
    clear_features(gram, fnc_cross, constant)
    coefficients = neutralizing_coefficients(
        gram, fnc_cross, _rcond_tolerance(features, raw_diagonal)
    )
    residuals = centred[:, 0] - (rows.times(coefficients) - sums @ coefficients / n_rows)

    if predictions.min() == predictions.max() or constant.all():
        return residuals, np.nan
    # numerai-tools gets NaN for a feature constant in the era and skips it (idxmax)
    feature_norm = np.sqrt(variances[~constant])
    prediction_norm = np.sqrt(centred[:, 1] @ centred[:, 1])
    correlations = np.abs(cross[~constant, 1]) / feature_norm / prediction_norm
    return residuals, float(correlations.max())


def _rcond_tolerance(features: np.ndarray, raw_diagonal: np.ndarray) -> float:
    """Pivot below which a feature counts as a combination of the others: lstsq's
    ``rcond`` cut on singular values, squared for the Gram matrix, relative to the largest
    eigenvalue of ``[X 1]'[X 1]``. That eigenvalue is estimated from below by the largest
    of its Rayleigh quotient at the all-ones vector (close for non-negative features such
    as Numerai's), its diagonal and the constant column's ``n``."""
    row_totals = features.sum(axis=1, dtype=np.float64) + 1.0
    rayleigh = (row_totals @ row_totals) / (features.shape[1] + 1)
    largest = max(rayleigh, float(raw_diagonal.max()), float(features.shape[0]))
    return NEUTRALIZE_RCOND**2 * largest


class _GaussianRanks:
    """Gaussianized tie-kept ranks of one column over several row subsets.

    A row's rank depends on which rows of its era are kept (MMC drops rows without a meta
    model, CORR rows without a target), so ranks are per subset; the sort is shared, and a
    subset seen before (e.g. a meta model with no NaN) reuses its ranks.
    """

    def __init__(self, values: np.ndarray, codes: np.ndarray, n_eras: int) -> None:
        self._values = values
        self._codes = codes
        self._n_eras = n_eras
        self._order = order_within_eras(values, codes, n_eras)
        self._seen: list[tuple[np.ndarray, np.ndarray]] = []

    def over(self, kept: np.ndarray) -> np.ndarray:
        """Per-row gaussianized ranks among the ``kept`` rows of each era (NaN elsewhere)."""
        for seen_kept, ranks in self._seen:
            if np.array_equal(seen_kept, kept):
                return ranks
        order = self._order[kept[self._order]]
        ranks = gaussianize(tie_kept_rank(self._values, self._codes, self._n_eras, order))
        self._seen.append((kept, ranks))
        return ranks


def constant_by_era(values: np.ndarray, codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Per era, whether every value of the era is the same (one row included); False for an
    era without rows."""
    counts = era_count(codes, n_eras)
    present = counts > 0
    contiguous = values[era_order(codes, n_eras)]
    # eras without rows have no segment, so the starts of the others delimit them exactly
    starts = era_starts(counts)[present]
    constant = np.zeros(n_eras, dtype=bool)
    if starts.size:
        constant[present] = np.minimum.reduceat(contiguous, starts) == np.maximum.reduceat(
            contiguous, starts
        )
    return constant


def _era_list(labels: np.ndarray) -> str:
    named = ", ".join(str(label) for label in labels[:NAMED_ERAS].tolist())
    return named + (", ..." if labels.size > NAMED_ERAS else "")


def _as_vector(name: str, values: np.ndarray, n_rows: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows},), got {array.shape}")
    return array


def corr_by_era(predictions: np.ndarray, targets: np.ndarray, eras: np.ndarray) -> pd.Series:
    """Numerai's CORR of each era with a target (index "era", ascending), as ``score_eras``' "corr"
    gives it, with no other score and nothing logged: what a per-round training check or a
    comparison against another target needs."""
    eras = np.asarray(eras)
    predictions = _as_vector("predictions", predictions, len(eras))
    targets = _as_vector("targets", targets, len(eras))
    era_codes = encode_eras(eras)
    codes, n_eras = era_codes.codes, era_codes.n_eras
    has_target = ~np.isnan(targets)
    scored = era_count(codes[has_target], n_eras) > 0
    rows = np.flatnonzero(has_target)
    corr = numerai_corr_by_era(_GaussianRanks(predictions, codes, n_eras).over(has_target)[rows],
                               targets[rows], codes[rows], n_eras)
    return pd.Series(corr[scored], index=pd.Index(era_codes.labels[scored], name="era"), name="corr")


def score_eras(
    predictions: np.ndarray,
    targets: np.ndarray,
    eras: np.ndarray,
    *,
    meta_model: np.ndarray | None = None,
    benchmark: np.ndarray | None = None,
    features: Features | None = None,
) -> pd.DataFrame:
    """Score predictions era by era as Numerai does.

    Returns one row per era with at least one non-NaN target (index "era", ascending):
    "corr", plus "mmc"/"bmc" when a meta model/benchmark is given and "fnc" and
    "feature_exposure" when features are given. Rows with a NaN target are left out of
    every target-based metric; rows with a NaN meta model/benchmark only out of MMC/BMC.
    FNC neutralizes and exposure correlates over all rows of an era, as numerai-tools does;
    ``features`` may be a matrix or rows read an era at a time (``fxml.scoring.rows``).
    A metric that cannot be computed in an era (constant inputs, no rows) is NaN. FNC is NaN
    in an era with no more rows than features plus one (the constant), where neutralising
    leaves only rounding noise. In an era whose predictions are constant over its rows with a
    target every column is NaN, and a column ``constant_predictions`` (1.0 in such eras, 0.0
    elsewhere) is added, only when there is such an era. Each case logs one warning per call.
    """
    eras = np.asarray(eras)
    if eras.ndim != 1:
        raise ValueError(f"eras must be 1-D, got shape {eras.shape}")
    n_rows = eras.shape[0]
    predictions = _as_vector("predictions", predictions, n_rows)
    n_nan = int(np.isnan(predictions).sum())
    if n_nan:
        raise ValueError(
            f"predictions contain {n_nan} NaN value(s) out of {n_rows}; "
            "fill or drop them before scoring"
        )
    targets = _as_vector("targets", targets, n_rows)
    references = {
        name: _as_vector(label, reference, n_rows)
        for name, label, reference in (
            ("mmc", "meta_model", meta_model),
            ("bmc", "benchmark", benchmark),
        )
        if reference is not None
    }
    if features is not None:
        if not isinstance(features, FeatureRows):
            features = np.asarray(features)
        if len(features.shape) != 2 or features.shape[0] != n_rows or features.shape[1] == 0:
            raise ValueError(
                f"features must have shape ({n_rows}, k) with k >= 1, got {features.shape}"
            )
    era_codes = encode_eras(eras)
    codes, n_eras = era_codes.codes, era_codes.n_eras

    has_target = ~np.isnan(targets)
    scored = era_count(codes[has_target], n_eras) > 0
    prediction_ranks = _GaussianRanks(predictions, codes, n_eras)
    target_rows = np.flatnonzero(has_target)
    target_codes = codes[target_rows]
    columns: dict[str, np.ndarray] = {
        "corr": numerai_corr_by_era(
            prediction_ranks.over(has_target)[target_rows],
            targets[target_rows],
            target_codes,
            n_eras,
        )
    }

    for name, reference in references.items():
        kept = has_target & ~np.isnan(reference)
        rows = np.flatnonzero(kept)
        columns[name] = correlation_contribution_by_era(
            prediction_ranks.over(kept)[rows],
            _GaussianRanks(reference, codes, n_eras).over(kept)[rows],
            targets[rows],
            codes[rows],
            n_eras,
        )

    if features is not None:
        residuals, exposure = feature_neutral_residuals_and_exposure(
            predictions,
            prediction_ranks.over(np.ones(n_rows, dtype=bool)),
            features,
            codes,
            n_eras,
            np.flatnonzero(scored),
        )
        columns["fnc"] = numerai_corr_by_era(
            _GaussianRanks(residuals, codes, n_eras).over(has_target)[target_rows],
            targets[target_rows],
            target_codes,
            n_eras,
        )
        columns["feature_exposure"] = exposure
        # With no more rows than coefficients (the features and the constant) the fit is exact:
        # the residual that would be ranked is rounding noise, not a feature-neutral signal.
        n_features = features.shape[1]
        underdetermined = scored & (era_count(codes, n_eras) <= n_features + 1)
        if underdetermined.any():
            columns["fnc"][underdetermined] = np.nan
            log.warning(
                "scoring: FNC left out of %d era(s) with no more rows than the %d features "
                "and the constant they are neutralised against",
                int(underdetermined.sum()),
                n_features,
            )

    # Constant predictions carry no ranking: CORR is NaN there while MMC and BMC come out 0, so
    # every score is left out of such an era for all summaries to cover the same eras.
    constant = constant_by_era(predictions[target_rows], target_codes, n_eras)
    if constant.any():
        for values in columns.values():
            values[constant] = np.nan
        columns[CONSTANT_PREDICTIONS] = constant.astype(np.float64)
        log.warning(
            "scoring: the predictions are constant in %d era(s) (%s); every score of those "
            "eras is NaN, so each summary leaves them out",
            int(constant.sum()),
            _era_list(era_codes.labels[constant]),
        )

    index = pd.Index(era_codes.labels[scored], name="era")
    return pd.DataFrame(
        {
            name: columns[name][scored]
            for name in (*SCORE_COLUMNS, CONSTANT_PREDICTIONS)
            if name in columns
        },
        index=index,
    )
