"""Non-negative least-squares kernels: ``min_{x >= 0} 1/2 x'Gx - b'x`` for a k x k Gram matrix G.

``nnls_step`` solves one column (vmappable across columns); ``nnls_cd`` solves all columns at once;
``nnls_hals`` is warm-started coordinate descent with a few sweeps per call and a relative stopping rule (inexact,
each call descends from its start); ``cholesky_clip`` is the unconstrained solve followed by a projection
(RcppML's default for k < 32, not an exact NNLS), ``cholesky_clip_columns`` the same with one G per column.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular
from jax.typing import ArrayLike

_HIGHEST = lax.Precision.HIGHEST


def nnls_step(
    G: ArrayLike,
    b: ArrayLike,
    x0: ArrayLike | None = None,
    *,
    nonneg: bool = True,
    cd_maxit: int = 100,
    cd_tol: ArrayLike = 1e-8,
    differentiable: bool = False,
) -> jax.Array:
    """Sequential coordinate descent for one column, in residual form (RcppML's CD).

    Solves ``min_x 1/2 x'Gx - b'x`` (x >= 0 if ``nonneg``) for G (k, k), b (k,), warm-started at ``x0`` (k,)
    (zeros if None). The residual ``r = b - Gx`` is updated in place: coordinate i moves by ``r_i / G_ii``,
    clipped at zero. Sweeps stop when ``mean_i |dx_i| / (|x_i| + 1e-15) < cd_tol`` or after ``cd_maxit`` sweeps.
    Coordinates with ``G_ii <= 0`` are skipped. Returns x (k,). ``differentiable=True`` runs ``cd_maxit`` masked
    sweeps in a ``lax.scan`` (same result, reverse-mode differentiable, always pays ``cd_maxit`` sweeps).
    """
    b = jnp.asarray(b)
    dtype = jnp.result_type(jnp.asarray(G).dtype, b.dtype)
    x0 = None if x0 is None else jnp.asarray(x0, dtype)[:, None]
    # One column is the n = 1 case of the row-wise kernel; vmapping this function over columns gives nnls_cd.
    X = nnls_cd(G, b.astype(dtype)[:, None], x0, nonneg=nonneg, cd_maxit=cd_maxit, cd_tol=cd_tol,
                differentiable=differentiable)
    return X[:, 0]


def nnls_cd(
    G: ArrayLike,
    B: ArrayLike,
    X0: ArrayLike | None = None,
    *,
    nonneg: bool = True,
    cd_maxit: int = 100,
    cd_tol: ArrayLike = 1e-8,
    differentiable: bool = False,
) -> jax.Array:
    """``nnls_step`` applied to every column of B (k, n), warm-started at X0 (k, n). Returns X (k, n).

    Numerically the same as ``jax.vmap(nnls_step)`` over columns (tested), written row-wise: coordinate i
    updates the contiguous row ``X[i]`` of all columns at once, and each column stops on its own criterion
    (finished columns are frozen). ``vmap`` of the per-column loop produced strided scatters that ran ~2.7x
    slower on CPU for k = 20, n = 14,000.
    """
    B = jnp.asarray(B)
    G = jnp.asarray(G, B.dtype)
    dtype = B.dtype
    k, n = B.shape
    X = jnp.zeros_like(B) if X0 is None else jnp.asarray(X0, dtype)
    cd_tol = jnp.asarray(cd_tol, dtype)
    R = B - jnp.dot(G, X, precision=_HIGHEST)
    diag = jnp.diagonal(G)
    safe_diag = jnp.where(diag > 0, diag, jnp.ones_like(diag))
    # Safe denominator: skipped coordinates must not produce inf/NaN that leaks through `where` in gradients.
    tiny = jnp.asarray(1e-15, dtype)

    def coordinate(i, carry):
        X, R, tol_sum = carry
        xi = X[i]
        delta = R[i] / safe_diag[i]
        x_new = xi + delta
        clip = nonneg & (x_new < 0)
        step = jnp.where(clip, -xi, delta)
        skip = (diag[i] <= 0) | (step == 0)
        step = jnp.where(skip, jnp.zeros_like(step), step)
        xi_new = jnp.where(skip, xi, jnp.where(clip, jnp.zeros_like(xi), x_new))
        tol_sum = tol_sum + jnp.where(skip, jnp.zeros_like(step), jnp.abs(step) / (jnp.abs(xi_new) + tiny))
        return X.at[i].set(xi_new), R - G[:, i, None] * step[None, :], tol_sum

    def sweep(state):
        X, R, n_sweeps, active = state
        X_new, R_new, tol_sum = lax.fori_loop(0, k, coordinate, (X, R, jnp.zeros((n,), dtype)))
        X = jnp.where(active[None, :], X_new, X)
        R = jnp.where(active[None, :], R_new, R)
        active = active & (tol_sum / k >= cd_tol) & (n_sweeps + 1 < cd_maxit)
        return X, R, n_sweeps + 1, active

    init = (X, R, jnp.zeros((), jnp.int32), jnp.ones((n,), bool))
    if not differentiable:
        return lax.while_loop(lambda s: jnp.any(s[3]), sweep, init)[0]
    return lax.scan(lambda s, _: (sweep(s), None), init, None, length=cd_maxit)[0][0]


def cholesky_clip(G: ArrayLike, B: ArrayLike, *, nonneg: bool = True) -> jax.Array:
    """``X = max(G^{-1} B, 0)`` by one Cholesky factorisation of G (k, k); B is (k, n) or (k,).

    Not an exact NNLS (the clip ignores the coupling between coordinates); kept because it is RcppML's
    default for k < 32 and reproduces its models. If the factorisation fails (G not numerically positive
    definite), G + k eps tr(G) I is factored instead.
    """
    G = jnp.asarray(G)
    B = jnp.asarray(B)
    k = G.shape[0]
    # G not numerically positive definite (e.g. PROJ_ADV's clipped Gram in float32, cond ~1e8): RcppML's LLT then
    # returns undefined values; we factor G + k eps tr(G) I instead, so the fit stays finite. The second
    # factorisation takes the first one's outcome as input (G itself when it succeeded), so vmapped fits need no
    # per-member branch and the two never run concurrently: two batched (vmapped, e.g. masked) factorisations at
    # once deadlock jaxlib's CPU LAPACK kernel, each waiting on the intra-op thread pool for its batch while
    # holding one of its threads (a 183 x 1183 masked fit hung on 2 threads).
    jitter = k * jnp.finfo(G.dtype).eps * jnp.maximum(jnp.abs(jnp.trace(G)), jnp.finfo(G.dtype).tiny)
    factored = jnp.all(jnp.isfinite(jnp.linalg.cholesky(G)))
    L = jnp.linalg.cholesky(jnp.where(factored, G, G + jitter * jnp.eye(k, dtype=G.dtype)))
    # Neither factor finite (e.g. G overflowed): poison the result so the driver reports it, never a silent zero.
    L = jnp.where(jnp.all(jnp.isfinite(L)), L, jnp.nan)
    # Invert the k x k factor once and apply it with two GEMMs: XLA's CPU triangular solve with n right-hand
    # sides was ~50x slower than a GEMM for k = 10, n = 14,000. Same maths as cho_solve up to rounding.
    L_inv = solve_triangular(L, jnp.eye(k, dtype=G.dtype), lower=True)
    X = jnp.dot(L_inv.T, jnp.dot(L_inv, B, precision=_HIGHEST), precision=_HIGHEST)
    # where() rather than maximum(): XLA's CPU max may turn NaN into 0 (as RcppML's SIMD clip does).
    return jnp.where(X < 0, jnp.zeros_like(X), X) if nonneg else X


def cholesky_clip_columns(G: ArrayLike, B: ArrayLike, *, nonneg: bool = True) -> jax.Array:
    """``cholesky_clip`` with one Gram matrix per column (masked data): G (p, k, k), B (k, p) → X (k, p),
    ``X[:, j] = max(G_j^{-1} b_j, 0)``.

    The same maths per column, with two batched triangular solves in place of the explicit inverse, which costs
    more than it saves with one right-hand side per matrix.
    """
    G = jnp.asarray(G)
    B = jnp.asarray(B, G.dtype)
    k = G.shape[-1]
    eye = jnp.eye(k, dtype=G.dtype)
    L = jnp.linalg.cholesky(G)
    factored = jnp.all(jnp.isfinite(L), axis=(1, 2))
    jitter = k * jnp.finfo(G.dtype).eps * jnp.maximum(jnp.abs(jnp.trace(G, axis1=1, axis2=2)),
                                                      jnp.finfo(G.dtype).tiny)
    # The second factorisation takes the first's outcome as input, as in cholesky_clip: two batched factorisations
    # must never run concurrently on jaxlib's CPU LAPACK kernel (they deadlock). A lax.cond skipping it would
    # become a select under vmap (a sweep, a CV grid) and run both at once: it hung a masked CV grid.
    L = jnp.linalg.cholesky(jnp.where(factored[:, None, None], G, G + jitter[:, None, None] * eye))
    L = jnp.where(jnp.all(jnp.isfinite(L), axis=(1, 2))[:, None, None], L, jnp.nan)
    y = solve_triangular(L, B.T[:, :, None], lower=True)
    X = solve_triangular(L, y, lower=True, trans=1)[:, :, 0].T
    return jnp.where(X < 0, jnp.zeros_like(X), X) if nonneg else X


# nnls_hals's defaults (the ALS default from k = 32; chosen in experiments/bench_converge.py, see resolve_solver).
HALS_SWEEPS = 10
# 0.3, not Gillis & Glineur's 0.1, with per-column stopping: on 14,000 x 2,600 (15 %) at k = 50, 80 iterations,
# 76 against 106 ms per iteration and 5.0 against 7.4 s to 1e-4 of the best loss (scRNA-like: 4.0 against 4.6 s).
HALS_FIRST = 0.3
# Rows per block: 8, and 2 up to k = 16, where a block's chain of row updates costs more than its GEMM saves
# (ms per iteration, b = 2 / 8, 2-core CPU: hawaiibirds 183 x 1,183 k = 8 0.36 / 0.70, k = 16 0.79 / 1.00;
# 14,000 x 2,700 scRNA-like k = 10 10.9 / 13.8, k = 20 24.0 / 22.5, k = 32 42.3 / 30.6; uniform 14,000 x 2,600
# k = 10 28.9 / 36.7). The 2-row blocks are unrolled (0.27, 0.64 and 9.7 ms for the first three; compile
# +0.4-0.8 s), which XLA's CPU backend also needs in column-sharded programs (see ``sweep`` below).
_HALS_BLOCK = 8
_HALS_BLOCK_SMALL, _HALS_SMALL_K = 2, 16
# k^2 n below which host=True keeps the XLA sweeps: the callback costs ~0.3 ms, and up to k = 16 the XLA sweeps
# (2-row blocks) are as fast (k = 16, n = 2,700: 1.48 against 1.41 ms; k = 10, n = 2,700: 0.61 against 1.21).
_HOST_MIN_WORK = 1_000_000
# The same for one Gram matrix per column (masked data), whose XLA sweeps, vmapped per column, are slower: k = 10,
# n = 1,183: 1.09 against 1.08 ms; k = 20, n = 1,183: 9.2 against 2.2 ms; k = 10, n = 14,000: 27.8 against 7.3 ms.
_HOST_MIN_WORK_COLUMNS = 250_000


def _hals_host(G, B, X, first2, res2, sweeps: int, nonneg: bool) -> jax.Array:
    """``nnls_hals``'s sweeps in ``_hals_kernel`` through ``jax.pure_callback`` (vmap: one call per member); G
    (k, k), or (p, k, k) one per column."""
    # Values cross as uint32 words, as in _data/host_csr.py: the callback thread does not see a thread-local
    # jax.enable_x64, so float64 operands and results would otherwise be rounded to float32.
    dtype = X.dtype
    words = functools.partial(lax.bitcast_convert_type, new_dtype=jnp.uint32)
    scalars = jnp.stack([first2, res2]).astype(dtype)
    out = jax.ShapeDtypeStruct(words(X).shape, jnp.uint32)
    fn = functools.partial(_hals_host_call, dtype=jnp.dtype(dtype).name, sweeps=int(sweeps), nonneg=bool(nonneg),
                           g_ndim=G.ndim)
    res = jax.pure_callback(fn, out, words(G), words(B), words(X), words(scalars), vmap_method="broadcast_all")
    return lax.bitcast_convert_type(res, dtype)


def _hals_host_call(G, B, X, scalars, *, dtype: str, sweeps: int, nonneg: bool, g_ndim: int):
    import numpy as np

    from ._hals_kernel import hals_columns

    dt = np.dtype(dtype)

    def value(w):
        v = np.ascontiguousarray(np.asarray(w)).view(dt)
        return v[..., 0] if dt.itemsize == 8 else v  # (..., 2) words of a float64 -> (...)

    G, B, X, scalars = map(value, (G, B, X, scalars))
    lead = X.shape[:-2]
    flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in (G, B, X, scalars)]
    outs = [hals_columns(g, b, x, sweeps, sc[0], sc[1], nonneg) for g, b, x, sc in zip(*flat, strict=True)]
    out = outs[0] if len(outs) == 1 else np.stack(outs)  # unbatched: no second copy of X
    return out.reshape(X.shape).view(np.uint32).reshape(X.shape + ((2,) if dt.itemsize == 8 else ()))


def nnls_hals(
    G: ArrayLike,
    B: ArrayLike,
    X0: ArrayLike | None = None,
    *,
    nonneg: bool = True,
    sweeps: int = HALS_SWEEPS,
    first: ArrayLike = HALS_FIRST,
    differentiable: bool = False,
    host: bool = False,
) -> jax.Array:
    """Warm-started coordinate descent (HALS) on ``min_X sum_j 1/2 x_j'G x_j - b_j'x_j`` (X >= 0 if ``nonneg``).

    G (k, k), or (n, k, k) one per column (masked data: each column solved alone), B (k, n), X0 (k, n) (None:
    ``cholesky_clip(G, B)``). One sweep updates each row of X in turn to its
    exact minimiser given the others, ``X_i = max(0, X_i + (B_i - G_i X) / G_ii)`` (rows with ``G_ii <= 0`` are
    kept), so the objective never increases from X0. Sweeps stop after ``sweeps``, or once a sweep moves X by
    ``|dX|_F <= first |dX_1|_F`` (Gillis & Glineur's accelerated HALS: further sweeps then gain little for their
    cost), or by ``|dX|_F <= 10 eps |X|_F`` (the dtype's resolution). Not an exact NNLS unless run to convergence
    (large ``sweeps``, ``first = 0``). Each column stops on its own (its ``|dx_j|`` against its first sweep's), so
    a column's result does not depend on which columns are solved with it: chunked and column-sharded fits equal
    the in-memory one. Unlike ``nnls_cd`` no residual is stored: a block of rows reads ``G_I X`` (one GEMM), half
    the memory traffic of rank-one residual updates; the sweep runs while any column is active. Returns X (k, n).
    ``differentiable=True`` runs ``sweeps`` masked sweeps in a ``lax.scan`` (same result, reverse-mode).
    ``host=True`` (CPU only, ignored when ``differentiable``) runs the same sweeps in a numba kernel called from the
    program (``_hals_kernel``: 32 columns at a time, each block stopping with its columns; 4-7x faster at k = 50),
    equal to the XLA sweeps up to the rounding of ``G_i x``; problems under ``_HOST_MIN_WORK`` stay in XLA.
    """
    B = jnp.asarray(B)
    dtype = B.dtype if jnp.issubdtype(B.dtype, jnp.floating) else jnp.result_type(float)
    B = B.astype(dtype)
    G = jnp.asarray(G, dtype)
    if G.ndim == 3:  # one Gram matrix per column (masked data): G (n, k, k)
        X = cholesky_clip_columns(G, B, nonneg=nonneg) if X0 is None else jnp.asarray(X0, dtype)
        k = G.shape[-1]
        if host and not differentiable and k * k * B.shape[1] >= _HOST_MIN_WORK_COLUMNS:
            res2 = jnp.asarray(10 * jnp.finfo(dtype).eps, dtype) ** 2
            return _hals_host(G, B, X, jnp.asarray(first, dtype) ** 2, res2, sweeps, nonneg)
        one = functools.partial(nnls_hals, nonneg=nonneg, sweeps=sweeps, first=first, differentiable=differentiable)
        return jax.vmap(lambda G_j, b, x: one(G_j, b[:, None], x[:, None])[:, 0], in_axes=(0, 1, 1),
                        out_axes=1)(G, B, X)
    k = G.shape[0]
    X = cholesky_clip(G, B, nonneg=nonneg) if X0 is None else jnp.asarray(X0, dtype)
    diag = jnp.diagonal(G)
    live = diag > 0
    inv = jnp.where(live, 1 / jnp.where(live, diag, jnp.ones_like(diag)), jnp.zeros_like(diag))
    first2 = jnp.asarray(first, dtype) ** 2
    res2 = jnp.asarray(10 * jnp.finfo(dtype).eps, dtype) ** 2
    if host and not differentiable and B.ndim == 2 and k * k * B.shape[1] >= _HOST_MIN_WORK:
        return _hals_host(G, B, X, first2, res2, sweeps, nonneg)

    # Rows in blocks of b: one GEMM G[I] X per block with X as the sweep has left it, then the block's
    # rows in turn, each corrected by the steps of the rows before it in the block (the same Gauss-Seidel sweep).
    # Row by row, the k GEMVs G[i] X ran ~30x slower than one G X on CPU (17 ms a sweep at k = 50, n = 14,000).
    b = _HALS_BLOCK_SMALL if k <= _HALS_SMALL_K else _HALS_BLOCK
    kp = -(-k // b) * b
    # Padding rows: G, B and X rows of zeros, inv 0, so they stay 0 and touch no real row.
    Gp = jnp.zeros((kp, kp), dtype).at[:k, :k].set(G)
    Bp = jnp.zeros((kp,) + B.shape[1:], dtype).at[:k].set(B)
    invp = jnp.zeros((kp,), dtype).at[:k].set(inv)

    def block(blk, carry):
        X, moved = carry
        start = blk * b
        G_I = lax.dynamic_slice_in_dim(Gp, start, b, axis=0)
        GX = jnp.dot(G_I, X, precision=_HIGHEST)
        X_I = lax.dynamic_slice_in_dim(X, start, b, axis=0)
        B_I = lax.dynamic_slice_in_dim(Bp, start, b, axis=0)
        inv_I = lax.dynamic_slice_in_dim(invp, start, b)
        G_II = lax.dynamic_slice_in_dim(G_I, start, b, axis=1)
        steps, rows = [], []
        for t in range(b):
            acc = GX[t]
            for s_, step in enumerate(steps):
                acc = acc + G_II[t, s_] * step
            x_new = X_I[t] + (B_I[t] - acc) * inv_I[t]
            if nonneg:
                x_new = jnp.where(x_new > 0, x_new, jnp.zeros_like(x_new))
            steps.append(x_new - X_I[t])
            rows.append(x_new)
        # One reduction per block, after the rows: the rows' elementwise chain then fuses into one loop.
        new = jnp.stack(rows)
        moved = moved + jnp.sum(jnp.square(new - X_I), axis=0)
        return lax.dynamic_update_slice_in_dim(X, new, start, axis=0), moved

    def sweep(state):
        X, n_sweeps, d1, active = state  # X padded to kp rows (zeros), which add 0 to every sum below
        carry = (X, jnp.zeros(cols, dtype))
        if b == _HALS_BLOCK_SMALL:
            # Unrolled, with static slices: XLA's CPU backend failed to compile the 2-row blocks' dynamic slices
            # in column-sharded programs ("Failed to translate module to LLVM IR").
            for blk in range(kp // b):
                carry = block(blk, carry)
            X_new, moved = carry
        else:
            X_new, moved = lax.fori_loop(0, kp // b, block, carry)
        # A stopped column keeps its value: the block loop still computes it (one GEMM for all columns is cheaper
        # than gathering the active ones), but its result is as if it had stopped alone.
        X = jnp.where(active, X_new, X)
        moved = jnp.where(active, moved, jnp.zeros_like(moved))
        d1 = jnp.where(n_sweeps == 0, moved, d1)
        small = (moved <= first2 * d1) | (moved <= res2 * jnp.sum(X * X, axis=0))
        active = active & ~((n_sweeps > 0) & small) & ~(moved == 0) & (n_sweeps + 1 < sweeps)
        return X, n_sweeps + 1, d1, active

    cols = X.shape[1:]
    Xp = jnp.zeros((kp,) + cols, dtype).at[:k].set(X)
    init = (Xp, jnp.zeros((), jnp.int32), jnp.zeros(cols, dtype), jnp.ones(cols, bool))
    if not differentiable:
        return lax.while_loop(lambda s: jnp.any(s[3]), sweep, init)[0][:k]
    return lax.scan(lambda s, _: (sweep(s), None), init, None, length=sweeps)[0][0][:k]
