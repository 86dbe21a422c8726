"""The CPU sparse product ``X M'`` for a CSR matrix M, compiled with numba (the kernel behind ``HostSparseData``).

Why a hand-written kernel: on the 14,000 x 2,600 (15%) matrix at k = 20, one product took 16-17 ms as XLA gathers
(scalar code), 17 ms in scipy's CSR product on one thread and ~9 ms on two, and 6-7 ms here on two threads.
scipy's product loops over a run-time number of vectors with one accumulator chain per row; this kernel reads the
k-vectors of 8 non-zeros per step and adds their products in a tree before touching the accumulator, so the
adds do not wait on each other, and it writes the (K, r) result directly in the layout JAX wants.

numba is imported, and the kernel compiled (cached on disk), on first use only: dense fits never pay for it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_KERNEL: list[Any] = []
# numba's default threading layer must not be entered from two threads at once; fits calling from several Python
# threads take turns (each call already uses every core).
_LOCK = threading.Lock()


def _compile() -> Any:
    import numba

    # Reassociation (the sum tree) and FMA contraction only: no finite-math assumptions, so NaN and inf in X
    # propagate to the result as they would through a dense product.
    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, boundscheck=False, nogil=True, cache=True)
    def csr_times_t(indptr, indices, data, XT, out):  # pragma: no cover - compiled
        r = indptr.shape[0] - 1
        K = XT.shape[1]
        for j in numba.prange(r):
            acc = np.zeros_like(XT[0])
            p, e = indptr[j], indptr[j + 1]
            while p + 7 < e:
                v0, v1, v2, v3 = data[p], data[p + 1], data[p + 2], data[p + 3]
                v4, v5, v6, v7 = data[p + 4], data[p + 5], data[p + 6], data[p + 7]
                r0, r1, r2, r3 = indices[p], indices[p + 1], indices[p + 2], indices[p + 3]
                r4, r5, r6, r7 = indices[p + 4], indices[p + 5], indices[p + 6], indices[p + 7]
                for c in range(K):
                    acc[c] += (((v0 * XT[r0, c] + v1 * XT[r1, c]) + (v2 * XT[r2, c] + v3 * XT[r3, c]))
                               + ((v4 * XT[r4, c] + v5 * XT[r5, c]) + (v6 * XT[r6, c] + v7 * XT[r7, c])))
                p += 8
            while p < e:
                v0, r0 = data[p], indices[p]
                for c in range(K):
                    acc[c] += v0 * XT[r0, c]
                p += 1
            for c in range(K):
                out[c, j] = acc[c]

    return csr_times_t


def csr_times_t(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``X M'`` (K, r) for the CSR matrix M (r, q) given by ``indptr``/``indices``/``data`` and X (K, q), in
    ``data``'s dtype: ``out[:, j] = sum_p data[p] X[:, indices[p]]`` over row j's non-zeros p."""
    if not _KERNEL:
        _KERNEL.append(_compile())
    XT = np.ascontiguousarray(X.T, dtype=data.dtype)  # rows of X' are the gathered k-vectors
    out = np.empty((X.shape[0], indptr.shape[0] - 1), data.dtype)
    with _LOCK:
        _KERNEL[0](indptr, indices, data, XT, out)
    return out


# csr_scatter_t's fixed partition of the rows of M': a thread count of its own would make the result depend on
# the machine (the partial sums are added in partition order).
SCATTER_PARTS = 8
# X M' takes the scatter form when the gathered operand X' (q x K) is this large and the result (r x K) this small.
# H A' at 5% and k = 20 on 2 cores (ms, gather / scatter): 7,000 x 35,000 (a 2.7 MB H') 43 / 29, 10,000 x 50,000
# (3.8 MB) 85 / 60, 4,000 x 20,000 (1.5 MB) 10 / 10, 14,000 x 2,600 at 15% (0.2 MB) 9 / 12; at 1,000,000 x 20,000
# (80 MB) 1.9-3.1 s as a scatter against 7.3-8.0 s as the gather (nearly every gathered k-vector a cache miss).
# Below the threshold the gather's operand stays in cache and it needs no partial results.
SCATTER_MIN_OPERAND = 2 << 20
SCATTER_MAX_RESULT = 4 << 20
_SCATTER: list[Any] = []


def _compile_scatter() -> Any:
    import numba

    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, boundscheck=False, nogil=True, cache=True)
    def scatter(indptr, indices, data, XT, parts):  # pragma: no cover - compiled
        q = indptr.shape[0] - 1
        K = XT.shape[1]
        nparts = parts.shape[0]
        chunk = (q + nparts - 1) // nparts
        for t in numba.prange(nparts):
            o = parts[t]
            for j in range(t * chunk, min(q, (t + 1) * chunk)):
                for p in range(indptr[j], indptr[j + 1]):
                    g = indices[p]
                    v = data[p]
                    for c in range(K):
                        o[g, c] += v * XT[j, c]

    return scatter


def use_scatter(q: int, r: int, K: int, itemsize: int) -> bool:
    """Whether ``X M'`` (X: K x q, result K x r) should take ``csr_scatter_t`` (see ``SCATTER_MIN_OPERAND``)."""
    return q * K * itemsize >= SCATTER_MIN_OPERAND and r * K * itemsize <= SCATTER_MAX_RESULT


def csr_scatter_t(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, X: np.ndarray, r: int) -> np.ndarray:
    """``X M'`` (K, r) from the CSR of ``M'`` (q, r) given by ``indptr``/``indices``/``data`` and X (K, q):
    ``out[:, indices[p]] += data[p] X[:, j]`` over row j's non-zeros p. The same product as ``csr_times_t`` on M,
    read in M' order: X' streams once and the writes go to ``SCATTER_PARTS`` partial (r, K) results (added in
    order), which stay in cache where X' would not."""
    if not _SCATTER:
        _SCATTER.append(_compile_scatter())
    XT = np.ascontiguousarray(X.T, dtype=data.dtype)
    parts = np.zeros((SCATTER_PARTS, r, X.shape[0]), data.dtype)
    with _LOCK:
        _SCATTER[0](indptr, indices, data, XT, parts)
    out = parts[0]
    for t in range(1, SCATTER_PARTS):
        out += parts[t]
    return np.ascontiguousarray(out.T)
