"""Gram / right-hand-side construction and the penalties that modify them before an NNLS solve.

One factor update solves, column by column, ``min_x 1/2 x'Gx - b'x`` with ``G = F F' + eps I`` and
``B = F A`` (F the other factor, k x m). Penalties act on (G, B) in RcppML's order: L2 and L1, then the target.
Every function here is pure and jit/vmap-friendly; hyperparameters are array arguments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

_HIGHEST = lax.Precision.HIGHEST
GRAM_JITTER = 1e-15  # RcppML adds 1e-15 I to every Gram matrix
SCALE_EPS = 1e-15  # and to every scaling factor, so dead components stay finite


def gram(F: ArrayLike) -> jax.Array:
    """``G = F F' + 1e-15 I`` for a factor F (k, m). Returns (k, k)."""
    F = jnp.asarray(F)
    G = jnp.dot(F, F.T, precision=_HIGHEST)
    return G + GRAM_JITTER * jnp.eye(F.shape[0], dtype=F.dtype)


def apply_l1_l2(G: ArrayLike, B: ArrayLike, L1: ArrayLike = 0.0, L2: ArrayLike = 0.0) -> tuple[jax.Array, jax.Array]:
    """Ridge and lasso: ``G + L2 I`` and ``B - L1``, i.e. adds ``L1 sum(x) + L2/2 |x|^2`` to the objective."""
    G = jnp.asarray(G)
    B = jnp.asarray(B)
    return G + L2 * jnp.eye(G.shape[0], dtype=G.dtype), B - L1


def scale_rows(X: ArrayLike, norm: str = "L1") -> tuple[jax.Array, jax.Array]:
    """Diagonal scaling of a factor X (k, n): returns (d, X / d[:, None]).

    ``norm="L1"``: ``d_i = sum_j |X_ij| + 1e-15``; ``"L2"``: ``d_i = |X_i|_2 + 1e-15``; ``"none"``: d = 1.
    """
    X = jnp.asarray(X)
    if norm == "L1":
        d = jnp.sum(jnp.abs(X), axis=1) + SCALE_EPS
    elif norm == "L2":
        d = jnp.sqrt(jnp.sum(X * X, axis=1)) + SCALE_EPS
    elif norm == "none":
        return jnp.ones(X.shape[0], X.dtype), X
    else:
        raise ValueError(f"norm must be one of 'L1', 'L2', 'none', got {norm!r}")
    return d, X / d[:, None]


def target_augment(G: ArrayLike, B: ArrayLike, T: ArrayLike, lam: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Target enrichment: ``G + lam I`` and ``B + lam T``, i.e. adds ``lam/2 |x - t_j|^2`` per column.

    G (k, k), B and T (k, n), lam a scalar (>= 0 for a convex problem).
    """
    G = jnp.asarray(G)
    return G + lam * jnp.eye(G.shape[0], dtype=G.dtype), jnp.asarray(B) + lam * jnp.asarray(T)


def target_gram(T: ArrayLike) -> jax.Array:
    """``G_T = T T' / n`` for a target T (k, n): the curvature of the target span."""
    T = jnp.asarray(T)
    return jnp.dot(T, T.T, precision=_HIGHEST) / T.shape[1]


def _trace_ratio(G: jax.Array, G_T: jax.Array) -> jax.Array:
    trT = jnp.trace(G_T)
    ok = trT > 1e-10
    return jnp.where(ok, jnp.trace(G) / jnp.where(ok, trT, 1.0), 0.0)


def proj_adv_gram(G: ArrayLike, G_T: ArrayLike, lam: ArrayLike, *, eig_floor: float = 1e-8) -> jax.Array:
    """RcppML's PROJ_ADV (negative target lambda): ``G - |lam| a G_T`` with ``a = tr G / tr G_T``.

    The result is made positive definite by clipping its eigenvalues at ``eig_floor`` (only when one falls
    below it, as RcppML does). B is left unchanged. Lowering curvature along the target span *enlarges* the
    solution there, and the fit does not converge on hawaiibirds; kept for parity with the vignette.
    """
    G = jnp.asarray(G)
    G_T = jnp.asarray(G_T)
    Gs = G - jnp.abs(lam) * _trace_ratio(G, G_T) * G_T
    mu, V = jnp.linalg.eigh(Gs)
    clipped = (V * jnp.maximum(mu, eig_floor)) @ V.T
    return jnp.where(jnp.any(mu < eig_floor), clipped, Gs)


def removal_project_rhs(
    G: ArrayLike, B: ArrayLike, T: ArrayLike, G_T: ArrayLike, lam: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Convergent removal of target information: ``B - r B P``, G unchanged; ``r = min(|lam|, 1)``.

    For T (k, n) from ``compute_target`` (columns constant within a class, 0 for unlabelled samples), P (n, n)
    is the orthogonal projector onto the class contrasts: ``span(rows of T, 1_L) minus 1_L``, with ``1_L`` the
    indicator of labelled (non-zero) columns of T. ``B P`` replaces each labelled column by its class mean minus
    the labelled mean, so ``B - B P`` has equal class means: the H update fits ``A (I - r P)``, the data with a
    fraction r of its class-mean differences removed, while W still fits A. Unconstrained solutions then share
    their class means exactly (r = 1); unlabelled columns and the overall mean are untouched. Scale- and
    whitening-free (only T's row space matters); if T has fewer than C - 1 independent rows, only the contrasts
    it spans are removed. For a T without class structure it projects T's row space (bar 1_L) out of B.
    ``G_T`` is unused (kept for a uniform target-kernel signature). It replaces a curvature penalty
    ``G + |lam| a G_T``, which acts almost like a ridge because a whitened T spans nearly all of R^k, and so
    removed little label information per unit of MSE (experiments/removal_modes.py).
    """
    T = jnp.asarray(T)
    B = jnp.asarray(B)
    labelled = jnp.any(T != 0, axis=0).astype(B.dtype)
    M = jnp.concatenate([T.astype(B.dtype), labelled[None, :]], axis=0)  # (k + 1, n), spans the class indicators
    norms = jnp.linalg.norm(M, axis=1, keepdims=True)
    M = jnp.where(norms > 0, M / jnp.where(norms > 0, norms, 1.0), 0.0)
    # Pseudo-inverse of M M' on its numerical range: T has rank <= C - 1, so M is rank-deficient by design.
    mu, V = jnp.linalg.eigh(jnp.dot(M, M.T, precision=_HIGHEST))
    keep = mu > 100 * M.shape[0] * jnp.finfo(B.dtype).eps * mu[-1]
    inv = jnp.where(keep, 1.0 / jnp.where(keep, mu, 1.0), 0.0)
    coef = jnp.dot(jnp.dot(B, M.T, precision=_HIGHEST), V, precision=_HIGHEST) * inv
    B_span = jnp.dot(jnp.dot(coef, V.T, precision=_HIGHEST), M, precision=_HIGHEST)
    B_mean = jnp.outer(jnp.dot(B, labelled, precision=_HIGHEST) / jnp.maximum(jnp.sum(labelled), 1.0), labelled)
    r = jnp.minimum(jnp.abs(lam), 1.0)
    return jnp.asarray(G), B - r * (B_span - B_mean)


def apply_target(
    G: jax.Array, B: jax.Array, T: jax.Array, G_T: jax.Array, lam: jax.Array, removal: str
) -> tuple[jax.Array, jax.Array]:
    """Dispatch on the sign of ``lam`` at run time: enrichment for lam > 0, removal for lam < 0, none at 0.

    The branch is data, not Python control flow, so one compiled fit serves a vmapped grid of signed lambdas.
    """
    G_pos, B_pos = target_augment(G, B, T, lam)
    if removal == "proj_adv":
        G_neg, B_neg = proj_adv_gram(G, G_T, lam), B
    elif removal == "project":
        G_neg, B_neg = removal_project_rhs(G, B, T, G_T, lam)
    else:
        raise ValueError(f"removal must be 'proj_adv' or 'project', got {removal!r}")
    G_out = jnp.where(lam > 0, G_pos, jnp.where(lam < 0, G_neg, G))
    B_out = jnp.where(lam > 0, B_pos, jnp.where(lam < 0, B_neg, B))
    return G_out, B_out
