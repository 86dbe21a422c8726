"""Projection of new samples onto a fitted model: solve for H with W fixed, one NNLS per column.

``project(model, A_new)`` returns ``h_new`` (k, n_new) in the model's convention, so ``w diag(d) h_new ≈ A_new``.
It runs the H half of an outer iteration of ``nmf`` (reference §4) with the model's unit-scaled w: the Gram
matrix ``G = w'w + 1e-15 I`` and ``b_j = w' a_j``, the same L1/L2/target modifications, the same solvers, then
divides the raw solution by d. Projecting the training data therefore reproduces the model's h up to the
change of W in the fit's last iteration.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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
        solver: ``"cholesky"`` (solve then clip, RcppML's default), ``"cd"`` (exact NNLS) or ``"auto"`` (Cholesky
            when k < 32 and L1 = 0, as ``nmf``). Use the solver the model was fit with to reproduce its h.
        mask: entries of A_new to ignore (True), as in ``nmf``; NaN entries are masked automatically. A column
            then uses its own Gram matrix ``w' diag(o_j) w`` over its observed entries.
        cd_maxit, cd_tol: coordinate-descent limits.
    """
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
        T = jnp.asarray(V.check_matrix(target_H, "target_H", (k, n)), dtype)
    elif lam != 0:
        raise ValueError(f"target_lambda is {lam} but target_H is None; give a target or leave target_lambda at 0")
    solver = resolve_solver(solver, k, L1, scatter=T is not None and removal == "scatter" and lam < 0)
    data = prepare_data(A_new, dtype, mask=M)
    hyper = tuple(jnp.asarray(x, dtype) for x in (L1, L2, lam, cd_tol))
    return _project_jit(jnp.asarray(model.w, dtype), jnp.asarray(model.d, dtype), data, T, *hyper,
                        solver=solver, nonneg=bool(nonneg), removal=removal, cd_maxit=cd_maxit)


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
