"""One outer iteration of the alternating NNLS, in two halves (optimistix-style pieces; ``_solve`` owns the loop).

RcppML 1.0.0's order (reference §4): the H half solves for H from the unit-scaled W (the raw initial W at
iteration 0) and scales it; the W half solves for W' from the unit-scaled H and scales it, its scales are the
model's d, and the loss follows from its Gram matrix and right-hand side. Each solve is an NNLS on
``G = F F' + 1e-15 I`` and ``B = F A`` modified by the penalties (``_penalties``: L2, L1, the target, the scatter
removal), or on one ``G_j`` per column for masked data. The halves take their products as arguments, so the
in-memory driver, sweep lanes (``vmap``), the chunked host driver (products summed over chunks), projection
(``h_solve`` with W fixed) and ``refine`` compose the same code.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._bpp import nnls_bpp
from ._model import NMFModel
from ._nnls import cholesky_clip, cholesky_clip_columns, nnls_cd, nnls_hals, nnls_step
from ._options import Config, Hyper
from ._penalties import SCALE_EPS, apply_l1_l2, apply_target, gram, group_scatter, scale_rows, scatter_target

_HIGHEST = lax.Precision.HIGHEST


class State(NamedTuple):
    W: jax.Array  # (k, m): unit-scaled W' (the raw initial W' before the first iteration)
    H: jax.Array  # (k, n): unit-scaled H
    d: jax.Array  # (k,)
    loss: jax.Array
    rel: jax.Array
    patience: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    history: jax.Array  # (maxit,)
    disp: jax.Array | None = None  # (m,) estimated negative binomial sizes (``_losses``), else None


def nnls(G: jax.Array, B: jax.Array, X_prev: jax.Array, warm: jax.Array, nonneg: bool, config: Config,
         hyper: Hyper) -> jax.Array:
    """The configured NNLS for all columns of B (k, p): one G (k, k), or one per column (p, k, k) for masked data.
    CD starts from ``X_prev`` once ``warm`` (after the first iteration), else from 0; HALS from ``X_prev`` once
    ``warm``, else from ``cholesky_clip``."""
    if config.solver == "cholesky":
        if G.ndim == 2:
            return cholesky_clip(G, B, nonneg=nonneg)
        return cholesky_clip_columns(G, B, nonneg=nonneg)
    if config.solver == "bpp":
        # Only the support of the start is used: the previous iterate, or at the first iteration the columns' own
        # positive right-hand sides (the coordinates whose gradient at 0 points into the feasible set).
        start = jnp.where(warm, X_prev, B)
        if G.ndim == 2:
            return nnls_bpp(G, B, start)
        return jax.vmap(lambda G_j, b, x: nnls_bpp(G_j, b[:, None], x[:, None])[:, 0], in_axes=(0, 1, 1),
                        out_axes=1)(G, B, start)
    if config.solver == "hals":
        # Warm: descend from the previous iterate (what the scatter removal's majorization needs). First
        # iteration: start from the solve-then-clip point, a far better start than 0 for a few sweeps.
        def hals(G, B, X_prev, host=False):
            start = lax.cond(warm, lambda: X_prev, lambda: cholesky_clip(G, B, nonneg=nonneg))
            return nnls_hals(G, B, start, nonneg=nonneg, differentiable=config.loop == "scan", host=host)

        if G.ndim == 2:
            return hals(G, B, X_prev, config.hals_host)
        if config.hals_host:
            start = lax.cond(warm, lambda: X_prev, lambda: cholesky_clip_columns(G, B, nonneg=nonneg))
            return nnls_hals(G, B, start, nonneg=nonneg, host=True)
        return jax.vmap(lambda G_j, b, x: hals(G_j, b[:, None], x[:, None])[:, 0], in_axes=(0, 1, 1),
                        out_axes=1)(G, B, X_prev)
    X0 = jnp.where(warm, X_prev, jnp.zeros_like(X_prev))
    kw = dict(nonneg=nonneg, cd_maxit=config.cd_maxit, cd_tol=hyper.cd_tol, differentiable=config.loop == "scan")
    if G.ndim == 2:
        return nnls_cd(G, B, X0, **kw)
    return jax.vmap(functools.partial(nnls_step, **kw), in_axes=(0, 1, 1), out_axes=1)(G, B, X0)


def penalized_solve(G0: jax.Array, B0: jax.Array, side: int, X_prev: jax.Array, warm: jax.Array, config: Config,
                    hyper: Hyper, T: jax.Array | None = None, G_T: jax.Array | None = None, X0: jax.Array | None = None,
                    extra: Any = None) -> jax.Array:
    """One factor's raw solve: L2/L1, the target (``T``, if given, with ``G_T`` and the current raw factor ``X0``
    for the removal modes), then ``extra`` (``(G, B) -> (G, B)``, further penalties), the NNLS and the upper bound.
    ``side``: 0 for W, 1 for H (which entry of the (W, H) hyperparameter pairs)."""
    G, B = apply_l1_l2(G0, B0, hyper.L1[side], hyper.L2[side])
    if T is not None:
        G, B = apply_target(G, B, T, G_T, hyper.target_lambda[side], config.removal, X0)
    if extra is not None:
        G, B = extra(G, B)
    X = nnls(G, B, X_prev, warm, config.nonneg[side], config, hyper)
    ub = hyper.upper_bound[side]
    return jnp.where(ub > 0, jnp.minimum(X, ub), X)


def scatter_penalties(config: Config, hyper: Hyper) -> list[tuple[jax.Array, jax.Array]]:
    """The between-group scatter penalties on H as (lambda >= 0, group rows (g, n)) pairs: ``removal="scatter"``
    with a negative H lambda (groups: target_H's classes) and ``remove=`` (its own groups)."""
    out = []
    if config.target_H and config.removal == "scatter":
        lam = hyper.target_lambda[1]
        out.append((jnp.where(lam < 0, -lam, jnp.zeros_like(lam)), hyper.target_H))
    if config.remove:
        out.append((hyper.remove_lambda, hyper.remove_groups))
    return out


def kept_target(config: Config, hyper: Hyper) -> jax.Array | None:
    """The weight ``lam_T >= 0`` of an enrichment target_H kept beside ``remove=`` (None without both), whose
    ``lam_T |E - T|^2`` is then part of the stated objective: the W half accounts for its dependence on the scale
    and the reported loss includes it. A target fit without ``remove=`` stays RcppML's (its loss is the SSE)."""
    if not (config.remove and config.target_H and config.loss == "mse"):
        return None
    lam = hyper.target_lambda[1]
    return jnp.where(lam > 0, lam, jnp.zeros_like(lam))


def h_solve(config: Config, hyper: Hyper, W: jax.Array, rhs: jax.Array, grams: jax.Array | None, H_prev: jax.Array,
            E0: jax.Array, warm: jax.Array, G_TH: jax.Array | None = None, T: jax.Array | None = None,
            groups: jax.Array | None = None) -> jax.Array:
    """The raw H (k, p) for the columns of ``rhs = W A`` (k, p) given the unit-scaled W (k, m).

    ``grams`` (p, k, k) for masked data, else None (``W W'``); ``H_prev`` the unit-scaled H and ``E0 = diag(d) h``
    the current embedding of these columns (the point the scatter penalties are majorized at, and then the warm
    start); ``T`` the target's columns (default: the whole ``target_H``), ``groups`` the ``remove=`` group rows.
    """
    scatter = scatter_penalties(config, hyper)
    # HALS descends from its start: start at the current raw H, so that each update descends the objective.
    start = E0 if config.solver == "hals" else H_prev
    if scatter and config.solver != "hals":
        # Majorized at the current raw H (the embedding diag(d) h), which is then also the warm start, so that any
        # descent of the NNLS surrogate descends the objective. Without an active penalty the warm start stays
        # RcppML's (the unit-scaled H).
        start = jnp.where(sum(lam for lam, _ in scatter) > 0, E0, H_prev)

    def extra(G, B):
        return scatter_target(G, B, E0, hyper.remove_groups if groups is None else groups, hyper.remove_lambda)

    if T is None and config.target_H:
        T = hyper.target_H
    return penalized_solve(gram(W) if grams is None else grams, rhs, 1, start, warm, config, hyper, T, G_TH, E0,
                           extra if config.remove else None)


def h_half(config: Config, hyper: Hyper, data: Any, state: State, G_TH: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
    """The H half of an iteration on in-memory data: ``h_solve``, then the scaling → (d_H, unit-scaled H)."""
    X = h_solve(config, hyper, state.W, data.left(state.W), data.left_grams(state.W) if config.masked else None,
                state.H, state.d[:, None] * state.H, state.n_iter > 0, G_TH)
    return scale_rows(X, config.norm)


def w_half(config: Config, hyper: Hyper, state: State, d_H: jax.Array, H: jax.Array, rhs: jax.Array,
           grams: jax.Array | None, sq_norm: jax.Array | None, G_TW: jax.Array | None = None,
           observed_sse: Any = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The W half: NNLS for the raw W' given the unit-scaled H (k, n) and ``rhs = H A'`` (k, m) (``grams``: the
    per-row Gram matrices (m, k, k) of masked data), its scaling, and the loss → (d, unit-scaled W', loss).

    The loss is the SSE by the Gram identity, or ``observed_sse(diag(d) W', H)`` for masked data (None when the
    caller forms it later from A: chunked fits), plus ``sum lam R(diag(d) h)`` with scatter penalties. Their scale
    d, which this update sets, is part of the penalty: ``R = sum_f s_f^2 R_f(h)`` with ``s_f`` W's column sum
    (``norm="L1"``) or norm (``"L2"``). For L2 that is the ridge ``lam R_f |w_f|^2``; for L1, ``(1'w_f)^2`` is
    majorized at the current W by its tangent plus ``m |w_f - w0_f|^2`` (its curvature is at most m), which keeps
    the update row-separable and monotone.
    """
    scatter = scatter_penalties(config, hyper)
    W0 = d_H[:, None] * state.W  # the current raw W' of the model (W, diag(d_H) h)
    start, extra = (W0 if config.solver == "hals" else state.W), None
    kept = kept_target(config, hyper)
    if scatter:
        c = sum(lam * group_scatter(H, Y) for lam, Y in scatter)  # (k,): lam R_f(h) summed over penalties
        beta = None
        if kept is not None:
            # The kept target's lam_T |diag(s) h - T|^2 depends on the scale s this update sets: its
            # lam_T s_f^2 |h_f|^2 joins c, its -2 lam_T s_f <h_f, T_f> is linear in s_f (beta).
            c = c + kept * jnp.sum(H * H, axis=1)
            beta = kept * jnp.sum(H * hyper.target_H, axis=1)
        if config.solver != "hals":
            start = jnp.where(sum(lam for lam, _ in scatter) > 0, W0, state.W)
        m = W0.shape[1]

        def extra(G, B):
            eye = jnp.eye(G.shape[-1], dtype=G.dtype)
            if config.norm == "L2":
                G, B = G + c * eye, B
                if beta is not None:  # -beta_f |w_f| is concave: majorized by its tangent at W0, a linear term
                    B = B + beta[:, None] * W0 / (jnp.sqrt(jnp.sum(W0 * W0, axis=1, keepdims=True)) + SCALE_EPS)
                return G, B
            s0 = jnp.sum(W0, axis=1)
            B = B + c[:, None] * (m * W0 - s0[:, None])
            return G + m * c * eye, B if beta is None else B + beta[:, None]

    G0 = gram(H) if grams is None else grams
    X = penalized_solve(G0, rhs, 0, start, state.n_iter > 0, config, hyper,
                        hyper.target_W if config.target_W else None, G_TW, W0, extra)
    d, W = scale_rows(X, config.norm)
    if grams is None:
        loss = gram_identity_sse(sq_norm, d, W, G0, rhs)
    else:
        loss = None if observed_sse is None else observed_sse(d[:, None] * W, H)
    if scatter and loss is not None:  # the penalties of the model (W, diag(d) h): sum_f d_f^2 c_f - 2 d_f beta_f
        loss = loss + jnp.sum(d * d * c)
        if beta is not None:
            loss = loss - 2 * jnp.sum(d * beta) + kept * jnp.sum(hyper.target_H * hyper.target_H)
    return d, W, loss


def gram_identity_sse(sq_norm, d, W, G_w, B_w):
    """Total SSE ``|A|^2 - 2 sum d_i <W_i, B_i> + sum_ij d_i d_j (W W')_ij G_ij`` from the W update's pre-penalty
    Gram matrix G_w = H H' and right-hand side B_w = H A' (RcppML §4); W (k, m) unit-scaled, d (k,)."""
    dW = d[:, None] * W
    return sq_norm - 2 * jnp.sum(dW * B_w) + jnp.sum(jnp.dot(dW, dW.T, precision=_HIGHEST) * G_w)


def step(problem: Any, state: State, G_TH: jax.Array | None = None, G_TW: jax.Array | None = None) -> State:
    """One outer iteration on in-memory data: ``h_half``, ``w_half``, the loss, ``advance``; a non-MSE
    ``config.loss`` takes its majorize-minimize iteration (``_losses.loss_step``)."""
    config, hyper, data = problem.config, problem.hyper, problem.data
    if config.loss != "mse":
        from ._losses import loss_step

        return loss_step(problem, state, G_TH, G_TW)
    d_H, H = h_half(config, hyper, data, state, G_TH)
    # Masked data: the SSE over observed entries, formed directly (the Gram identity would need per-entry weights).
    d, W, loss = w_half(config, hyper, state, d_H, H, data.right(H), data.right_grams(H) if config.masked else None,
                        problem.sq_norm, G_TW, data.observed_sse if config.masked else None)
    return advance(state, W, H, d, loss, hyper.tol, config.patience)


def advance(state: State, W: jax.Array, H: jax.Array, d: jax.Array, loss: jax.Array, tol: jax.Array,
            patience_limit: int) -> State:
    """The convergence bookkeeping of one iteration (RcppML's rule) after its updates gave W, H, d and loss."""
    rel = jnp.abs(state.loss - loss) / (jnp.abs(state.loss) + 1e-15)
    checked = state.n_iter >= 1
    rel = jnp.where(checked, rel, jnp.asarray(jnp.inf, loss.dtype))
    patience = jnp.where(checked & (rel < tol), state.patience + 1, jnp.zeros_like(state.patience))
    history = state.history.at[state.n_iter].set(loss)
    return State(W, H, d, loss, rel, patience, state.n_iter + 1, patience >= patience_limit, history)


def running(state: State, maxit: int) -> jax.Array:
    """Whether a fit goes on: below maxit, not converged, loss finite."""
    return (state.n_iter < maxit) & ~state.converged & jnp.isfinite(state.loss)


def init_state(config: Config, w0: jax.Array, n: int) -> State:
    """The state before the first iteration: the raw initial W (m, k) transposed, H = 0 (k, n), d = 1."""
    from ._losses import init_disp

    dtype = w0.dtype
    k = config.k
    return State(
        W=w0.T,
        H=jnp.zeros((k, n), dtype),
        d=jnp.ones((k,), dtype),
        loss=jnp.zeros((), dtype),
        rel=jnp.asarray(jnp.inf, dtype),
        patience=jnp.zeros((), jnp.int32),
        n_iter=jnp.zeros((), jnp.int32),
        converged=jnp.zeros((), bool),
        history=jnp.full((config.maxit,), jnp.nan, dtype),
        disp=init_disp(config, w0.shape[0], dtype),
    )


def finish_model(config: Config, state: State, w_init: jax.Array) -> NMFModel:
    """The model from a final state: components sorted by d descending (stable) when the config sorts."""
    W, d, H = state.W, state.d, state.H
    if config.sort:
        order = jnp.argsort(-d, stable=True)
        W, d, H = W[order], d[order], H[order]
    return NMFModel(w=W.T, d=d, h=H, iter=state.n_iter, loss=state.loss, loss_history=state.history,
                    converged=state.converged, tol=state.rel, w_init=w_init, dispersion=state.disp)
