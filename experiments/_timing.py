"""Shared timing helpers of the benchmark scripts: jnmf and scikit-learn at equal, fixed iteration counts."""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

import jnmf


def time_jnmf(A, k: int, iters: int, repeats: int, sparse_kernel: str = "auto", **opts) -> tuple[float, float, str]:
    """(median ms per iteration, compile ms, solver used) of ``jnmf.solve`` with tol = 0 and ``iters`` iterations.

    ``sparse_kernel``: ``"auto"`` (the platform's default), ``"host"`` or ``"ell"`` for ``layout="sparse"``.
    """
    problem = jnmf.prepare(A, k, seed=1, tol=0.0, maxit=iters, sparse_kernel=sparse_kernel, **opts)
    t0 = time.perf_counter()
    jnmf.solve(problem).d.block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = jnmf.solve(problem)
        model.d.block_until_ready()
        times.append(time.perf_counter() - t0)
    assert int(model.iter) == iters
    warm = float(np.median(times))
    # First call minus a warm call: compilation (clipped at 0, since timing noise can exceed it for small fits).
    return warm / iters * 1e3, max(first - warm, 0.0) * 1e3, problem.config.solver


def time_sklearn_best(A, k: int, iters: int, repeats: int) -> tuple[float, str]:
    """(ms per iteration, input) of scikit-learn's CD on the fastest of the input forms it is commonly given: as is
    (dense stays dense) or, for sparse A, CSR and CSC in float64 and CSR in float32."""
    import scipy.sparse as sp

    if not sp.issparse(A):
        return time_sklearn(A, k, iters, repeats), "dense"
    forms = {"csr float64": sp.csr_matrix(A, dtype=np.float64), "csc float64": sp.csc_matrix(A, dtype=np.float64),
             "csr float32": sp.csr_matrix(A, dtype=np.float32)}
    times = {name: time_sklearn(X, k, iters, repeats) for name, X in forms.items()}
    best = min(times, key=times.get)
    return times[best], best


def time_sklearn(A, k: int, iters: int, repeats: int) -> float:
    """Median ms per iteration of scikit-learn's ``NMF(solver="cd")`` with tol = 0 and ``iters`` iterations."""
    times = []
    for _ in range(repeats):
        est = NMF(n_components=k, solver="cd", init="random", random_state=0, max_iter=iters, tol=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            est.fit(A)
            times.append(time.perf_counter() - t0)
        assert est.n_iter_ == iters
    return float(np.median(times) / iters * 1e3)
