"""Non-negative least-squares kernels: ``min_{x >= 0} 1/2 x'Gx - b'x`` for a k x k Gram matrix G.

``nnls_step`` solves one column and is ``vmap``-ped across columns by ``nnls_cd``; ``cholesky_clip`` is the
unconstrained solve followed by a projection (RcppML's default for k < 32, not an exact NNLS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve
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
    G = jnp.asarray(G)
    b = jnp.asarray(b)
    dtype = jnp.result_type(G.dtype, b.dtype)
    G = G.astype(dtype)
    b = b.astype(dtype)
    k = b.shape[0]
    x = jnp.zeros((k,), dtype) if x0 is None else jnp.asarray(x0, dtype)
    cd_tol = jnp.asarray(cd_tol, dtype)
    r = b - jnp.dot(G, x, precision=_HIGHEST)
    diag = jnp.diagonal(G)
    # Safe denominator: skipped coordinates must not produce inf/NaN that leaks through `where` in gradients.
    safe_diag = jnp.where(diag > 0, diag, jnp.ones_like(diag))
    tiny = jnp.asarray(1e-15, dtype)

    def coordinate(i, carry):
        x, r, tol_sum = carry
        xi = x[i]
        delta = r[i] / safe_diag[i]
        x_new = xi + delta
        clip = nonneg & (x_new < 0)
        step = jnp.where(clip, -xi, delta)
        skip = (diag[i] <= 0) | (step == 0)
        step = jnp.where(skip, jnp.zeros_like(step), step)
        xi_new = jnp.where(skip, xi, jnp.where(clip, jnp.zeros_like(xi), x_new))
        tol_sum = tol_sum + jnp.where(skip, jnp.zeros_like(step), jnp.abs(step) / (jnp.abs(xi_new) + tiny))
        return x.at[i].set(xi_new), r - G[:, i] * step, tol_sum

    def sweep(state):
        x, r, n, _ = state
        x, r, tol_sum = lax.fori_loop(0, k, coordinate, (x, r, jnp.zeros((), dtype)))
        return x, r, n + 1, tol_sum / k

    def keep_going(state):
        _, _, n, err = state
        return (n < cd_maxit) & (err >= cd_tol)

    init = (x, r, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, dtype))
    if not differentiable:
        return lax.while_loop(keep_going, sweep, init)[0]

    def masked(state, _):
        new = sweep(state)
        go = keep_going(state)
        return jax.tree.map(lambda a, b: jnp.where(go, a, b), new, state), None

    return lax.scan(masked, init, None, length=cd_maxit)[0][0]


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
    """``nnls_step`` vmapped over the columns of B (k, n), warm-started at X0 (k, n). Returns X (k, n)."""
    B = jnp.asarray(B)
    X0 = jnp.zeros_like(B) if X0 is None else jnp.asarray(X0, B.dtype)

    def one(b, x0):
        return nnls_step(G, b, x0, nonneg=nonneg, cd_maxit=cd_maxit, cd_tol=cd_tol, differentiable=differentiable)

    return jax.vmap(one, in_axes=(1, 1), out_axes=1)(B, X0)


def cholesky_clip(G: ArrayLike, B: ArrayLike, *, nonneg: bool = True) -> jax.Array:
    """``X = max(G^{-1} B, 0)`` by one Cholesky factorisation of G (k, k); B is (k, n) or (k,).

    Not an exact NNLS (the clip ignores the coupling between coordinates); kept because it is RcppML's
    default for k < 32 and reproduces its models. G must be positive definite.
    """
    G = jnp.asarray(G)
    B = jnp.asarray(B)
    X = cho_solve(cho_factor(G, lower=True), B)
    return jnp.maximum(X, 0) if nonneg else X
