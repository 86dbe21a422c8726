"""HALS sweeps on the CPU, compiled with numba (``nnls_hals(host=True)``, the default fit's NNLS on a CPU).

Why a hand-written kernel: XLA runs each row of a sweep across all n columns before the next row, so every row
streams X (k x n) through memory, and the sweep continues for all columns while any one is active. This kernel
takes 32 columns at a time, keeps their block of X in L1 for the whole solve, and stops the block when its own
columns have: at k = 50 on the scRNA-like matrix of ``experiments/bench_converge.py`` the H update took 1.6 ms
against 11 ms, the W update (14,000 columns) 5.8 ms against 22 ms. Same sweep, same per-column stopping rule
(``_nnls.nnls_hals``); only the order of the additions in ``G_i x`` differs (rounding).

numba is imported, and the kernel compiled (cached on disk), on first use only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._csr_kernel import _LOCK  # one lock for every numba-parallel kernel: its threading layer is not reentrant

_KERNEL: list[Any] = []
# Columns per block: 32 float32 columns are two AVX-512 vectors per row; 16 was 1.4x slower at k = 50.
_COLS = 32


def _compile() -> Any:
    import numba

    nb = _COLS
    # Reassociation and FMA contraction only (the four partial sums of G_i x): NaN and inf propagate as in XLA.
    jit = numba.njit(parallel=True, fastmath={"reassoc", "contract"}, boundscheck=False, nogil=True, cache=True)
    inline = numba.njit(fastmath={"reassoc", "contract"}, boundscheck=False, inline="always")

    @inline
    def still_active(x, w, s, sweeps, active, moved, d1, first2, res2):  # pragma: no cover - compiled
        live = False
        for c in range(w):
            if active[c]:
                if s == 0:
                    d1[c] = moved[c]
                xx = x.dtype.type(0)
                for l in range(x.shape[0]):
                    xx += x[l, c] * x[l, c]
                small = moved[c] <= first2 * d1[c] or moved[c] <= res2 * xx
                if (s > 0 and small) or moved[c] == 0 or s + 1 >= sweeps:
                    active[c] = False
                else:
                    live = True
        return live

    @jit
    def hals_columns(G, B, X, inv, sweeps, first2, res2, nonneg):  # pragma: no cover - compiled
        # G (k, k) and inv (k,) shared, or (n, k, k) and (n, k) one per column (masked data), whose block is copied
        # as (k, k, 32) so that the sums over a row run along the block's columns too. ``G.ndim`` is a compile-time
        # constant to numba, so each form compiles only its own branch.
        k, n = X.shape
        for blk in numba.prange((n + nb - 1) // nb):
            j0 = blk * nb
            w = min(n, j0 + nb) - j0
            x = np.zeros((k, nb), X.dtype)
            b = np.zeros((k, nb), X.dtype)
            iv = np.zeros((k, nb), X.dtype)
            x[:, :w] = X[:, j0:j0 + w]
            b[:, :w] = B[:, j0:j0 + w]
            if G.ndim == 3:
                g = np.zeros((k, k, nb), X.dtype)
                for c in range(w):
                    g[:, :, c] = G[j0 + c]
                    iv[:, c] = inv[j0 + c]
            else:
                g = np.zeros((1, 1, 1), X.dtype)
                for i in range(k):
                    iv[i, :] = inv[i]
            active = np.zeros(nb, np.bool_)
            active[:w] = True
            d1, moved = np.zeros(nb, X.dtype), np.zeros(nb, X.dtype)
            a0, a1, a2, a3 = (np.zeros(nb, X.dtype), np.zeros(nb, X.dtype), np.zeros(nb, X.dtype),
                              np.zeros(nb, X.dtype))
            k4 = k - k % 4
            for s in range(sweeps):
                moved[:] = 0
                for i in range(k):
                    a0[:], a1[:], a2[:], a3[:] = 0, 0, 0, 0
                    # Four independent sums: one chain would wait on each FMA's latency.
                    if G.ndim == 3:
                        for l in range(0, k4, 4):
                            for c in range(nb):
                                a0[c] += g[i, l, c] * x[l, c]
                                a1[c] += g[i, l + 1, c] * x[l + 1, c]
                                a2[c] += g[i, l + 2, c] * x[l + 2, c]
                                a3[c] += g[i, l + 3, c] * x[l + 3, c]
                        for l in range(k4, k):
                            for c in range(nb):
                                a0[c] += g[i, l, c] * x[l, c]
                    else:
                        for l in range(0, k4, 4):
                            g0, g1, g2, g3 = G[i, l], G[i, l + 1], G[i, l + 2], G[i, l + 3]
                            for c in range(nb):
                                a0[c] += g0 * x[l, c]
                                a1[c] += g1 * x[l + 1, c]
                                a2[c] += g2 * x[l + 2, c]
                                a3[c] += g3 * x[l + 3, c]
                        for l in range(k4, k):
                            g0 = G[i, l]
                            for c in range(nb):
                                a0[c] += g0 * x[l, c]
                    for c in range(nb):
                        new = x[i, c] + (b[i, c] - ((a0[c] + a1[c]) + (a2[c] + a3[c]))) * iv[i, c]
                        if nonneg and not new > 0:  # also NaN -> 0, as jnp.where(new > 0, new, 0)
                            new = 0
                        if active[c]:
                            step = new - x[i, c]
                            moved[c] += step * step
                            x[i, c] = new
                if not still_active(x, w, s, sweeps, active, moved, d1, first2, res2):
                    break
            X[:, j0:j0 + w] = x[:, :w]

    return hals_columns


def hals_columns(G: np.ndarray, B: np.ndarray, X0: np.ndarray, sweeps: int, first2: float, res2: float,
                 nonneg: bool) -> np.ndarray:
    """HALS from X0 (k, n) on ``min_X sum_j 1/2 x_j'G_j x_j - b_j'x_j``, G (k, k) shared or (n, k, k) one per
    column, B (k, n): sweeps of ``x_i = max(0, x_i + (b_i - G_i x) / G_ii)`` (rows with ``G_ii <= 0`` kept) until
    each column moves by ``|dx|^2 <= first2 |dx_1|^2`` or ``<= res2 |x|^2``, or ``sweeps``. Returns a new X (k, n)
    in X0's dtype."""
    if not _KERNEL:
        with _LOCK:
            if not _KERNEL:
                _KERNEL.append(_compile())
    dt = X0.dtype
    G = np.ascontiguousarray(G, dt)
    diag = np.diagonal(G, axis1=-2, axis2=-1)
    inv = np.where(diag > 0, 1 / np.where(diag > 0, diag, 1), 0).astype(dt)
    X = np.array(X0, dtype=dt, order="C", copy=True)
    args = (G, np.ascontiguousarray(B, dt), X, np.ascontiguousarray(inv), int(sweeps), dt.type(first2),
            dt.type(res2), bool(nonneg))
    with _LOCK:
        _KERNEL[0](*args)
    return X
