"""Exact NNLS for many right-hand sides: block principal pivoting (Kim & Park 2011), vectorised over columns.

Solves ``min_{x >= 0} 1/2 x'Gx - b'x`` for every column b of B (k, p) with one SPD Gram matrix G (k, k), the
convention of ``nnls_cd``. ``nnls_cd`` reaches the optimum only asymptotically (in float32 it runs all its sweeps);
``cholesky_clip`` is not an NNLS at all. BPP finds the optimal passive set F (the support of x) by exchanging
infeasible variables in blocks; each step solves ``G_FF x_F = b_F`` exactly, so it ends at the KKT point
(``x >= 0``, ``y = Gx - b >= 0``, ``x_i y_i = 0``) after a few steps, typically 2-6 from a warm start.

Fixed shapes for XLA: every column carries its own passive mask, and the passive systems of all columns are solved
at once as the k x k systems ``(G masked to F x F, identity on the complement) x = b masked to F``, by one batched
Cholesky factorisation; finished columns keep their mask (their solve is repeated unchanged until all are done).
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
    """x (k, p) with x_F = G_FF^{-1} b_F and x = 0 off F, column by column (F (k, p) bool)."""
    k = G.shape[0]
    Ft = F.T  # (p, k)
    eye = jnp.eye(k, dtype=G.dtype)
    # (p, k, k): G on F x F, identity elsewhere, so the system stays SPD and the off-F unknowns solve to 0.
    M = jnp.where(Ft[:, :, None] & Ft[:, None, :], G[None], 0) + jnp.where(Ft, 0, 1).astype(G.dtype)[:, :, None] * eye
    rhs = jnp.where(Ft, B.T, 0)
    L = jnp.linalg.cholesky(M)
    ok = jnp.all(jnp.isfinite(L))
    # Numerically singular G_FF (cond ~ 1/eps): factor G_FF + jitter I instead; lax.cond so that the well
    # conditioned case pays one factorisation (and the two never run at once; see cholesky_clip).
    L = lax.cond(ok, lambda: L, lambda: jnp.linalg.cholesky(M + jitter * eye))
    z = lax.linalg.triangular_solve(L, rhs[:, :, None], left_side=True, lower=True)
    x = lax.linalg.triangular_solve(L, z, left_side=True, lower=True, transpose_a=True)[:, :, 0]
    return jnp.where(Ft, x, 0).T


def nnls_bpp(
    G: ArrayLike,
    B: ArrayLike,
    X0: ArrayLike | None = None,
    *,
    max_iter: int = 100,
    return_info: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Exact non-negative least squares ``argmin_{X >= 0} sum_j 1/2 x_j'G x_j - b_j'x_j`` by block principal pivoting.

    G: (k, k) symmetric positive (semi)definite; B: (k, p); X0: optional (k, p) warm start, of which only the
    support ``X0 > 0`` is used (the initial passive sets; e.g. the previous ALS iterate). Without X0 the support of
    the unconstrained solution G^{-1} B is used. ``max_iter`` caps the pivoting steps (each is one batched
    factorisation); a column still infeasible then is returned as its last iterate clipped at 0.

    Optimality (KKT) is tested to the dtype's rounding: x_i < -tol_x on F or y_i = (Gx - b)_i < -tol_y off F is
    infeasible, with tol_y = 8 k eps (|G||x| + |b|)_i (the rounding bound of y) and tol_x = 8 k eps max|x|, so that
    rounding noise does not trigger exchanges (nnls_cd's cd_tol 1e-8 is below float32's resolution).

    Returns X (k, p) >= 0; with ``return_info`` also the number of pivoting steps (int32 scalar). Works under jit
    and vmap, float32 and float64. Not meant for reverse-mode differentiation (the passive set is discrete).
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
    absG = jnp.abs(G)
    absB = jnp.abs(B)
    idx = jnp.arange(k, dtype=jnp.int32)[:, None]

    def body(state):
        F, ninf, pc, it, _, _ = state
        X = _masked_solve(G, B, F, jitter)
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
        last = jnp.max(jnp.where(V, idx, -1), axis=0)  # largest infeasible index (backup rule)
        E = jnp.where(full[None, :], V, idx == last[None, :]) & ~done[None, :]
        return F ^ E, ninf, pc, it + 1, X, done

    init = (
        F,
        jnp.full((p,), k + 1, jnp.int32),
        jnp.full((p,), _BACKUP, jnp.int32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((k, p), dtype),
        jnp.zeros((p,), bool),
    )
    F, _, _, it, X, _ = lax.while_loop(lambda s: (s[3] < max_iter) & ((s[3] == 0) | ~jnp.all(s[5])), body, init)
    X = jnp.where(X > 0, X, jnp.zeros_like(X))
    return (X, it) if return_info else X
