"""Exact NNLS for many right-hand sides: block principal pivoting (Kim & Park 2011), vectorised over columns.

Solves ``min_{x >= 0} 1/2 x'Gx - b'x`` for every column b of B (k, p) with one SPD Gram matrix G (k, k), the
convention of ``nnls_cd``. ``nnls_cd`` reaches the optimum only asymptotically (in float32 it runs all its sweeps);
``cholesky_clip`` is not an NNLS at all. BPP finds the optimal passive set F (the support of x) by exchanging
infeasible variables in blocks; each step solves ``G_FF x_F = b_F`` exactly, so it ends at the KKT point
(``x >= 0``, ``y = Gx - b >= 0``, ``x_i y_i = 0``) after a few steps, typically 2-6 from a warm start.

Fixed shapes for XLA: every column carries its own passive mask; the passive systems of a block of columns are
solved at once as the padded systems ``(G_FF, identity on the complement) x = b masked to F`` of one static size
(G_FF gathered into k/4, k/2, 3k/4 or k), by one batched LU solve; only unfinished columns are solved again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

_HIGHEST = lax.Precision.HIGHEST
# Kim & Park's backup count: after this many full exchanges that did not shrink the infeasible set, exchange only
# the largest infeasible index (Murty's rule), which cannot cycle.
_BACKUP = 3


def _masked_solve(G: jax.Array, B: jax.Array, F: jax.Array, jitter: jax.Array) -> jax.Array:
    """x (k, q) with x_F = G_FF^{-1} b_F and x = 0 off F, column by column (B, F (k, q))."""
    k = G.shape[0]
    Ft = F.T  # (q, k)
    eye = jnp.eye(k, dtype=G.dtype)
    # (q, k, k): G on F x F, identity elsewhere, so the system stays SPD and the off-F unknowns solve to 0.
    M = jnp.where(Ft[:, :, None] & Ft[:, None, :], G[None], 0) + jnp.where(Ft, 0, 1).astype(G.dtype)[:, :, None] * eye
    rhs = jnp.where(Ft, B.T, 0)[:, :, None]
    # Batched LU solve: on CPU 138 ms for 2,600 systems of k = 50, against 126 + 2 x 53 ms for a batched Cholesky
    # and its two triangular solves (the padded systems are SPD, so partial pivoting is only a safeguard).
    x = _solve_with_jitter(M, rhs, jitter)
    return jnp.where(Ft, x[:, :, 0], 0).T


def _solve_with_jitter(M: jax.Array, rhs: jax.Array, jitter: jax.Array) -> jax.Array:
    """Batched ``solve(M, rhs)``; if any result is not finite (G_FF numerically singular, cond ~ 1/eps), all are
    solved again with M + jitter I.

    lax.cond: the well-conditioned case pays one factorisation. Under vmap the cond becomes a select that
    computes both branches, so the second system is built from the first result (``where(ok, M, ...)``): the two
    batched LAPACK calls then run one after the other; run concurrently they can deadlock jaxlib's CPU thread
    pool (see cholesky_clip).
    """
    x = jnp.linalg.solve(M, rhs)
    ok = jnp.all(jnp.isfinite(x))
    eye = jnp.eye(M.shape[-1], dtype=M.dtype)
    return lax.cond(ok, lambda: x, lambda: jnp.linalg.solve(jnp.where(ok, M, M + jitter * eye), rhs))


def _reduced_solve(G: jax.Array, B: jax.Array, F: jax.Array, jitter: jax.Array, f: int) -> jax.Array:
    """``_masked_solve`` through f x f systems (f static, >= every column's |F|): G_FF gathered per column.

    The padded k x k systems cost k^3 / 3 per column whatever the support; NMF supports hold ~50 % of k (at most
    ~80 %), so solving in the smallest size bucket that holds the block's largest support costs (f / k)^3 of that.
    """
    k, q = B.shape
    order = jnp.argsort(~F, axis=0, stable=True)[:f]  # (f, q): each column's passive indices first, ascending
    mt = (jnp.arange(f)[:, None] < jnp.sum(F, axis=0)[None, :]).T  # (q, f): slot holds a passive index
    idx = order.T  # (q, f)
    eye = jnp.eye(f, dtype=G.dtype)
    M = jnp.where(mt[:, :, None] & mt[:, None, :], G[idx[:, :, None], idx[:, None, :]], 0)
    M = M + jnp.where(mt, 0, 1).astype(G.dtype)[:, :, None] * eye
    rhs = jnp.where(mt, jnp.take_along_axis(B, order, axis=0).T, 0)[:, :, None]
    x = _solve_with_jitter(M, rhs, jitter)
    xs = jnp.where(mt, x[:, :, 0], 0)
    return jnp.zeros((q, k), G.dtype).at[jnp.arange(q)[:, None], idx].set(xs).T


def _bucket_sizes(k: int) -> tuple[int, ...]:
    """Static system sizes: quarters of k (one size for small k, where gathers would cost more than they save)."""
    if k < 16:
        return (k,)
    return tuple(sorted({-(-k * i // 4) for i in (1, 2, 3, 4)}))


def _bucket_solve(sizes: tuple[int, ...], G, Bs, Fs, fmax, jitter):
    """``_reduced_solve`` in the smallest size of ``sizes`` that holds fmax (``lax.switch``).

    Under vmap a switch on a batched index computes every branch (concurrent batched LAPACK calls, which can
    deadlock jaxlib's CPU thread pool, and 4x the work), so the vmapped rule solves the full padded k x k systems.
    """

    @jax.custom_batching.custom_vmap
    def f(G, Bs, Fs, fmax, jitter):
        branches = [lambda Bs, Fs, f=f: _reduced_solve(G, Bs, Fs, jitter, f) for f in sizes]
        return lax.switch(jnp.searchsorted(jnp.asarray(sizes, jnp.int32), fmax), branches, Bs, Fs)

    @f.def_vmap
    def _rule(axis_size, in_batched, G, Bs, Fs, fmax, jitter):
        args = [a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))) for a, b in
                zip((G, Bs, Fs, jitter), (in_batched[0], in_batched[1], in_batched[2], in_batched[4]), strict=True)]
        return jax.vmap(_masked_solve)(*args), True

    return f(G, Bs, Fs, fmax, jitter)


def _pivot(G, B, F, X, ninf, pc, absG, absB):
    """One BPP decision per column (B, F, X (k, q); ninf, pc (q,)): the new F, ninf, pc and done (q,)."""
    k = G.shape[0]
    eps = jnp.finfo(G.dtype).eps
    Y = jnp.dot(G, X, precision=_HIGHEST) - B
    tol_y = 8 * k * eps * (jnp.dot(absG, jnp.abs(X), precision=_HIGHEST) + absB)
    tol_x = 8 * k * eps * jnp.max(jnp.abs(X), axis=0, keepdims=True)
    V = (F & (X < -tol_x)) | (~F & (Y < -tol_y))
    nv = jnp.sum(V, axis=0, dtype=jnp.int32)
    done = nv == 0
    shrink = nv < ninf
    full = shrink | (pc >= 1)
    ninf = jnp.where(shrink, nv, ninf)
    pc = jnp.where(shrink, jnp.int32(_BACKUP), jnp.where(pc >= 1, pc - 1, pc))
    idx = jnp.arange(k, dtype=jnp.int32)[:, None]
    last = jnp.max(jnp.where(V, idx, -1), axis=0)  # largest infeasible index (backup rule)
    E = jnp.where(full[None, :], V, idx == last[None, :]) & ~done[None, :]
    return F ^ E, ninf, pc, done


def nnls_bpp(
    G: ArrayLike,
    B: ArrayLike,
    X0: ArrayLike | None = None,
    *,
    max_iter: int | None = None,
    block: int | None = None,
    return_info: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Exact non-negative least squares ``argmin_{X >= 0} sum_j 1/2 x_j'G x_j - b_j'x_j`` by block principal pivoting.

    G: (k, k) symmetric positive (semi)definite; B: (k, p); X0: optional (k, p) warm start, of which only the
    support ``X0 > 0`` is used (the initial passive sets; e.g. the previous ALS iterate). Without X0 the support of
    the unconstrained solution G^{-1} B is used. ``max_iter`` (default max(100, 3k)) caps the pivoting steps of each
    column; a column still infeasible then is returned as its last iterate clipped at 0 (badly conditioned problems,
    cond 1e6, took up to ~50 steps at k <= 200 in the tests: the backup rule exchanges one index per step).

    Columns are solved ``block`` at a time (default max(64, p // 8)), the unfinished ones with the smallest
    supports first: after the first step only the columns still infeasible are solved again, and each block's
    systems are G_FF gathered into the smallest of the sizes k/4, k/2, 3k/4, k that holds them (``lax.switch``;
    under vmap every size is computed and one selected, so vmapped calls are slower, not different).

    Optimality (KKT) is tested to the dtype's rounding: x_i < -tol_x on F or y_i = (Gx - b)_i < -tol_y off F is
    infeasible, with tol_y = 8 k eps (|G||x| + |b|)_i (the rounding bound of y) and tol_x = 8 k eps max|x|, so that
    rounding noise does not trigger exchanges (nnls_cd's cd_tol 1e-8 is below float32's resolution).

    Returns X (k, p) >= 0; with ``return_info`` also the largest number of pivoting steps of a column (int32).
    Works under jit and vmap, float32 and float64. Not meant for reverse-mode differentiation (the passive set is
    discrete).
    """
    B = jnp.asarray(B)
    dtype = jnp.result_type(jnp.asarray(G).dtype, B.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    G = jnp.asarray(G, dtype)
    B = B.astype(dtype)
    k, p = B.shape
    eps = jnp.finfo(dtype).eps
    tr = jnp.maximum(jnp.abs(jnp.trace(G)), jnp.finfo(dtype).tiny)
    jitter = 10 * eps * tr  # relative to the mean eigenvalue: k eps tr(G) / k, with a margin
    if X0 is None:
        # one factorisation of G shared by all columns (not the batched masked solve)
        L = jnp.linalg.cholesky(G + jitter * jnp.eye(k, dtype=dtype))
        F = jax.scipy.linalg.cho_solve((L, True), B) > 0
    else:
        F = jnp.asarray(X0) > 0
    max_iter = max(100, 3 * k) if max_iter is None else int(max_iter)
    absG = jnp.abs(G)
    absB = jnp.abs(B)
    cap = min(p, max(64, p // 8)) if block is None else max(1, min(p, int(block)))

    sizes = _bucket_sizes(k)

    def solve(Bs, Fs, fmax):
        if len(sizes) == 1:
            return _masked_solve(G, Bs, Fs, jitter)
        return _bucket_solve(sizes, G, Bs, Fs, fmax, jitter)

    def body(state):
        F, ninf, pc, steps, X, done = state
        nF = jnp.sum(F, axis=0, dtype=jnp.int32)
        # the unfinished columns with the smallest supports first, so that a block's size bucket stays small
        sel = jnp.argsort(jnp.where(done, k + 1, nF), stable=True)[:cap]
        valid = ~done[sel]
        dst = jnp.where(valid, sel, p)  # slots of finished columns are dropped by the scatters
        Fs, Bs = F[:, sel], B[:, sel]
        Xs = solve(Bs, Fs, jnp.max(jnp.where(valid, nF[sel], 0)))
        Fs, ninf_s, pc_s, done_s = _pivot(G, Bs, Fs, Xs, ninf[sel], pc[sel], absG, absB[:, sel])
        steps_s = steps[sel] + 1
        done_s = done_s | (steps_s >= max_iter)
        return (
            F.at[:, dst].set(Fs, mode="drop"),
            ninf.at[dst].set(ninf_s, mode="drop"),
            pc.at[dst].set(pc_s, mode="drop"),
            steps.at[dst].set(steps_s, mode="drop"),
            X.at[:, dst].set(Xs, mode="drop"),
            done.at[dst].set(done_s, mode="drop"),
        )

    init = (
        F,
        jnp.full((p,), k + 1, jnp.int32),
        jnp.full((p,), _BACKUP, jnp.int32),
        jnp.zeros((p,), jnp.int32),
        jnp.zeros((k, p), dtype),
        jnp.zeros((p,), bool),
    )
    F, _, _, steps, X, _ = lax.while_loop(lambda s: ~jnp.all(s[5]), body, init)
    X = jnp.where(X > 0, X, jnp.zeros_like(X))
    return (X, jnp.max(steps)) if return_info else X
