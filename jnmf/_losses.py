"""Non-Gaussian losses in the one engine: majorize-minimize halves that cannot increase the stated objective.

``nmf(A, k, loss=...)`` minimises ``sum_ij o_ij D(a_ij | mu_ij)`` (+ penalties) over ``W, H >= 0`` with
``mu = W diag(d) h``, ``o_ij = 0`` for missing entries (``mask=``/NaN) and 1 otherwise. Every entry counts,
zeros included, for sparse and dense input alike (one rule; RcppML weighs sparse zeros differently, its D10).
Per entry (``entry_loss``; mu is floored at ``tiny^(1/4)`` of the dtype, 3e-10 in float32, in logs and powers):

====================  ==========================================================================================
``"mse"``             ``(a - mu)^2``: the default engine (``_step``), unchanged.
``"poisson"`` (kl)    generalized KL ``a log(a/mu) - a + mu`` (Poisson deviance / 2).
``"nb"``              negative binomial NLL with size r: ``-log Gamma(a+r) + log Gamma(r) + log Gamma(a+1)
                      + (a+r) log(1 + mu/r) - a log mu + a log r - ... `` (see ``_nb_nll``), r per row.
``"gamma"``           Itakura-Saito ``a/mu - log(a/mu) - 1`` (gamma deviance / 2) over entries ``a > 0``.
``"tweedie"``         beta-divergence, beta = 2 - p (Tweedie deviance / 2), ``1 <= power <= 3``:
                      ``a^b/(b(b-1)) - a mu^(b-1)/(b-1) + mu^b/b``; p = 1 KL, p = 2 IS; for ``p >= 2`` zeros
                      have infinite divergence and are treated as missing (documented rule); ``"inverse_gaussian"``
                      is p = 3.
``"huber"``           ``z^2`` for ``|z| <= delta`` else ``2 delta |z| - delta^2`` (z = a - mu): twice the usual Huber
                      function, so ``delta -> inf`` is the squared error of ``"mse"``.
``"mae"``             smoothed absolute error ``z^2/(2 delta)`` for ``|z| <= delta`` else ``|z| - delta/2``
                      (Huber / delta; ``delta`` default 1e-4): ``sum |z|`` up to ``delta/2`` per entry.
====================  ==========================================================================================

Updates (each half as in the MSE engine: H from the unit-scaled W, scale, then W' from the unit-scaled H, scale):

* beta family (poisson, nb, gamma, tweedie): the auxiliary function of Fevotte & Idier (2011) at the current raw
  factor X0 separates by entry. With ``mu0`` the current model, ``Q = F (o a mu0^-p)`` and ``P = F (o mu0^(1-p))``
  (for nb: ``Q = F (o a / mu0)``, ``P = F (o (a + r)/(r + mu0))``, the concave ``(a+r) log(r+mu)`` replaced by its
  tangent, Gouvert et al. 2020), its minimiser is ``X = X0 (Q / (P + 2 L1))^(1/p)`` (exponent 1 for poisson and
  nb). For poisson and nb the surrogate is ``(P + 2L1) x - X0 Q log x``, to which separable quadratics
  ``c |x - t|^2`` (L2, a target with ``lam > 0``, the scatter removal majorized as ``lam |x - (E0 - E0 M)|^2``,
  ``_penalties.scatter_target``, and its W-side bound) add, keeping the closed-form root of
  ``2c x^2 + (P + 2L1 - 2ct) x - X0 Q = 0``. gamma/tweedie take targets and the scatter removal through the
  root of their surrogate's derivative, found by bracketed Newton (``_power_form_root``); L2 is refused for them.
  Penalties are in the engine's units: ``2 L1 |x|_1 + L2 |x|^2 + lam |x - t|^2``.
* huber/mae: the half-quadratic majorizer ``rho(z) <= s w z^2 + const``, ``w = min(1, delta/|z0|)`` at the current
  residual (s = 1 for huber, ``1/(2 delta)`` for mae), gives a weighted NNLS per column,
  ``G_j = F diag(o_j w_j) F'``, solved by coordinate descent warm-started at the current factor (any descent of
  the surrogate descends the objective); every MSE penalty (L1, L2, targets, the scatter removal) applies as in
  the masked MSE fit (``_step.h_solve``/``w_half``).
* nb dispersion (``dispersion=``): a positive number or (m,) array is fixed; ``"per_row"`` (default) or
  ``"global"`` estimate r by maximum likelihood after each W half: 2 Newton steps in log r from the current r,
  each kept only where it lowers the NLL or is shorter than 1e-4 (a descent to second order, whose NLL change the
  comparison could not resolve: it would depend on the order of the sum over devices or chunks), r in [1e-3, 1e8]
  (so the objective still never increases). Underdispersed
  data (variance below the mean, e.g. hawaiibirds' frequencies) drive r to 1e8, the Poisson limit.

The first H half starts from a constant H (the mean of the observed data over the mean of the initial model), as
multiplicative updates cannot leave zero. Sparse input: poisson keeps it sparse (``CooData``: the model only at
stored entries, the ``mu`` part is W's column sums) when ``layout="sparse"`` or the dense working set does not fit
the memory budget; the other losses need the model at every entry and use the dense layout. Sharded fits
(``devices=``) run ``loss_step`` on A's columns split over the mesh (dense only; the zero columns padding n count
as unobserved and start H at 0); chunked fits (``nmf_chunked``) run its pieces (``h_update``, ``w_stats`` summed
over chunks, ``w_update``, ``nb_stats`` summed over chunks, ``objective``) one chunk at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from . import _validate as V

_HIGHEST = lax.Precision.HIGHEST

LOSSES = ("mse", "poisson", "nb", "gamma", "tweedie", "huber", "mae")
ALIASES = {"kl": "poisson", "inverse_gaussian": "tweedie"}
RCPPML_LOSSES = ("mse", "gp", "nb", "gamma", "inverse_gaussian", "tweedie")
BETA = ("poisson", "nb", "gamma", "tweedie")
LOG_FORM = ("poisson", "nb")  # surrogate a x - b log x: quadratic penalties keep a closed form
ROBUST = ("huber", "mae")
HUBER_DELTA = 1.345  # RcppML's robust = TRUE
MAE_DELTA = 1e-4  # RcppML's robust = "mae"
TWEEDIE_POWER = 1.5  # RcppML's tweedie_power
POWER_RANGE = (1.0, 3.0)
NB_SIZE_INIT = 10.0  # RcppML's nb_size_init
NB_SIZE_RANGE = (1e-3, 1e8)
_NB_NEWTON = 2
_NB_SMALL_STEP = 1e-4  # in log r
_P_EPS = 1e-4  # |p - 1| or |p - 2| below this takes the KL / IS limit of the beta-divergence


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A validated ``loss=`` with its parameters (``check_loss``)."""

    loss: str = "mse"
    solver: str = "auto"
    power: float | None = None
    delta: float | None = None
    dispersion_mode: str = "fixed"
    dispersion: Any = None  # fixed r: a float or (m,) array; None for the estimated modes

    def check_penalties(self, opts: Any, L1: Any, L2: Any, nonneg: Any, lam_grid: np.ndarray, has_TH: bool,
                        has_TW: bool, has_remove: bool, masked: bool, L1_grid: Any = None,
                        lambda_grid: Any = None) -> None:
        """Refuse penalties and options this loss cannot combine with a monotone update (before any compute)."""
        if self.loss == "mse":
            return
        name = f"loss={self.loss!r}"
        if self.loss in BETA and not all(nonneg):
            raise ValueError(f"nonneg: {name} uses multiplicative updates, which need W, H >= 0 (nonneg=True)")
        if np.any(lam_grid < 0) and opts.removal != "scatter":
            raise ValueError(f"removal={opts.removal!r} with a negative target_lambda is not supported with {name}: "
                             "it minimises no stated objective; use removal='scatter' (or loss='mse')")
        if self.loss in ("gamma", "tweedie"):
            # Targets and the scatter removal take a Newton-solved MM root (_power_form_root); L2 is not offered:
            # as an array leaf it could be swept from 0 inside one program, and the plain multiplicative update of
            # an unpenalised fit would then have to change with it.
            if bool(np.any(np.asarray(L2, np.float64) != 0)):
                raise ValueError(f"L2: {name} does not take L2 (use loss='poisson', 'nb', 'huber' or 'mae' for it); "
                                 "targets (target_H/target_W) and the scatter removal (remove=) do apply")

    def leaves(self, m: int, dtype: Any) -> dict[str, jax.Array]:
        """The ``Hyper`` array leaves of this loss (none for mse)."""
        out: dict[str, jax.Array] = {}
        if self.power is not None:
            out["power"] = jnp.asarray(self.power, dtype)
        if self.delta is not None:
            out["delta"] = jnp.asarray(self.delta, dtype)
        if self.loss == "nb":
            r = NB_SIZE_INIT if self.dispersion is None else self.dispersion
            out["dispersion"] = jnp.broadcast_to(jnp.asarray(r, dtype), (m,))
        return out


def check_loss(opts: Any, k: int | None = None) -> LossSpec:
    """Validate ``loss``, ``power``, ``delta``, ``dispersion``, ``robust``, ``loss_mode`` (and which ``solver``
    applies) of a ``FitOptions``; errors name the argument."""
    V.check_choice(opts.loss_mode, "loss_mode", ("jnmf", "rcppml"))
    loss = opts.loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a string, got {type(loss).__name__}")
    robust = opts.robust
    if opts.loss_mode == "rcppml":
        V.check_choice(loss, "loss", RCPPML_LOSSES)
        return LossSpec(loss=loss)
    if loss == "gp":
        raise ValueError("loss='gp' (RcppML's generalized Poisson) is not a jnmf loss: RcppML's gp updates are KL's "
                         "(its theta never reaches the factors, D11), so use loss='poisson', or loss_mode='rcppml' "
                         "for RcppML's IRLS (jnmf._irls)")
    V.check_choice(loss, "loss", LOSSES + tuple(ALIASES))
    power_default = 3.0 if loss == "inverse_gaussian" else TWEEDIE_POWER
    loss = ALIASES.get(loss, loss)
    delta = opts.delta
    if robust is not False and robust is not None:
        if loss != "mse":
            raise ValueError(f"robust={robust!r} with loss={opts.loss!r}: jnmf's robust losses are loss='huber' and "
                             "loss='mae' on raw residuals; RcppML's robust IRLS of a distribution is "
                             "loss_mode='rcppml'")
        if robust is True:
            loss, default_delta = "huber", HUBER_DELTA
        elif isinstance(robust, str) and robust == "mae":
            loss, default_delta = "mae", None
        elif isinstance(robust, (int, float, np.floating, np.integer)) and not isinstance(robust, bool):
            loss, default_delta = "huber", V.check_real(robust, "robust", low=0.0)
            if default_delta <= 0:
                raise ValueError(f"robust must be True, 'mae' or a Huber delta > 0, got {robust!r}")
        else:
            raise ValueError(f"robust must be False, True, 'mae' or a Huber delta > 0, got {robust!r}")
        if delta is not None and default_delta is not None:
            raise ValueError("give the Huber threshold once: robust=<delta> or delta=, not both")
        if delta is None:
            delta = default_delta
    power = opts.power
    if power is not None and loss != "tweedie":
        raise ValueError(f"power applies to loss='tweedie' only, got loss={opts.loss!r}")
    if loss == "tweedie":
        power = power_default if power is None else V.check_real(power, "power")
        if not POWER_RANGE[0] <= power <= POWER_RANGE[1]:
            raise ValueError(f"power must be in [{POWER_RANGE[0]:g}, {POWER_RANGE[1]:g}] (1 Poisson, 2 gamma, "
                             f"3 inverse Gaussian), got {power}")
    elif loss == "poisson":
        power = 1.0
    elif loss == "gamma":
        power = 2.0
    if delta is not None and loss not in ROBUST:
        raise ValueError(f"delta applies to loss='huber' or 'mae' only, got loss={opts.loss!r}")
    if loss in ROBUST:
        delta = (HUBER_DELTA if loss == "huber" else MAE_DELTA) if delta is None else V.check_real(delta, "delta")
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta}")
    dispersion, mode = opts.dispersion, "fixed"
    if dispersion is not None and loss != "nb":
        raise ValueError(f"dispersion applies to loss='nb' only, got loss={opts.loss!r}")
    if loss == "nb":
        if dispersion is None or isinstance(dispersion, str):
            mode = V.check_choice("per_row" if dispersion is None else dispersion, "dispersion",
                                  ("per_row", "global"))
            dispersion = None
        else:
            r = np.asarray(dispersion, np.float64)
            if r.ndim > 1 or not np.all(np.isfinite(r)) or np.any(r <= 0):
                raise ValueError("dispersion must be 'per_row', 'global', a size r > 0 or an (m,) array of sizes > 0,"
                                 f" got {dispersion!r}")
            dispersion = r
    solver = opts.solver
    if loss in BETA and solver != "auto":
        raise ValueError(f"solver={solver!r} does not apply to loss={opts.loss!r} (multiplicative updates, no NNLS); "
                         "leave solver='auto'")
    if loss in ROBUST:
        if solver not in ("auto", "cd"):
            raise ValueError(f"solver={solver!r} does not apply to loss={loss!r}: its weighted NNLS needs "
                             "coordinate descent warm-started at the current factor (solver='cd' or 'auto')")
        solver = "cd"
    return LossSpec(loss=loss, solver=solver if loss != "mse" else opts.solver, power=power, delta=delta,
                    dispersion_mode=mode, dispersion=dispersion)


# Sparse data for poisson ------------------------------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CooData:
    """A sparse (m, n) matrix as its stored entries (row, col, value), for losses that need the model only there
    (poisson: ``a / mu`` at the non-zeros; ``sum mu`` from column sums). O(nnz k) per product."""

    rows: jax.Array
    cols: jax.Array
    vals: jax.Array
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    n_valid = None
    mesh = None
    host_lifetime = False
    mask = None

    def left(self, F: jax.Array) -> jax.Array:
        """``F A`` for F (k, m) → (k, n)."""
        return _scatter_cols(F[:, self.rows] * self.vals, self.cols, self.shape[1])

    def right(self, H: jax.Array) -> jax.Array:
        """``H A'`` for H (k, n) → (k, m)."""
        return _scatter_cols(H[:, self.cols] * self.vals, self.rows, self.shape[0])


def _scatter_cols(X: jax.Array, idx: jax.Array, size: int) -> jax.Array:
    return jax.ops.segment_sum(X.T, idx, num_segments=size).T


def coo_data(A: Any, dtype: Any) -> CooData:
    coo = sp.coo_matrix(A)
    coo.sum_duplicates()
    return CooData(rows=jnp.asarray(coo.row, jnp.int32), cols=jnp.asarray(coo.col, jnp.int32),
                   vals=jnp.asarray(coo.data, dtype), shape=tuple(int(s) for s in coo.shape))


# Per-entry objectives (numpy or jax: ``xp`` and its ``gammaln``) -------------------------------------------------

def _safe(xp, cond, x, fill=1.0):
    return xp.where(cond, x, fill)


def _xlogy_ratio(xp, y, mu):
    """``y log(y / mu)`` with 0 at y = 0 (double where: no NaN gradients)."""
    pos = y > 0
    return xp.where(pos, y * xp.log(_safe(xp, pos, y) / mu), 0.0)


def _lgamma_ratio(xp, gammaln, y, r):
    """``log Gamma(y + r) - log Gamma(r) - y log r``, stable for large r (Stirling's series beyond r = 10, where the
    direct difference of two ~r log r terms loses every digit)."""
    big = r > 10.0
    rb = _safe(xp, big, r, 10.0)
    rs = _safe(xp, big, 1.0, r)
    direct = gammaln(y + rs) - gammaln(rs) - y * xp.log(rs)
    # lgamma(x) = (x - 1/2) log x - x + log(2 pi)/2 + 1/(12 x) - 1/(360 x^3) + O(x^-5)
    x1 = rb + y
    stirling = ((x1 - 0.5) * xp.log1p(y / rb) - y + (1.0 / (12.0 * x1) - 1.0 / (12.0 * rb))
                - (1.0 / (360.0 * x1 ** 3) - 1.0 / (360.0 * rb ** 3)))
    return xp.where(big, stirling, direct)


def _nb_nll(xp, gammaln, y, mu, r):
    """Negative binomial NLL ``-log P(y | mean mu, size r)`` (y real >= 0 via Gamma), stable as r → inf."""
    return (-_lgamma_ratio(xp, gammaln, y, r) + (y + r) * xp.log1p(mu / r) - xp.where(y > 0, y * xp.log(mu), 0.0)
            + gammaln(y + 1.0))


def _beta_div(xp, y, mu, p):
    """The beta-divergence (beta = 2 - p) of y from mu; KL and IS at p = 1 and 2. For p >= 2, y must be > 0 (the
    caller's weights drop y = 0)."""
    kl = _xlogy_ratio(xp, y, mu) - y + mu
    pos = y > 0
    ys = _safe(xp, pos, y)
    ratio = ys / mu
    is_ = ratio - xp.log(ratio) - 1.0
    b = 2.0 - p
    near1, near2 = xp.abs(p - 1.0) < _P_EPS, xp.abs(p - 2.0) < _P_EPS
    bs = xp.where(near1 | near2, 0.5, b)  # keep the general branch finite where it is not used
    ypow = xp.where(pos, ys ** bs, 0.0)
    general = ypow / (bs * (bs - 1.0)) - y * mu ** (bs - 1.0) / (bs - 1.0) + mu ** bs / bs
    return xp.where(near1, kl, xp.where(near2, is_, general))


def entry_weights(xp, loss: str, y, obs, power):
    """The entries that count: observed, and for gamma/tweedie with p >= 2, a > 0 (zeros: infinite divergence)."""
    w = xp.ones_like(y) if obs is None else obs
    if loss in ("gamma", "tweedie"):
        w = w * xp.where((y > 0) | (power < 2.0 - _P_EPS), 1.0, 0.0)
    return w


def entry_loss(xp, gammaln, loss: str, y, mu, power=None, delta=None, r=None):
    """Per-entry objective D(y | mu) of ``loss`` (unweighted; see ``entry_weights``); mu is floored (``mu_floor``)."""
    if loss in ("huber", "mae"):
        z = xp.abs(y - mu)
        quad = z <= delta
        if loss == "huber":
            return xp.where(quad, z * z, 2.0 * delta * z - delta * delta)
        return xp.where(quad, z * z / (2.0 * delta), z - delta / 2.0)
    if loss == "mse":
        return (y - mu) ** 2
    mu = xp.maximum(mu, mu_floor(xp, xp.asarray(mu).dtype))
    if loss == "poisson":
        return _xlogy_ratio(xp, y, mu) - y + mu
    if loss == "nb":
        return _nb_nll(xp, gammaln, y, mu, r)
    return _beta_div(xp, y, mu, power)


# One iteration ----------------------------------------------------------------------------------------------------

def _tiny(x):
    return jnp.finfo(x.dtype).tiny


def _floor(x):
    """The floor of mu in the updates and objectives: ``tiny^(1/4)`` (3e-10 in float32), so that ``mu^-p`` (p <= 3)
    and ``a / mu`` stay finite where a factor has underflowed."""
    return mu_floor(jnp, x.dtype)


def mu_floor(xp, dtype):
    return float(xp.finfo(dtype).tiny) ** 0.25


def _model(WT, H):
    return jnp.dot(WT.T, H, precision=_HIGHEST)


def _contract(F, M, side):
    """``F M`` (H side: F (k, m), M (m, n)) or ``F M'`` (W side: F = H (k, n), M (m, n))."""
    return jnp.dot(F, M if side == 1 else M.T, precision=_HIGHEST)


def _observed(data):
    """``o`` (m, n): 0 at masked entries and at the zero columns padding a sharded A (``shard_columns``, columns
    from ``n_valid`` on), where the model ``mu > 0`` would otherwise add to P, the objective and the NB sums; None
    when every entry counts."""
    O = None if data.mask is None else jnp.logical_not(data.mask).astype(data.A.dtype)
    n_valid = getattr(data, "n_valid", None)
    if n_valid is not None and n_valid < data.shape[1]:
        valid = (jnp.arange(data.shape[1]) < n_valid).astype(data.A.dtype)
        O = jnp.broadcast_to(valid, data.shape) if O is None else O * valid
    return O


def _quadratics(config, hyper, side, X0, W_side_scatter=None):
    """``(c, ct)``: sum of the separable quadratic penalties ``c_i |x - t_i|^2`` of one side as ``c x^2 - 2 ct x``
    (+ const): L2, a target with lam > 0, and the scatter removal's majorizer at X0."""
    from ._penalties import between_groups

    c = jnp.zeros((), X0.dtype) + hyper.L2[side]
    ct = jnp.zeros_like(X0)
    lam = hyper.target_lambda[side]
    T = hyper.target_H if side == 1 else hyper.target_W
    has_T = config.target_H if side == 1 else config.target_W
    if has_T:
        pos = jnp.where(lam > 0, lam, jnp.zeros_like(lam))
        c, ct = c + pos, ct + pos * T
        if side == 1 and config.removal == "scatter":
            neg = jnp.where(lam < 0, -lam, jnp.zeros_like(lam))
            c, ct = c + neg, ct + neg * (X0 - between_groups(X0, T))
    if side == 1 and config.remove:
        lam_r = hyper.remove_lambda
        c, ct = c + lam_r, ct + lam_r * (X0 - between_groups(X0, hyper.remove_groups))
    if side == 0 and W_side_scatter is not None:
        cs, extra_ct = W_side_scatter
        c, ct = c + cs, ct + extra_ct
    return c, ct


def _log_form_root(a_lin, b, c, ct):
    """The positive root of ``2c x^2 + (a_lin - 2ct) x - b = 0`` (b = X0 Q >= 0): the minimiser of
    ``a_lin x - b log x + c x^2 - 2 ct x`` over x > 0; c (scalar or (k, 1)) >= 0."""
    lin = a_lin - 2.0 * ct
    quad = 2.0 * c
    disc = jnp.sqrt(lin * lin + 4.0 * quad * b)
    pos = lin > 0
    # Two forms of the same root, each free of cancellation on its side of lin = 0.
    via_pos = 2.0 * b / jnp.where(pos, lin + disc, 1.0)
    safe_q = jnp.where(quad > 0, quad, 1.0)
    via_neg = jnp.where(quad > 0, (disc - lin) / (2.0 * safe_q), 0.0)
    return jnp.where(pos, via_pos, via_neg)


def _beta_factor(config, hyper, side, F, X0, data, r, W_side_scatter=None):
    """One MM update of the raw factor X0 (k, p) given the unit-scaled F (k, q) for a beta-family loss."""
    Q, P = _beta_stats(config, hyper, side, F, X0, data, r)
    return _beta_root(config, hyper, side, X0, Q, P, W_side_scatter)


def _beta_stats(config, hyper, side, F, X0, data, r):
    """``(Q, P)`` (k, p) of the MM update at the model ``mu0 = F' X0`` (side 1) or ``X0' F`` (side 0). Both are
    linear in F, so the W side may take the raw H (with X0 = the unit-scaled W') and divide by d_H after: sums over
    column blocks (chunks, devices) then add up."""
    loss = config.loss
    if isinstance(data, CooData):  # poisson only
        WT, H = (F, X0) if side == 1 else (X0, F)
        mu = jnp.maximum(jnp.sum(WT[:, data.rows] * H[:, data.cols], axis=0), _floor(X0))
        ratio = data.vals / mu
        if side == 1:
            Q = _scatter_cols(F[:, data.rows] * ratio, data.cols, data.shape[1])
        else:
            Q = _scatter_cols(F[:, data.cols] * ratio, data.rows, data.shape[0])
        P = jnp.broadcast_to(jnp.sum(F, axis=1, keepdims=True), X0.shape)
    else:
        Y = data.A
        O = _observed(data)
        mu0 = _model(F, X0) if side == 1 else _model(X0, F)
        mu = jnp.maximum(mu0, _floor(X0))
        if loss == "poisson":
            R = jnp.where(Y > 0, Y / mu, 0.0)
            Pm = O
        elif loss == "nb":
            rr = r[:, None]
            R = jnp.where(Y > 0, Y / mu, 0.0)
            Pm = (Y + rr) / (rr + mu)
        else:
            p = hyper.power
            wts = entry_weights(jnp, loss, Y, O, p)
            R = jnp.where(Y > 0, wts * Y * mu ** (-p), 0.0)
            Pm = wts * mu ** (1.0 - p)
        if O is not None:
            R = R * O
            Pm = Pm * O if loss != "poisson" else Pm
        Q = _contract(F, R, side)
        if Pm is None:
            P = jnp.broadcast_to(jnp.sum(F, axis=1, keepdims=True), X0.shape)
        else:
            P = _contract(F, Pm, side)
    return Q, P


def _beta_root(config, hyper, side, X0, Q, P, W_side_scatter=None):
    """The MM minimiser of the raw factor X0 (k, p) from its statistics ``Q, P`` (``_beta_stats``) and the
    penalties of its side."""
    loss = config.loss
    dtype = X0.dtype
    a_lin = P + 2.0 * hyper.L1[side]
    b = X0 * Q
    if loss in LOG_FORM:
        c, ct = _quadratics(config, hyper, side, X0, W_side_scatter)
        X = _log_form_root(a_lin, b, c, ct)
    elif _has_quadratics(config, side, W_side_scatter):
        c, ct = _quadratics(config, hyper, side, X0, W_side_scatter)
        X = _power_form_root(a_lin, Q, X0, c, ct, hyper.power)
    else:
        p = hyper.power
        X = X0 * (Q / jnp.where(a_lin > 0, a_lin, 1.0)) ** (1.0 / p)
    # No data and no penalty pull on this entry (e.g. a fully missing column): it keeps its value.
    X = jnp.where(a_lin > 0, X, X0)
    ub = hyper.upper_bound[side]
    return jnp.where(ub > 0, jnp.minimum(X, ub), X).astype(dtype)


def _has_quadratics(config, side, W_side_scatter) -> bool:
    """Whether a side carries a target or the scatter removal (static structure; L2 is refused for gamma/tweedie,
    so their other fits keep the plain multiplicative update)."""
    has_T = config.target_H if side == 1 else config.target_W
    return bool(has_T or (side == 1 and config.remove) or (side == 0 and W_side_scatter is not None))


_POWER_NEWTON = 30


def _power_form_root(a_lin, Q, X0, c, ct, p):
    """Minimiser over x >= 0 of the gamma/Tweedie surrogate with quadratic penalties (p > 1, or the KL limit),
    ``S(x) = (a - 2ct) x + c x^2 + Q x0 (x/x0)^(1-p) / (p-1)``: Févotte & Idier's auxiliary function (Jensen on the
    convex ``a mu^(1-p)`` part, the tangent on the concave ``mu^(2-p)`` part) plus ``c |x - t|^2``.

    Its derivative ``g(x) = lin + 2c x - Q x0^p x^(-p)`` is increasing and concave in x, so the root is bracketed
    by a point where g >= 0 (the multiplicative update without the quadratic, or the bound below) and one where
    g <= 0, and found by Newton's method kept inside the bracket (a geometric bisection where a step leaves it).
    Entries with ``x0 Q = 0`` have no Jensen term (dropping it keeps a majorizer: ``mu^(1-p)`` decreases in mu) and
    take ``max(-lin, 0) / 2c``. A root that rounding left above ``S(x0)`` falls back to x0, so the update never
    increases the surrogate."""
    dtype = X0.dtype
    c2 = jnp.broadcast_to(2.0 * c, X0.shape).astype(dtype)
    lin = a_lin - 2.0 * ct
    live = (X0 > 0) & (Q > 0)
    x0 = jnp.where(live, X0, 1.0)
    q = jnp.where(live, Q, 1.0)
    K = q * x0 ** p
    tiny = jnp.finfo(dtype).tiny
    safe_c2 = jnp.where(c2 > 0, c2, 1.0)
    # Right end (g >= 0): the multiplicative update without the quadratic when lin > 0 (g there is 2c x), and
    # max(-lin, 0)/2c + (K/2c)^(1/(p+1)), where 2c x alone outweighs the other terms. Left end (g <= 0): where
    # K x^-p exceeds both 2|lin| and 2c x.
    mult = (K / jnp.where(lin > 0, lin, 1.0)) ** (1.0 / p)
    bound = jnp.maximum(-lin, 0.0) / safe_c2 + (K / safe_c2) ** (1.0 / (p + 1.0))
    hi = jnp.where(lin > 0, jnp.where(c2 > 0, jnp.minimum(mult, bound), mult), bound)
    lo = jnp.minimum((K / jnp.maximum(2.0 * jnp.abs(lin), tiny)) ** (1.0 / p),
                     jnp.where(c2 > 0, (K / (2.0 * safe_c2)) ** (1.0 / (p + 1.0)), jnp.inf))
    lo = jnp.minimum(lo, hi)

    def g_of(x):
        return lin + c2 * x - K * x ** (-p), c2 + p * K * x ** (-p - 1.0)

    def newton(_, carry):
        lo, hi, x = carry
        g, gp = g_of(x)
        lo, hi = jnp.where(g > 0, lo, x), jnp.where(g > 0, x, hi)
        step = x - g / gp
        x = jnp.where((step > lo) & (step < hi), step, jnp.sqrt(lo * hi))
        return lo, hi, x

    x = lax.fori_loop(0, _POWER_NEWTON, newton, (lo, hi, hi))[2]

    def surrogate(x):
        t = x / x0
        near_kl = jnp.abs(p - 1.0) < _P_EPS
        jensen = jnp.where(near_kl, -jnp.log(t), (t ** (1.0 - p) - 1.0) / jnp.where(near_kl, 1.0, p - 1.0))
        return lin * x + 0.5 * c2 * x * x + q * x0 * jensen

    x = jnp.where(surrogate(x) <= surrogate(x0), x, x0)
    closed = jnp.where(c2 > 0, jnp.maximum(-lin, 0.0) / safe_c2, jnp.zeros_like(lin))
    return jnp.where(live, x, closed).astype(dtype)


def _robust_weights(config, hyper, data, mu):
    """Half-quadratic weights ``s o min(1, delta/|a - mu|)`` (m, n) at the current model."""
    delta = hyper.delta
    z = jnp.abs(data.A - mu)
    w = delta / jnp.maximum(z, delta)
    if config.loss == "mae":
        w = w / (2.0 * delta)
    O = _observed(data)
    return w if O is None else w * O


def _weighted_grams(F, Wt):
    """``G_j = F diag(Wt[:, j]) F'`` for F (k, q), Wt (q, p) → (p, k, k) (no jitter: a weightless column has
    G = 0, which CD skips, so it keeps its warm start)."""
    k, q = F.shape
    outer = (F[:, None, :] * F[None, :, :]).reshape(k * k, q)
    return jnp.moveaxis(jnp.dot(outer, Wt, precision=_HIGHEST).reshape(k, k, -1), -1, 0)


def h0_sums(data, WT):
    """``(sum o a, sum_ij o_ij (W 1)_i)`` over these columns (sums over column blocks add up); their ratio is the
    constant start of H (``h0_fill``)."""
    colsum = jnp.sum(WT, axis=0)  # (m,): the model's row totals per unit of h
    n = data.shape[1]
    if isinstance(data, CooData):
        return jnp.sum(data.vals), n * jnp.sum(colsum)
    O = _observed(data)
    if O is None:
        return jnp.sum(data.A), n * jnp.sum(colsum)
    return jnp.sum(data.A * O), jnp.sum(colsum[:, None] * O)


def h0_fill(sums, WT, n, n_valid=None):
    """The constant start of H (k, n) for the multiplicative updates: the observed data's mean over the initial
    model's mean (so that ``sum mu`` matches ``sum a``), from ``h0_sums`` of every column. Columns from ``n_valid``
    on (a sharded A's padding) start at 0: with no data there, an update keeps its start, which must not enter
    the scaling d_H."""
    total, per = sums
    h0 = jnp.full((WT.shape[0], n), total / jnp.maximum(per, _tiny(WT)), WT.dtype)
    if n_valid is not None and n_valid < n:
        h0 = jnp.where(jnp.arange(n) < n_valid, h0, 0.0)
    return h0


def h_start(config, state, h0):
    """The current raw H ``diag(d) h`` (k, n) the H half starts from; ``h0`` (``h0_fill``) at the first iteration
    of a multiplicative (beta) update, which cannot leave zero."""
    E0 = state.d[:, None] * state.H
    return jnp.where(state.n_iter == 0, h0, E0) if config.loss in BETA else E0


def current_dispersion(config, hyper, state):
    """The NB size r (m,) the iteration starts from (None for the other losses)."""
    if config.loss != "nb":
        return None
    if config.dispersion == "fixed":
        return hyper.dispersion
    return jnp.where(state.n_iter == 0, hyper.dispersion, state.disp)


def h_update(config, hyper, WT, E0, data, r, G_TH=None, T=None):
    """The raw H (k, p) of these columns from the unit-scaled W' (k, m), majorized at their current raw H ``E0``
    (k, p): the MM step (beta) or the weighted NNLS warm-started at E0 (huber/mae). ``T``: target_H's columns of
    this block (default: the whole target)."""
    from ._step import h_solve

    if config.loss in BETA:
        if T is not None:
            hyper = dataclasses.replace(hyper, target_H=T)
        return _beta_factor(config, hyper, 1, WT, E0, data, r)
    wts = _robust_weights(config, hyper, data, _model(WT, E0))
    return h_solve(config, hyper, WT, _contract(WT, wts * data.A, 1), _weighted_grams(WT, wts), E0, E0,
                   jnp.ones((), bool), G_TH, T=T)


def w_stats(config, hyper, WT, X, data, r):
    """The W half's statistics from these columns' raw H X (k, p) (the H half's result: model ``mu = WT' X``,
    WT the unit-scaled W'): beta ``(Q, P)`` (k, m) each; huber/mae ``(X (w o a)', sum_j w_ij x_j x_j')``, (k, m)
    and (m, k, k). Sums over columns, so column blocks (chunks) add up; ``w_update`` divides by d_H."""
    if config.loss in BETA:
        return _beta_stats(config, hyper, 0, X, WT, data, r)
    wts = _robust_weights(config, hyper, data, _model(WT, X))
    return _contract(X, wts * data.A, 0), _weighted_grams(X, wts.T)


def w_update(config, hyper, state, d_H, H, stats, G_TW=None):
    """The W half → (d, unit-scaled W') from ``w_stats`` summed over every column and the H half's scaling: d_H
    (k,) and the unit-scaled H (k, n); ``state.W`` is the unit-scaled W' the H half used."""
    from ._penalties import group_scatter, scale_rows
    from ._step import scatter_penalties, w_half

    W0 = d_H[:, None] * state.W  # the current raw W' of the model (W, diag(d_H) h)
    scatter = scatter_penalties(config, hyper)
    if config.loss in BETA:
        Q, P = (s / d_H[:, None] for s in stats)
        W_scatter = None
        if scatter:
            c = sum(lam * group_scatter(H, Y) for lam, Y in scatter)[:, None]
            if config.norm == "L2":
                W_scatter = (c, jnp.zeros_like(W0))
            else:  # the tangent + m |w - w0|^2 bound of w_half, as m c |w - (W0 - s0/m)|^2
                m = W0.shape[1]
                s0 = jnp.sum(W0, axis=1, keepdims=True)
                W_scatter = (m * c, m * c * (W0 - s0 / m))
        return scale_rows(_beta_root(config, hyper, 0, W0, Q, P, W_scatter), config.norm)
    rhs, grams = stats
    rhs, grams = rhs / d_H[:, None], grams / (d_H[:, None] * d_H[None, :])
    # w_half warm-starts at state.W scaled by its d_H argument: pass the raw W0 with unit scales.
    d, W, _ = w_half(config, hyper, state._replace(W=W0), jnp.ones_like(d_H), H, rhs, grams, None, G_TW, None)
    return d, W


def objective(config, hyper, data, dWT, H, r):
    """The stated objective ``sum o D(a | mu)`` of the model (dWT (k, m) = diag(d) W', H (k, n))."""
    loss = config.loss
    if isinstance(data, CooData):
        mu_nz = jnp.maximum(jnp.sum(dWT[:, data.rows] * H[:, data.cols], axis=0), _floor(H))
        total_mu = jnp.dot(jnp.sum(dWT, axis=1), jnp.sum(H, axis=1), precision=_HIGHEST)
        return jnp.sum(_xlogy_ratio(jnp, data.vals, mu_nz) - data.vals) + total_mu
    mu = _model(dWT, H)
    Y = data.A
    w = entry_weights(jnp, loss, Y, _observed(data), hyper.power)
    rr = None if r is None else r[:, None]
    return jnp.sum(jnp.where(w > 0, w * entry_loss(jnp, jax.scipy.special.gammaln, loss, Y, mu, hyper.power,
                                                   hyper.delta, rr), 0.0))


def _nb_rows(Y, mu, O, s, per_row):
    r = jnp.exp(s)
    rr = r[:, None] if per_row else r
    e = _nb_nll(jnp, jax.scipy.special.gammaln, Y, jnp.maximum(mu, _floor(mu)), rr)
    e = e if O is None else e * O
    return jnp.sum(e, axis=1) if per_row else jnp.sum(e)


def nb_stats(config, data, mu, s, need_grad=True):
    """The NB NLL of these columns at the model mu (m, p) and log size s, per row (m,) or global (a scalar),
    with its first and second derivatives in s (None without ``need_grad``): sums over columns, so column blocks
    add up."""
    per_row = config.dispersion == "per_row"
    Y, O = data.A, _observed(data)

    def total(s):
        return jnp.sum(_nb_rows(Y, mu, O, s, per_row))

    nll = _nb_rows(Y, mu, O, s, per_row)
    if not need_grad:
        return nll, None, None
    return nll, jax.grad(total)(s), jax.jvp(jax.grad(total), (s,), (jnp.ones_like(s),))[1]


def newton_dispersion(config, stats, r):
    """Safeguarded Newton steps in log r on the NB NLL (per row or one global r); a step is kept only where it
    lowers the NLL, or where it is a Newton step (curvature > 0) shorter than ``_NB_SMALL_STEP``, a descent to
    second order, so the objective does not increase. ``stats(s, need_grad)``: ``nb_stats`` summed over every
    column (called ``_NB_NEWTON + 1`` times, the last without derivatives). r (m,) → r (m,)."""
    per_row = config.dispersion == "per_row"
    lo, hi = (jnp.log(jnp.asarray(v, r.dtype)) for v in NB_SIZE_RANGE)
    s = jnp.log(r) if per_row else jnp.log(r[0])
    current = stats(s, True)
    for i in range(_NB_NEWTON):
        nll, g, curv = current
        step = jnp.where(curv > 0, -g / jnp.where(curv > 0, curv, 1.0), -jnp.sign(g))
        cand = jnp.clip(s + jnp.clip(step, -2.0, 2.0), lo, hi)
        last = i + 1 == _NB_NEWTON
        trial = stats(cand, not last)
        # A Newton step below _NB_SMALL_STEP (curv > 0 there) descends to second order, and its NLL change can be
        # below the rounding of the NLL's sum: kept without the comparison, which would keep it or not by the order
        # of that sum (devices, chunks).
        small = (curv > 0) & (jnp.abs(cand - s) < _NB_SMALL_STEP)
        better = small | (trial[0] < nll)
        s = jnp.where(better, cand, s)
        if not last:
            current = tuple(jnp.where(better, a, b) for a, b in zip(trial, current, strict=True))
    s = lax.stop_gradient(s)
    return jnp.exp(s) if per_row else jnp.full(r.shape, jnp.exp(s), r.dtype)


def update_dispersion(config, data, mu, r):
    """``newton_dispersion`` on in-memory data at the model mu (m, n). r (m,) → r (m,)."""
    return newton_dispersion(config, lambda s, need_grad: nb_stats(config, data, mu, s, need_grad), r)


def advance_loss(state, W, H, d, value, tol, patience_limit, r):
    """``advance`` for a loss fit, carrying the estimated NB size r."""
    from ._step import advance

    new = advance(state, W, H, d, value, tol, patience_limit)
    return new._replace(disp=r) if state.disp is not None else new


def loss_step(problem: Any, state: Any, G_TH: jax.Array | None = None, G_TW: jax.Array | None = None) -> Any:
    """One outer iteration for a non-MSE loss: H half, W half (each a majorize-minimize step at the current model),
    the NB dispersion, the objective, ``advance``. ``nmf_chunked`` runs the same pieces over column chunks."""
    from ._penalties import group_scatter, scale_rows
    from ._step import scatter_penalties

    config, hyper, data = problem.config, problem.hyper, problem.data
    r = current_dispersion(config, hyper, state)
    WT = state.W  # unit-scaled W' (the raw initial W' at the first iteration)
    h0 = h0_fill(h0_sums(data, WT), WT, data.shape[1], getattr(data, "n_valid", None)) if config.loss in BETA else None
    E0 = h_start(config, state, h0)
    X = h_update(config, hyper, WT, E0, data, r, G_TH)
    d_H, H = scale_rows(X, config.norm)
    d, W = w_update(config, hyper, state, d_H, H, w_stats(config, hyper, WT, X, data, r), G_TW)
    dWT = d[:, None] * W
    if config.loss == "nb" and config.dispersion != "fixed":
        r = update_dispersion(config, data, _model(dWT, H), r)
    value = objective(config, hyper, data, dWT, H, r)
    scatter = scatter_penalties(config, hyper)
    if scatter:
        value = value + jnp.sum(d * d * sum(lam * group_scatter(H, Y) for lam, Y in scatter))
    return advance_loss(state, W, H, d, value, hyper.tol, config.patience, r)


def init_disp(config: Any, m: int, dtype: Any) -> jax.Array | None:
    """The dispersion carried by the state: (m,) for an estimated NB size, else None."""
    if config.loss == "nb" and config.dispersion != "fixed":
        return jnp.full((m,), NB_SIZE_INIT, dtype)
    return None


# evaluate --------------------------------------------------------------------------------------------------------

def evaluate_loss(W: np.ndarray, H: np.ndarray, A: Any, ignore: np.ndarray | None, loss: str, power: Any = None,
                  delta: Any = None, dispersion: Any = None) -> float:
    """``sum o D(a | w diag(d) h)`` in float64 for ``evaluate(model, A, loss=...)`` (W already carries d)."""
    from scipy.special import gammaln

    opts = dataclasses.make_dataclass("O", [("loss", str), ("power", Any), ("delta", Any), ("dispersion", Any),
                                            ("robust", Any), ("loss_mode", str), ("solver", str)])(
        loss, power, delta, dispersion, False, "jnmf", "auto")
    spec = check_loss(opts)
    loss = spec.loss
    m = W.shape[0]
    if loss == "poisson" and sp.issparse(A) and ignore is None:
        coo = sp.coo_matrix(A)
        coo.sum_duplicates()
        mu = np.maximum(np.einsum("ik,ik->i", W[coo.row], H.T[coo.col]), mu_floor(np, np.float64))
        return float(np.sum(_xlogy_ratio(np, coo.data, mu) - coo.data) + W.sum(axis=0) @ H.sum(axis=1))
    Y = A.toarray() if sp.issparse(A) else np.asarray(A, np.float64)
    Y = np.where(np.isnan(Y), 0.0, Y) if ignore is not None else Y
    mu = W @ H
    obs = None if ignore is None else (~ignore).astype(np.float64)
    w = entry_weights(np, loss, Y, obs, np.float64(spec.power) if spec.power is not None else None)
    r = None
    if loss == "nb":
        if spec.dispersion is None:
            r = _profile_dispersion(Y, mu, obs, spec.dispersion_mode == "per_row")
        else:
            r = np.broadcast_to(spec.dispersion, (m,))
        r = r[:, None]
    with np.errstate(all="ignore"):
        e = entry_loss(np, gammaln, loss, Y, mu, spec.power, spec.delta, r)
    return float(np.sum(np.where(w > 0, w * e, 0.0)))


def _profile_dispersion(Y, mu, obs, per_row):
    """The maximum-likelihood NB size per row (or one global) at a fixed model, by golden-section search in log r
    over ``NB_SIZE_RANGE`` (float64, host)."""
    from scipy.special import gammaln

    mu = np.maximum(mu, mu_floor(np, np.float64))

    def nll(s):
        r = np.exp(s)
        e = _nb_nll(np, gammaln, Y, mu, r[:, None] if per_row else r)
        e = e if obs is None else e * obs
        return e.sum(axis=1) if per_row else e.sum()

    lo, hi = np.log(NB_SIZE_RANGE[0]), np.log(NB_SIZE_RANGE[1])
    shape = (Y.shape[0],) if per_row else ()
    a, b = np.full(shape, lo), np.full(shape, hi)
    g = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        c, d = b - g * (b - a), a + g * (b - a)
        left = nll(c) < nll(d)
        a, b = np.where(left, a, c), np.where(left, d, b)
    return np.broadcast_to(np.exp((a + b) / 2), (Y.shape[0],))


# Placement and overrides ------------------------------------------------------------------------------------------

def place_loss_data(A: Any, plan: Any, mask: np.ndarray | None) -> Any:
    """The data of a non-MSE fit: dense (with the mask, if any), or ``CooData`` for sparse poisson input with
    ``layout="sparse"``, or ``"auto"`` when the dense working set exceeds the memory budget; the other losses need
    every entry's model. With ``devices``: dense, its columns split over the mesh (``shard_columns``; its padding
    columns count as unobserved, ``_observed``)."""
    from ._data import DenseData, choose_layout, estimate_memory, memory_budget, place, prepare_data

    loss = plan.config.loss
    k = plan.config.k
    if mask is not None:
        return prepare_data(A, plan.dtype, "dense", mask=mask, k=k)
    if plan.devices is not None and plan.layout != "sparse":
        return place(A, plan.dtype, "dense", None, k, plan.devices, plan.max_memory_bytes)
    if loss == "poisson" and plan.devices is not None:
        raise ValueError("layout='sparse' with devices: loss='poisson' keeps sparse input sparse (CooData) on one "
                         "device only; sharded fits with a loss use the dense layout, split by columns (use "
                         "layout='auto' or 'dense', or drop devices=)")
    if loss == "poisson":
        # "auto": dense whenever its working set fits the budget (the stored-entry gathers of CooData ran 4x slower
        # per iteration than the dense products on hawaiibirds on CPU, experiments/bench_losses.py), else sparse.
        itemsize = np.dtype(plan.dtype).itemsize
        layout = plan.layout
        if layout == "auto":
            budget = memory_budget() if plan.max_memory_bytes is None else plan.max_memory_bytes
            dense_fits = estimate_memory(*A.shape, k, layout="dense", dtype=plan.dtype) <= budget
            layout = "dense" if dense_fits or not sp.issparse(A) else "sparse"
        layout = choose_layout(A, layout, itemsize, k, plan.max_memory_bytes, "host")
        if layout == "sparse":
            return coo_data(A, plan.dtype)
        return DenseData(jnp.asarray(A.toarray() if sp.issparse(A) else A, plan.dtype))
    if plan.layout == "sparse":
        raise ValueError(f"layout='sparse' is not available for loss={loss!r}: its updates need the model at every "
                         "entry (zeros included), so it uses the dense layout; use layout='auto' or 'dense' (only "
                         "loss='poisson' keeps sparse input sparse)")
    return prepare_data(A, plan.dtype, "dense", k=k, max_memory_bytes=plan.max_memory_bytes)


def check_loss_overrides(config: Any, hyper: Any, power: Any = None, delta: Any = None,
                         dispersion: Any = None) -> Any:
    """``hyper`` with ``solve(problem, power=, delta=, dispersion=)`` applied; concrete values are checked as
    ``prepare`` checks them, traced ones (vmap, grad) are taken as they are."""
    dtype = hyper.tol.dtype
    changes = {}
    for name, value, applies in (("power", power, config.loss == "tweedie"),
                                 ("delta", delta, config.loss in ROBUST),
                                 ("dispersion", dispersion, config.loss == "nb" and config.dispersion == "fixed")):
        if value is None:
            continue
        if not applies:
            raise ValueError(f"{name} override given but the problem's loss is {config.loss!r}"
                             + (" with an estimated dispersion" if name == "dispersion" and config.loss == "nb"
                                else "") + f"; prepare it with the loss {name} applies to")
        concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(value))
        if concrete:
            v = np.asarray(value, np.float64)
            if name == "power" and (v.ndim or not POWER_RANGE[0] <= float(v) <= POWER_RANGE[1]):
                raise ValueError(f"power must be a scalar in [{POWER_RANGE[0]:g}, {POWER_RANGE[1]:g}], got {value!r}")
            if name == "delta" and (v.ndim or not float(v) > 0):
                raise ValueError(f"delta must be a scalar > 0, got {value!r}")
            if name == "dispersion" and (v.ndim > 1 or not np.all(v > 0) or not np.all(np.isfinite(v))):
                raise ValueError(f"dispersion must be a size r > 0 or an (m,) array of sizes > 0, got {value!r}")
        new = jnp.asarray(value, dtype)
        changes[name] = jnp.broadcast_to(new, hyper.dispersion.shape) if name == "dispersion" else new
    return dataclasses.replace(hyper, **changes) if changes else hyper
