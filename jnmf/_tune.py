"""Choosing the removal strength for the user: the largest ``remove_lambda`` whose label structure stays within a
tolerance of the unintegrated fit, found by Newton steps on gradients through the fit and checked on a grid."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._solve import solve
from ._sweep import class_separation, prepare_differentiable


@dataclasses.dataclass(frozen=True)
class RemovalTuning:
    """Result of ``tune_removal``.

    ``lam``: the chosen ``remove_lambda`` (Newton on the differentiable fit); ``grid_lam``: the grid's answer
    (largest grid value meeting the constraint, or 0); ``bio0``/``bio``: label separation of the unintegrated fit
    and at ``lam``; ``batch0``/``batch``: batch separation there (lower = better mixed); ``grid``: per grid value
    ``(lam, batch separation, label separation)``; ``steps``: Newton iterates ``(lam, label separation)``.
    """

    lam: float
    grid_lam: float
    bio0: float
    bio: float
    batch0: float
    batch: float
    grid: tuple[tuple[float, float, float], ...]
    steps: tuple[tuple[float, float], ...]


def tune_removal(A: Any, k: int, batch: Any, labels: Any, *, bio_tolerance: float = 0.05,
                 grid: Any = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0), maxit: int = 60, newton_steps: int = 8,
                 **options: Any) -> RemovalTuning:
    """The largest ``remove_lambda`` for ``nmf(A, k, remove=batch)`` whose label separation stays within
    ``bio_tolerance`` of the unintegrated fit's: ``max lam  s.t.  S_labels(lam) >= S_labels(0) - bio_tolerance``.

    ``S_g(lam) = class_separation(model(lam), g)`` is the between-group share of the embedding's scatter (a
    differentiable stand-in for scib's batch and bio scores: removal lowers ``S_batch``, and the constraint keeps
    ``S_labels``). The fit is ``prepare_differentiable`` (``maxit`` fixed iterations), so ``dS/dlam`` is exact and
    the boundary ``S_labels(lam) = S_labels(0) - tol`` is found by Newton steps in ``log lam``, started from the
    grid's bracket; the grid (one ``vmap`` of the same compiled fit) gives the check. ``options`` go to ``nmf``
    (``seed`` fixes the initial W; default 0). Returns a ``RemovalTuning``.
    """
    bio_tolerance = V.check_real(bio_tolerance, "bio_tolerance", low=0.0)
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(grid <= 0):
        raise ValueError(f"grid must be a non-empty 1-D sequence of positive lambdas, got {grid!r}")
    grid = np.sort(grid)
    options.setdefault("seed", 0)
    problem = prepare_differentiable(A, k, maxit=maxit, remove=batch, remove_lambda=0.0, **options)

    def scores(lam):
        model = solve(problem, remove_lambda=lam)
        return class_separation(model, batch), class_separation(model, labels)

    batch0, bio0 = (float(x) for x in jax.jit(scores)(0.0))
    floor = bio0 - bio_tolerance
    s_batch, s_bio = jax.jit(jax.vmap(scores))(jnp.asarray(grid, problem.hyper.tol.dtype))
    s_batch, s_bio = np.asarray(s_batch, np.float64), np.asarray(s_bio, np.float64)
    ok = s_bio >= floor
    grid_lam = float(grid[ok].max()) if ok.any() else 0.0

    # Newton on g(t) = S_labels(e^t) - floor, from the last feasible grid point (or below the first one).
    g_and_dg = jax.jit(jax.value_and_grad(lambda t: scores(jnp.exp(t))[1] - floor))
    t = float(np.log(grid_lam if grid_lam > 0 else grid[0] / 10))
    lo, hi = -np.inf, np.inf  # keeps the iterates inside the bracket where g changes sign
    steps = []
    for _ in range(newton_steps):
        g, dg = (float(x) for x in g_and_dg(t))
        steps.append((float(np.exp(t)), g + floor))
        if g >= 0:
            lo = max(lo, t)
        else:
            hi = min(hi, t)
        if abs(g) < 1e-4 * max(bio_tolerance, 1e-3):
            break
        t_new = t - g / dg if dg < 0 else t + 1.0
        if np.isfinite(lo) and np.isfinite(hi) and not lo < t_new < hi:
            t_new = 0.5 * (lo + hi)
        t = float(np.clip(t_new, np.log(grid[0]) - 5, np.log(grid[-1]) + 3))
    # the chosen value must meet the constraint: the largest feasible iterate
    feasible = [lam for lam, bio in steps if bio >= floor]
    lam = max(feasible) if feasible else 0.0
    b, s = (float(x) for x in jax.jit(scores)(lam))
    return RemovalTuning(lam=lam, grid_lam=grid_lam, bio0=bio0, bio=s, batch0=batch0, batch=b,
                         grid=tuple(zip(grid.tolist(), s_batch.tolist(), s_bio.tolist(), strict=True)),
                         steps=tuple(steps))
