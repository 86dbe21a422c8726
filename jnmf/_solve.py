"""The one iteration driver: ``prepare`` validates and builds a ``Problem``; ``solve`` runs it under jit.

Functional use (what ``nmf`` does, and what grids are built from)::

    problem = jnmf.prepare(A, 8, seed=42, target_H=T, target_lambda=0.1)   # validated, outside jit
    model = jnmf.solve(problem)                                             # jit-compiled
    models = jax.vmap(lambda lam: jnmf.solve(problem, target_lambda=lam))(lams)   # one compile, batched

A ``Problem`` is a pytree: the data, the hyperparameters (``Hyper``: tol, L1, L2, upper bounds, target lambdas
and targets, all arrays) and the initial W are leaves; the structural choices (``Config``: k, maxit, solver,
norm, sort, nonneg, which targets exist, the removal mode, the loop kind, whether A has a mask) are static. A new
lambda, L1, L2, tol or initial W therefore reuses the compiled program.

One outer iteration follows RcppML 1.0.0 (reference §4): H update from the unit-scaled W (the raw initial W at
iteration 0), then the W update from the unit-scaled H, each as NNLS on ``G = F F' + 1e-15 I`` and
``B = F A`` modified by L2, L1 and the target, then diagonal scaling; the model's d comes from the W update.
Convergence: relative change of the total squared error below ``tol`` on 5 consecutive iterations.

Missing data (``mask``, or NaN in A): the data carry a boolean mask and each column j of an update solves its own
NNLS with ``G_j = F diag(o_j) F'`` and ``b_j = F (o_j * a_j)`` (o_j: 1 for observed entries of that column), so
masked entries never enter the fit; the loss is then the SSE over observed entries, formed directly.
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

from . import _validate as V
from ._data import (
    _DENSE_DENSITY,
    DenseData,
    HostSparseData,
    SparseData,
    prepare_data,
    shard_columns,
    split_mask,
    squared_norm,
)
from ._features import (
    apply_l1_l2,
    apply_target,
    gram,
    group_scatter,
    scale_rows,
    scatter_target,
    target_gram,
)
from ._memory import default_budget, estimate_memory, gib
from ._model import NMFModel
from ._nnls import cholesky_clip, nnls_cd, nnls_step
from ._rrng import r_runif_matrix
from ._sharded import ShardedSparseData, shard_sparse_columns

_HIGHEST = lax.Precision.HIGHEST
SOLVERS = ("auto", "cholesky", "cd")
NORMS = ("L1", "L2", "none")
REMOVALS = ("scatter", "proj_adv", "project")
LOOPS = ("while", "scan")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static structure of a fit; changing any field compiles a new program."""

    k: int
    maxit: int = 100
    solver: str = "cholesky"
    norm: str = "L1"
    sort: bool = True
    nonneg: tuple[bool, bool] = (True, True)
    cd_maxit: int = 100
    target_H: bool = False
    target_W: bool = False
    removal: str = "scatter"
    patience: int = 5
    loop: str = "while"
    masked: bool = False
    remove: bool = False


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Hyper:
    """Array hyperparameters; per-factor pairs are ordered (W, H) as in RcppML."""

    tol: jax.Array
    L1: jax.Array
    L2: jax.Array
    upper_bound: jax.Array
    cd_tol: jax.Array
    target_lambda: jax.Array
    target_H: jax.Array | None = None
    target_W: jax.Array | None = None  # stored transposed, (k, m), to compare with W' as the solver sees it
    remove_groups: jax.Array | None = None  # (g, n) one-hot rows of the grouping removed by ``remove=``
    remove_lambda: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Problem:
    """Everything a fit needs; a pytree whose leaves are arrays and whose ``config`` is static."""

    data: DenseData | SparseData | HostSparseData | ShardedSparseData
    hyper: Hyper
    w_init: jax.Array
    sq_norm: jax.Array
    config: Config = dataclasses.field(metadata=dict(static=True))

    def replace(self, **changes: Any) -> Problem:
        return dataclasses.replace(self, **changes)


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


def _solve_factor(G, B, X_prev, warm, nonneg, config, hyper):
    if config.solver == "cholesky":
        return cholesky_clip(G, B, nonneg=nonneg)
    X0 = jnp.where(warm, X_prev, jnp.zeros_like(X_prev))
    return nnls_cd(G, B, X0, nonneg=nonneg, cd_maxit=config.cd_maxit, cd_tol=hyper.cd_tol,
                   differentiable=config.loop == "scan")


def _solve_columns(Gs, B, X_prev, warm, nonneg, config, hyper):
    """Masked NNLS: column j of B (k, p) with its own Gram matrix ``Gs[j]`` (p, k, k), vmapped over columns."""
    if config.solver == "cholesky":
        return jax.vmap(lambda G, b: cholesky_clip(G, b, nonneg=nonneg), out_axes=1)(Gs, B.T)
    X0 = jnp.where(warm, X_prev, jnp.zeros_like(X_prev))
    solve = functools.partial(nnls_step, nonneg=nonneg, cd_maxit=config.cd_maxit, cd_tol=hyper.cd_tol,
                              differentiable=config.loop == "scan")
    return jax.vmap(solve, in_axes=(0, 1, 1), out_axes=1)(Gs, B, X0)


def _solve_raw(F, X_prev, rhs, side, warm, config, hyper, T, G_T, has_target, Gs=None, X0=None, extra=None):
    """One factor's solve before scaling: X (k, p) given the other factor F (k, q) and ``rhs = F A`` or ``H A'``.

    ``Gs`` (p, k, k), given for masked data only, holds one Gram matrix per column of X instead of ``F F'``; the
    penalty kernels take either. ``X_prev`` is the CD warm start; ``X0`` (k, p) the current raw factor, the point
    a majorize-minimize penalty is taken at; ``extra`` a function ``(G, B) -> (G, B)`` adding further penalties.
    Returns X (after the upper bound) and the pre-penalty Gram matrix and right-hand side (for the loss).
    """
    G0 = gram(F) if Gs is None else Gs
    B0 = rhs
    G, B = apply_l1_l2(G0, rhs, hyper.L1[side], hyper.L2[side])
    if has_target:
        G, B = apply_target(G, B, T, G_T, hyper.target_lambda[side], config.removal, X0)
    if extra is not None:
        G, B = extra(G, B)
    if Gs is None:
        X = _solve_factor(G, B, X_prev, warm, config.nonneg[side], config, hyper)
    else:
        X = _solve_columns(G, B, X_prev, warm, config.nonneg[side], config, hyper)
    ub = hyper.upper_bound[side]
    return jnp.where(ub > 0, jnp.minimum(X, ub), X), G0, B0


def _update(F, X_prev, rhs, side, warm, config, hyper, T, G_T, has_target, Gs=None, X0=None, extra=None):
    """One factor update: ``_solve_raw`` then diagonal scaling; returns (d, X unit-scaled, G0, B0)."""
    X, G0, B0 = _solve_raw(F, X_prev, rhs, side, warm, config, hyper, T, G_T, has_target, Gs, X0, extra)
    d, X = scale_rows(X, config.norm)
    return d, X, G0, B0


def gram_identity_sse(sq_norm, d, W, G_w, B_w):
    """Total SSE ``|A|^2 - 2 sum d_i <W_i, B_i> + sum_ij d_i d_j (W W')_ij G_ij`` from the W update's pre-penalty
    Gram matrix G_w = H H' and right-hand side B_w = H A' (RcppML §4); W (k, m) unit-scaled, d (k,)."""
    dW = d[:, None] * W
    return sq_norm - 2 * jnp.sum(dW * B_w) + jnp.sum(jnp.dot(dW, dW.T, precision=_HIGHEST) * G_w)


def _scatter_weights(config: Config, hyper: Hyper) -> list[tuple[jax.Array, jax.Array]]:
    """The between-group scatter penalties on H as (lambda >= 0, group rows (g, n)) pairs: ``removal="scatter"``
    with a negative H lambda (groups: target_H's classes) and ``remove=`` (its own groups)."""
    out = []
    if config.target_H and config.removal == "scatter":
        lam = hyper.target_lambda[1]
        out.append((jnp.where(lam < 0, -lam, jnp.zeros_like(lam)), hyper.target_H))
    if config.remove:
        out.append((hyper.remove_lambda, hyper.remove_groups))
    return out


def h_half(problem: Problem, state: State, G_TH=None) -> tuple[jax.Array, jax.Array]:
    """The H half of an iteration: NNLS for the raw H given the unit-scaled W, then its scaling → (d_H, H)."""
    config, hyper, data = problem.config, problem.hyper, problem.data
    scatter = _scatter_weights(config, hyper)
    E0, start = state.d[:, None] * state.H, state.H
    if scatter:
        # The scatter penalties are majorized at the current raw H (the embedding diag(d) h), which is then also
        # the warm start, so that any descent of the NNLS surrogate descends the objective. Without an active
        # penalty the warm start stays RcppML's (the unit-scaled H).
        start = jnp.where(sum(lam for lam, _ in scatter) > 0, E0, state.H)

    def extra(G, B):
        if config.remove:
            G, B = scatter_target(G, B, E0, hyper.remove_groups, hyper.remove_lambda)
        return G, B

    d_H, H, _, _ = _update(state.W, start, data.left(state.W), 1, state.n_iter > 0, config, hyper,
                           hyper.target_H, G_TH, config.target_H, data.left_grams(state.W) if config.masked else None,
                           X0=E0, extra=extra if config.remove else None)
    return d_H, H


def w_half(problem: Problem, state: State, d_H: jax.Array, H: jax.Array, G_TW=None
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The W half: NNLS for the raw W' given the unit-scaled H, its scaling, and the objective → (d, W, loss).

    With scatter penalties ``lam R(diag(d) h)`` the scale d that W's update sets is part of the penalty:
    ``R = sum_f s_f^2 R_f(h)`` with ``s_f`` W's column sum (``norm="L1"``) or norm (``"L2"``). For L2 that is the
    ridge ``lam R_f |w_f|^2``; for L1, ``(1'w_f)^2`` is majorized at the current W by its tangent plus
    ``m |w_f - w0_f|^2`` (its curvature is at most m), which keeps the update row-separable and monotone.
    """
    config, hyper, data = problem.config, problem.hyper, problem.data
    scatter = _scatter_weights(config, hyper)
    start, extra = state.W, None
    W0 = d_H[:, None] * state.W  # the current raw W' of the model (W, diag(d_H) h)
    if scatter:
        c = sum(lam * group_scatter(H, Y) for lam, Y in scatter)  # (k,): lam R_f(h) summed over penalties
        start = jnp.where(sum(lam for lam, _ in scatter) > 0, W0, state.W)
        m = W0.shape[1]

        def extra(G, B):
            eye = jnp.eye(G.shape[-1], dtype=G.dtype)
            if config.norm == "L2":
                return G + c * eye, B
            s0 = jnp.sum(W0, axis=1)
            return G + m * c * eye, B + c[:, None] * (m * W0 - s0[:, None])

    d, W, G_w, B_w = _update(H, start, data.right(H), 0, state.n_iter > 0, config, hyper, hyper.target_W, G_TW,
                             config.target_W, data.right_grams(H) if config.masked else None, X0=W0, extra=extra)
    if config.masked:
        # SSE over observed entries; the Gram identity would need a per-entry weight, so form it directly.
        loss = data.observed_sse(d[:, None] * W, H)
    else:
        loss = gram_identity_sse(problem.sq_norm, d, W, G_w, B_w)
    if scatter:  # the objective of a fit with scatter penalties: SSE + sum lam R(diag(d) h)
        loss = loss + jnp.sum(d * d * c)
    return d, W, loss


def step(problem: Problem, state: State, G_TH=None, G_TW=None) -> State:
    """One outer iteration: ``h_half``, ``w_half``, convergence bookkeeping (``advance``)."""
    d_H, H = h_half(problem, state, G_TH)
    d, W, loss = w_half(problem, state, d_H, H, G_TW)
    return advance(state, W, H, d, loss, problem.hyper.tol, problem.config.patience)


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


def init_state(problem: Problem, w_init: jax.Array | None = None) -> State:
    """The state before the first iteration: the raw initial W (k, m) transposed, H = 0, d = 1."""
    w0 = problem.w_init if w_init is None else w_init
    dtype = w0.dtype
    k, n = problem.config.k, problem.data.shape[1]
    return State(
        W=w0.T,
        H=jnp.zeros((k, n), dtype),
        d=jnp.ones((k,), dtype),
        loss=jnp.zeros((), dtype),
        rel=jnp.asarray(jnp.inf, dtype),
        patience=jnp.zeros((), jnp.int32),
        n_iter=jnp.zeros((), jnp.int32),
        converged=jnp.zeros((), bool),
        history=jnp.full((problem.config.maxit,), jnp.nan, dtype),
    )


def finish_model(problem: Problem, state: State, w_init: jax.Array | None = None) -> NMFModel:
    """The model from a final state: components sorted by d descending (stable) when the config sorts."""
    W, d, H = state.W, state.d, state.H
    if problem.config.sort:
        order = jnp.argsort(-d, stable=True)
        W, d, H = W[order], d[order], H[order]
    return NMFModel(w=W.T, d=d, h=H, iter=state.n_iter, loss=state.loss, loss_history=state.history,
                    converged=state.converged, tol=state.rel,
                    w_init=problem.w_init if w_init is None else w_init)


def solve(problem: Problem, *, target_lambda: Any = None, L1: Any = None, L2: Any = None, tol: Any = None,
          w_init: Any = None, remove_lambda: Any = None) -> NMFModel:
    """Run a prepared fit; keyword overrides replace array hyperparameters (they may be traced, e.g. vmapped).

    ``target_lambda`` as a scalar applies to every target present; as a (W, H) pair it sets each side.
    Returns an ``NMFModel``; jit-compiled once per ``Config`` and array shapes.
    """
    hyper = problem.hyper
    changes = {}
    if target_lambda is not None:
        changes["target_lambda"] = _lambda_pair(target_lambda, problem.config, hyper.target_lambda.dtype)
    for name, value in (("L1", L1), ("L2", L2)):
        if value is not None:
            changes[name] = jnp.broadcast_to(jnp.asarray(value, hyper.L1.dtype), (2,))
    if tol is not None:
        changes["tol"] = jnp.asarray(tol, hyper.tol.dtype)
    if remove_lambda is not None:
        if not problem.config.remove:
            raise ValueError("remove_lambda given but the problem has no remove= grouping (prepare(..., remove=))")
        changes["remove_lambda"] = jnp.asarray(remove_lambda, hyper.tol.dtype)
    if changes:
        problem = problem.replace(hyper=dataclasses.replace(hyper, **changes))
    if w_init is not None:
        problem = problem.replace(w_init=jnp.asarray(w_init, problem.w_init.dtype))
    model = _solve_jit(problem)
    if isinstance(problem.data, HostSparseData) and not isinstance(model.d, jax.core.Tracer):
        # The host kernel reads A from a registry entry owned by problem.data: finish while it is alive.
        model = jax.block_until_ready(model)
    if getattr(problem.data, "n_valid", None) is not None:  # sharded over a device mesh
        model = _unshard(model, problem.data)
    return model


def _unshard(model: NMFModel, data: DenseData | ShardedSparseData) -> NMFModel:
    """A sharded fit's model with h's mesh-padding columns dropped and every array replicated on every device
    of the mesh: each process (after ``jax.distributed.initialize()``) then holds the whole model, and
    ``np.asarray`` works on every process. Within a trace over the problem itself (``jit(solve)``), where the mesh
    of a dense A is not known, only the padding is dropped."""
    n_valid = data.n_valid
    mesh = getattr(data, "mesh", None)  # ShardedSparseData carries its mesh
    if mesh is None:
        sharding = getattr(data.A, "sharding", None)
        if isinstance(data.A, jax.core.Tracer) or not isinstance(sharding, jax.sharding.NamedSharding):
            return dataclasses.replace(model, h=model.h[:, :n_valid]) if n_valid != data.shape[1] else model
        mesh = sharding.mesh
    return _replicate(model, n_valid, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _replicate(model: NMFModel, n_valid: int, replicated: jax.sharding.NamedSharding) -> NMFModel:
    model = dataclasses.replace(model, h=model.h[:, :n_valid])
    return jax.tree.map(lambda x: lax.with_sharding_constraint(x, replicated), model)


def _lambda_pair(lam: Any, config: Config, dtype: Any) -> jax.Array:
    lam = jnp.asarray(lam, dtype)
    if lam.ndim == 0:
        zero = jnp.zeros_like(lam)
        return jnp.stack([lam if config.target_W else zero, lam if config.target_H else zero])
    return jnp.broadcast_to(lam, (2,))


@jax.jit
def _solve_jit(problem: Problem) -> NMFModel:
    config, hyper = problem.config, problem.hyper
    if config.masked != (getattr(problem.data, "mask", None) is not None):
        raise ValueError(f"Config.masked is {config.masked} but the data {'lack' if config.masked else 'carry'} "
                         "a mask; build problems with prepare()")
    G_TH = target_gram(hyper.target_H) if config.target_H else None
    G_TW = target_gram(hyper.target_W) if config.target_W else None
    state = init_state(problem)
    if config.loop == "while":
        state = lax.while_loop(lambda s: running(s, config.maxit), lambda s: step(problem, s, G_TH, G_TW), state)
    else:
        # Fixed-length scan: reverse-mode differentiable; finished iterations are masked no-ops.
        def body(s, _):
            new = step(problem, s, G_TH, G_TW)
            keep = running(s, config.maxit)
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, s), None

        state, _ = lax.scan(body, state, None, length=config.maxit)
    return finish_model(problem, state)


def _default_dtype() -> Any:
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def initial_w(seed: Any, m: int, k: int, dtype: Any) -> jax.Array:
    """The initial W (m, k): R's ``set.seed(seed); runif(m*k)`` for an int, ``jax.random.uniform`` for a key,
    or an explicit matrix. ``None`` draws a fresh R-style seed from numpy's entropy (recorded in ``w_init``)."""
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31 - 1))
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError("seed must be an integer, a jax.random key or an (m, k) matrix, got a bool")
    if isinstance(seed, (int, np.integer)):
        return jnp.asarray(r_runif_matrix(int(seed), m, k), dtype)
    if isinstance(seed, jax.Array) and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return jax.random.uniform(seed, (m, k), dtype)
    arr = np.asarray(seed)
    if arr.ndim == 1 and arr.shape == (2,) and arr.dtype == np.uint32:  # legacy raw PRNGKey
        return jax.random.uniform(jnp.asarray(arr), (m, k), dtype)
    return jnp.asarray(V.check_matrix(arr, "seed (initial W)", (m, k), nonneg=True), dtype)


def prepare(
    A: Any,
    k: int,
    *,
    tol: float = 1e-4,
    maxit: int = 100,
    seed: Any = None,
    w_init: Any = None,
    L1: Any = 0.0,
    L2: Any = 0.0,
    nonneg: Any = True,
    upper_bound: Any = 0.0,
    solver: str = "auto",
    norm: str = "L1",
    sort: bool = True,
    target_H: Any = None,
    target_W: Any = None,
    target_lambda: Any = 0.0,
    removal: str = "scatter",
    remove: Any = None,
    remove_lambda: Any = 1.0,
    cd_maxit: int = 100,
    cd_tol: float = 1e-8,
    layout: str = "auto",
    loop: str = "while",
    dtype: Any = None,
    mask: Any = None,
    devices: Any = None,
    max_memory_bytes: int | None = None,
) -> Problem:
    """Validate the arguments of ``nmf`` (same meaning) and build a ``Problem`` for ``solve``.

    ``devices`` (a sequence of ``jax.Device``) shards the fit's samples: A's columns, and so H's, are split
    across a 1-D ``jax.sharding.Mesh(devices, ("cols",))`` (``shard_columns``), and the one jit-compiled driver
    runs partitioned by XLA: the H update is local to each device, and ``H A'`` (k x m), ``H H'`` (k x k), the
    norms of H and the loss are summed across devices. ``solve`` returns the model of a sharded fit with every
    array (h included, its padding columns dropped) replicated on every device of the mesh.

    Several processes: after ``jax.distributed.initialize()`` (on CPU with ``jax_cpu_collectives_implementation``
    ``"gloo"``), every process calls ``prepare``/``solve`` (or ``nmf``) with the same A, arguments and
    ``devices=jax.devices()``; each fills only its own devices' column blocks of A, and each gets the whole model
    (replicated, so ``np.asarray(model.h)`` works on every process; the arrays are global ``jax.Array``s spanning
    all processes' devices). Tested: 2 processes x 2 CPU devices equal one process on one device to 1e-10
    (float64, same iterations; tests/test_multihost.py). Each device holds its column block dense, or sparse
    (``ShardedSparseData``: XLA gathers per device and a sum of the k x m partial ``H A'``), by the single-device
    density rule for ``layout="auto"``. Sharded fits support neither a mask nor ``target_H`` nor L1 on H with
    ``nonneg`` off for H (the zero columns padding n to a multiple of the device count must stay zero).
    ``max_memory_bytes``: the budget that ``layout="auto"`` chooses against and that any layout must fit
    (``estimate_memory``); per device when ``devices`` is given (by default, half of this host's memory shared by
    this process's devices of the mesh, or half of an accelerator's own memory).
    """
    V.check_choice(layout, "layout", ("auto", "dense", "sparse"))
    dtype = jnp.dtype(_default_dtype() if dtype is None else dtype)
    if dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', True))")
    # Before check_data: masked entries (and NaN, which is masked) are zeroed, so their values are never checked.
    A, M = split_mask(A, mask, dtype.itemsize, layout)
    A = V.check_data(A)
    m, n = A.shape
    k = V.check_rank(k, m, n)
    maxit = V.check_int(maxit, "maxit", 1)
    cd_maxit = V.check_int(cd_maxit, "cd_maxit", 1)
    if max_memory_bytes is not None:
        max_memory_bytes = V.check_int(max_memory_bytes, "max_memory_bytes", 1)
    tol = V.check_real(tol, "tol", low=0.0)
    cd_tol = V.check_real(cd_tol, "cd_tol", low=0.0)
    L1 = V.check_pair(L1, "L1", low=0.0, high=1.0, high_open=True)
    L2 = V.check_pair(L2, "L2", low=0.0)
    upper_bound = V.check_pair(upper_bound, "upper_bound", low=0.0)
    nonneg = V.check_bool_pair(nonneg, "nonneg")
    V.check_choice(solver, "solver", SOLVERS)
    V.check_choice(norm, "norm", NORMS)
    V.check_choice(removal, "removal", REMOVALS)
    V.check_choice(loop, "loop", LOOPS)
    if not isinstance(sort, (bool, np.bool_)):
        raise TypeError(f"sort must be a bool, got {sort!r}")

    TH = None if target_H is None else V.check_matrix(target_H, "target_H", (k, n))
    TW = None if target_W is None else V.check_matrix(target_W, "target_W", (m, k))
    lam = V.check_pair(target_lambda, "target_lambda")
    if np.ndim(target_lambda) == 0:  # a scalar applies to every target given (H only, as RcppML, if just target_H)
        if lam[0] != 0 and TH is None and TW is None:
            raise ValueError(f"target_lambda is {lam[0]} but target_H and target_W are None; give a target "
                             "(RcppML silently ignores the lambda) or leave target_lambda at 0")
        lam = (lam[0] if TW is not None else 0.0, lam[1] if TH is not None else 0.0)
    for side, T, name in ((0, TW, "target_W"), (1, TH, "target_H")):
        if T is None and lam[side] != 0:
            raise ValueError(f"target_lambda for the {'W' if side == 0 else 'H'} side is {lam[side]} "
                             f"but {name} is None; give {name} or set that lambda to 0")

    Y = None
    if remove is not None:
        Y = remove_groups(remove, n)
        remove_lambda = V.check_real(remove_lambda, "remove_lambda", low=0.0)
    if removal == "scatter" and lam[0] < 0:
        raise ValueError(f"target_lambda for the W side is {lam[0]}: removal='scatter' removes groups of samples "
                         "(the H side) only; use removal='proj_adv' or 'project' for a W-side removal")
    scatter = Y is not None or (removal == "scatter" and TH is not None and lam[1] < 0)
    if scatter and norm == "none":
        raise ValueError("norm='none' cannot be used with a scatter removal (remove=, or removal='scatter' with a "
                         "negative target_lambda): the penalty is not scale-invariant, so W's scale must be pinned "
                         "(norm='L1' or 'L2')")
    if scatter and solver == "cholesky":
        raise ValueError("solver='cholesky' (solve then clip) is not an exact NNLS, so a scatter removal (remove=, "
                         "or removal='scatter' with a negative target_lambda) would not descend its objective; use "
                         "solver='cd' or 'auto'")
    if solver == "auto":  # RcppML's rule: Cholesky-then-clip only when it is cheap and no L1 is asked for
        solver = "cholesky" if k < 32 and L1 == (0.0, 0.0) and not scatter else "cd"
    if solver == "cholesky" and L1 != (0.0, 0.0):
        raise ValueError("solver='cholesky' does not support L1 (it needs an exact NNLS); use solver='cd'")

    if w_init is not None and seed is not None:
        raise ValueError("give either seed or w_init, not both")
    W0 = initial_w(seed if w_init is None else w_init, m, k, dtype)
    config = Config(k=k, maxit=maxit, solver=solver, norm=norm, sort=bool(sort), nonneg=nonneg, cd_maxit=cd_maxit,
                    target_H=TH is not None, target_W=TW is not None, removal=removal, loop=loop,
                    masked=M is not None, remove=Y is not None)
    hyper = Hyper(
        tol=jnp.asarray(tol, dtype),
        L1=jnp.asarray(L1, dtype),
        L2=jnp.asarray(L2, dtype),
        upper_bound=jnp.asarray(upper_bound, dtype),
        cd_tol=jnp.asarray(cd_tol, dtype),
        target_lambda=jnp.asarray(lam, dtype),
        target_H=None if TH is None else jnp.asarray(TH, dtype),
        target_W=None if TW is None else jnp.asarray(TW.T, dtype),
        remove_groups=None if Y is None else jnp.asarray(Y, dtype),
        remove_lambda=None if Y is None else jnp.asarray(remove_lambda, dtype),
    )
    if devices is not None and Y is not None:
        raise ValueError("devices: sharded fits do not support remove= (the penalty couples all samples)")
    if devices is None:
        data = prepare_data(A, dtype, layout, mask=M, k=k, max_memory_bytes=max_memory_bytes)
    else:
        data = _sharded_data(A, dtype, layout, M, TH, L1, nonneg, k, devices, max_memory_bytes)
    return Problem(data=data, hyper=hyper, w_init=W0, sq_norm=jnp.asarray(squared_norm(A), dtype), config=config)


def remove_groups(labels: Any, n: int) -> np.ndarray:
    """The (g, n) one-hot rows of a grouping to remove (``remove=``); missing labels give zero columns."""
    from ._targets import label_codes

    codes, levels = label_codes(labels, n, name="remove")
    used = np.unique(codes[codes >= 0])
    if used.size < 2:
        raise ValueError(f"remove must have at least 2 groups among its labelled samples, got {used.size}: "
                         "there is no between-group difference to remove")
    return (codes[None, :] == used[:, None]).astype(np.float64)


def _sharded_data(A, dtype, layout, M, TH, L1, nonneg, k, devices,
                  max_memory_bytes) -> DenseData | ShardedSparseData:
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(f"devices must be a non-empty sequence of jax.Device, got {devices!r}")
    if M is not None:
        raise ValueError("devices: sharded fits do not support a mask (or NaN entries in A)")
    if TH is not None:
        raise ValueError("devices: sharded fits do not support target_H (it couples all samples)")
    if L1[1] > 0 and not nonneg[1]:
        raise ValueError("devices: sharded fits do not support L1 on H with nonneg=False for H")
    m, n = A.shape
    n_local = -(-n // len(devices))
    nnz = int(A.nnz) if sp.issparse(A) else None
    if layout == "auto":  # the single-device rule (choose_layout) for the kernel of sharded sparse data
        layout = "sparse" if nnz is not None and nnz < _DENSE_DENSITY["ell"] * m * n else "dense"
    if layout == "sparse" and nnz is None:
        nnz = int(np.count_nonzero(np.asarray(A)))
    per_device = estimate_memory(m, n_local, k, None if layout == "dense" else -(-nnz // len(devices)), layout,
                                 dtype)
    if max_memory_bytes is None:
        # Host-platform devices share their host's memory (with several processes, only this process's devices
        # of the mesh do); an accelerator has its own, and only this process's devices can report it.
        local = [d for d in devices if d.process_index == jax.process_index()] or devices
        budget = default_budget() // len(local)
        if local[0].platform != "cpu":
            try:
                budget = int(local[0].memory_stats()["bytes_limit"]) // 2
            except Exception:  # backends that do not report memory keep the host-based budget
                pass
    else:
        budget = int(max_memory_bytes)
    if per_device > budget:
        raise MemoryError(f"devices: A ({m} x {n}, k={k}) over {len(devices)} devices needs about "
                          f"{gib(per_device)} per device in layout={layout!r}, above the budget of {gib(budget)} "
                          "(max_memory_bytes)")
    if layout == "sparse":
        return shard_sparse_columns(A, dtype, devices)
    return shard_columns(A, dtype, devices)


def nmf(
    A: Any,
    k: int,
    *,
    tol: float = 1e-4,
    maxit: int = 100,
    seed: Any = None,
    L1: Any = 0.0,
    L2: Any = 0.0,
    nonneg: Any = True,
    solver: str = "auto",
    norm: str = "L1",
    sort: bool = True,
    upper_bound: Any = 0.0,
    target_H: Any = None,
    target_W: Any = None,
    target_lambda: Any = 0.0,
    removal: str = "scatter",
    remove: Any = None,
    remove_lambda: Any = 1.0,
    w_init: Any = None,
    cd_maxit: int = 100,
    cd_tol: float = 1e-8,
    layout: str = "auto",
    loop: str = "while",
    dtype: Any = None,
    mask: Any = None,
    devices: Any = None,
    max_memory_bytes: int | None = None,
) -> NMFModel:
    """Non-negative matrix factorization ``A ≈ w diag(d) h`` by alternating NNLS, as RcppML 1.0.0's ``nmf()``.

    Minimises ``|A - W H|_F^2`` (+ penalties) over W (m, k) >= 0 and H (k, n) >= 0 for A (m, n): features in
    rows, samples in columns. Returns an ``NMFModel`` with unit-scaled ``w`` columns and ``h`` rows (``norm``)
    and the scales ``d``, sorted by d descending (``sort``).

    Args:
        A: (m, n) non-negative data: numpy, jax or scipy.sparse. ``layout="auto"`` keeps dense input dense and
            densifies sparse input only when it has >= 14% non-zeros on CPU (6% on accelerators) or at most 4M
            entries, each only when its working set fits the memory budget (``max_memory_bytes``, default half
            of physical memory; ``estimate_memory``), else the other layout; ``MemoryError`` when neither fits.
            The sparse path runs in O(nnz k) memory and time per product, never forming the dense matrix: on CPU
            a compiled CSR kernel called from the jit-compiled fit (``HostSparseData``; reverse-mode
            differentiable, not forward-mode), on accelerators XLA gathers (``SparseData``).
        k: rank, ``1 <= k <= min(m, n)``.
        tol, maxit: stop when the relative change of the total squared error stays below ``tol`` for 5
            consecutive iterations (RcppML's rule), or after ``maxit`` iterations.
        seed: an int reproduces RcppML exactly (R's ``set.seed(seed); runif(m*k)``, column-major); a
            ``jax.random`` key draws W with JAX; an (m, k) matrix is used as the initial W. ``None``: a fresh seed.
        L1, L2: lasso (``B - L1``, 0 <= L1 < 1) and ridge (``G + L2 I``) per factor; a scalar or a (W, H) pair.
        nonneg: non-negativity per factor (scalar or (W, H)).
        solver: ``"cholesky"`` (solve then clip at 0: RcppML's default when k < 32 and L1 = 0; not exact NNLS),
            ``"cd"`` (sequential coordinate descent, exact NNLS) or ``"auto"`` (RcppML's rule).
        norm: diagonal scaling of each factor after its update: ``"L1"``, ``"L2"`` or ``"none"``.
        upper_bound: clamp of the raw factor after the solve (0 = off), per factor.
        target_H: (k, n) target for the H update: ``lam > 0`` adds ``lam/2 |h_j - t_j|^2`` (``G + lam I``,
            ``B + lam T``); T is compared with the un-normalised H (``diag(d) h`` with unit-sum W columns).
        target_W: (m, k) target for the W update, the same maths on W' (RcppML declares it but never wires it).
        target_lambda: scalar (applies to each target given) or a (W, H) pair. A negative value on the H side
            removes the information of target_H's classes, by ``removal``:
            ``"scatter"`` (default, recommended) minimises ``|A - W H|^2 + |lam| tr(E M E')``, the between-class
            scatter of the embedding ``E = diag(d) h`` (M projects onto class-mean differences; ``between_groups``),
            by majorize-minimize updates that cannot increase it (the reported ``loss`` is this objective;
            needs an exact NNLS, so ``solver="auto"`` picks CD); ``"proj_adv"`` is RcppML's PROJ_ADV
            (``G - |lam| a G_T``, faithful and non-convergent); ``"project"`` removes a fraction ``min(|lam|, 1)``
            of the class-mean differences from the right-hand side of the H update (``removal_project_rhs``;
            minimises no stated objective, kept for comparison).
        remove, remove_lambda: a grouping of the samples (labels, length n; missing labels are left out) whose
            between-group scatter is penalised with weight ``remove_lambda >= 0`` as ``removal="scatter"`` does,
            alongside any target: e.g. ``remove=batch`` with ``target_H=compute_target(h, cell_type)`` and a
            positive ``target_lambda`` removes the batch while enriching the cell types. The objective is then
            ``|A - W H|^2 + lam_T |E - T|^2 + remove_lambda tr(E M_batch E')``.
        w_init: explicit initial W (m, k), alternative to ``seed``.
        cd_maxit, cd_tol: inner coordinate-descent limits.
        loop: ``"while"`` stops at convergence (iterations after it cost nothing); ``"scan"`` runs ``maxit``
            masked steps, which reverse-mode autodiff can go through.
        dtype: float32 by default (like RcppML); float64 when jax x64 is enabled.
        mask: entries of A to ignore (missing data): a boolean (or 0/1) array or scipy.sparse matrix of A's shape,
            True = ignore. NaN entries of A are masked automatically (NaN is accepted only in this sense; inf in
            an observed entry is still an error). Masked entries are never read: each column of an update solves
            its own NNLS with ``G_j = F diag(o_j) F'``, ``b_j = F (o_j a_j)``; ``loss`` is the SSE over observed
            entries. A masked fit runs on the dense layout (sparse A is densified when it fits in 4 GiB, otherwise
            this raises), costs O(m n k^2) per iteration for the per-column Gram matrices, and a mask with no
            True entry runs the plain fit.
        devices: shard the samples (columns of A, H) across these devices (see ``prepare``); one fit. The
            returned arrays are replicated on every device. With several processes (``jax.distributed``) every
            process calls ``nmf`` with the same arguments and ``devices=jax.devices()`` and gets the whole model.
        max_memory_bytes: memory budget of the fit in bytes (per device with ``devices``).

    Deviations from RcppML (reference §18): ‖A‖² is summed exactly in float64 (RcppML's float32 sum is biased by
    ~5e-5 relative); the sort by d is stable; the sparse fused-CD iteration-0 quirk is not reproduced (x starts
    at 0); targets are validated; the W target works.
    """
    problem = prepare(A, k, tol=tol, maxit=maxit, seed=seed, w_init=w_init, L1=L1, L2=L2, nonneg=nonneg,
                      upper_bound=upper_bound, solver=solver, norm=norm, sort=sort, target_H=target_H,
                      target_W=target_W, target_lambda=target_lambda, removal=removal, remove=remove,
                      remove_lambda=remove_lambda, cd_maxit=cd_maxit,
                      cd_tol=cd_tol, layout=layout, loop=loop, dtype=dtype, mask=mask,
                      devices=devices, max_memory_bytes=max_memory_bytes)
    model = solve(problem)
    _check_finite(model)
    return model


def _check_finite(model: NMFModel) -> None:
    """Refuse to hand back a NaN model (e.g. a singular Gram matrix under Cholesky with nonneg=False)."""
    # On the host: eager jnp ops here would compile once per new shape.
    finite = all(bool(np.all(np.isfinite(np.asarray(x)))) for x in (model.w, model.d, model.h, model.loss))
    if not finite:
        raise FloatingPointError(
            f"the fit produced non-finite values by iteration {int(model.iter)}; the Gram matrix was probably "
            "singular (try solver='cd', an L2 penalty, or a smaller k)")
