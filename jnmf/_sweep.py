"""Research sweeps: a whole hyperparameter grid as one jit-compiled, batched computation, and differentiable fits.

``sweep(A, k, target_lambda=lams, seeds=seeds, ...)`` fits every member of the grid ``lambda x seed (x L1 x L2)``
and returns a ``SweepResult`` whose ``model`` is an ``NMFModel`` with leading grid axes. Each member runs exactly
the iterations of ``nmf()`` with the same arguments (the same ``step`` of the engine, its own stopping rule), so
member (i, j) equals ``nmf(A, k, target_lambda=lams[i], seed=seeds[j], ...)`` up to floating-point rounding.

How the grid runs. Members are dealt to ``lanes`` batch slots (``vmap`` of one engine ``step`` over the lanes,
inside one ``lax.while_loop``). A lane whose member has converged (or reached ``maxit``) writes that member's model
to the output and takes the next pending member, so a slow member never holds up the others: a plain
``vmap`` of ``solve`` would run every member for as many iterations as the slowest one (its finished members
are frozen, but their iterations are still computed). ``lanes >= members`` is that plain vmap.

Devices. With several devices the members are dealt round-robin to a ``jax.sharding.Mesh(devices, ("grid",))``
and each device runs its own queue (``jax.shard_map``); the data and hyperparameter tables are replicated.

Memory. The working set per lane and the output per member are estimated from the shapes; if the grid does not
fit in ``max_memory_bytes`` per device, it runs in host-level chunks (each a call of the same compiled program,
outputs copied to the host) and a ``SweepChunkWarning`` says so. After compilation XLA's own memory analysis is
checked against the budget as well.

Differentiable fits: ``prepare_differentiable`` fixes ``loop="scan"``, ``tol=0`` and ``cd_tol=0``, so a fit is
a fixed composition of ``maxit`` iterations and ``jax.grad`` of any scalar of the model with respect to
``target_lambda``, ``L1`` or ``L2`` (``solve`` overrides) is the exact derivative of that composition.
``class_separation`` is a differentiable label score for such objectives.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _validate as V
from ._data import memory_budget
from ._model import NMFModel
from ._options import FitOptions, check_seed, initial_w, target_grams
from ._solve import Problem, build_problem, prepare
from ._step import finish_model, init_state, running, step
from ._targets import label_codes

__all__ = ["SweepChunkWarning", "SweepResult", "class_separation", "prepare_differentiable", "sweep"]

# On a 2-core CPU, 4 lanes: 20 seeds on hawaiibirds, seconds at lanes 1 / 4 / 16 under HALS (2-row blocks in a
# loop), k = 4: 0.13 / 0.12 / 0.19, k = 8: 0.32 / 0.33 / 0.56, k = 12: 0.47 / 0.50 / 1.00 (RcppML's rule ran 4 to
# 16 lanes equally fast, 24 or more slower: the batched state leaves the caches); an accelerator computes a wide
# batch at about the cost of one member, so there every member of the chunk gets a lane.
_CPU_LANES = 4
_MEMORY_FRACTION = 0.5  # of the memory available when the sweep starts


class SweepChunkWarning(UserWarning):
    """The grid did not fit in the memory budget and runs in several chunks."""


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The fitted grid.

    Attributes:
        model: an ``NMFModel`` whose fields have the leading grid axes ``shape`` (e.g. ``model.h`` is
            ``shape + (k, n)``): jax arrays on the device for a one-device, one-chunk sweep, otherwise numpy
            arrays gathered on the host.
        axes: grid axis name -> values along it, in axis order (a subset of ``target_lambda``, ``seed``,
            ``L1``, ``L2``). ``seed`` values are the integer seeds, the keys, or ``0..S-1`` for initial matrices.
        lanes: members computed side by side per device; ``n_devices``: devices the grid was sharded over.
        n_chunks, chunk_size: host-level chunks and members per chunk (1 chunk unless memory forced more).
        lane_bytes, member_bytes: estimated working set per lane and output per member (per device budget).
        xla_bytes: temp + output bytes per device of the compiled chunk program by XLA's memory analysis
            (None where the backend does not report it).
    """

    model: NMFModel
    axes: Mapping[str, Any]
    lanes: int
    n_devices: int
    n_chunks: int
    chunk_size: int
    lane_bytes: int
    member_bytes: int
    xla_bytes: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid shape (one entry per axis in ``axes``)."""
        return tuple(int(s) for s in self.model.d.shape[:-1])

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def member(self, *index: int) -> NMFModel:
        """The model of one member, e.g. ``result.member(i, j)`` for ``(lambda_i, seed_j)``."""
        if len(index) != len(self.shape):
            raise IndexError(f"member needs {len(self.shape)} indices for a grid of shape {self.shape}")
        return jax.tree.map(lambda x: x[index], self.model)

    def diagnostics(self) -> dict[str, np.ndarray]:
        """Per-member ``iter``, ``converged``, ``loss``, ``mse`` (loss / (m n)), ``rel_change`` and ``finite``,
        as numpy arrays of the grid shape."""
        m, n = self.model.w.shape[-2], self.model.h.shape[-1]
        loss = np.asarray(self.model.loss, np.float64)
        finite = np.isfinite(loss)
        for x in (self.model.w, self.model.d, self.model.h):
            # reduce where the array lives: only the (grid,) mask crosses to the host
            xp = np if isinstance(x, np.ndarray) else jnp
            finite &= np.asarray(xp.all(xp.isfinite(x.reshape(self.shape + (-1,))), axis=-1))
        return {
            "iter": np.asarray(self.model.iter),
            "converged": np.asarray(self.model.converged),
            "loss": loss,
            "mse": loss / (m * n),
            "rel_change": np.asarray(self.model.tol, np.float64),
            "finite": finite,
        }

    def __repr__(self) -> str:
        axes = ", ".join(f"{name}[{np.shape(v)[0]}]" for name, v in self.axes.items())
        return (f"SweepResult(grid=({axes}), k={self.model.k}, lanes={self.lanes}, devices={self.n_devices}, "
                f"chunks={self.n_chunks})")


# ---------------------------------------------------------------------------------------------------------------
# grid construction (host side, before any compute)
# ---------------------------------------------------------------------------------------------------------------


def _grid_values(value: Any, name: str, **bounds: Any) -> tuple[np.ndarray, bool]:
    """A scalar (fixed), a 1-D grid of scalars, or an (n, 2) grid of (W, H) pairs -> ((n, 2) float64, is_axis)."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nesting
        raise ValueError(f"{name} must be a scalar, a 1-D grid or an (n, 2) grid of (W, H) pairs; got a ragged "
                         f"sequence {value!r}") from None
    if arr.dtype.kind not in "iuf":  # bools and objects are refused, as nmf refuses them
        raise TypeError(f"{name} must be real numbers, got {value!r}")
    if arr.ndim == 0:
        pair = V.check_pair(float(arr), name, **bounds)
        return np.asarray([pair], np.float64), False
    if arr.ndim == 1:
        if arr.size == 0:
            raise ValueError(f"{name} grid is empty")
        return np.asarray([V.check_pair(float(v), f"{name}[{i}]", **bounds) for i, v in enumerate(arr)]), True
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] > 0:
        return np.asarray([V.check_pair(row, f"{name}[{i}]", **bounds) for i, row in enumerate(arr)]), True
    raise ValueError(f"{name} must be a scalar, a 1-D grid or an (n, 2) grid of (W, H) pairs, got shape {arr.shape}")


def _initial_ws(kind: str, value: Any, is_axis: bool, problem: Problem) -> tuple[jax.Array, Any]:
    """(S, m, k) initial W stack in the problem's dtype, and the values of the seed axis (or None when fixed)."""
    m, k = problem.w_init.shape
    if not is_axis:
        return problem.w_init[None], None
    stack = initial_w(kind, value, m, k, problem.w_init.dtype)
    return stack, (np.arange(len(value)) if kind == "matrix" else value)


# ---------------------------------------------------------------------------------------------------------------
# the per-device queue
# ---------------------------------------------------------------------------------------------------------------

def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per-lane ``where`` over a batched pytree (mask has the lane axis only)."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def _device_queue(problem, lam, l1, l2, widx, n_valid, w0s, *, lanes: int):
    """Fit this device's members: lam, l1, l2 (M, 2), widx (M,) rows of w0s (S, m, k); only the first
    ``n_valid`` members are real. Returns an NMFModel with leading axis M."""
    M = lam.shape[0]
    n_valid = n_valid.reshape(())
    config, hyper = problem.config, problem.hyper
    G_TH, G_TW = target_grams(config, hyper)
    n = problem.data.shape[1]

    def member_step(i, state):
        h = dataclasses.replace(hyper, target_lambda=lam[i], L1=l1[i], L2=l2[i])
        return step(problem.replace(hyper=h), state, G_TH, G_TW)

    def fresh(members):
        return jax.vmap(lambda i: init_state(config, w0s[widx[i]], n))(jnp.minimum(members, M - 1))

    lane_ids = jnp.arange(lanes, dtype=jnp.int32)
    member = jnp.where(lane_ids < n_valid, lane_ids, M)  # M marks an empty lane
    template = jax.eval_shape(lambda: finish_model(config, init_state(config, w0s[0], n), w0s[0]))
    out = jax.tree.map(lambda s: jnp.zeros((M,) + s.shape, s.dtype), template)
    carry = (member, fresh(member), jnp.minimum(jnp.int32(lanes), n_valid), out)

    def harvest(carry, done):
        member, state, nxt, out = carry
        safe = jnp.minimum(member, M - 1)
        models = jax.vmap(lambda i, s: finish_model(config, s, w0s[widx[i]]))(safe, state)
        target = jnp.where(done, member, M)  # out-of-range rows are dropped
        out = jax.tree.map(lambda o, v: o.at[target].set(v, mode="drop"), out, models)
        # Finished lanes take the next pending members in lane order.
        candidate = nxt + jnp.cumsum(done, dtype=jnp.int32) - 1
        refill = done & (candidate < n_valid)
        member = jnp.where(done, jnp.where(refill, candidate, M), member)
        state = _select(refill, fresh(member), state)
        return member, state, jnp.minimum(nxt + jnp.sum(done, dtype=jnp.int32), n_valid), out

    def body(carry):
        member, state, nxt, out = carry
        active = member < M
        new = jax.vmap(member_step)(jnp.minimum(member, M - 1), state)
        state = _select(active & running(state, config.maxit), new, state)
        done = active & ~running(state, config.maxit)
        carry = (member, state, nxt, out)
        # Harvesting touches every lane's factors; most iterations finish nobody, so skip it then.
        return lax.cond(jnp.any(done), harvest, lambda c, _: c, carry, done)

    carry = lax.while_loop(lambda c: jnp.any(c[0] < M), body, carry)
    return carry[3]


@functools.lru_cache(maxsize=64)
def _runner(mesh: Mesh, lanes: int):
    """The jit-compiled, shard_mapped queue for one mesh and lane count (cached: one compile per shape)."""
    fn = functools.partial(_device_queue, lanes=lanes)
    grid = P("grid")
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), grid, grid, grid, grid, grid, P()), out_specs=grid,
                           check_vma=False)
    return jax.jit(mapped)


# ---------------------------------------------------------------------------------------------------------------
# memory plan
# ---------------------------------------------------------------------------------------------------------------


def _footprint(problem: Problem) -> tuple[int, int]:
    """(bytes per lane, bytes per member's output), from the shapes.

    A lane holds the iterate W (k, m), H (k, n) and its candidate successor, the products F A (k, n) and H A'
    (k, m), the solver's right-hand side and solution (and CD residual), and the loss history: about
    8 k (m + n) + maxit values, with masked data's per-column and per-row Gram matrices on top (the sparse layout
    gathers one block of its non-zeros at a time, so it adds little). XLA's own temp allocation for hawaiibirds
    is ~2.6 k (m + n) per lane, so this errs on the safe side; ``sweep`` checks XLA's count after compiling.
    """
    m, n = problem.data.shape
    k, maxit = problem.config.k, problem.config.maxit
    item = jnp.dtype(problem.w_init.dtype).itemsize
    lane = 8 * k * (m + n) + 6 * k * k + 2 * maxit + m * k
    if getattr(problem.config, "masked", False):  # one k x k Gram matrix per column and per row, and solves
        lane += 3 * (m + n) * k * k
    member = 2 * m * k + k * n + k + maxit + 8
    return lane * item, member * item


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def _plan(n_members: int, n_dev: int, lanes: int | None, platform: str, lane_bytes: int, member_bytes: int,
          budget: int) -> tuple[int, int, int]:
    """(lanes, members per device per chunk, chunks) that fit ``budget`` bytes per device."""
    per_dev = -(-n_members // n_dev)
    if lanes is None:
        lanes = _CPU_LANES if platform == "cpu" else per_dev
    lanes = max(1, min(lanes, per_dev))
    if lane_bytes + member_bytes > budget:
        raise MemoryError(f"sweep: one member needs about {_mib(lane_bytes + member_bytes)}, more than the budget "
                          f"of {_mib(budget)} per device (max_memory_bytes)")
    lanes = min(lanes, (budget - member_bytes) // lane_bytes)
    fit = (budget - lanes * lane_bytes) // member_bytes  # >= 1 by the line above
    chunks = -(-per_dev // fit)
    chunk = -(-per_dev // chunks)  # balance the chunks
    return int(min(lanes, chunk)), int(chunk), int(chunks)


# ---------------------------------------------------------------------------------------------------------------
# sweep
# ---------------------------------------------------------------------------------------------------------------


def sweep(
    A: Any,
    k: int,
    *,
    target_lambda: Any = 0.0,
    seeds: Any = None,
    L1: Any = 0.0,
    L2: Any = 0.0,
    lanes: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    max_memory_bytes: int | None = None,
    **options: Any,
) -> SweepResult:
    """Fit a grid of NMF models (``target_lambda x seeds x L1 x L2``) in one batched, jit-compiled computation.

    Each argument is either fixed or a grid axis: ``target_lambda``, ``L1``, ``L2``: a scalar is fixed, a 1-D
    sequence is an axis of scalars (each applied as ``nmf`` applies a scalar), an (n, 2) array an axis of (W, H)
    pairs (a fixed pair is a (1, 2) axis). ``seeds``: an int (R's ``set.seed``; reproduces ``nmf(seed=...)``), a
    ``jax.random`` key, or an (m, k) initial W are fixed; a 1-D sequence of ints, a 1-D key array
    (``jax.random.split``), or an (S, m, k) stack of initial W matrices is an axis; None draws one fresh seed.
    The result's grid axes are the given axes in the order target_lambda, seed, L1, L2.

    Member (i, j, ...) equals ``nmf(A, k, target_lambda=lams[i], seed=seeds[j], ..., **options)``: the same
    iterations and stopping rule, each member stopping on its own. Differences are floating-point rounding of
    batched versus single products (~1e-7 relative in float32, ~1e-15 in float64); a member whose relative loss
    change lands within that rounding of ``tol`` may stop one iteration earlier or later in float32. With
    ``solver="auto"`` the solver is resolved once for the grid (``"cd"`` if any L1 is non-zero).

    Args:
        A, k, options: as ``nmf`` (``tol``, ``maxit``, ``target_H``, ``target_W``, ``removal``, ``solver``,
            ``norm``, ``layout``, ``dtype``, ...). ``seed``, ``w_init`` and ``loop`` are not accepted.
        lanes: members computed side by side per device; a lane whose member finishes takes the next one.
            Default: 4 per CPU device (larger batches ran slower per member on a CPU), every member on an
            accelerator. ``lanes`` >= the grid size is a plain ``vmap`` of the grid.
        devices: devices to shard the grid over (default ``jax.devices()``); members are dealt round-robin.
            With several processes (``jax.distributed``) every process calls ``sweep`` with the same arguments
            and gets the whole grid as numpy arrays (tests/test_multihost.py); give ``max_memory_bytes`` there,
            so that every process plans the same chunks.
        max_memory_bytes: budget per device (default: half of the free device memory, or of the free host memory
            shared by CPU devices). A grid that does not fit runs in chunks, with a ``SweepChunkWarning``.

    Returns a ``SweepResult``; ``result.model`` has the grid axes leading, ``result.diagnostics()`` per-member
    iterations, convergence, loss, MSE and finiteness. Members with non-finite values are reported by a
    ``RuntimeWarning`` (``nmf`` would raise for them).
    """
    for bad, hint in (("seed", "use seeds="), ("w_init", "pass initial matrices as seeds="),
                      ("loop", "sweeps run the forward driver; use prepare_differentiable for gradients")):
        if bad in options:
            raise TypeError(f"sweep() got an unexpected keyword argument {bad!r} ({hint})")
    lam_pairs, lam_axis = _grid_values(target_lambda, "target_lambda")
    l1_pairs, l1_axis = _grid_values(L1, "L1", low=0.0, high=1.0, high_open=True)
    l2_pairs, l2_axis = _grid_values(L2, "L2", low=0.0)
    m = getattr(A, "shape", np.shape(A))[0]
    kind, seed_value = check_seed(seeds, "seeds", (m, k), axis=True)
    seed_axis = kind != "none" and np.ndim(seed_value) == {"int": 1, "key": 1, "rawkey": 2, "matrix": 3}[kind]
    first_seed = seed_value[0] if seed_axis else seed_value
    init = {"w_init": first_seed} if kind == "matrix" else {"seed": first_seed}

    present = (options.get("target_W") is not None, options.get("target_H") is not None)
    if np.ndim(target_lambda) <= 1:  # scalars act on every target given (nmf's rule), so only those sides
        if not any(present) and np.any(lam_pairs != 0):
            raise ValueError("target_lambda has non-zero values but target_H and target_W are None; give a target "
                             "or leave target_lambda at 0")
        lam_pairs[:, ~np.asarray(present)] = 0.0
    else:
        for side, name in ((0, "target_W"), (1, "target_H")):
            if not present[side] and np.any(lam_pairs[:, side] != 0):
                raise ValueError(f"target_lambda for the {'W' if side == 0 else 'H'} side has non-zero values "
                                 f"but {name} is None")
    # Everything else is validated as prepare() does, and "auto" picks the solver for the whole grid.
    problem = build_problem(A, k, FitOptions.of("sweep", {**init, **options}), L1_grid=l1_pairs,
                            lambda_grid=lam_pairs)
    w0s, seed_values = _initial_ws(kind, seed_value, seed_axis, problem)

    axes: dict[str, Any] = {}
    sizes = []
    columns = []
    for name, values, is_axis, n_values in (
        ("target_lambda", lam_pairs, lam_axis, len(lam_pairs)),
        ("seed", seed_values, seed_axis, w0s.shape[0]),
        ("L1", l1_pairs, l1_axis, len(l1_pairs)),
        ("L2", l2_pairs, l2_axis, len(l2_pairs)),
    ):
        if is_axis:
            raw = {"target_lambda": target_lambda, "L1": L1, "L2": L2}.get(name)
            axes[name] = values if name == "seed" else np.asarray(raw, np.float64)
            sizes.append(n_values)
        columns.append(n_values)
    shape = tuple(sizes)
    # Flat member table in C order over the full (lambda, seed, L1, L2) product; fixed entries have size 1.
    idx = np.indices(columns).reshape(len(columns), -1)
    dtype = problem.w_init.dtype
    table = (jnp.asarray(lam_pairs[idx[0]], dtype), jnp.asarray(l1_pairs[idx[2]], dtype),
             jnp.asarray(l2_pairs[idx[3]], dtype), jnp.asarray(idx[1], jnp.int32))
    n_members = idx.shape[1]

    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    n_dev = len(devices)
    if lanes is not None:
        lanes = V.check_int(lanes, "lanes", 1)
    budget = memory_budget(devices) if max_memory_bytes is None else V.check_int(max_memory_bytes,
                                                                                  "max_memory_bytes", 1)
    lane_bytes, member_bytes = _footprint(problem)
    lanes_used, per_dev, n_chunks = _plan(n_members, n_dev, lanes, devices[0].platform, lane_bytes, member_bytes,
                                          budget)
    mesh = Mesh(np.asarray(devices), ("grid",))
    problem = jax.device_put(problem, NamedSharding(mesh, P()))
    w0s = jax.device_put(w0s, NamedSharding(mesh, P()))

    # XLA's own accounting of the compiled program is the last word: shrink until it fits the budget.
    while True:
        chunk = per_dev * n_dev
        runner = _runner(mesh, lanes_used)
        args = _chunk_args(table, 0, chunk, n_members, n_dev, mesh)
        compiled = runner.lower(problem, *args, w0s).compile()
        used = _compiled_bytes(compiled, (runner, *_signature((problem, *args, w0s))))
        if used is None or used <= budget or per_dev == 1:
            break
        scale = budget / used
        per_dev = max(1, int(per_dev * scale))
        lanes_used = max(1, min(lanes_used, per_dev, int(lanes_used * scale)))
        n_chunks = -(-n_members // (per_dev * n_dev))
    if used is not None and used > budget:
        raise MemoryError(f"sweep: one member per device needs {_mib(used)} by XLA's count, more than the budget "
                          f"of {_mib(budget)} (max_memory_bytes)")
    if n_chunks > 1:
        need = lanes_used * lane_bytes + per_dev * member_bytes
        warnings.warn(
            f"sweep: grid of {n_members} members split into {n_chunks} chunks of {chunk} (about {_mib(need)} per "
            f"device per chunk, budget {_mib(budget)} per device); outputs are gathered on the host",
            SweepChunkWarning, stacklevel=2)

    # One device and one chunk: the model stays on the device. Otherwise it is gathered on the host, so that
    # neither the whole grid on one device nor a replicated copy per device is ever needed.
    on_host = n_chunks > 1 or n_dev > 1 or chunk != n_members
    parts = []
    for c in range(n_chunks):
        start = c * chunk
        args = args if c == 0 else _chunk_args(table, start, chunk, n_members, n_dev, mesh)
        out = compiled(problem, *args, w0s)
        real = min(chunk, n_members - start)
        if on_host:
            # Undo the round-robin deal (member p of the chunk sits at row (p % n_dev) * per_dev + p // n_dev) on
            # the host: a permutation of a sharded array would replicate it on every device.
            p = np.arange(real)
            rows = (p % n_dev) * per_dev + p // n_dev
            out = jax.tree.map(lambda x, rows=rows: _host(x)[rows], out)
        # else: one device, one chunk of exactly the grid, rows already in member order
        parts.append(out)
    model = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts) if on_host else parts[0]
    model = jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), model)
    result = SweepResult(model=model, axes=MappingProxyType(axes), lanes=lanes_used, n_devices=n_dev,
                         n_chunks=n_chunks, chunk_size=chunk, lane_bytes=lane_bytes, member_bytes=member_bytes,
                         xla_bytes=used)
    bad = int(np.sum(~result.diagnostics()["finite"]))
    if bad:
        warnings.warn(f"sweep: {bad} of {n_members} members produced non-finite values (see diagnostics()"
                      "['finite']); nmf() would raise FloatingPointError for them", RuntimeWarning, stacklevel=2)
    return result


def _host(x: jax.Array) -> np.ndarray:
    """A sharded output on the host; with devices of several processes (``jax.distributed``), every process
    gathers the whole array (each holds only its own devices' members)."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _chunk_args(table, start: int, chunk: int, n_members: int, n_dev: int, mesh: Mesh):
    """Member rows ``start .. start + chunk`` dealt round-robin to devices, padded with copies of the last member
    (never computed: each device gets its count of real members)."""
    per_dev = chunk // n_dev
    p = np.arange(chunk)
    src = np.minimum(start + p, n_members - 1)
    rows = np.empty(chunk, np.int64)
    rows[(p % n_dev) * per_dev + p // n_dev] = src
    real = min(chunk, n_members - start)
    n_valid = np.asarray([len(range(d, real, n_dev)) for d in range(n_dev)], np.int32)
    sharding = NamedSharding(mesh, P("grid"))
    picked = [jax.device_put(col[rows], sharding) for col in table]
    return (*picked, jax.device_put(jnp.asarray(n_valid), sharding))


_MEMORY_STATS: dict[Any, int | None] = {}


def _signature(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, *((x.shape, str(x.dtype)) for x in leaves))


def _compiled_bytes(compiled: Any, key: tuple) -> int | None:
    """Temp + output bytes per device of a compiled program (None if the backend does not say); cached because
    the analysis costs ~20 ms and the same program serves every sweep of the same shapes."""
    if key not in _MEMORY_STATS:
        try:
            stats = compiled.memory_analysis()
        except Exception:  # not every backend reports it
            stats = None
        _MEMORY_STATS[key] = None if stats is None else int(stats.temp_size_in_bytes + stats.output_size_in_bytes)
    return _MEMORY_STATS[key]


# ---------------------------------------------------------------------------------------------------------------
# differentiable fits
# ---------------------------------------------------------------------------------------------------------------


def prepare_differentiable(A: Any, k: int, *, maxit: int = 50, **options: Any) -> Problem:
    """``prepare`` for gradients: ``loop="scan"``, ``tol=0`` and ``cd_tol=0``, so ``solve`` runs exactly ``maxit``
    iterations (each CD solve exactly ``cd_maxit`` sweeps) and is a fixed, piecewise-smooth function of
    ``target_lambda``, ``L1``, ``L2`` and ``w_init``.

    ``jax.grad(lambda lam: f(solve(problem, target_lambda=lam)))`` is then the exact derivative of the
    ``maxit``-step fit (reverse mode through ``lax.scan``). With a stopping rule the number of iterations would
    jump with the hyperparameters and the fit would not be differentiable there. The non-smooth points are where
    an entry of a factor crosses 0 (the non-negativity clip or an active-set change) or two components swap
    order in the sort; away from them the fit is smooth.
    """
    for bad in ("loop", "tol", "cd_tol"):
        if bad in options:
            raise TypeError(f"prepare_differentiable() fixes {bad}; it got {bad}={options[bad]!r}")
    return prepare(A, k, maxit=maxit, loop="scan", tol=0.0, cd_tol=0.0, **options)


def class_separation(x: NMFModel | jax.Array, labels: Any) -> jax.Array:
    """Between-class share of the embedding's scatter, a differentiable label score in [0, 1].

    For the embedding E = (diag(d) h)' (n, k) of a model (or an (n, k) array), over the labelled samples:
    ``sum_c n_c |mu_c - mu|^2 / sum_j |e_j - mu|^2`` (class means mu_c, overall mean mu). 1 means every class
    collapses to its mean; 0 means class means coincide. Labels are encoded on the host (missing -> unlabelled),
    so only ``x`` may be traced.
    """
    E = x.embedding() if isinstance(x, NMFModel) else jnp.asarray(x)
    if E.ndim != 2:
        raise ValueError(f"x must be an NMFModel or an (n, k) embedding, got shape {E.shape}")
    codes, levels = label_codes(labels, E.shape[0])
    onehot = jax.nn.one_hot(jnp.asarray(codes), max(len(levels), 1), dtype=E.dtype)  # missing: all-zero row
    counts = jnp.sum(onehot, axis=0)
    labelled = jnp.sum(onehot, axis=1)
    n_labelled = jnp.sum(counts)
    mu = jnp.dot(labelled, E, precision=lax.Precision.HIGHEST) / n_labelled
    sums = jnp.dot(onehot.T, E, precision=lax.Precision.HIGHEST)  # (C, k)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    between = jnp.sum(counts[:, None] * (means - mu) ** 2)
    total = jnp.sum(labelled[:, None] * (E - mu) ** 2)
    return between / total
