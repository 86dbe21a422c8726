"""Integrative NMF (LIGER's iNMF, Welch et al. 2019) on the project's NNLS kernels, and LIGER's quantile alignment.

Each batch i has its own matrix A_i (m, n_i) over the same m features, factorized with a shared W (m, k),
a batch-specific V_i (m, k) and batch loadings H_i (k, n_i), all non-negative, minimising

    sum_i |A_i - (W + V_i) H_i|_F^2 + lambda sum_i |V_i H_i|_F^2.

One outer iteration is LIGER's block order (rliger ``optimizeALS``, pyliger ``optimize_ALS``): every H_i (the
stacked problem ``[W + V_i; sqrt(lambda) V_i] h = [a; 0]``), then every V_i (``[H_i'; sqrt(lambda) H_i'] v =
[a_r - H_i' w_r; 0]`` per feature r), then W (``[H_1'; ...; H_b'] w = [a_1r - H_1' v_1r; ...]``). Each block is
an exact NNLS solved by the project's coordinate descent ``nnls_cd`` on its normal equations (Gram matrix and
right-hand side; the stacked matrices are never formed), warm-started at the current block, so every block
update, and hence every iteration, cannot increase the objective (a CD sweep minimises one coordinate at a time
exactly). Batches are a leading axis: every A_i is padded with zero columns to n_max = max n_i, and the padded
columns of H_i stay exactly 0 (their right-hand side is 0 and CD starts them at 0), so each block is one
vmapped call and a grid over lambda or initial factors is one more ``vmap`` of the whole jit-compiled fit.

Functional use (what ``inmf`` does)::

    problem = prepare_inmf(As, k, seed=1)                                    # validated, outside jit
    model = solve_inmf(problem, lambda_=5.0)                                 # jit-compiled
    models = jax.vmap(lambda lam: solve_inmf(problem, lambda_=lam))(lams)    # one compile, batched
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from . import _validate as V
from ._data.placement import _DENSE_ENTRIES
from ._input import _DENSE_BYTES_LIMIT, split_mask, squared_norm
from ._nnls import nnls_cd, nnls_step
from ._options import LOOPS, check_dtype
from ._penalties import GRAM_JITTER
from ._rrng import r_runif

# Density from which "auto" densifies sparse batches: nmf()'s CPU crossover when it was measured (14%); iNMF's
# padded-COO products were not timed against it separately.
_INMF_DENSE_DENSITY = 0.14

_HIGHEST = lax.Precision.HIGHEST
LAYOUTS = ("auto", "dense", "sparse")


# ----------------------------------------------------------------------------------------------------------------
# data: the b batches as one padded leading axis
# ----------------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class INMFDense:
    """The batches as one dense (b, m, n_max) array, zero in padded columns (and at masked entries).

    ``mask`` (b, m, n_max), True = ignore, is given for masked fits only (padded columns are masked there).
    """

    A: jax.Array
    mask: jax.Array | None = None

    def left(self, F: jax.Array) -> jax.Array:
        """``F_i' A_i`` for F (b, m, k) → (b, k, n_max)."""
        return jnp.einsum("bmk,bmn->bkn", F, self.A, precision=_HIGHEST)

    def right(self, H: jax.Array) -> jax.Array:
        """``A_i H_i'`` for H (b, k, n_max) → (b, m, k)."""
        return jnp.einsum("bmn,bkn->bmk", self.A, H, precision=_HIGHEST)

    def observed(self) -> jax.Array:
        return jnp.logical_not(self.mask).astype(self.A.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class INMFSparse:
    """The batches as padded COO triplets (b, nnz_max): O(nnz k) products by scatter-adds, never dense.

    Padding triplets have value 0 (at row 0, column 0), so they add nothing.
    """

    rows: jax.Array
    cols: jax.Array
    vals: jax.Array
    m: int = dataclasses.field(metadata=dict(static=True))
    n_max: int = dataclasses.field(metadata=dict(static=True))

    mask = None

    def left(self, F: jax.Array) -> jax.Array:
        def one(r, c, v, f):
            return jnp.zeros((self.n_max, f.shape[1]), f.dtype).at[c].add(v[:, None] * f[r]).T

        return jax.vmap(one)(self.rows, self.cols, self.vals, F)

    def right(self, H: jax.Array) -> jax.Array:
        def one(r, c, v, h):
            return jnp.zeros((self.m, h.shape[0]), h.dtype).at[r].add(v[:, None] * h.T[c])

        return jax.vmap(one)(self.rows, self.cols, self.vals, H)


@dataclasses.dataclass(frozen=True)
class INMFConfig:
    """Static structure of an iNMF fit; changing a field compiles a new program."""

    k: int
    n: tuple[int, ...]
    maxit: int = 30
    patience: int = 5
    cd_maxit: int = 100
    loop: str = "while"
    masked: bool = False


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class INMFProblem:
    """Everything an iNMF fit needs; arrays are leaves (``lambda_``, ``tol``, inits: vmappable), ``config`` static."""

    data: INMFDense | INMFSparse
    lambda_: jax.Array
    tol: jax.Array
    cd_tol: jax.Array
    w_init: jax.Array  # (m, k)
    v_init: jax.Array  # (b, m, k)
    h_init: jax.Array  # (b, k, n_max), zero in padded columns
    sq_norm: jax.Array  # (b,) |A_i|^2 over observed entries
    config: INMFConfig = dataclasses.field(metadata=dict(static=True))

    def replace(self, **changes: Any) -> INMFProblem:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class INMFModel:
    """A fitted iNMF ``A_i ≈ (w + v[i]) h_i``; every field is an array, so models batch under ``vmap``.

    Attributes:
        w: (m, k) shared feature loadings W.
        v: (b, m, k) batch-specific feature loadings V_i.
        h: (b, k, n_max) batch sample loadings H_i, zero-padded to the largest batch; ``h_list()`` trims them.
        n: (b,) number of samples of each batch.
        lambda_: () the penalty the model was fitted with.
        iter: () outer iterations performed.
        loss: () last objective ``sum_i |A_i - (W+V_i)H_i|^2 + lambda sum_i |V_i H_i|^2`` (observed entries only
            in the data term of a masked fit).
        loss_history: (maxit,) objective after each iteration, NaN after the last.
        converged: () whether the relative objective change stayed below ``tol`` for ``patience`` iterations.
        tol: () last relative objective change.
    """

    w: jax.Array
    v: jax.Array
    h: jax.Array
    n: jax.Array
    lambda_: jax.Array
    iter: jax.Array
    loss: jax.Array
    loss_history: jax.Array
    converged: jax.Array
    tol: jax.Array

    @property
    def k(self) -> int:
        return int(self.w.shape[-1])

    def replace(self, **changes: Any) -> INMFModel:
        return dataclasses.replace(self, **changes)

    def _single(self, what: str) -> None:
        if self.w.ndim != 2:
            raise ValueError(f"{what}: this model holds a grid of {self.w.shape[:-2]} fits; index one first, "
                             "e.g. jax.tree.map(lambda x: x[0], model)")

    def h_list(self) -> list[np.ndarray]:
        """The H_i as numpy arrays (k, n_i), padding removed."""
        self._single("h_list")
        h = np.asarray(self.h)
        return [h[i, :, :n_i] for i, n_i in enumerate(np.asarray(self.n).tolist())]

    def reconstruct(self, i: int) -> jax.Array:
        """The dense (m, n_i) reconstruction ``(w + v[i]) h_i`` of batch i."""
        self._single("reconstruct")
        n_i = int(np.asarray(self.n)[i])
        return (self.w + self.v[i]) @ self.h[i, :, :n_i]

    def embedding(self, aligned: bool = True, **quantile_options: Any) -> np.ndarray:
        """The (sum n_i, k) sample embedding, batches stacked in order: ``quantile_norm`` of the H_i (LIGER's
        integrated embedding; ``quantile_options`` are passed on), or the raw ``H_i'`` with ``aligned=False``."""
        if not aligned:
            if quantile_options:
                raise TypeError("quantile options only apply with aligned=True")
            return np.concatenate([h.T for h in self.h_list()], axis=0)
        return quantile_norm(self, **quantile_options)

    def __repr__(self) -> str:
        shape = f"m={self.w.shape[-2]}, batches={self.v.shape[-3]}, k={self.w.shape[-1]}"
        if self.w.ndim != 2:
            return f"INMFModel({shape}, grid={self.w.shape[:-2]})"
        status = "converged" if bool(self.converged) else "not converged"
        return (f"INMFModel({shape}, n={np.asarray(self.n).tolist()}, lambda={float(self.lambda_):g}, "
                f"iter={int(self.iter)}, loss={float(self.loss):.6g}, {status})")


# ----------------------------------------------------------------------------------------------------------------
# the block updates (pure; shared by the driver and the tests)
# ----------------------------------------------------------------------------------------------------------------


def _t(X: jax.Array) -> jax.Array:
    return jnp.swapaxes(X, -1, -2)


def _gram_kk(X: jax.Array, Y: jax.Array, spec: str) -> jax.Array:
    return jnp.einsum(spec, X, Y, precision=_HIGHEST)


def _cd(G, B, X0, config, cd_tol):
    """``nnls_cd`` over the batch axis: G (b, k, k), B and X0 (b, k, p)."""
    solve = functools.partial(nnls_cd, cd_maxit=config.cd_maxit, cd_tol=cd_tol, differentiable=config.loop == "scan")
    return jax.vmap(solve)(G, B, X0)


def _cd_columns(Gs, B, X0, config, cd_tol):
    """Masked NNLS: column j of batch i solves with its own Gram matrix ``Gs[i, j]`` (b, p, k, k)."""
    solve = functools.partial(nnls_step, cd_maxit=config.cd_maxit, cd_tol=cd_tol, differentiable=config.loop == "scan")
    per_batch = jax.vmap(solve, in_axes=(0, 1, 1), out_axes=1)
    return jax.vmap(per_batch)(Gs, B, X0)


def _masked_grams(F: jax.Array, O: jax.Array) -> jax.Array:
    """``G_j = sum_r O_rj F[r]' F[r]`` for F (b, q, k), O (b, q, p) → (b, p, k, k).

    One (k*k, q) x (q, p) GEMM per batch of the row outer products with the observation weights (as the engine's
    masked Gram matrices), so no (q, p, k, k) intermediate is formed."""
    b, q, k = F.shape
    outer = (F[..., :, None] * F[..., None, :]).reshape(b, q, k * k)
    return jnp.einsum("bqz,bqp->bpz", outer, O, precision=_HIGHEST).reshape(b, O.shape[-1], k, k)


def _eye(k: int, dtype: Any) -> jax.Array:
    return GRAM_JITTER * jnp.eye(k, dtype=dtype)


def update_h(data, W, V, H, lam, config, cd_tol):
    """All H_i: ``min_{H_i >= 0} |A_i - (W + V_i) H_i|^2 + lam |V_i H_i|^2``, i.e. NNLS with the stacked matrix
    ``[W + V_i; sqrt(lam) V_i]``: ``G_i = (W+V_i)'(W+V_i) + lam V_i'V_i``, ``B_i = (W+V_i)' A_i`` (k, n_max)."""
    F = W[None] + V
    k, dtype = W.shape[1], W.dtype
    pen = lam * _gram_kk(V, V, "bmk,bml->bkl")
    B = data.left(F)
    if not config.masked:
        G = _gram_kk(F, F, "bmk,bml->bkl") + pen + _eye(k, dtype)
        return _cd(G, B, H, config, cd_tol)
    # The penalty acts on the factors (all entries of V_i H_i), the data term on observed entries only.
    Gs = _masked_grams(F, data.observed()) + pen[:, None] + _eye(k, dtype)
    return _cd_columns(Gs, B, H, config, cd_tol)


def update_v(data, W, V, H, lam, config, cd_tol, P=None):
    """All V_i: ``min_{V_i >= 0} |A_i - W H_i - V_i H_i|^2 + lam |V_i H_i|^2`` (stacked ``[H_i'; sqrt(lam) H_i']``):
    ``G_i = (1 + lam) H_i H_i'``, ``B_i = H_i A_i' - H_i H_i' W'`` (k, m). ``P = A_i H_i'`` (b, m, k) if known."""
    k, dtype = W.shape[1], W.dtype
    P = data.right(H) if P is None else P
    Q = _gram_kk(H, H, "bkn,bln->bkl")
    if not config.masked:
        G = (1 + lam) * Q + _eye(k, dtype)
        B = _t(P) - jnp.einsum("bkl,ml->bkm", Q, W, precision=_HIGHEST)
        return _t(_cd(G, B, _t(V), config, cd_tol))
    Gm = _masked_grams(_t(H), _t(data.observed()))  # (b, m, k, k): H_i diag(o_ir) H_i'
    Gs = Gm + lam * Q[:, None] + _eye(k, dtype)
    B = _t(P) - _t(jnp.einsum("bmkl,ml->bmk", Gm, W, precision=_HIGHEST))
    return _t(_cd_columns(Gs, B, _t(V), config, cd_tol))


def update_w(data, W, V, H, config, cd_tol, P=None):
    """W: ``min_{W >= 0} sum_i |A_i - V_i H_i - W H_i|^2`` (stacked ``[H_1'; ...; H_b']``):
    ``G = sum_i H_i H_i'``, ``B = sum_i (H_i A_i' - H_i H_i' V_i')`` (k, m). ``P = A_i H_i'`` if known."""
    k, dtype = W.shape[1], W.dtype
    P = data.right(H) if P is None else P
    if not config.masked:
        Q = _gram_kk(H, H, "bkn,bln->bkl")
        G = jnp.sum(Q, axis=0) + _eye(k, dtype)
        B = jnp.sum(_t(P) - jnp.einsum("bkl,bml->bkm", Q, V, precision=_HIGHEST), axis=0)
        return _cd(G[None], B[None], W.T[None], config, cd_tol)[0].T
    Gm = _masked_grams(_t(H), _t(data.observed()))
    Gs = jnp.sum(Gm, axis=0) + _eye(k, dtype)
    B = jnp.sum(_t(P) - _t(jnp.einsum("bmkl,bml->bmk", Gm, V, precision=_HIGHEST)), axis=0)
    return _cd_columns(Gs[None], B[None], W.T[None], config, cd_tol)[0].T


def objective(data, sq_norm, W, V, H, lam, config, P=None):
    """``sum_i |A_i - (W+V_i)H_i|^2 + lam sum_i |V_i H_i|^2``. Unmasked: by the Gram identity from ``P = A_i H_i'``
    and ``H_i H_i'`` (no m x n product); masked: the data term over observed entries, formed directly."""
    Q = _gram_kk(H, H, "bkn,bln->bkl")
    pen = lam * jnp.sum(_gram_kk(V, V, "bmk,bml->bkl") * Q)
    F = W[None] + V
    if config.masked:
        resid = data.A - jnp.einsum("bmk,bkn->bmn", F, H, precision=_HIGHEST)
        return jnp.sum(data.observed() * resid * resid) + pen
    P = data.right(H) if P is None else P
    fit = jnp.sum(sq_norm) - 2 * jnp.sum(F * P) + jnp.sum(_gram_kk(F, F, "bmk,bml->bkl") * Q)
    return fit + pen


# ----------------------------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------------------------


class INMFState(NamedTuple):
    W: jax.Array  # (m, k)
    V: jax.Array  # (b, m, k)
    H: jax.Array  # (b, k, n_max)
    loss: jax.Array
    rel: jax.Array
    patience: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    history: jax.Array  # (maxit,)


def inmf_step(problem: INMFProblem, state: INMFState) -> INMFState:
    """One outer iteration in LIGER's order: every H_i, every V_i, then W; the objective; convergence bookkeeping."""
    config, data, lam, cd_tol = problem.config, problem.data, problem.lambda_, problem.cd_tol
    H = update_h(data, state.W, state.V, state.H, lam, config, cd_tol)
    P = data.right(H)  # A_i H_i' serves the V and W updates and the objective: H does not change after this
    V = update_v(data, state.W, state.V, H, lam, config, cd_tol, P)
    W = update_w(data, state.W, V, H, config, cd_tol, P)
    loss = objective(data, problem.sq_norm, W, V, H, lam, config, P)
    # RcppML's rule, as nmf: relative change of the objective below tol on `patience` consecutive iterations.
    rel = jnp.abs(state.loss - loss) / (jnp.abs(state.loss) + 1e-15)
    rel = jnp.where(state.n_iter >= 1, rel, jnp.asarray(jnp.inf, loss.dtype))
    patience = jnp.where(rel < problem.tol, state.patience + 1, jnp.zeros_like(state.patience))
    history = state.history.at[state.n_iter].set(loss)
    return INMFState(W, V, H, loss, rel, patience, state.n_iter + 1, patience >= config.patience, history)


def _running(state: INMFState, maxit: int) -> jax.Array:
    return (state.n_iter < maxit) & ~state.converged & jnp.isfinite(state.loss)


@jax.jit
def _solve_jit(problem: INMFProblem) -> INMFModel:
    config = problem.config
    dtype = problem.w_init.dtype
    state = INMFState(
        W=problem.w_init, V=problem.v_init, H=problem.h_init,
        loss=jnp.zeros((), dtype), rel=jnp.asarray(jnp.inf, dtype), patience=jnp.zeros((), jnp.int32),
        n_iter=jnp.zeros((), jnp.int32), converged=jnp.zeros((), bool),
        history=jnp.full((config.maxit,), jnp.nan, dtype))
    if config.loop == "while":
        state = lax.while_loop(lambda s: _running(s, config.maxit), lambda s: inmf_step(problem, s), state)
    else:
        def body(s, _):
            new = inmf_step(problem, s)
            keep = _running(s, config.maxit)
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, s), None

        state, _ = lax.scan(body, state, None, length=config.maxit)
    return INMFModel(w=state.W, v=state.V, h=state.H, n=jnp.asarray(config.n, jnp.int32), lambda_=problem.lambda_,
                     iter=state.n_iter, loss=state.loss, loss_history=state.history, converged=state.converged,
                     tol=state.rel)


def solve_inmf(problem: INMFProblem, *, lambda_: Any = None, tol: Any = None, w_init: Any = None,
               v_init: Any = None, h_init: Any = None) -> INMFModel:
    """Run a prepared iNMF fit; the overrides replace array leaves (they may be traced: vmap over lambda_ or inits).

    ``w_init`` (m, k), ``v_init`` (b, m, k), ``h_init`` (b, k, n_max) as arrays (h zero in padded columns).
    Jit-compiled once per ``INMFConfig`` and array shapes.
    """
    dtype = problem.w_init.dtype
    changes = {}
    for name, value in (("lambda_", lambda_), ("tol", tol), ("w_init", w_init), ("v_init", v_init),
                        ("h_init", h_init)):
        if value is not None:
            changes[name] = jnp.asarray(value, dtype)
    if h_init is not None:  # padded columns must stay exactly zero
        changes["h_init"] = changes["h_init"] * _valid_columns(problem.config, dtype)[:, None, :]
    return _solve_jit(problem.replace(**changes) if changes else problem)


def _valid_columns(config: INMFConfig, dtype: Any) -> jax.Array:
    n_max = max(config.n)
    return jnp.asarray(np.arange(n_max)[None, :] < np.asarray(config.n)[:, None], dtype)


# ----------------------------------------------------------------------------------------------------------------
# validation and set-up (outside jit)
# ----------------------------------------------------------------------------------------------------------------


def _as_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"{name} must be a list or tuple of matrices (one per batch, features x samples), "
                    f"got {type(value).__name__}")


def _check_batches(As: Any, masks: Any, itemsize: int, layout: str) -> tuple[list[Any], list[Any]]:
    As = _as_list(As, "As")
    if not As:
        raise ValueError("As is empty; give at least one batch matrix (features x samples)")
    if masks is None:
        masks = [None] * len(As)
    else:
        masks = _as_list(masks, "masks")
        if len(masks) != len(As):
            raise ValueError(f"masks has {len(masks)} entries, expected {len(As)} (one per batch of As, or None)")
    out, out_masks = [], []
    for i, (A, M) in enumerate(zip(As, masks, strict=True)):
        A, M = split_mask(A, M, itemsize, layout, mask_name=f"masks[{i}]")
        A = V.check_data(A, f"As[{i}]")
        if i and A.shape[0] != out[0].shape[0]:
            raise ValueError(f"As[{i}] has {A.shape[0]} rows, expected {out[0].shape[0]} (the features of As[0])")
        out.append(A)
        out_masks.append(M)
    return out, out_masks


def _choose_layout(As: list[Any], layout: str, masked: bool, n_max: int) -> str:
    if masked:
        if layout == "sparse":
            raise ValueError("masked fits (masks, or NaN entries in As) use the dense layout; got layout='sparse'")
        return "dense"
    if layout != "auto":
        return layout
    if not all(sp.issparse(A) for A in As):
        return "dense"
    m = As[0].shape[0]
    entries = len(As) * m * n_max
    nnz = sum(int(A.nnz) for A in As)
    # The scatter-add products cost more per non-zero than the host CSR kernel of nmf: densify from its density.
    return "dense" if entries <= _DENSE_ENTRIES or nnz >= _INMF_DENSE_DENSITY * entries else "sparse"


def _build_data(As, Ms, layout, dtype, n_max):
    m, b = As[0].shape[0], len(As)
    if layout == "dense":
        if b * m * n_max * np.dtype(dtype).itemsize > _DENSE_BYTES_LIMIT:
            raise MemoryError(f"layout='dense': the padded batches ({b} x {m} x {n_max}) exceed "
                              f"{_DENSE_BYTES_LIMIT / 2**30:.0f} GiB; use sparse input with layout='sparse'")
        A = np.zeros((b, m, n_max), dtype)
        for i, Ai in enumerate(As):
            A[i, :, :Ai.shape[1]] = Ai.toarray() if sp.issparse(Ai) else np.asarray(Ai)
        if not any(M is not None for M in Ms):
            return INMFDense(jnp.asarray(A))
        mask = np.ones((b, m, n_max), bool)  # padded columns are masked
        for i, (Ai, M) in enumerate(zip(As, Ms, strict=True)):
            mask[i, :, :Ai.shape[1]] = False if M is None else M
        return INMFDense(jnp.asarray(A), jnp.asarray(mask))
    coos = [sp.coo_matrix(Ai) for Ai in As]
    nnz = max(1, max(c.nnz for c in coos))
    rows = np.zeros((b, nnz), np.int32)
    cols = np.zeros((b, nnz), np.int32)
    vals = np.zeros((b, nnz), dtype)
    for i, c in enumerate(coos):
        rows[i, :c.nnz], cols[i, :c.nnz], vals[i, :c.nnz] = c.row, c.col, c.data
    return INMFSparse(jnp.asarray(rows), jnp.asarray(cols), jnp.asarray(vals), m=m, n_max=n_max)


def initial_factors(seed: Any, m: int, n: tuple[int, ...], k: int, dtype: Any = np.float64):
    """Initial (W (m, k), V (b, m, k), H (b, k, n_max)), each entry uniform on [0, 2).

    An int follows rliger's ``optimizeALS``: ``set.seed(seed)`` then ``runif`` for W (k x m), each V_i (k x m),
    each H_i (n_i x k), in that order, column-major (R's generator, ``r_runif``). A ``jax.random`` key draws them
    with ``jax.random.uniform``. ``None``: a fresh int seed from numpy's entropy.
    """
    b, n_max = len(n), max(n)
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31 - 1))
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError("seed must be an integer or a jax.random key, got a bool")
    if isinstance(seed, (int, np.integer)):
        u = 2.0 * r_runif(int(seed), m * k * (1 + b) + k * sum(n))
        W = u[: m * k].reshape(m, k)  # R's k x m column-major fill, transposed
        V_ = u[m * k: m * k * (1 + b)].reshape(b, m, k)
        H = np.zeros((b, k, n_max))
        off = m * k * (1 + b)
        for i, n_i in enumerate(n):
            H[i, :, :n_i] = u[off: off + k * n_i].reshape(k, n_i)  # R's n_i x k column-major fill, transposed
            off += k * n_i
        return W.astype(dtype), V_.astype(dtype), H.astype(dtype)
    if isinstance(seed, jax.Array) and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
        kw, kv, kh = jax.random.split(seed, 3)
        H = np.asarray(jax.random.uniform(kh, (b, k, n_max), dtype, 0.0, 2.0))
        H = H * (np.arange(n_max)[None, :] < np.asarray(n)[:, None])[:, None, :]
        return (np.asarray(jax.random.uniform(kw, (m, k), dtype, 0.0, 2.0)),
                np.asarray(jax.random.uniform(kv, (b, m, k), dtype, 0.0, 2.0)), H.astype(dtype))
    raise TypeError(f"seed must be an integer, a jax.random key or None, got {type(seed).__name__}")


def _check_inits(w_init, v_init, h_init, m, n, k):
    b, n_max = len(n), max(n)
    W = None if w_init is None else V.check_matrix(w_init, "w_init", (m, k), nonneg=True)
    Vs = None
    if v_init is not None:
        items = list(v_init) if isinstance(v_init, (list, tuple)) or np.ndim(v_init) == 3 else None
        if items is None or len(items) != b:
            raise ValueError(f"v_init must hold {b} matrices of shape {(m, k)} (one per batch)")
        Vs = np.stack([V.check_matrix(x, f"v_init[{i}]", (m, k), nonneg=True) for i, x in enumerate(items)])
    H = None
    if h_init is not None:
        items = list(h_init) if isinstance(h_init, (list, tuple)) else None
        if items is None or len(items) != b:
            raise ValueError(f"h_init must be a list of {b} matrices (k, n_i), one per batch")
        H = np.zeros((b, k, n_max))
        for i, x in enumerate(items):
            H[i, :, :n[i]] = V.check_matrix(x, f"h_init[{i}]", (k, n[i]), nonneg=True)
    return W, Vs, H


def prepare_inmf(
    As: Any,
    k: int,
    *,
    lambda_: Any = 5.0,
    seed: Any = None,
    tol: float = 1e-6,
    maxit: int = 30,
    patience: int = 5,
    w_init: Any = None,
    v_init: Any = None,
    h_init: Any = None,
    cd_maxit: int = 100,
    cd_tol: float = 1e-8,
    masks: Any = None,
    layout: str = "auto",
    loop: str = "while",
    dtype: Any = None,
) -> INMFProblem:
    """Validate the arguments of ``inmf`` (same meaning; ``lambda_`` a scalar) and build an ``INMFProblem``."""
    dtype = check_dtype(dtype)
    V.check_choice(layout, "layout", LAYOUTS)
    V.check_choice(loop, "loop", LOOPS)
    As, Ms = _check_batches(As, masks, dtype.itemsize, layout)
    m = As[0].shape[0]
    n = tuple(int(A.shape[1]) for A in As)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if not 1 <= int(k) <= min(m, max(n)):
        raise ValueError(f"k must satisfy 1 <= k <= min(m, largest batch) = {min(m, max(n))}, got {k}")
    k = int(k)
    lam = V.check_real(lambda_, "lambda_", low=0.0)
    tol = V.check_real(tol, "tol", low=0.0)
    cd_tol = V.check_real(cd_tol, "cd_tol", low=0.0)
    maxit = V.check_int(maxit, "maxit", 1)
    patience = V.check_int(patience, "patience", 1)
    cd_maxit = V.check_int(cd_maxit, "cd_maxit", 1)
    W0, V0, H0 = _check_inits(w_init, v_init, h_init, m, n, k)
    if W0 is None or V0 is None or H0 is None:  # the seed draws whatever is not given
        Ws, Vs, Hs = initial_factors(seed, m, n, k)
        W0 = Ws if W0 is None else W0
        V0 = Vs if V0 is None else V0
        H0 = Hs if H0 is None else H0
    elif seed is not None:
        raise ValueError("give either seed or all of w_init, v_init, h_init, not both")
    masked = any(M is not None for M in Ms)
    chosen = _choose_layout(As, layout, masked, max(n))
    data = _build_data(As, Ms, chosen, dtype, max(n))
    sq = [squared_norm(A) for A in As]  # masked entries are already zero in A
    config = INMFConfig(k=k, n=n, maxit=maxit, patience=patience, cd_maxit=cd_maxit, loop=loop, masked=masked)
    return INMFProblem(data=data, lambda_=jnp.asarray(lam, dtype), tol=jnp.asarray(tol, dtype),
                       cd_tol=jnp.asarray(cd_tol, dtype), w_init=jnp.asarray(W0, dtype),
                       v_init=jnp.asarray(V0, dtype), h_init=jnp.asarray(H0, dtype),
                       sq_norm=jnp.asarray(sq, dtype), config=config)


def inmf(As: Any, k: int, *, lambda_: Any = 5.0, seed: Any = None, **options: Any) -> INMFModel:
    """Integrative NMF (LIGER's iNMF): ``A_i ≈ (W + V_i) H_i`` with W shared by all batches.

    Minimises ``sum_i |A_i - (W + V_i) H_i|_F^2 + lambda_ sum_i |V_i H_i|_F^2`` over W (m, k), V_i (m, k),
    H_i (k, n_i), all >= 0, for batches A_i (m, n_i) over the same m features (samples in columns, as ``nmf``).
    Larger ``lambda_`` shrinks the batch-specific part V_i H_i, so more of each batch is explained by W.

    Update order per iteration (LIGER's): every H_i, every V_i, then W, each an exact block NNLS (coordinate
    descent ``nnls_cd`` on the normal equations of the stacked problems ``[W + V_i; sqrt(lambda) V_i]``,
    ``[H_i'; sqrt(lambda) H_i']`` and ``[H_1'; ...; H_b']``) warm-started at the current block, so the objective
    never increases. No rescaling between updates (the objective is invariant to ``(c W, c V, H / c)``).

    Args:
        As: list of b >= 1 non-negative matrices (m, n_i): numpy, jax or scipy.sparse (mixed is fine).
        k: rank, ``1 <= k <= min(m, max n_i)``.
        lambda_: penalty >= 0 (LIGER's default 5). A 1-D sequence fits one model per value in a single vmapped,
            jit-compiled call and returns an ``INMFModel`` with a leading grid axis (also with a list ``seed``).
        seed: an int draws W, each V_i, each H_i uniform on [0, 2) as rliger's ``optimizeALS`` (R's
            ``set.seed(seed); runif``); a ``jax.random`` key draws them with JAX; ``None`` a fresh seed. A list
            of ints (or keys) fits a grid of initialisations in one vmap (zipped with a 1-D ``lambda_``).
        tol, maxit, patience: stop when the relative objective change stays below ``tol`` for ``patience``
            consecutive iterations (``nmf``'s rule with 5; LIGER stops at the first, ``patience=1``, with the
            mean of the two objectives as denominator), or after ``maxit`` (LIGER's defaults: 1e-6 and 30).
        w_init, v_init, h_init: explicit initial W (m, k), V_i (b matrices (m, k)) and H_i (list of (k, n_i));
            given all three, ``seed`` must be None; otherwise the seed draws the missing ones.
        cd_maxit, cd_tol: inner coordinate-descent limits per block (``nnls_cd``).
        masks: optional list (one per batch, entries may be None) of boolean matrices of A_i's shape, True =
            missing; NaN entries are masked too. Masked entries leave the data term (each column / feature row
            solves its own NNLS with its observed entries' Gram matrix, O(m n k^2) per iteration), while the
            penalty ``lambda |V_i H_i|^2`` keeps all entries. Masked fits are dense.
        layout: ``"dense"`` pads the batches into one (b, m, n_max) array; ``"sparse"`` keeps scipy.sparse input
            as padded COO triplets (O(nnz k) scatter-add products); ``"auto"``: sparse only for all-sparse input
            with more than 4M padded entries and under 14% non-zeros.
        loop: ``"while"`` (stops at convergence) or ``"scan"`` (``maxit`` masked steps, reverse-differentiable).
        dtype: float32 by default; float64 when jax x64 is enabled.

    Returns:
        ``INMFModel``: ``w``, ``v``, padded ``h`` with ``n``, ``iter``, ``loss``, ``loss_history``,
        ``converged``; ``model.embedding()`` is the quantile-aligned (sum n_i, k) embedding (``quantile_norm``),
        which ``jnmf.assess(model, labels, batch=...)`` reads.
    """
    lam_arr = np.asarray(lambda_, dtype=object if isinstance(lambda_, (list, tuple)) else None)
    seeds = list(seed) if isinstance(seed, (list, tuple)) else None
    if lam_arr.ndim > 1:
        raise ValueError(f"lambda_ must be a scalar or a 1-D sequence, got shape {lam_arr.shape}")
    if lam_arr.ndim == 0 and seeds is None:
        model = solve_inmf(prepare_inmf(As, k, lambda_=lambda_, seed=seed, **options))
        _check_finite(model)
        return model
    lams = [lambda_] if lam_arr.ndim == 0 else list(lambda_)
    seeds = [seed] if seeds is None else seeds
    g = max(len(lams), len(seeds))
    if len(lams) not in (1, g) or len(seeds) not in (1, g) or g == 0:
        raise ValueError(f"lambda_ ({len(lams)} values) and seed ({len(seeds)} values) must have equal lengths "
                         "(or one of them a single value)")
    lams, seeds = lams * (g // len(lams)), seeds * (g // len(seeds))
    for j, lam in enumerate(lams):
        V.check_real(lam, f"lambda_[{j}]", low=0.0)
    w_init = options.get("w_init")
    if len(set(map(id, seeds))) > 1 and any(options.get(x) is not None for x in ("w_init", "v_init", "h_init")):
        raise ValueError("a list of seeds cannot be combined with w_init, v_init or h_init")
    problem = prepare_inmf(As, k, lambda_=lams[0], seed=seeds[0], **options)
    dt = problem.w_init.dtype
    if len(seeds) > 1 and seeds[0] is None:
        raise ValueError("seed: a list of seeds must hold integers or jax.random keys, not None")
    inits = [initial_factors(s, problem.w_init.shape[0], problem.config.n, problem.config.k) for s in seeds] \
        if seeds[0] is not None and w_init is None else [(problem.w_init, problem.v_init, problem.h_init)] * g
    Ws, Vs, Hs = (jnp.asarray(np.stack([np.asarray(x[j]) for x in inits]), dt) for j in range(3))
    models = jax.vmap(lambda lam, w, v, h: solve_inmf(problem, lambda_=lam, w_init=w, v_init=v, h_init=h))(
        jnp.asarray(lams, dt), Ws, Vs, Hs)
    _check_finite(models)
    return models


def _check_finite(model: INMFModel) -> None:
    finite = all(bool(np.all(np.isfinite(np.asarray(x)))) for x in (model.w, model.v, model.h, model.loss))
    if not finite:
        raise FloatingPointError(f"the iNMF fit produced non-finite values by iteration "
                                 f"{np.asarray(model.iter).max()}; check the input scale or try a smaller k")


# ----------------------------------------------------------------------------------------------------------------
# LIGER's quantile alignment
# ----------------------------------------------------------------------------------------------------------------


def quantile_norm(
    model: Any,
    *,
    ref_dataset: int | None = None,
    quantiles: int = 50,
    min_cells: int = 20,
    max_sample: int | None = 1000,
    do_center: bool = False,
    seed: int = 1,
) -> np.ndarray:
    """LIGER's quantile normalisation of the H_i into one integrated (sum n_i, k) embedding, batches stacked in order.

    ``model``: an ``INMFModel`` or a list of H_i, each (k, n_i) (jnmf's orientation; LIGER's H_i' ).
    Steps (rliger's ``quantile_norm``, as pyliger 0.2.4): each sample of each batch is assigned to its max factor
    (cluster), the argmax of its row of ``H_i'`` with every factor column scaled to unit root-mean-square
    (``scale(center=do_center)``, n - 1 in the denominator); then, for each batch i other than the reference, each
    cluster c and each factor f, the loadings on f of batch i's samples in cluster c are mapped onto those of the
    reference's samples in cluster c: the ``quantiles + 1`` evenly spaced quantiles (R's type 7) of both are
    matched and values in between interpolated linearly (``approxfun``, ties averaged; values beyond the end
    quantiles, possible only with subsampling, take the end values). A cluster is left as is for a batch where it,
    or the reference, has fewer than ``min_cells`` samples; a cluster of one sample takes the reference's mean;
    all-zero or constant quantiles map to 0.

    Knobs as LIGER: ``ref_dataset`` (index of the reference batch; default the largest, first on ties),
    ``quantiles`` (50), ``min_cells`` (20), ``max_sample`` (1000: quantiles are computed on a random subsample of
    at most this many values, numpy's generator seeded with ``seed``, not R's; None = all), ``do_center``.
    Not implemented: rliger's kNN refinement of the max-factor clusters (``knn_k``, ``refine.knn``, ``eps``) and
    ``dims.use`` (all factors are aligned). The reference batch is returned unchanged (LIGER maps it onto itself,
    the identity up to its subsampling).
    """
    if isinstance(model, INMFModel):
        Hs = [h.T.astype(np.float64) for h in model.h_list()]
    else:
        Hs = [np.asarray(h, np.float64).T for h in _as_list(model, "model")]
    if not Hs or any(h.ndim != 2 for h in Hs) or len({h.shape[1] for h in Hs}) != 1:
        raise ValueError("model: expected an INMFModel or a non-empty list of (k, n_i) matrices with the same k")
    b = len(Hs)
    ns = [h.shape[0] for h in Hs]
    if ref_dataset is None:
        ref = int(np.argmax(ns))
    else:
        if isinstance(ref_dataset, bool) or not isinstance(ref_dataset, numbers.Integral) \
                or not 0 <= ref_dataset < b:
            raise ValueError(f"ref_dataset must be a batch index in [0, {b}), got {ref_dataset!r}")
        ref = int(ref_dataset)
    quantiles = V.check_int(quantiles, "quantiles", 1)
    min_cells = V.check_int(min_cells, "min_cells", 0)
    if max_sample is not None:
        max_sample = V.check_int(max_sample, "max_sample", 1)
    rng = np.random.default_rng(seed)
    clusters = [_max_factor(h, do_center) for h in Hs]
    probs = np.linspace(0.0, 1.0, quantiles + 1)
    out = [h.copy() for h in Hs]
    k = Hs[0].shape[1]
    for i in range(b):
        if i == ref:
            continue
        for c in range(k):
            cells1 = clusters[ref] == c
            cells2 = clusters[i] == c
            n1, n2 = int(cells1.sum()), int(cells2.sum())
            if n1 < min_cells or n2 < min_cells or n1 == 0 or n2 == 0:
                continue
            for f in range(k):
                vals = Hs[i][cells2, f]
                ref_vals = Hs[ref][cells1, f]
                if n2 == 1:
                    out[i][cells2, f] = ref_vals.mean()
                    continue
                q2 = np.quantile(_subsample(vals, max_sample, rng), probs)
                q1 = np.quantile(_subsample(ref_vals, max_sample, rng), probs)
                if q1.sum() == 0 or q2.sum() == 0 or np.unique(q1).size < 2 or np.unique(q2).size < 2:
                    out[i][cells2, f] = 0.0
                    continue
                x, inverse = np.unique(q2, return_inverse=True)
                y = np.bincount(inverse, weights=q1) / np.bincount(inverse)  # approxfun(ties = mean)
                out[i][cells2, f] = np.interp(vals, x, y)
    return np.concatenate(out, axis=0)


def _max_factor(h: np.ndarray, center: bool) -> np.ndarray:
    """Max-factor assignment on column-scaled loadings (R's ``scale``: divide by the column's root-mean-square
    about its mean if centred, about 0 if not, with n - 1 in the denominator)."""
    x = h - h.mean(axis=0) if center else h
    scale = np.sqrt(np.sum(x * x, axis=0) / max(x.shape[0] - 1, 1))
    return np.argmax(x / np.where(scale > 0, scale, 1.0), axis=1)


def _subsample(x: np.ndarray, max_sample: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_sample is None or x.size <= max_sample:
        return x
    return rng.choice(x, size=max_sample, replace=False)


inmf.__signature__ = inspect.signature(prepare_inmf).replace(return_annotation="INMFModel")
