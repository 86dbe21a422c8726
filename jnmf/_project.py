"""Projection of new samples onto a fitted model: solve for H with W fixed, one NNLS per column.

``project(model, A_new)`` returns ``h_new`` (k, n_new) in the model's convention, so ``w diag(d) h_new ≈ A_new``.
It runs the H half of an outer iteration of ``nmf`` (reference §4) with the model's unit-scaled w: the Gram
matrix ``G = w'w + 1e-15 I`` and ``b_j = w' a_j``, the same L1/L2/target modifications, the same solvers, then
divides the raw solution by d. Projecting the training data therefore reproduces the model's h up to the
change of W in the fit's last iteration.

No recompile per batch size: the sample axis is padded with zero columns to a bucket (``sample_bucket``: n rounded
up to a multiple of ``max(16, 2^e / 8)``, 2^e the power of two ``>= n``; so multiples of 16 up to 128, then four
sizes per doubling, 160, 192, 224, 256, 320, ..., at most 25% padding) and the result is cut back to n columns;
100, 101 and 102 samples all run as 112. A zero column is inert: its right-hand side is ``-L1 <= 0``, so its NNLS
solution is 0, and with a zero target column it is an unlabelled sample, which the removal modes leave out of
every class mean. The other columns are the unpadded solution (the solves are column-independent; the target
curvature ``T T' / n`` enters only through a scale-free ratio). The floor of 16 columns also keeps a single sample
off XLA's matrix-vector path, whose float32 sums round differently from the batched ones: a sample projected alone
or in a batch gets the same numbers (scikit-learn's subset-invariance check, float32).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from . import _validate as V
from ._data import prepare_data
from ._input import split_mask
from ._model import NMFModel
from ._nnls import cholesky_clip, nnls_step
from ._options import REMOVALS, SOLVERS, resolve_solver
from ._penalties import apply_l1_l2, apply_target, gram, target_gram


def project(
    model: NMFModel,
    A_new: Any,
    *,
    target_H: Any = None,
    target_lambda: float = 0.0,
    removal: str = "scatter",
    L1: float = 0.0,
    L2: float = 0.0,
    nonneg: bool = True,
    solver: str = "auto",
    mask: Any = None,
    cd_maxit: int = 100,
    cd_tol: float = 1e-8,
) -> jax.Array:
    """NNLS projection of new samples A_new (m, n_new) onto a fitted W: returns h_new (k, n_new).

    Column j solves ``min_{x >= 0} |a_j - w x|^2 + L2 |x|^2 + 2 L1 sum(x) (+ target term)`` with the model's
    unit-scaled w, as the H update of ``nmf`` does, and returns ``x / d`` (row-wise), so that
    ``w diag(d) h_new ≈ A_new`` and ``model.replace(h=h_new).embedding()`` embeds the new samples. The per-column
    solve is ``vmap``-ped over columns and jit-compiled; columns are independent, so projecting a subset gives the
    same columns.

    Args:
        model: a fitted (unbatched) ``NMFModel``; its dtype sets the precision.
        A_new: (m, n_new) non-negative data with the model's m features in rows: numpy, jax or scipy.sparse.
        target_H, target_lambda, removal: guidance as in ``nmf``: a (k, n_new) target compared with the raw
            solution ``diag(d) h_new``; ``target_lambda > 0`` enriches, ``< 0`` removes (``removal``). Its rows
            must follow the model's components: ``nmf`` sorts components by d but not its target, so reuse a fit's
            target with ``sort=False`` or permute its rows as the sort did (``GuidedNMF`` does this).
        L1, L2: lasso and ridge on h, as ``nmf``'s H-side penalties.
        nonneg: constrain h_new >= 0.
        solver: ``"cholesky"`` (solve then clip, RcppML's default), ``"cd"`` (exact NNLS) or ``"auto"`` (RcppML's
            rule: Cholesky when k < 32 and L1 = 0, else CD); ``"hals"``, ``"bpp"`` and ``"rcppml"`` from k = 32 solve
            by CD (one solve from nothing: an exact NNLS). Use the solver the model was fit with to reproduce its h.
        mask: entries of A_new to ignore (True), as in ``nmf``; NaN entries are masked automatically. A column
            then uses its own Gram matrix ``w' diag(o_j) w`` over its observed entries.
        cd_maxit, cd_tol: coordinate-descent limits.

    The sample axis is padded to ``sample_bucket(n_new)`` zero columns (module docstring), so batches of nearby
    sizes share one compiled program; the result is exactly the unpadded one.
    """
    h, n = _project_padded(model, A_new, target_H=target_H, target_lambda=target_lambda, removal=removal, L1=L1,
                           L2=L2, nonneg=nonneg, solver=solver, mask=mask, cd_maxit=cd_maxit, cd_tol=cd_tol)
    # Cut on the host: an eager jax slice (or jnp.asarray) would compile once per n, the cost the padding avoids.
    return h if h.shape[1] == n else jax.device_put(np.asarray(h)[:, :n])


def project_host(model: NMFModel, A_new: Any, **options: Any) -> np.ndarray:
    """``project`` as a numpy array (k, n_new), without the device round trip of the cut (scikit-learn's path)."""
    h, n = _project_padded(model, A_new, **options)
    return np.asarray(h)[:, :n]


def _project_padded(model: NMFModel, A_new: Any, *, target_H: Any = None, target_lambda: float = 0.0,
                    removal: str = "scatter", L1: float = 0.0, L2: float = 0.0, nonneg: bool = True,
                    solver: str = "auto", mask: Any = None, cd_maxit: int = 100, cd_tol: float = 1e-8
                    ) -> tuple[jax.Array, int]:
    """``project``'s checks and solve on the padded sample axis: (h of ``sample_bucket(n_new)`` columns, n_new)."""
    if not isinstance(model, NMFModel):
        raise TypeError(f"model must be an NMFModel, got {type(model).__name__}")
    if np.ndim(model.d) != 1:
        raise ValueError(f"model must be a single fit, got a batch of models (d has shape {np.shape(model.d)})")
    m, k = model.w.shape
    dtype = jnp.dtype(model.w.dtype)
    A_new, M = split_mask(A_new, mask, dtype.itemsize, name="A_new")
    A_new = V.check_data(A_new, "A_new")
    if A_new.shape[0] != m:
        raise ValueError(f"A_new must have the model's {m} features in rows (m x n_new), got shape {A_new.shape}")
    n = A_new.shape[1]
    L1 = V.check_real(L1, "L1", low=0.0, high=1.0, high_open=True)
    L2 = V.check_real(L2, "L2", low=0.0)
    lam = V.check_real(target_lambda, "target_lambda")
    V.check_choice(solver, "solver", SOLVERS)
    V.check_choice(removal, "removal", REMOVALS)
    cd_maxit = V.check_int(cd_maxit, "cd_maxit", 1)
    cd_tol = V.check_real(cd_tol, "cd_tol", low=0.0)
    if not isinstance(nonneg, (bool, np.bool_)):
        raise TypeError(f"nonneg must be a bool, got {nonneg!r}")
    T = None
    if target_H is not None:
        T = np.asarray(V.check_matrix(target_H, "target_H", (k, n)), dtype)
    elif lam != 0:
        raise ValueError(f"target_lambda is {lam} but target_H is None; give a target or leave target_lambda at 0")
    # A projection is one solve from nothing (no iterate for HALS to warm-start from), so "auto" keeps RcppML's rule
    # and every other solver but Cholesky-then-clip is the exact CD below.
    solver = resolve_solver("rcppml" if solver == "auto" else solver, k, L1,
                            scatter=T is not None and removal == "scatter" and lam < 0)
    n_pad = sample_bucket(n)
    # Padded and cast on the host, then placed with device_put: jnp.asarray of a host array compiles a small
    # staging program per shape, which would undo the bucketing's one compile per bucket.
    A_new, M, T = (_pad_columns(X, n_pad, dt) for X, dt in ((A_new, dtype), (M, bool), (T, dtype)))
    data = prepare_data(A_new, dtype, mask=M, bucket=True)
    hyper = tuple(jax.device_put(np.asarray(x, dtype)) for x in (L1, L2, lam, cd_tol))
    h = _project_jit(jnp.asarray(model.w, dtype), jnp.asarray(model.d, dtype), data, T, *hyper,
                     solver=solver, nonneg=bool(nonneg), removal=removal, cd_maxit=cd_maxit)
    return h, n


# Columns of the smallest bucket, and its step (see the module docstring for why a single sample is padded).
_MIN_STEP = 16


def sample_bucket(n: int) -> int:
    """The padded sample count of a projection of n samples (module docstring): n rounded up to a multiple of
    ``max(16, 2^e / 8)`` with ``2^e >= n`` the next power of two: 16, 32, ..., 112, 128, 160, 192, 224, 256, 320."""
    n = int(n)
    step = max(_MIN_STEP, 1 << max((n - 1).bit_length() - 3, 0))
    return max(-(-n // step) * step, _MIN_STEP)


def _pad_columns(X: Any, n_pad: int, dtype: Any) -> Any:
    """X (m, n) with zero (False) columns appended up to n_pad, as a device array of ``dtype``; a sparse X stays a
    CSR matrix (of its own dtype; the new columns hold no entries) and None passes through."""
    if X is None:
        return None
    m, n = X.shape
    if sp.issparse(X):
        X = X.tocsr()
        return X if n == n_pad else sp.csr_matrix((X.data, X.indices, X.indptr), shape=(m, n_pad))
    if n == n_pad:  # no host copy of a batch that already fills its bucket (beyond a dtype cast)
        return jax.device_put(np.asarray(X, dtype))
    out = np.zeros((m, n_pad), dtype)
    out[:, :n] = np.asarray(X)
    return jax.device_put(out)


# Majorize-minimize steps of a projection with removal="scatter" (the penalty couples the columns, so the
# projection is itself iterative); each step is one batched NNLS solve with the moving target.
_SCATTER_STEPS = 100


@functools.partial(jax.jit, static_argnames=("solver", "nonneg", "removal", "cd_maxit"))
def _project_jit(w, d, data, T, L1, L2, lam, cd_tol, *, solver, nonneg, removal, cd_maxit):
    WT = w.T
    masked = getattr(data, "mask", None) is not None
    # Unmasked: one G shared by all columns (factorised once under vmap); masked: one G_j per column.
    G0, B0 = apply_l1_l2(data.left_grams(WT) if masked else gram(WT), data.left(WT), L1, L2)

    def column(G_j, b_j, x_j):
        if solver == "cholesky":
            return cholesky_clip(G_j, b_j, nonneg=nonneg)
        return nnls_step(G_j, b_j, x_j, nonneg=nonneg, cd_maxit=cd_maxit, cd_tol=cd_tol)

    def solve(X0):
        G, B = (G0, B0) if T is None else apply_target(G0, B0, T, target_gram(T), lam, removal, X0)
        return jax.vmap(column, in_axes=(0 if masked else None, 1, 1), out_axes=1)(G, B, X0)

    X = solve(jnp.zeros_like(B0))
    if T is not None and removal == "scatter":
        X = lax.fori_loop(0, _SCATTER_STEPS, lambda _, X: solve(X), X)
    return X / d[:, None]
