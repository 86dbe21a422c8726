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
    """Ridge and lasso: ``G + L2 I`` and ``B - L1``, i.e. adds ``L1 sum(x) + L2/2 |x|^2`` to the objective.

    G is (k, k), or a batch (p, k, k) of per-column Gram matrices (masked fits)."""
    G = jnp.asarray(G)
    B = jnp.asarray(B)
    return G + L2 * jnp.eye(G.shape[-1], dtype=G.dtype), B - L1


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

    G (k, k) or a batch (n, k, k) of per-column Gram matrices, B and T (k, n), lam a scalar (>= 0 for a convex
    problem).
    """
    G = jnp.asarray(G)
    return G + lam * jnp.eye(G.shape[-1], dtype=G.dtype), jnp.asarray(B) + lam * jnp.asarray(T)


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


def between_groups(X: ArrayLike, Y: ArrayLike) -> jax.Array:
    """``X M``: the between-group part of each row of X (k, n), for groups given by the row space of Y (g, n).

    ``M = P - 1_L 1_L' / n_L`` with P the orthogonal projector onto ``span(rows of Y, 1_L)`` and ``1_L`` the
    indicator of labelled (non-zero) columns of Y. For a one-hot Y, or a ``compute_target`` of the labels (columns
    constant within a class, 0 for unlabelled samples), ``X M`` replaces each labelled column by its group's mean
    minus the labelled mean (unlabelled columns get 0), and ``tr(X M X') = sum_g n_g |mu_g - mu|^2`` is the
    between-group scatter. ``0 <= M <= I``. If Y spans fewer than C - 1 contrasts, only those are used.
    """
    Y = jnp.asarray(Y)
    X = jnp.asarray(X)
    labelled = jnp.any(Y != 0, axis=0).astype(X.dtype)
    Mx = jnp.concatenate([Y.astype(X.dtype), labelled[None, :]], axis=0)  # (g + 1, n), spans the group indicators
    norms = jnp.linalg.norm(Mx, axis=1, keepdims=True)
    Mx = jnp.where(norms > 0, Mx / jnp.where(norms > 0, norms, 1.0), 0.0)
    # Pseudo-inverse of Mx Mx' on its numerical range: a compute_target T has rank <= C - 1, so Mx is
    # rank-deficient by design.
    mu, V = jnp.linalg.eigh(jnp.dot(Mx, Mx.T, precision=_HIGHEST))
    keep = mu > 100 * Mx.shape[0] * jnp.finfo(X.dtype).eps * mu[-1]
    inv = jnp.where(keep, 1.0 / jnp.where(keep, mu, 1.0), 0.0)
    coef = jnp.dot(jnp.dot(X, Mx.T, precision=_HIGHEST), V, precision=_HIGHEST) * inv
    X_span = jnp.dot(jnp.dot(coef, V.T, precision=_HIGHEST), Mx, precision=_HIGHEST)
    X_mean = jnp.outer(jnp.dot(X, labelled, precision=_HIGHEST) / jnp.maximum(jnp.sum(labelled), 1.0), labelled)
    return X_span - X_mean


def group_scatter(X: ArrayLike, Y: ArrayLike) -> jax.Array:
    """Per-row between-group scatter ``R_f = x_f M x_f'`` of X (k, n) for the groups of Y (g, n) → (k,)."""
    X = jnp.asarray(X)
    return jnp.sum(X * between_groups(X, Y), axis=1)


def scatter_target(G: ArrayLike, B: ArrayLike, X0: ArrayLike, Y: ArrayLike, lam: ArrayLike
                   ) -> tuple[jax.Array, jax.Array]:
    """Majorize-minimize step of ``lam tr(X M X')`` at the current X0 (k, n): ``G + lam I``, ``B + lam (X0 - X0 M)``.

    Because ``0 <= M <= I``, ``tr(X M X') <= tr(X0 M X0') + 2 <X - X0, X0 M> + |X - X0|^2``, with equality at X0;
    the bound separates by column and is the enrichment kernel (``target_augment``) with the moving target
    ``X0 - X0 M`` (each group's mean moved onto the labelled mean). An exact NNLS solve of the result cannot
    increase ``1/2 |A - W X|^2 + lam/2 tr(X M X')``. lam >= 0.
    """
    X0 = jnp.asarray(X0)
    return target_augment(G, B, X0 - between_groups(X0, Y), lam)


def removal_project_rhs(
    G: ArrayLike, B: ArrayLike, T: ArrayLike, G_T: ArrayLike, lam: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Removal of target information on the right-hand side: ``B - r B M``, G unchanged; ``r = min(|lam|, 1)``.

    ``B M`` (``between_groups(B, T)``) replaces each labelled column by its class mean minus the labelled mean,
    so the H update fits ``A (I - r M)``, the data with a fraction r of its class-mean differences removed, while
    W still fits A. It minimises no stated objective (superseded by ``removal="scatter"``; kept for comparison).
    ``G_T`` is unused (kept for a uniform target-kernel signature).
    """
    r = jnp.minimum(jnp.abs(lam), 1.0)
    return jnp.asarray(G), jnp.asarray(B) - r * between_groups(B, T)


def apply_target(
    G: jax.Array, B: jax.Array, T: jax.Array, G_T: jax.Array, lam: jax.Array, removal: str,
    X0: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Dispatch on the sign of ``lam`` at run time: enrichment for lam > 0, removal for lam < 0, none at 0.

    The branch is data, not Python control flow, so one compiled fit serves a vmapped grid of signed lambdas.
    G is (k, k), or a batch (p, k, k) of per-column Gram matrices (masked fits); B, T (k, p). ``X0`` (k, p), the
    current raw factor, is needed by ``removal="scatter"`` (its majorize-minimize step is taken at X0).
    """
    eye = jnp.eye(G.shape[-1], dtype=G.dtype)
    G_pos, B_pos = G + lam * eye, B + lam * T
    if removal == "proj_adv":
        proj = proj_adv_gram if G.ndim == 2 else jax.vmap(proj_adv_gram, in_axes=(0, None, None))
        G_neg, B_neg = proj(G, G_T, lam), B
    elif removal == "project":
        G_neg, B_neg = G, removal_project_rhs(eye, B, T, G_T, lam)[1]
    elif removal == "scatter":
        # Callers without the current factor (chunked fits) refuse negative lambdas before any compute.
        removed = (G + jnp.abs(lam) * eye, scatter_target(eye, B, X0, T, jnp.abs(lam))[1])
        G_neg, B_neg = (G, B) if X0 is None else removed
    else:
        raise ValueError(f"removal must be 'scatter', 'proj_adv' or 'project', got {removal!r}")
    G_out = jnp.where(lam > 0, G_pos, jnp.where(lam < 0, G_neg, G))
    B_out = jnp.where(lam > 0, B_pos, jnp.where(lam < 0, B_neg, B))
    return G_out, B_out
