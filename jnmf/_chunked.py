"""Fits of a matrix held on disk as column chunks, streamed once per iteration, never loaded whole.

``nmf_chunked(paths, k, ...)`` factors ``A = [A_1 | A_2 | ...]`` (m x n) given as files written by
``scipy.sparse.save_npz`` (or in-memory matrices), each holding consecutive columns (samples). It runs the
iterations of ``nmf()`` with the same arguments (same kernels, same stopping rule, same iteration count; equal
to float rounding), as a host-level loop around jit-compiled per-chunk kernels:

* H update, chunk by chunk: column block ``H_c`` solves the NNLS with ``G = W W' (+ L2)`` and ``B = W A_c (- L1)``,
  which needs only W; the same pass accumulates ``R = sum_c H_c A_c'`` (k x m) from the raw ``H_c``;
* the diagonal scaling of H needs all of H's rows (``d_H = |H[i, :]|``), so H (k x n) stays in memory: it is
  k/m of A's dense size (2% for k = 20 on 1,000 genes) and is the output anyway. Scaling is linear, so
  ``H_unit A' = diag(1/d_H) R``: one pass over the data per iteration, not two;
* W update from ``G = H H'`` and ``B = H A'`` (k x k and k x m), loss by the Gram identity with ``|A|^2`` summed
  once over the chunks, as ``step`` does.

Each chunk is put in the solver's dense or sparse layout by the ``layout="auto"`` rule against the memory budget
(``choose_layout``); sparse chunks round their block shapes up to powers of two so that chunks of similar size
reuse one compiled kernel. Targets and masks couple columns or need dense per-column Gram
matrices, and are not supported here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from . import _validate as V
from ._data import DenseData, SparseData, prepare_data, squared_norm
from ._features import scale_rows
from ._model import NMFModel
from ._solve import (
    _check_finite,
    _solve_raw,
    _update,
    advance,
    finish_model,
    gram_identity_sse,
    init_state,
    prepare,
    running,
)

__all__ = ["nmf_chunked"]


def _load(chunk: Any, i: int) -> Any:
    if isinstance(chunk, (str, os.PathLike)):
        chunk = sp.load_npz(chunk)
    return V.check_data(chunk, f"chunks[{i}]")


def _as_data(A: Any, dtype: Any, k: int, budget: int | None) -> DenseData | SparseData:
    # bucket: power-of-two piece width and block count, so that chunks of similar size share compiled kernels.
    return prepare_data(A, dtype, "auto", k=k, max_memory_bytes=budget, bucket=True)


@functools.partial(jax.jit, static_argnames=("config",))
def _h_chunk(W, H_prev, data, warm, hyper, config):
    """Raw H block (k, n_c) for one chunk (before the global scaling) and its ``H_c A_c'`` (k, m)."""
    X, _, _ = _solve_raw(W, H_prev, data.left(W), 1, warm, config, hyper, None, None, False)
    return X, data.right(X)


@functools.partial(jax.jit, static_argnames=("config",))
def _w_step(state, H_raw, R, sq_norm, hyper, config):
    """Scale H, update W from ``H A' = diag(1/d_H) R``, loss by the Gram identity, convergence bookkeeping."""
    d_H, H = scale_rows(H_raw, config.norm)
    d, W, G_w, B_w = _update(H, state.W, R / d_H[:, None], 0, state.n_iter > 0, config, hyper, None, None, False)
    loss = gram_identity_sse(sq_norm, d, W, G_w, B_w)
    return advance(state, W, H, d, loss, hyper.tol, config.patience)


def nmf_chunked(
    chunks: Sequence[Any],
    k: int,
    *,
    tol: float = 1e-4,
    maxit: int = 100,
    seed: Any = None,
    w_init: Any = None,
    L1: Any = 0.0,
    L2: Any = 0.0,
    nonneg: Any = True,
    upper_bound: Any = 0.0,
    solver: str = "auto",
    norm: str = "L1",
    sort: bool = True,
    cd_maxit: int = 100,
    cd_tol: float = 1e-8,
    dtype: Any = None,
    max_memory_bytes: int | None = None,
) -> NMFModel:
    """``nmf()`` of ``A = hstack(chunks)`` (m x n), reading one column chunk at a time (module docstring).

    Args:
        chunks: paths of ``scipy.sparse.save_npz`` files (or scipy.sparse / numpy matrices), each (m, n_c),
            consecutive columns of A in order. Every chunk is read once to check it and sum ``|A|^2``, then once
            per iteration.
        k, tol, maxit, seed, w_init, L1, L2, nonneg, upper_bound, solver, norm, sort, cd_maxit, cd_tol, dtype:
            as ``nmf``; ``seed`` as an int draws the same initial W as ``nmf`` (it depends on m and k only).
        max_memory_bytes: budget for one chunk's working set (default half of physical memory); each chunk
            takes the dense or sparse layout by ``layout="auto"``'s rule, ``MemoryError`` if neither fits.

    Returns an ``NMFModel`` (jax arrays, as from ``nmf``) with ``h`` (k, n) in memory.
    """
    if isinstance(chunks, (str, os.PathLike)) or not isinstance(chunks, Sequence) or len(chunks) == 0:
        raise TypeError(f"chunks must be a non-empty sequence of .npz paths or matrices, got {chunks!r}")
    # One pass: shapes, values and |A|^2 (exact float64 sum, as squared_norm in prepare).
    widths, sq_norm, m = [], 0.0, None
    for i, chunk in enumerate(chunks):
        A_c = _load(chunk, i)
        if m is not None and A_c.shape[0] != m:
            raise ValueError(f"chunks[{i}] has {A_c.shape[0]} rows, chunks[0] has {m}: chunks must share the rows")
        m = A_c.shape[0]
        widths.append(A_c.shape[1])
        sq_norm += squared_norm(A_c)
    n = sum(widths)
    # Validation, initial W, Config and Hyper exactly as nmf() builds them: prepare() on an empty stand-in of A's
    # shape (its data are never used).
    problem = prepare(sp.csc_matrix((m, n)), k, tol=tol, maxit=maxit, seed=seed, w_init=w_init, L1=L1, L2=L2,
                      nonneg=nonneg, upper_bound=upper_bound, solver=solver, norm=norm, sort=sort,
                      cd_maxit=cd_maxit, cd_tol=cd_tol, layout="sparse", dtype=dtype)
    config, hyper = problem.config, problem.hyper
    dt = problem.w_init.dtype
    sq = jnp.asarray(sq_norm, dt)
    starts = np.concatenate([[0], np.cumsum(widths)])
    state = init_state(problem)
    while bool(running(state, config.maxit)):  # the driver's rule, evaluated on the host
        warm = state.n_iter > 0
        blocks, R = [], jnp.zeros((config.k, m), dt)
        for i, chunk in enumerate(chunks):
            data = _as_data(_load(chunk, i), dt, config.k, max_memory_bytes)
            X, R_c = _h_chunk(state.W, state.H[:, starts[i]:starts[i + 1]], data, warm, hyper, config)
            blocks.append(X)
            R = R + R_c
        state = _w_step(state, jnp.concatenate(blocks, axis=1), R, sq, hyper, config)
    model = finish_model(problem, state)
    _check_finite(model)
    return model
