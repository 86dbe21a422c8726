"""Label guidance: class-centroid targets (``compute_target``) and post-hoc refinement (``refine``).

The numerical kernels (``oas_zca_whitener``, ``class_target``, ``oas_zca_refine``) are pure, jit- and vmap-able
functions of arrays; labels enter them as a fixed-shape one-hot matrix (n, C) whose all-zero rows mark unlabelled
samples. The public wrappers turn labels of any kind (strings, numbers, categoricals, with missing values) into that
matrix on the host, validate arguments, and call the kernels.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from ._data import prepare_data
from ._model import NMFModel
from ._options import Config, Hyper
from ._penalties import gram, scale_rows, target_gram
from ._step import penalized_solve
from ._validate import check_data

_HIGHEST = lax.Precision.HIGHEST
_EIG_FLOOR = 1e-10  # RcppML floors the shrunk covariance spectrum here before inverting its square root
_FRO_EPS = 1e-10  # below this Frobenius norm refine() leaves T unscaled (RcppML)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


# ---------------------------------------------------------------------------------------------------------------
# Pure kernels
# ---------------------------------------------------------------------------------------------------------------


def oas_zca_whitener(X: ArrayLike, n_samples: ArrayLike) -> jax.Array:
    """ZCA whitening matrix of the OAS-shrunk scatter of X (k, C); returns Z (k, k), symmetric.

    ``S = X X' / n_samples``; OAS shrinkage ``S* = (1 - rho) S + rho tr(S)/k I`` with
    ``rho = clip(((1 - 2/k) tr(S^2) + tr(S)^2) / ((n_samples + 1 - 2/k)(tr(S^2) - tr(S)^2/k)), 0, 1)``
    (``rho = 1`` when the denominator is below 1e-12); then ``Z = V diag(max(v, 1e-10))^(-1/2) V'`` for
    ``S* = V diag(v) V'``. This is the recipe of RcppML's ``compute_target``, which passes the count-weighted
    centred centroids as X and the number of labelled samples as ``n_samples``.
    """
    X = jnp.asarray(X)
    k = X.shape[0]
    S = _mm(X, X.T) / n_samples
    tr_s = jnp.trace(S)
    tr_s2 = jnp.sum(S * S)
    num = (1.0 - 2.0 / k) * tr_s2 + tr_s**2
    den = (n_samples + 1.0 - 2.0 / k) * (tr_s2 - tr_s**2 / k)
    degenerate = jnp.abs(den) < 1e-12
    rho = jnp.where(degenerate, 1.0, jnp.clip(num / jnp.where(degenerate, 1.0, den), 0.0, 1.0))
    S_star = (1.0 - rho) * S + rho * (tr_s / k) * jnp.eye(k, dtype=S.dtype)
    v, V = jnp.linalg.eigh(S_star)
    return _mm(V * lax.rsqrt(jnp.maximum(v, _EIG_FLOOR)), V.T)


def class_target(H: ArrayLike, onehot: ArrayLike, *, whiten: bool = True, weighted: bool = False) -> jax.Array:
    """Centred (optionally OAS-ZCA whitened) class centroids broadcast to samples: T (k, n) for H (k, n).

    ``onehot`` (n, C) has one 1 per labelled sample and an all-zero row for an unlabelled one, whose column of T
    is 0. With centroids ``mu_c`` and counts ``n_c``, ``T[:, j] = Z (mu_{c(j)} - mu_bar)``, where ``mu_bar`` is
    the unweighted mean of the non-empty centroids (RcppML) or, with ``weighted=True``, the count-weighted mean
    (so the labelled columns of T sum to zero). ``Z = oas_zca_whitener(X, sum_c n_c)`` with columns
    ``X_c = (mu_c - mu_bar) sqrt(max(n_c, 1))`` (RcppML: an empty level contributes ``-mu_bar``) or
    ``(mu_c - mu_bar) sqrt(n_c)`` when weighted; ``Z = I`` if ``whiten`` is false or C = 1.
    """
    H = jnp.asarray(H)
    onehot = jnp.asarray(onehot, H.dtype)
    n_levels = onehot.shape[1]
    counts = jnp.sum(onehot, axis=0)
    sums = _mm(H, onehot)
    mu = sums / jnp.maximum(counts, 1.0)
    n_labelled = jnp.sum(counts)
    present = (counts > 0).astype(H.dtype)
    if weighted:
        mu_bar = jnp.sum(sums, axis=1) / jnp.maximum(n_labelled, 1.0)
    else:
        mu_bar = _mm(mu, present) / jnp.maximum(jnp.sum(present), 1.0)
    # With one populated class the offsets are 0 in exact arithmetic; rounding would leave ~1 ulp that the
    # whitener (up to 1e5 x along a null direction) amplifies, so zero them explicitly.
    centred = jnp.where(jnp.sum(present) > 1, mu - mu_bar[:, None], 0.0)
    if whiten and n_levels > 1:
        weights = jnp.sqrt(counts if weighted else jnp.maximum(counts, 1.0))
        # max(N, 1) only matters when nothing is labelled, where every centroid offset is 0 and so is T.
        Z = oas_zca_whitener(centred * weights, jnp.maximum(n_labelled, 1.0))
        centred = _mm(Z, centred)
    return _mm(centred, onehot.T)


def oas_zca_refine(
    H: ArrayLike,
    onehot: ArrayLike,
    lambda_: ArrayLike,
    *,
    whiten: bool = True,
    nonneg: bool = True,
    weighted: bool = False,
) -> jax.Array:
    """Stage-1 ``refine``: ``H + lambda_ T |H|_F / |T|_F``, clipped at 0 if ``nonneg``. H (k, n) → (k, n).

    ``T = class_target(H, onehot, whiten=whiten, weighted=weighted)``; the Frobenius scaling (skipped when
    ``|T|_F <= 1e-10``) makes ``lambda_`` the fraction of H's energy added as correction. Pure: vmap it over
    ``lambda_`` or over a stack of H.
    """
    H = jnp.asarray(H)
    T = class_target(H, onehot, whiten=whiten, weighted=weighted)
    norm_t = jnp.sqrt(jnp.sum(T * T))
    big = norm_t > _FRO_EPS
    scale = jnp.where(big, jnp.sqrt(jnp.sum(H * H)) / jnp.where(big, norm_t, 1.0), 1.0)
    H_c = H + jnp.asarray(lambda_, H.dtype) * scale * T
    return jnp.maximum(H_c, 0.0) if nonneg else H_c


_class_target_jit = jax.jit(class_target, static_argnames=("whiten", "weighted"))
_refine_jit = jax.jit(oas_zca_refine, static_argnames=("whiten", "nonneg", "weighted"))


# ---------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------


def _is_missing(x: Any) -> bool:
    if x is None or x is np.ma.masked:
        return True
    if isinstance(x, (float, np.floating)):
        return math.isnan(x)
    # pandas.NA / NaT, recognised without importing pandas
    return type(x).__name__ in ("NAType", "NaTType")


def label_codes(labels: Any, n: int | None = None, *, name: str = "labels") -> tuple[np.ndarray, tuple]:
    """Encode labels as integer codes into sorted levels, like R's ``as.factor``; -1 marks a missing label.

    Accepts a sequence or array of strings, numbers or booleans (missing: None, NaN, a masked entry, pandas NA),
    or a categorical (an object with ``.categories`` and ``.codes``, or a pandas Series with ``.cat``), whose
    categories are kept in order, unused ones included, like the levels of an R factor. Returns ``(codes, levels)``
    with codes an int32 array of length n. Raises ``ValueError`` if ``n`` is given and differs from the length.
    """
    cat = getattr(labels, "cat", labels)
    if hasattr(cat, "categories") and hasattr(cat, "codes"):
        codes = np.asarray(cat.codes, dtype=np.int64)
        levels = tuple(cat.categories)
        if codes.size and (codes.min() < -1 or codes.max() >= len(levels)):
            raise ValueError(f"{name} has categorical codes outside [-1, {len(levels)})")
    else:
        if np.ma.isMaskedArray(labels):
            arr = np.array(np.ma.getdata(labels), dtype=object)
            arr[np.ma.getmaskarray(labels)] = None
        elif isinstance(labels, (np.ndarray, jax.Array)):
            arr = np.asarray(labels)
        else:
            # object dtype keeps None and NaN apart from strings (np.asarray(["a", nan]) would give "nan")
            arr = np.asarray(labels, dtype=object)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
        if arr.dtype.kind in "biuf":
            missing = np.isnan(arr) if arr.dtype.kind == "f" else np.zeros(arr.shape, bool)
            level_arr = np.unique(arr[~missing])
            codes = np.where(missing, -1, np.searchsorted(level_arr, arr))
            levels = tuple(level_arr.tolist())
        else:
            present = {x for x in arr if not _is_missing(x)}
            try:
                levels = tuple(sorted(present))
            except TypeError as err:
                raise TypeError(f"{name} mix types that cannot be ordered into levels: {err}") from None
            index = {lev: i for i, lev in enumerate(levels)}
            codes = np.array([-1 if _is_missing(x) else index[x] for x in arr], dtype=np.int64)
    if codes.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {codes.shape}")
    if n is not None and codes.shape[0] != n:
        raise ValueError(f"length of {name} ({codes.shape[0]}) must equal the number of samples, ncol(H) = {n}")
    return codes.astype(np.int32), levels


def _onehot(codes: np.ndarray, n_levels: int, dtype: Any) -> jax.Array:
    # one_hot maps the missing code -1 to an all-zero row, which zeroes that sample's target column.
    return jax.nn.one_hot(jnp.asarray(codes), max(n_levels, 1), dtype=dtype)


def _as_factor_matrix(H: Any, name: str = "H") -> jax.Array:
    H = jnp.asarray(H)
    if H.ndim != 2:
        raise ValueError(f"{name} must be a k x n matrix, got shape {H.shape}")
    if not isinstance(H, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(H))):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return H if jnp.issubdtype(H.dtype, jnp.floating) else H.astype(jnp.result_type(float))


# ---------------------------------------------------------------------------------------------------------------
# Public wrappers
# ---------------------------------------------------------------------------------------------------------------


def compute_target(H: ArrayLike, labels: Any, whiten: bool = True, *, weighted: bool = False) -> jax.Array:
    """Class-centroid target for guided NMF, as RcppML's ``compute_target``: T (k, n) for H (k, n).

    ``T[:, j] = Z (mu_{c(j)} - mu_bar)`` with class centroids ``mu_c`` of the columns of H, ``mu_bar`` their
    unweighted mean over non-empty classes, and Z the OAS-shrinkage ZCA whitener of the centroid scatter
    (``whiten=True``; see ``oas_zca_whitener``). Columns with a missing label are 0; a single class gives T = 0.
    Levels are the sorted unique labels (a categorical keeps its categories, unused ones included, which count
    in the whitening as in R). T is in whitened units, not H's (‖T‖_F is about 500 ‖H‖_F on hawaiibirds): pass it
    to ``nmf(target_H=...)`` as the vignette does, or use ``refine``, which rescales it.

    ``weighted=True`` centres on the count-weighted mean instead, so the labelled columns of T sum to zero also
    for unbalanced classes, and whitens the true between-class scatter (empty levels contribute nothing);
    RcppML has no such option.
    """
    H = _as_factor_matrix(H)
    codes, levels = label_codes(labels, H.shape[1])
    return _class_target_jit(H, _onehot(codes, len(levels), H.dtype), whiten=bool(whiten), weighted=bool(weighted))


def _check_lambda(lambda_: Any) -> None:
    if isinstance(lambda_, jax.core.Tracer):
        return
    value = np.asarray(lambda_)
    if value.ndim != 0 or value.dtype.kind not in "biuf":
        raise ValueError(f"lambda_ must be a real scalar, got {lambda_!r}")
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"lambda_ must be in [0, 1], got {float(value)}")


def refine(
    x: NMFModel | ArrayLike,
    labels: Any,
    lambda_: float = 0.8,
    *,
    data: Any = None,
    batch: Any = None,
    cycles: int = 0,
    nonneg: bool = True,
    whiten: bool = True,
) -> NMFModel | jax.Array:
    """Post-hoc label refinement of an NMF embedding (RcppML's ``refine``).

    Stage 1: ``H_c = max(H + lambda_ T |H|_F / |T|_F, 0)`` with ``T = compute_target(H, labels, whiten)``
    (the clip only if ``nonneg``). For an ``NMFModel`` input (H = ``x.h``) the result is
    ``x.replace(h=H_c)`` (w and d unchanged, as in RcppML, so rows of h no longer sum to exactly 1); for a
    k x n matrix it is ``H_c``.

    Stage 2 (``cycles > 0``, model input, ``data`` the m x n matrix the model was fit to) alternates, per cycle:
    refit W (exact NNLS) to the refined embedding ``diag(d) H_c``; scale W's columns to sum 1; refit H (exact NNLS)
    to ``data`` given W; split ``H = diag(d) H_n`` with rows of ``H_n`` summing to 1; recompute ``H_c`` from
    ``H_n`` as in stage 1. The returned model has W columns summing to 1, rows of h summing to 1 (H_c's row sums
    are folded into d), and ``w diag(d) h`` reconstructs ``data``. With ``batch`` (length-n labels of a nuisance
    grouping) the H refit removes a fraction ``lambda_`` of the batch-mean differences from its right-hand side
    (``removal_project_rhs``, the kernel of ``nmf(removal="project")``), with the batch partition read from
    ``T_b = compute_target(x.h, batch, whiten=False)``; component order never changes, so T_b stays aligned with
    the rows of H. ``iter``, ``loss``, ``loss_history``, ``converged``, ``tol`` and ``w_init`` are kept from the
    input fit.

    Differences from RcppML: its stage 2 refits by least squares and a clip, rescales H by L2 row norms, and folds
    d into W while also keeping d, so ``w diag(d) h`` counts d twice (toy data: MSE 19994 instead of 0.29); with
    ``batch`` it runs one PROJ_ADV ``nmf`` iteration (which enlarges the target directions) on a sorted model
    without realigning T_b. Here ``batch`` with ``cycles = 0`` warns (RcppML ignores it silently), and
    ``cycles > 0`` with a matrix input is an error (there is no W to refit).

    Args:
        x: an ``NMFModel`` or a k x n matrix H.
        labels: length-n class labels (see ``label_codes``); missing labels give zero target columns.
        lambda_: correction strength in [0, 1], a fraction of H's Frobenius energy.
        data: the m x n data (dense or scipy.sparse), required when ``cycles > 0``.
        batch: optional length-n nuisance labels whose information the stage-2 H refit removes.
        cycles: number of stage-2 refit cycles.
        nonneg: clip refined factors at 0.
        whiten: OAS-ZCA whiten the class target.
    """
    if isinstance(x, NMFModel):
        H = _as_factor_matrix(x.h, "x.h")
    elif isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) == 2:
        H = _as_factor_matrix(x)
    else:
        raise TypeError(f"x must be an NMFModel or a k x n matrix, got {type(x).__name__} {np.shape(x)}")
    _check_lambda(lambda_)
    if isinstance(cycles, bool) or not isinstance(cycles, (int, np.integer)) or cycles < 0:
        raise ValueError(f"cycles must be a non-negative integer, got {cycles!r}")
    n = H.shape[1]
    codes, levels = label_codes(labels, n)
    batch_codes = None
    if batch is not None:
        batch_codes, batch_levels = label_codes(batch, n, name="batch")
    if cycles > 0 and data is None:
        raise ValueError("data is required when cycles > 0 (the refit cycles solve for W and H against it)")
    if cycles > 0 and not isinstance(x, NMFModel):
        raise ValueError("cycles > 0 refits W and needs an NMFModel input, got a matrix")
    if batch is not None and cycles == 0:
        warnings.warn("batch is ignored when cycles = 0: only the stage-2 refit removes batch information",
                      stacklevel=2)

    onehot = _onehot(codes, len(levels), H.dtype)
    lam = jnp.asarray(lambda_, H.dtype)
    H_c = _refine_jit(H, onehot, lam, whiten=bool(whiten), nonneg=bool(nonneg))
    if not isinstance(x, NMFModel):
        return H_c
    if cycles == 0:
        return x.replace(h=H_c)

    m = x.w.shape[0]
    data = check_data(data, "data")
    if tuple(data.shape) != (m, n):
        raise ValueError(f"data must be m x n = {(m, n)} to match the model, got {tuple(data.shape)}")
    A = prepare_data(data, H.dtype)
    W_T = jnp.asarray(x.w, H.dtype).T
    d = jnp.asarray(x.d, H.dtype)
    if batch_codes is None:
        T_b = jnp.zeros_like(H)
    else:
        T_b = _class_target_jit(H, _onehot(batch_codes, len(batch_levels), H.dtype), whiten=False, weighted=False)
    for _ in range(cycles):
        W_T, d, H_c = _refine_cycle(
            A, W_T, d, H_c, onehot, T_b, lam, whiten=bool(whiten), nonneg=bool(nonneg), remove=batch_codes is not None
        )
    # Fold H_c's row sums into d so that h is on the same scale convention as a fitted model.
    d_c, h = scale_rows(H_c)
    return x.replace(w=W_T.T, d=d * d_c, h=h)


@functools.partial(jax.jit, static_argnames=("whiten", "nonneg", "remove"))
def _refine_cycle(A, W_T, d, H_c, onehot, T_b, lam, *, whiten: bool, nonneg: bool, remove: bool):
    """One stage-2 cycle: W from diag(d) H_c, H from (A, W), H_c from H. Returns (W_T (k, m), d (k,), H_c (k, n))."""
    # The engine's solve pieces (_step.penalized_solve): exact CD, no L1/L2, the "project" removal on the H side.
    k, dtype = W_T.shape[0], W_T.dtype
    config = Config(k=k, solver="cd", nonneg=(nonneg, nonneg), removal="project", target_H=remove)
    zeros = jnp.zeros(2, dtype)
    hyper = Hyper(tol=jnp.zeros((), dtype), L1=zeros, L2=zeros, upper_bound=zeros, cd_tol=jnp.asarray(1e-8, dtype),
                  target_lambda=jnp.stack([zeros[0], -lam]), target_H=T_b if remove else None)
    warm = jnp.asarray(True)
    D = d[:, None] * H_c
    W_T = penalized_solve(gram(D), A.right(D), 0, W_T, warm, config, hyper)
    s, W_T = scale_rows(W_T)
    # diag(s) D reconstructs A with the normalised W, so it warm-starts the H solve close to its solution.
    H_raw = penalized_solve(gram(W_T), A.left(W_T), 1, s[:, None] * D, warm, config, hyper,
                            T_b if remove else None, target_gram(T_b) if remove else None)
    d, H = scale_rows(H_raw)
    return W_T, d, oas_zca_refine(H, onehot, lam, whiten=whiten, nonneg=nonneg)
