"""Per-era transforms of predictions and targets, as numerai-tools applies them.

The rank and correlation transforms work on all eras at once: rows carry an era code and
per-era quantities are looked up by code, so no Python loop runs over eras. The linear
algebra of feature neutralization (Gram matrix, centring, the solve) works on one era.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import blas, lapack
from scipy.special import ndtri

from fxml.scoring.eras import era_count, era_mean, era_starts, era_sum


def tie_kept_rank(
    values: np.ndarray, codes: np.ndarray, n_eras: int, order: np.ndarray
) -> np.ndarray:
    """Percentile rank inside each era, ties sharing their average rank: ``(rank - 0.5) / n``.

    Numerai ranks with pandas' ``rank(method="average")``; ties must keep one value so two
    identical predictions never score differently. ``order`` lists the rows to rank, sorted
    by era then value (``order_within_eras``); other rows come back NaN. The arithmetic is
    exact up to the final division, so the result equals pandas bit for bit.
    """
    out = np.full(values.shape, np.nan)
    size = order.size
    if size == 0:
        return out
    sorted_values = values[order]
    counts = era_count(codes[order], n_eras)
    starts = era_starts(counts)
    # A tie group starts where a new era begins or the value changes.
    new_group = np.zeros(size, dtype=bool)
    new_group[starts[counts > 0]] = True
    new_group[1:] |= sorted_values[1:] != sorted_values[:-1]
    first = np.flatnonzero(new_group)
    group_sizes = np.diff(first, append=size)
    # 1-based average rank inside the era: ((first + 1) + (last + 1)) / 2 - era offset;
    # the sorted rows are contiguous runs, so per-group and per-era values are repeated.
    twice_rank = np.repeat(2 * first + group_sizes + 1, group_sizes) - np.repeat(
        2 * starts, counts
    )
    out[order] = (twice_rank / 2 - 0.5) / np.repeat(counts, counts)
    return out


def gaussianize(ranks: np.ndarray) -> np.ndarray:
    """Inverse normal CDF of percentile ranks: scores then weigh tails like a normal
    variable. ``ndtri`` is what ``scipy.stats.norm.ppf`` evaluates, so results match."""
    return ndtri(ranks)


def signed_power(values: np.ndarray, exponent: float = 1.5) -> np.ndarray:
    """Raise magnitudes while keeping signs: Numerai's 1.5 power stresses the tails of
    predictions and targets."""
    return np.sign(values) * np.abs(values) ** exponent


def center_by_era(values: np.ndarray, codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Subtract each era's mean: scores compare rows within an era, never across eras."""
    return values - era_mean(values, codes, n_eras)[codes]


def orthogonalize_by_era(
    values: np.ndarray, reference: np.ndarray, codes: np.ndarray, n_eras: int
) -> np.ndarray:
    """Remove, per era, the component of ``values`` along ``reference``: what is left is
    the part of a model the meta model (or benchmark) does not already provide.
    An era where the reference is all zero (constant) gets NaN: no direction to remove."""
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = era_sum(values * reference, codes, n_eras) / era_sum(
            reference * reference, codes, n_eras
        )
    return values - reference * slope[codes]


# Numerai features are small integers (0..4), so every product and partial sum of their
# Gram matrix is an integer: float32 holds it exactly while sums stay at or below 2**24
# (int32: below 2**31), and single-precision BLAS runs about twice as fast as double.
FLOAT32_EXACT_LIMIT = 2**24
INT32_LIMIT = 2**31 - 1


# The module's one piece of state: whether torch's int8 product runs in this process, probed on
# first use ("runs" -> bool). A plain dict rather than functools.cache: a model pickled by value for
# Numerai's hosted compute carries this module's functions, and a cache wrapper would be pickled by
# reference to fxml, which is not there.
_INT8_PRODUCT_RUNS: dict[str, bool] = {}


def int8_gram_product() -> Callable[[np.ndarray], np.ndarray] | None:
    """A function giving ``X'X`` (int32) of a C-order int8 block ``X``, where torch's int8 x int8 ->
    int32 matrix product runs on this machine; else None.

    The product is ``torch._int_mm``, a private torch API: no public function of torch, NumPy or
    SciPy multiplies int8 matrices into int32 on a fast kernel. On CPUs with VNNI/AMX it forms an
    int8 Gram matrix 4-5x faster than float32 ``syrk`` (6,000 x 2,748: 0.10 s against 0.48 s on one
    thread). Every use of it is here, behind this probe: where torch is not installed, lacks
    ``_int_mm`` or cannot run it, callers take the public fallback, SciPy's float32 ``syrk``, which
    is exact for the same integer features (``FLOAT32_EXACT_LIMIT``), so scores do not change.
    """
    if _INT8_PRODUCT_RUNS.get("runs") is False:
        return None
    try:
        import torch

        if "runs" not in _INT8_PRODUCT_RUNS:
            probe = torch.ones((2, 2), dtype=torch.int8)
            torch._int_mm(probe, probe)
    except (ImportError, AttributeError, RuntimeError, NotImplementedError):
        _INT8_PRODUCT_RUNS["runs"] = False
        return None
    _INT8_PRODUCT_RUNS["runs"] = True

    def gram(block: np.ndarray) -> np.ndarray:
        rows = torch.from_numpy(np.require(block, requirements=["C", "W"]))
        # the product is symmetric: its transpose is the same matrix in Fortran order, which the
        # caller's addition then reads in memory order
        return torch._int_mm(rows.T, rows).numpy().T

    return gram


# Importing torch takes 2-3 s and keeps ~0.35 GiB resident. The int8 product saves ~0.06 ms
# per row of a 2,748-wide era (~0.3 s per era of Numerai's ~5,000 rows, minutes over a
# validation set), but ~0.01 s per era at 500 features, and at under 1,000 rows per era (data
# cut to a fraction of its rows) the Gram matrix is a small part of the era's solve while
# torch's memory is a large part of the run's. The bounds hold even when torch is already
# imported (a deep model's run): there its product's buffers added 0.13 GiB to the scoring peak
# at 299 rows per era, for no time saved.
INT8_MATMUL_MIN_FEATURES = 1000
INT8_MATMUL_MIN_ROWS = 1000


def _worth_int8_matmul(features: np.ndarray) -> bool:
    if features.dtype != np.int8:
        return False
    return features.shape[1] >= INT8_MATMUL_MIN_FEATURES and features.shape[0] >= INT8_MATMUL_MIN_ROWS


def exact_rows_per_pass(features: np.ndarray, limit: int) -> int:
    """How many rows of an integer feature block one Gram pass can take with every
    partial sum at most ``limit`` (0 when the features are not integers)."""
    if not np.issubdtype(features.dtype, np.integer) or features.size == 0:
        return 0
    largest = max(abs(int(features.min())), abs(int(features.max())), 1)
    return limit // (largest * largest)


def raw_gram_upper(features: np.ndarray, rows_per_pass: int) -> np.ndarray:
    """``X'X`` (float64, Fortran order; only the upper triangle is meant to be read) for
    one era's feature rows, in passes over at most ``rows_per_pass`` rows.

    int8 features go through torch's int8 matrix product when it runs here
    (``int8_gram_product``), other integer features through float32 ``syrk``; both are exact
    within ``exact_rows_per_pass``.
    Float features use float64 ``syrk``.
    """
    int8_gram = int8_gram_product() if _worth_int8_matmul(features) else None
    if int8_gram is not None:
        exact_rows = exact_rows_per_pass(features, INT32_LIMIT)
    else:
        exact_rows = exact_rows_per_pass(features, FLOAT32_EXACT_LIMIT)
    step = max(1, min(rows_per_pass, exact_rows) if exact_rows else rows_per_pass)
    k = features.shape[1]
    gram = np.zeros((k, k), order="F")
    for start in range(0, features.shape[0], step):
        block = features[start : start + step]
        if int8_gram is not None:
            gram += int8_gram(block)
        elif exact_rows:
            # block.T is a Fortran-order view: syrk reads it in place, no transposed copy
            gram += blas.ssyrk(1.0, np.asarray(block, dtype=np.float32).T, trans=0, lower=0)
        else:
            gram += blas.dsyrk(1.0, np.asarray(block, dtype=np.float64).T, trans=0, lower=0)
    return gram


def centre_gram_upper(gram: np.ndarray, sums: np.ndarray, n_rows: int) -> np.ndarray:
    """``X'X - s s'/n`` in place on the upper triangle: the Gram matrix of the centred
    features, so the constant column of numerai-tools' regression drops out. A rank-one
    BLAS update; the exact diagonal is ``centred_variances``."""
    return blas.dsyr(-1.0 / n_rows, sums, a=gram, lower=0, overwrite_a=1)


def centred_variances(raw_diagonal: np.ndarray, sums: np.ndarray, n_rows: int) -> np.ndarray:
    """Sums of squares of the centred features, ``x'x - s^2/n``: exactly zero for a
    feature constant in the era (the integer terms are exact)."""
    return raw_diagonal - sums * sums / n_rows


def neutralizing_coefficients(
    centred_gram: np.ndarray, cross: np.ndarray, tolerance: float
) -> np.ndarray:
    """Least-squares coefficients ``b`` of a centred vector on the centred features, from
    the normal equations ``G b = X_c'v`` (``centred_gram`` upper triangle, Fortran order;
    features constant in the era must have been taken out with ``clear_features``). Both
    arguments may be overwritten: a copy of a 2,748-wide Gram matrix costs as much as a
    tenth of the solve.

    One Cholesky factorisation solves them: in single precision refined to double
    (``refined_single_precision_solution``) when every feature stands clear of the others.
    Otherwise a feature may be (numerically) a linear combination of others, and a
    pivoted Cholesky in double keeps only the features whose pivot stays above
    ``tolerance``. The solution is not unique then, but the residual ``v - X_c b`` is, and
    it equals what lstsq's rcond cut gives numerai-tools.
    """
    refined = refined_single_precision_solution(centred_gram, cross)
    if refined is not None:
        return refined
    # The common exact dependencies are pairs (a duplicated or mirrored feature): drop the
    # later feature of each such pair, which leaves the span and so the residual as it is,
    # and try the fast solve again before the pivoted one (~2x a Cholesky's time).
    paired = pair_dependent_features(centred_gram, tolerance)
    if paired.any():
        clear_features(centred_gram, cross, paired)
        refined = refined_single_precision_solution(centred_gram, cross)
        if refined is not None:
            return refined
    # factorised in place: at 2,748 features a copy is 58 MiB more at the scoring peak
    factor, pivots, rank, _ = lapack.dpstrf(centred_gram, tol=tolerance, lower=0, overwrite_a=1)
    kept = pivots[:rank] - 1
    coefficients = np.zeros_like(cross)
    if rank:
        kept_factor = np.asfortranarray(factor[:rank, :rank])
        coefficients[kept], _ = lapack.dpotrs(kept_factor, cross[kept], lower=0)
    return coefficients


def pair_dependent_features(gram: np.ndarray, tolerance: float) -> np.ndarray:
    """Features j that another feature i < j alone explains: the pivot of j after i,
    ``G_jj - G_ij^2 / G_ii``, is below ``tolerance`` (the Cholesky criterion for one
    predecessor). From the upper triangle of a centred Gram matrix."""
    variances = np.diagonal(gram)
    explained = np.zeros(variances.size)
    # column blocks of the upper triangle only: one read of half the matrix, small buffers
    for start in range(0, variances.size, PAIR_SCAN_COLUMNS):
        stop = min(start + PAIR_SCAN_COLUMNS, variances.size)
        block = np.square(gram[:stop, start:stop])
        with np.errstate(invalid="ignore", divide="ignore"):
            block /= variances[:stop, None]
        block[start:] = np.triu(block[start:], 1)  # i < j only
        explained[start:stop] = block.max(axis=0)
    return (variances - explained) < tolerance


PAIR_SCAN_COLUMNS = 256


def clear_features(gram: np.ndarray, cross: np.ndarray, cleared: np.ndarray) -> None:
    """Take features out of the normal equations in place: a unit pivot on the largest
    variance's scale and a zero right-hand side give them a zero coefficient without
    touching the others' solution."""
    scale = max(float(np.diagonal(gram).max()), 1.0)
    gram[cleared, :] = 0.0
    gram[:, cleared] = 0.0
    gram[cleared, cleared] = scale
    cross[cleared] = 0.0


# A float32 Cholesky pivot below this share of its feature's variance (the feature is
# within 1 - R^2 < 1e-3 of the span of the others) is too close to float32 rounding
# (~k * 6e-8 at worst) to tell a real direction from a dependency: the double path decides.
SINGLE_PIVOT_MIN_SHARE = 1e-3
MAX_REFINEMENTS = 30


def refined_single_precision_solution(gram: np.ndarray, cross: np.ndarray) -> np.ndarray | None:
    """``G^-1 c`` from a float32 Cholesky factor (half the time of a float64 one) and
    iterative refinement with float64 residuals, as LAPACK's ``dsposv`` does: it stops
    once the residual is as small as a float64 factorisation's backward error allows, so
    the result is as accurate. None when a pivot is too small for float32 or refinement
    does not converge (an ill-conditioned system): the caller solves in double."""
    # the float32 copy is the factor's own: no second copy inside LAPACK
    factor, info = lapack.spotrf(gram.astype(np.float32), lower=0, clean=0, overwrite_a=1)
    if info != 0:
        return None
    variances = np.diagonal(gram)
    pivots = np.diagonal(factor).astype(np.float64) ** 2
    if (pivots < SINGLE_PIVOT_MIN_SHARE * variances).any():
        return None
    # |G_ij| <= sqrt(G_ii G_jj), so this bounds the infinity norm of G from above
    deviations = np.sqrt(variances)
    norm_bound = deviations.max() * deviations.sum()
    solution = np.zeros_like(cross)
    residual = cross
    converged = False
    for _ in range(MAX_REFINEMENTS):
        correction, info = lapack.spotrs(factor, residual.astype(np.float32), lower=0)
        if info != 0:
            return None
        solution += correction
        if converged:
            # one step past the criterion: the bound above is loose, and a step costs
            # ~1/20 of the factorisation
            return solution
        residual = cross - blas.dsymv(1.0, gram, solution, lower=0)
        converged = np.abs(residual).max() <= (
            np.abs(solution).max() * norm_bound * np.finfo(np.float64).eps
        )
    return None
