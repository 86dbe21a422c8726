"""RcppML 1.0.0's non-Gaussian losses (IRLS inside its ALS), reproduced: the parity path of ``nmf(loss=...)``.

``fit_rcppml_loss(A, k, loss=..., w_init=...)`` runs RcppML's standard (non-CV) IRLS fit
(``rcppml-cv-consensus-losses.md`` §3): every outer iteration solves H column by column, then W' row by row of A,
each by ``irls_solve``, then updates the dispersion and evaluates RcppML's objective.

``irls_solve`` (§3.4), for one data column ``a`` (length p) and the unit-scaled other factor F (k, p): x starts at
0; each of at most ``irls_max_iter`` passes weights the entries at the current prediction ``mu = F' x``
(``w = weight(y - mu, mu, y, dispersion)``, §3.5), forms ``G_w = F diag(w) F' + L2 I`` and ``b_w = F (w a)`` and
runs exactly ``cd_maxit`` coordinate-descent sweeps on ``1/2 x'G_w x - b_w'x + L1 (G_ii-scaled) x`` from the
pass's start; a column stops when ``max_i |x_i - x_old,i| / (|x_old,i| + 1e-12) < irls_tol``.

Objective (§3.6, what ``loss``/``loss_history`` report and the stopping rule uses): ``L = sum_e l(y_e, s_e)``
over the stored non-zeros of a sparse A, over all m n entries of a dense A, with ``s = W diag(d) H`` and ``l``
the loss's per-entry term (squared error, RcppML's GP NLL without ``log y!``, the NB NLL, the gamma /
inverse-Gaussian / Tweedie deviances, or Huber's rho of the Pearson residual when ``robust``). IRLS is not a
descent method for this L (weights restart at mu = 0 every solve, D12), so L is *not* guaranteed to decrease;
stopping: relative change below ``tol`` on 5 consecutive iterations (§3.8), else ``maxit``.

RcppML defects copied here on purpose (this is the parity path; ``rcppml-cv-consensus-losses.md`` §5):

- D10: the semantics follow the input type. scipy.sparse input: only stored non-zeros are weighted
  (``G_w = F F' + 1e-15 I + sum_nz (w - 1) f f'``, zeros keep weight 1) and only they enter the objective and the
  dispersions; dense input weights and counts every entry. The same data give different fits
  (``sparse_semantics=`` forces one).
- D11: ``loss="gp"`` solves with KL weights ``1 / max(mu, 1e-4)`` whatever the dispersion; theta changes only
  the objective (and so the stopping point): dispersion none / per_row / global give identical factors per
  iteration.
- D12: every IRLS solve restarts at x = 0, so its first pass weights at mu = 0 (KL weight 1e4, NB / power
  weights at their 1e6 cap).
- D13: gamma / inverse_gaussian / tweedie weight zeros by the capped ``1 / max(mu, 1e-15)^p`` and floor y at
  1e-10 in the objective, so on data with zeros they jump, diverge (inverse Gaussian ~1e21 on hawaiibirds) or
  2-cycle (Tweedie p = 1.5); phi is diagnostic only (changes neither weights nor objective).
- D15: the GP objective is RcppML's GP NLL (no ``log y!``; the KL divergence is not what it reports).
- Also: L1 enters CD as ``delta_i = rho_i / G_ii - L1`` (L1 scaled by ``G_ii``, unlike the MSE path's ``b - L1``).
- D9 (CV weights) and D14 (a mask turns IRLS off) concern paths this function does not take: it has no
  cross-validation and no mask.

``loss="mse"`` without ``robust`` is not IRLS in RcppML: it is the standard path, which ``jnmf.nmf`` already
reproduces, so this function returns ``jnmf.nmf(A, k, w_init=..., solver="rcppml", ...)`` for it.

jnmf's own mode (``nmf(loss=...)`` outside ``loss_mode="rcppml"``; the ``losses`` work) fixes these: one rule for
sparse and dense input, monotone (majorize-minimize) updates of a stated objective, dispersion that enters the
weights, documented zero handling for gamma / Tweedie, and masks that combine with every loss.

Structure: one jit-compiled ``lax.while_loop`` over outer iterations (``_fit``) whose carry is ``_step.State``
plus the dispersion vector; ``_step.advance`` is RcppML's §3.8 rule as it stands (patience 5 on
``|L_prev - L| / (|L_prev| + 1e-15) < tol`` from the second iteration), with the previous objective starting at
FLT_MAX; ``_step.running`` is not used because RcppML does not stop on a non-finite objective. The IRLS solves
batch their columns (per-column weighted Gram matrices (k, k, p), CD row-wise across columns). The loss, the
robustness (Huber delta, 0 = off) and the dispersion mode are array leaves (``lax.switch`` picks the loss's
branch), so one compiled program per data shape and ``(k, maxit, cd_maxit, irls_max_iter, semantics)`` serves
every setting, and ``tweedie_power``, delta and the dispersion bounds can be vmapped.

Known residual differences: sums (Gram matrices, objective) are pairwise in XLA, not RcppML's sequential float32
sums (RcppML's objective is exactly the float32 running sum of its per-entry terms in column-major order; on dense
hawaiibirds, 216,489 terms, that running sum sits up to 5.4e-4 below the exact one), the NB objective is
evaluated in a cancellation-free form (RcppML uses double), and the dispersion updates run in the fit's dtype
(RcppML: double). The order of CD updates and every formula are RcppML's. On the chaotic settings (gamma,
inverse Gaussian, Tweedie, robust "mae") rounding differences grow until the trajectories part
(tests/test_irls.py says where).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from jax.scipy.special import gammaln

from . import _validate as V
from ._model import NMFModel
from ._options import Config, check_dtype
from ._step import State, advance, finish_model

__all__ = ["DISPERSIONS", "LOSSES", "Prepared", "fit_rcppml_loss", "prepare_rcppml_loss"]

LOSSES = ("mse", "gp", "nb", "gamma", "inverse_gaussian", "tweedie")
DISPERSIONS = ("none", "per_row", "global")
_POWER = {"gamma": 2.0, "inverse_gaussian": 3.0}
_HIGHEST = lax.Precision.HIGHEST
_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))
_FLT_MAX = float(np.finfo(np.float32).max)  # RcppML starts the previous loss at FLT_MAX (§3.8)


@dataclasses.dataclass(frozen=True)
class IrlsConfig:
    """Static structure of an IRLS fit (a new value compiles a new program)."""

    k: int
    sparse: bool
    maxit: int
    cd_maxit: int
    irls_max_iter: int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class IrlsHyper:
    """Array hyperparameters; (W, H) pairs as RcppML orders them."""

    loss: jax.Array  # int32 index into LOSSES: one program serves every loss (``lax.switch``)
    tol: jax.Array
    L1: jax.Array
    L2: jax.Array
    delta: jax.Array  # Huber delta of the Pearson residual; 0: not robust
    irls_tol: jax.Array
    power: jax.Array  # variance power p of gamma (2), inverse Gaussian (3), Tweedie
    theta_max: jax.Array
    nb_size_max: jax.Array
    nb_size_min: jax.Array
    phi_max: jax.Array
    phi_min: jax.Array
    dispersion: jax.Array  # int32 index into DISPERSIONS: an array, so the three modes share one program


class _Carry(NamedTuple):
    state: State
    disp: jax.Array  # (m,): GP theta, NB size r or phi (unused for mse)


# ---------------------------------------------------------------------------------------------------- weights

def _by_loss(hp: IrlsHyper, fn: Any, *operands: Any) -> Any:
    """``fn(loss_name, *operands)`` for the fit's loss: ``lax.switch`` over LOSSES (one branch runs; under vmap
    every branch runs and one is selected)."""
    return lax.switch(hp.loss, [functools.partial(fn, name) for name in LOSSES], *operands)


def _distribution_weights(loss: str, power: jax.Array, mu: jax.Array, r: jax.Array) -> jax.Array:
    one = jnp.ones_like(mu)
    if loss == "gp":  # D11: KL weights whatever theta
        return one / jnp.maximum(mu, 1e-4)
    if loss == "nb":
        mu_c = jnp.maximum(mu, 1e-15)
        rr = jnp.maximum(r, 1e-10)
        return jnp.minimum(rr / (mu_c * (rr + mu_c)), 1e6)
    if loss in ("gamma", "inverse_gaussian", "tweedie"):
        return jnp.minimum(one / jnp.power(jnp.maximum(mu, 1e-15), power), 1e6)
    return one


def _weights(hp: IrlsHyper, y: jax.Array, mu: jax.Array, r: jax.Array) -> jax.Array:
    """IRLS weights (§3.5) at the unfloored prediction ``mu`` of entries ``y`` (same shape; ``r`` the NB size of
    each entry's row of A, broadcastable); robust (delta > 0): times Huber's factor of the Pearson residual."""
    w = _by_loss(hp, _distribution_weights, hp.power, mu, jnp.broadcast_to(r, mu.shape))
    a = jnp.abs((y - mu) * jnp.sqrt(jnp.maximum(w, 1e-15)))
    huber = jnp.where(a <= hp.delta, jnp.ones_like(w), hp.delta / (a + 1e-15))
    return jnp.where(hp.delta > 0, w * huber, w)


# ---------------------------------------------------------------------------------------------------- solves

def _cd_sweeps(G: jax.Array, B: jax.Array, X: jax.Array, cd_maxit: int) -> jax.Array:
    """Exactly ``cd_maxit`` sequential CD sweeps (coordinates 0..k-1, no tolerance check) of every column's own
    NNLS ``min_{x>=0} 1/2 x'G_j x - b_j'x`` in residual form. G (k, k, p) symmetric, B (k, p), X (k, p) the
    start."""
    k = X.shape[0]
    R = B - jnp.einsum("abj,bj->aj", G, X, precision=_HIGHEST)
    diag = jnp.diagonal(G, axis1=0, axis2=1).T  # (k, p)
    safe = jnp.where(diag > 0, diag, jnp.ones_like(diag))

    def coordinate(i, carry):
        X, R = carry
        xi = X[i]
        delta = R[i] / safe[i]
        x_new = xi + delta
        clip = x_new < 0
        step = jnp.where(clip, -xi, delta)
        skip = (diag[i] <= 0) | (step == 0)
        step = jnp.where(skip, jnp.zeros_like(step), step)
        X = X.at[i].set(jnp.where(skip, xi, jnp.where(clip, jnp.zeros_like(xi), x_new)))
        # Column i of each G_j is its row i (exactly symmetric: irls_solve mirrors it): a contiguous slice, ~2x faster.
        return X, R - G[i] * step[None, :]

    def sweep(_, carry):
        return lax.fori_loop(0, k, coordinate, carry)

    return lax.fori_loop(0, cd_maxit, sweep, (X, R))[0]


def irls_solve(cfg: IrlsConfig, hp: IrlsHyper, F: jax.Array, Y: jax.Array, S: jax.Array | None, r: jax.Array,
               L1: jax.Array, L2: jax.Array) -> jax.Array:
    """RcppML's ``IRLS_solve`` (§3.4) for every data column: F (k, q) unit-scaled, Y (q, p) the data columns,
    S (q, p) the stored-entry indicator (sparse semantics) or None (dense), r the NB size per entry
    (broadcastable to (q, p)). Returns X (k, p)."""
    k, p = F.shape[0], Y.shape[1]
    dtype = Y.dtype
    eye = jnp.eye(k, dtype=dtype)
    FF = (F[:, None, :] * F[None, :, :]).reshape(k * k, -1)  # (k^2, q) outer products f_q f_q'
    lower = jnp.tril(jnp.ones((k, k), bool))[:, :, None]
    if S is not None:
        G0 = jnp.dot(F, F.T, precision=_HIGHEST) + 1e-15 * eye
        G0 = jnp.where(lower[:, :, 0], G0, G0.T)

    def weighted_gram(w):  # (k, k, p): sum_q w_qj f_q f_q' as one GEMM, mirrored from the lower triangle (RcppML)
        G = jnp.dot(FF, w, precision=_HIGHEST).reshape(k, k, -1)
        return jnp.where(lower, G, jnp.swapaxes(G, 0, 1))

    def system(X):
        mu = jnp.dot(F.T, X, precision=_HIGHEST)  # (q, p)
        w = _weights(hp, Y, mu, r)
        if S is not None:  # D10: zeros keep weight 1 through the plain Gram
            G = G0[:, :, None] + weighted_gram(jnp.where(S, w - 1, jnp.zeros_like(w)))
            B = jnp.dot(F, jnp.where(S, w * Y, jnp.zeros_like(Y)), precision=_HIGHEST)
        else:
            G = weighted_gram(w)
            B = jnp.dot(F, w * Y, precision=_HIGHEST)
        G = G + L2 * eye[:, :, None]
        # RcppML's CD subtracts L1 from rho_i / G_ii; in residual form that is b - L1 diag(G).
        B = B - L1 * jnp.diagonal(G, axis1=0, axis2=1).T
        return G, B

    def one_pass(carry):
        X, active, it = carry
        G, B = system(X)
        X_new = _cd_sweeps(G, B, X, cfg.cd_maxit)
        change = jnp.max(jnp.abs(X_new - X) / (jnp.abs(X) + 1e-12), axis=0)
        X = jnp.where(active[None, :], X_new, X)
        return X, active & ~(change < hp.irls_tol), it + 1

    init = (jnp.zeros((k, p), dtype), jnp.ones((p,), bool), jnp.zeros((), jnp.int32))
    return lax.while_loop(lambda c: (c[2] < cfg.irls_max_iter) & jnp.any(c[1]), one_pass, init)[0]


def _normalise(X: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = jnp.sum(jnp.abs(X), axis=1) + 1e-15
    return d, X / d[:, None]


# ---------------------------------------------------------------------------------------------------- dispersion

def _update_dispersion(hp: IrlsHyper, A: jax.Array, S: jax.Array | None, Wd: jax.Array,
                       H: jax.Array, P: jax.Array, disp: jax.Array) -> jax.Array:
    """§3.7: GP theta (MM, 5 passes), NB size r (method of moments) or phi (diagnostic), per row or global;
    ``Wd = W' diag(d)`` (k, m), H (k, n), P = Wd' H (m, n)."""
    new = _by_loss(hp, functools.partial(_dispersion_rows, hp=hp, A=A, S=S), Wd, H, P, disp)
    # global: GP theta is the mean of the per-row MM estimates, NB r and phi the element at floor(m/2) of the
    # sorted rows (nth_element)
    glob = jnp.where(hp.loss == LOSSES.index("gp"), jnp.mean(new), jnp.sort(new)[new.shape[0] // 2])
    return jnp.where(hp.dispersion == 0, disp, jnp.where(hp.dispersion == 2, jnp.full_like(new, glob), new))


def _dispersion_rows(loss: str, Wd: jax.Array, H: jax.Array, P: jax.Array, disp: jax.Array, *, hp: IrlsHyper,
                     A: jax.Array, S: jax.Array | None) -> jax.Array:
    """The per-row estimates of ``_update_dispersion`` (rows without data keep ``disp``; mse has none)."""
    if loss == "mse":
        return disp
    zero = jnp.zeros_like(A)
    stored = jnp.ones(A.shape, bool) if S is None else S
    if loss == "gp":
        s = jnp.maximum(P, 1e-10)
        ge1 = stored & (A >= 1)
        sum_y = jnp.sum(jnp.where(stored, A, zero), axis=1)
        sum_s = jnp.dot(Wd.T, jnp.sum(H, axis=1), precision=_HIGHEST) if S is not None else jnp.sum(s, axis=1)
        n1 = jnp.sum(ge1, axis=1).astype(A.dtype)
        ym1 = jnp.where(ge1, A - 1, zero)

        def mm(_, theta):
            eta = s / jnp.maximum(s + theta[:, None] * A, 1e-10)
            alpha = jnp.sum(ym1 * eta, axis=1)
            gamma = jnp.sum(ym1 * (1 - eta), axis=1)
            a = alpha + n1
            beta = (sum_y - sum_s) - gamma + a
            disc = beta * beta + 4 * a * gamma
            ok = (a > 1e-15) & (disc > 0) & jnp.isfinite(disc)
            cand = jnp.minimum((-beta + jnp.sqrt(jnp.where(ok, disc, 1))) / (2 * jnp.where(ok, a, 1)), hp.theta_max)
            ok = ok & jnp.isfinite(cand) & (cand >= 0)
            return jnp.where(ok, cand, theta)

        return lax.fori_loop(0, 5, mm, disp)
    if loss == "nb":
        mu = jnp.maximum(P, 1e-10)
        if S is not None:
            G = jnp.dot(H, H.T, precision=_HIGHEST) + 1e-15 * jnp.eye(H.shape[0], dtype=H.dtype)
            tot2 = jnp.sum(Wd * jnp.dot(G, Wd, precision=_HIGHEST), axis=0)
            tot = jnp.dot(Wd.T, jnp.sum(H, axis=1), precision=_HIGHEST)
            nz2 = jnp.sum(jnp.where(S, mu * mu, zero), axis=1)
            res2 = jnp.sum(jnp.where(S, (A - mu) ** 2, zero), axis=1)
            excess = res2 + (tot2 - nz2) - tot
        else:
            tot2 = jnp.sum(mu * mu, axis=1)
            tot = jnp.sum(mu, axis=1)
            excess = jnp.sum((A - mu) ** 2, axis=1) + (tot2 - tot2) - tot
        ok = (excess > 1e-10) & (tot2 > 1e-10)
        return jnp.where(ok, jnp.clip(tot2 / jnp.where(ok, excess, 1), hp.nb_size_min, hp.nb_size_max),
                         hp.nb_size_max)
    # gamma / inverse Gaussian / Tweedie: phi, diagnostic only
    mu = jnp.maximum(P, 1e-10)
    pos = stored & (A > 0)
    ratio = jnp.where(pos, (A - mu) ** 2 / jnp.maximum(jnp.power(mu, hp.power), 1e-20), zero)
    count = jnp.sum(pos, axis=1)
    phi = jnp.clip(jnp.sum(ratio, axis=1) / jnp.maximum(count, 1), hp.phi_min, hp.phi_max)
    return jnp.where(count > 0, phi, disp)


# ---------------------------------------------------------------------------------------------------- objective

def _stirling_rest(x: jax.Array) -> jax.Array:
    """``lgamma(x) - ((x - 1/2) log x - x + log(2 pi) / 2)``: a series from x = 10 on (error < 1e-9), directly below
    (both terms are small there, so no cancellation)."""
    xs = jnp.maximum(x, 10.0)
    inv, inv2 = 1 / xs, 1 / (xs * xs)
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    xl = jnp.minimum(x, 10.0)
    direct = gammaln(xl) - ((xl - 0.5) * jnp.log(xl) - xl + _HALF_LOG_2PI)
    return jnp.where(x >= 10, series, direct)


def _nb_nll(y: jax.Array, mu: jax.Array, r: jax.Array) -> jax.Array:
    """RcppML's NB term ``-lgamma(y+r) + lgamma(r) - r log(r/(r+mu)) - y log(mu/(r+mu))`` in a form that keeps
    float32 accuracy for large r (RcppML evaluates it in double; at r = 1e6, the Poisson limit hawaiibirds sits
    in, the direct float32 form loses the whole objective to cancellation): with Stirling's form of lgamma,
    ``-(r - 1/2) log1p(y/r) + y (log1p(mu/r) - log1p(y/r)) + y + r log1p(mu/r) - y log mu + rest(r) - rest(y+r)``."""
    l_mu, l_y = jnp.log1p(mu / r), jnp.log1p(y / r)
    return (-(r - 0.5) * l_y + y * (l_mu - l_y) + y + r * l_mu - y * jnp.log(mu)
            + _stirling_rest(r) - _stirling_rest(y + r))


def _objective(cfg: IrlsConfig, hp: IrlsHyper, A: jax.Array, S: jax.Array | None, P: jax.Array,
               disp: jax.Array) -> jax.Array:
    """RcppML's objective (§3.6) of the prediction P (m, n): the sum of per-entry terms over stored entries
    (sparse semantics) or all entries (dense). RcppML sums them in a float32 running sum (column-major); this sum
    is XLA's (pairwise)."""
    e = _entry_terms(hp, A, P, disp)
    if S is not None:
        e = jnp.where(S, e, jnp.zeros_like(e))
    return jnp.sum(e)


def _entry_terms(hp: IrlsHyper, A: jax.Array, P: jax.Array, disp: jax.Array) -> jax.Array:
    """The objective's per-entry terms (m, n) at the prediction P; ``disp`` (m,) the row dispersions."""
    col = jnp.broadcast_to(disp[:, None], A.shape)
    return lax.cond(hp.delta > 0, lambda: _by_loss(hp, _huber_terms, hp.delta, hp.power, A, P, col),
                    lambda: _by_loss(hp, _distribution_terms, hp.power, A, P, col))


def _huber_terms(loss: str, delta: jax.Array, p: jax.Array, y: jax.Array, P: jax.Array, col: jax.Array
                 ) -> jax.Array:
    """Robust: Huber's rho of the Pearson residual ``(y - mu') / sqrt(V(mu'))``, V the loss's variance."""
    mu = jnp.maximum(P, 1e-10)
    if loss == "mse":
        var = jnp.ones_like(mu)
    elif loss == "gp":
        var = mu
    elif loss == "nb":
        var = mu + mu * mu / jnp.maximum(col, 1e-10)
    else:
        var = jnp.power(mu, p)
    z = jnp.abs((y - mu) / jnp.sqrt(jnp.maximum(var, 1e-20)))
    return jnp.where(z <= delta, 0.5 * z * z, delta * z - 0.5 * delta * delta)


def _distribution_terms(loss: str, p: jax.Array, y: jax.Array, P: jax.Array, col: jax.Array) -> jax.Array:
    mu = jnp.maximum(P, 1e-10)
    if loss == "mse":
        return (y - P) ** 2
    if loss == "gp":
        theta = col
        return (-jnp.log(mu / (1 + theta))
                - jnp.where(y >= 1, (y - 1) * jnp.log(jnp.maximum((mu + theta * y) / (1 + theta), 1e-10)), 0.0)
                + (mu + theta * y) / (1 + theta))
    if loss == "nb":
        return _nb_nll(y, mu, jnp.maximum(col, 1e-10))
    yp = jnp.maximum(y, 1e-10)
    gamma_dev = 2 * (-jnp.log(yp / mu) + (yp - mu) / mu)
    if loss == "gamma":
        return gamma_dev
    if loss == "inverse_gaussian":
        return (yp - mu) ** 2 / (mu * mu * yp)
    poisson_dev = 2 * (yp * jnp.log(yp / mu) - (yp - mu))
    general = 2 * (jnp.power(yp, 2 - p) / ((1 - p) * (2 - p)) - yp * jnp.power(mu, 1 - p) / (1 - p)
                   + jnp.power(mu, 2 - p) / (2 - p))
    return jnp.where(jnp.abs(p - 1) < 1e-6, poisson_dev, jnp.where(jnp.abs(p - 2) < 1e-6, gamma_dev, general))


# ---------------------------------------------------------------------------------------------------- driver

def _step(cfg: IrlsConfig, hp: IrlsHyper, A: jax.Array, S: jax.Array | None, carry: _Carry) -> _Carry:
    state, disp = carry
    r = jnp.where(hp.loss == LOSSES.index("nb"), disp, jnp.ones_like(disp))
    H_raw = irls_solve(cfg, hp, state.W, A, S, r[:, None], hp.L1[1], hp.L2[1])
    _, H = _normalise(H_raw)  # the H half's scale is discarded
    W_raw = irls_solve(cfg, hp, H, A.T, None if S is None else S.T, r[None, :], hp.L1[0], hp.L2[0])
    d, W = _normalise(W_raw)
    Wd = W * d[:, None]
    P = jnp.dot(Wd.T, H, precision=_HIGHEST)
    disp = _update_dispersion(hp, A, S, Wd, H, P, disp)
    loss = _objective(cfg, hp, A, S, P, disp)
    return _Carry(advance(state, W, H, d, loss, hp.tol, 5), disp)


@functools.partial(jax.jit, static_argnums=0)
def _fit(cfg: IrlsConfig, hp: IrlsHyper, A: jax.Array, S: jax.Array | None, w0: jax.Array,
         disp0: jax.Array) -> tuple[NMFModel, jax.Array]:
    dtype = A.dtype
    m, n = A.shape
    state = State(W=w0.T, H=jnp.zeros((cfg.k, n), dtype), d=jnp.ones((cfg.k,), dtype),
                  loss=jnp.asarray(_FLT_MAX, dtype), rel=jnp.asarray(jnp.inf, dtype),
                  patience=jnp.zeros((), jnp.int32), n_iter=jnp.zeros((), jnp.int32),
                  converged=jnp.zeros((), bool), history=jnp.full((cfg.maxit,), jnp.nan, dtype))
    # RcppML neither stops on a non-finite objective nor on anything but patience and maxit (§3.8).
    carry = lax.while_loop(lambda c: (c.state.n_iter < cfg.maxit) & ~c.state.converged,
                           lambda c: _step(cfg, hp, A, S, c), _Carry(state, disp0))
    state = carry.state
    # advance() leaves rel = inf at the first iteration; RcppML's first rel is against FLT_MAX.
    first = jnp.abs(_FLT_MAX - state.history[0]) / (_FLT_MAX + 1e-15)
    state = state._replace(rel=jnp.where(state.n_iter == 1, first.astype(dtype), state.rel))
    return finish_model(Config(k=cfg.k, maxit=cfg.maxit), state, w0), carry.disp


# ---------------------------------------------------------------------------------------------------- public

def _robust_delta(robust: Any) -> float:
    """§3.1: ``True`` → Huber delta 1.345, ``"mae"`` → 1e-4, a number → itself; False / 0 → not robust (0)."""
    if isinstance(robust, (bool, np.bool_)):
        return 1.345 if robust else 0.0
    if isinstance(robust, str):
        if robust != "mae":
            raise ValueError(f"robust must be True, False, 'mae' or a non-negative number, got {robust!r}")
        return 1e-4
    return V.check_real(robust, "robust", low=0.0)


def fit_rcppml_loss(A: Any, k: int, *, loss: str, robust: Any = False, dispersion: str = "per_row",
                    w_init: Any, tol: float = 1e-4, maxit: int = 100, L1: Any = (0.0, 0.0), L2: Any = (0.0, 0.0),
                    cd_maxit: int = 100, irls_max_iter: int = 5, irls_tol: float = 1e-4, theta_init: float = 0.1,
                    theta_max: float = 5.0, nb_size_init: float = 10.0, nb_size_max: float = 1e6,
                    nb_size_min: float = 0.01, gamma_phi_init: float = 1.0, gamma_phi_max: float = 1e4,
                    gamma_phi_min: float = 1e-6, tweedie_power: float = 1.5, sparse_semantics: bool | None = None,
                    dtype: Any = jnp.float32) -> tuple[NMFModel, dict[str, jax.Array]]:
    """RcppML 1.0.0's ``nmf(A, k, loss=, robust=, dispersion=, ...)`` standard fit, reproduced (module docstring).

    Args:
        A: (m, n) non-negative data, dense (numpy / jax) or scipy.sparse. Sparse input takes RcppML's sparse
            semantics (only stored non-zeros are weighted and counted), dense input the dense semantics (every
            entry), unless ``sparse_semantics`` (True / False) forces one.
        k: rank, 1 <= k <= min(m, n).
        loss: ``"mse"``, ``"gp"``, ``"nb"``, ``"gamma"``, ``"inverse_gaussian"`` or ``"tweedie"``.
        robust: ``False``; ``True`` (Huber delta 1.345 on Pearson residuals), ``"mae"`` (delta 1e-4) or a delta.
        dispersion: ``"per_row"``, ``"global"`` or ``"none"`` (GP theta, NB size r, phi).
        w_init: (m, k) initial W (RcppML's ``set.seed(seed); runif``), not normalised.
        tol, maxit: stop after 5 consecutive relative objective changes below ``tol``, or at ``maxit``.
        L1, L2: per factor (W, H): ``G_w + L2 I`` and CD's ``rho_i / G_ii - L1``; 0 <= L1 < 1, L2 >= 0.
        cd_maxit: CD sweeps per IRLS pass (all run). irls_max_iter, irls_tol: IRLS passes per solve and their stop.
        theta_init, theta_max: GP theta start and cap. nb_size_init / max / min: NB size start and clamp.
        gamma_phi_init / max / min: phi start and clamp. tweedie_power: p of ``loss="tweedie"``.
        dtype: float32 (RcppML's precision, default) or float64 (needs jax x64).

    Returns:
        ``(model, extras)``: an ``NMFModel`` (w (m, k), d, h (k, n), sorted by d descending; ``loss`` and
        ``loss_history`` are RcppML's objective) and a dict with ``"theta"`` (gp) or ``"r"`` (nb) or ``"phi"``
        (gamma / inverse_gaussian / tweedie), each (m,) per row of A (constant for ``"global"``); empty for mse.
    """
    prepared = prepare_rcppml_loss(
        A, k, loss=loss, robust=robust, dispersion=dispersion, w_init=w_init, tol=tol, maxit=maxit, L1=L1, L2=L2,
        cd_maxit=cd_maxit, irls_max_iter=irls_max_iter, irls_tol=irls_tol, theta_init=theta_init,
        theta_max=theta_max, nb_size_init=nb_size_init, nb_size_max=nb_size_max, nb_size_min=nb_size_min,
        gamma_phi_init=gamma_phi_init, gamma_phi_max=gamma_phi_max, gamma_phi_min=gamma_phi_min,
        tweedie_power=tweedie_power, sparse_semantics=sparse_semantics, dtype=dtype)
    if isinstance(prepared, dict):
        # loss="mse" without robust is not IRLS in RcppML: its standard MSE path (Cholesky-clip for k < 32
        # without L1, else CD), which jnmf.nmf reproduces.
        from ._solve import nmf

        return nmf(**prepared), {}
    model, disp = _fit(prepared.cfg, prepared.hp, prepared.A, prepared.S, prepared.w0, prepared.disp0)
    name = {"gp": "theta", "nb": "r", "mse": None}.get(prepared.loss, "phi")
    return model, ({} if name is None else {name: disp})


class Prepared(NamedTuple):
    """A validated IRLS fit: static ``cfg``, array ``hp``, dense A (m, n), stored indicator S (or None for the
    dense semantics), initial W (m, k) and initial dispersion (m,)."""

    cfg: IrlsConfig
    hp: IrlsHyper
    loss: str
    A: jax.Array
    S: jax.Array | None
    w0: jax.Array
    disp0: jax.Array


def prepare_rcppml_loss(A: Any, k: int, *, loss: str, robust: Any, dispersion: str, w_init: Any, tol: Any,
                        maxit: Any, L1: Any, L2: Any, cd_maxit: Any, irls_max_iter: Any, irls_tol: Any,
                        theta_init: Any, theta_max: Any, nb_size_init: Any, nb_size_max: Any, nb_size_min: Any,
                        gamma_phi_init: Any, gamma_phi_max: Any, gamma_phi_min: Any, tweedie_power: Any,
                        sparse_semantics: Any, dtype: Any) -> Prepared | dict[str, Any]:
    """Validate ``fit_rcppml_loss``'s arguments (errors name the argument) before any compute; build the
    ``Prepared`` fit, or, for ``loss="mse"`` without ``robust``, the keyword arguments of ``jnmf.nmf``."""
    V.check_choice(loss, "loss", LOSSES)
    if dispersion == "per_col":
        raise ValueError("dispersion='per_col' is not reproduced (only 'per_row', 'global', 'none')")
    V.check_choice(dispersion, "dispersion", DISPERSIONS)
    delta = _robust_delta(robust)
    if sparse_semantics is not None and not isinstance(sparse_semantics, (bool, np.bool_)):
        raise TypeError(f"sparse_semantics must be None, True or False, got {sparse_semantics!r}")
    dtype = check_dtype(dtype)
    A = V.check_data(A)
    m, n = A.shape
    k = V.check_rank(k, m, n)
    if w_init is None:
        raise ValueError("w_init is required: the (m, k) initial W (RcppML: set.seed(seed); runif(m * k))")
    w0 = V.check_matrix(w_init, "w_init", (m, k), nonneg=True)
    if not np.any(w0):
        raise ValueError("w_init is all zeros, so every update stays zero; give a non-zero initial W")
    maxit = V.check_int(maxit, "maxit", 1)
    cd_maxit = V.check_int(cd_maxit, "cd_maxit", 1)
    irls_max_iter = V.check_int(irls_max_iter, "irls_max_iter", 1)
    tol = V.check_real(tol, "tol", low=0.0)
    L1 = V.check_pair(L1, "L1", low=0.0, high=1.0, high_open=True)
    L2 = V.check_pair(L2, "L2", low=0.0)
    positive = dict(irls_tol=irls_tol, theta_max=theta_max, nb_size_init=nb_size_init, nb_size_max=nb_size_max,
                    nb_size_min=nb_size_min, gamma_phi_init=gamma_phi_init, gamma_phi_max=gamma_phi_max,
                    gamma_phi_min=gamma_phi_min)
    vals = {name: V.check_real(v, name, low=0.0) for name, v in positive.items()}
    theta_init = V.check_real(theta_init, "theta_init", low=0.0)
    tweedie_power = V.check_real(tweedie_power, "tweedie_power")
    for lo, hi in (("nb_size_min", "nb_size_max"), ("gamma_phi_min", "gamma_phi_max")):
        if vals[lo] > vals[hi]:
            raise ValueError(f"{lo} ({vals[lo]}) must be <= {hi} ({vals[hi]})")
    for name in ("nb_size_init", "nb_size_max", "nb_size_min", "gamma_phi_min"):
        if vals[name] <= 0:
            raise ValueError(f"{name} must be > 0, got {vals[name]}")

    if loss == "mse" and delta == 0:
        return dict(A=A, k=k, w_init=w0, tol=tol, maxit=maxit, L1=L1, L2=L2, cd_maxit=cd_maxit, solver="rcppml",
                    dtype=dtype)

    sparse_in = sp.issparse(A)
    semantics = sparse_in if sparse_semantics is None else bool(sparse_semantics)
    if sparse_in:
        A = sp.csr_matrix(A, dtype=np.float64)
        A.sum_duplicates()
        A.eliminate_zeros()  # a dgCMatrix stores no zeros
        S = A.toarray() != 0
        A = A.toarray()
    else:
        A = np.asarray(A, np.float64)
        S = A != 0
    cfg = IrlsConfig(k=k, sparse=semantics, maxit=maxit, cd_maxit=cd_maxit, irls_max_iter=irls_max_iter)
    power = _POWER.get(loss, tweedie_power)
    arr = functools.partial(jnp.asarray, dtype=dtype)
    hp = IrlsHyper(loss=jnp.asarray(LOSSES.index(loss), jnp.int32), tol=arr(tol), L1=arr(L1), L2=arr(L2),
                   delta=arr(delta), irls_tol=arr(vals["irls_tol"]),
                   power=arr(power), theta_max=arr(vals["theta_max"]), nb_size_max=arr(vals["nb_size_max"]),
                   nb_size_min=arr(vals["nb_size_min"]), phi_max=arr(vals["gamma_phi_max"]),
                   phi_min=arr(vals["gamma_phi_min"]),
                   dispersion=jnp.asarray(DISPERSIONS.index(dispersion), jnp.int32))
    none = dispersion == "none"
    start = {"gp": 0.0 if none else theta_init, "nb": vals["nb_size_max"] if none else vals["nb_size_init"]}
    disp0 = np.full(m, start.get(loss, 1.0 if none else vals["gamma_phi_init"]))
    return Prepared(cfg, hp, loss, arr(A), jnp.asarray(S) if semantics else None, arr(w0), arr(disp0))
