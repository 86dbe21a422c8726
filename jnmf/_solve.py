"""The one iteration driver: ``prepare`` validates and builds a ``Problem``; ``solve`` runs it under jit.

Functional use (what ``nmf`` does, and what grids are built from)::

    problem = jnmf.prepare(A, 8, seed=42, target_H=T, target_lambda=0.1)   # validated, outside jit
    model = jnmf.solve(problem)                                             # jit-compiled
    models = jax.vmap(lambda lam: jnmf.solve(problem, target_lambda=lam))(lams)   # one compile, batched

A ``Problem`` is a pytree: the data (a ``DataLayout``), the hyperparameters (``Hyper``: tol, L1, L2, upper
bounds, target lambdas and targets, all arrays) and the initial W are leaves; the structural choices (``Config``)
are static. A new lambda, L1, L2, tol or initial W therefore reuses the compiled program. Options are validated
once, by ``FitOptions.resolve`` (``_options``); one iteration is ``_step.step`` (an H half and a W half);
the data's layout is chosen by ``_data.placement``. Convergence: relative change of the loss (the total squared
error, plus the scatter penalty when there is one) below ``tol`` on 5 consecutive iterations.

Missing data (``mask``, or NaN in A): the data carry a boolean mask and each column j of an update solves its own
NNLS with ``G_j = F diag(o_j) F'`` and ``b_j = F (o_j * a_j)`` (o_j: 1 for observed entries of that column), so
masked entries never enter the fit; the loss is then the SSE over observed entries, formed directly.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _log
from . import _validate as V
from ._data import DataLayout, place
from ._input import check_scale, split_mask, squared_norm
from ._losses import check_loss, check_loss_overrides, place_loss_data
from ._model import NMFModel
from ._options import (
    Config,
    FitOptions,
    Hyper,
    check_dtype,
    check_overrides,
    check_seed,
    initial_w,
    signature_of,
    target_grams,
)
from ._step import finish_model, init_state, running, step

__all__ = ["Config", "Hyper", "Problem", "nmf", "prepare", "solve"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Problem:
    """Everything a fit needs; a pytree whose leaves are arrays and whose ``config`` is static."""

    data: DataLayout
    hyper: Hyper
    w_init: jax.Array
    sq_norm: jax.Array
    config: Config = dataclasses.field(metadata=dict(static=True))

    def replace(self, **changes: Any) -> Problem:
        return dataclasses.replace(self, **changes)


def prepare(A: Any, k: int, **options: Any) -> Problem:
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
    return build_problem(A, k, FitOptions.of("prepare", options))


def build_problem(A: Any, k: Any, opts: FitOptions, *, L1_grid: Any = None, lambda_grid: Any = None) -> Problem:
    """``prepare`` with the options already collected, for entry points that fit grids (``sweep``: ``L1_grid``
    and ``lambda_grid``, (G, 2) arrays of (W, H) pairs, let ``solver="auto"`` choose for the whole grid)."""
    dtype = check_dtype(opts.dtype)  # first: split_mask needs its size
    # Before check_data: masked entries (and NaN, which is masked) are zeroed, so their values are never checked.
    A, M = split_mask(A, opts.mask, dtype.itemsize, opts.layout)
    A = V.check_data(A)
    check_scale(A, dtype.itemsize)
    m, n = A.shape
    if opts.loss_mode == "rcppml":
        raise ValueError("loss_mode='rcppml' (RcppML's IRLS, jnmf._irls) runs through nmf() only; prepare, solve and "
                         "sweep fit jnmf's losses (loss_mode='jnmf')")
    plan = opts.resolve(m, n, k, masked=M is not None, L1_grid=L1_grid, lambda_grid=lambda_grid)
    if plan.config.loss == "mse":
        data = place(A, plan.dtype, plan.layout, M, plan.config.k, plan.devices, plan.max_memory_bytes,
                     plan.sparse_kernel)
    else:
        data = place_loss_data(A, plan, M)
    return Problem(data=data, hyper=plan.hyper, w_init=plan.w0, sq_norm=jnp.asarray(squared_norm(A), plan.dtype),
                   config=plan.config)


def solve(problem: Problem, *, target_lambda: Any = None, L1: Any = None, L2: Any = None, tol: Any = None,
          w_init: Any = None, remove_lambda: Any = None, power: Any = None, delta: Any = None,
          dispersion: Any = None) -> NMFModel:
    """Run a prepared fit; keyword overrides replace array hyperparameters (they may be traced, e.g. vmapped).

    ``target_lambda`` as a scalar applies to every target present; as a (W, H) pair it sets each side. Concrete
    overrides are validated as ``prepare`` validates them (same errors); traced ones are taken as they are.
    ``power`` (tweedie), ``delta`` (huber/mae) and a fixed NB ``dispersion`` are the loss's array leaves:
    ``jax.vmap(lambda p: solve(problem, power=p))(powers)`` fits a grid with one compiled program.
    Returns an ``NMFModel``; jit-compiled once per ``Config`` and array shapes.
    """
    hyper = check_overrides(problem.config, problem.hyper, target_lambda=target_lambda, L1=L1, L2=L2, tol=tol,
                            remove_lambda=remove_lambda)
    hyper = check_loss_overrides(problem.config, hyper, power=power, delta=delta, dispersion=dispersion)
    problem = problem.replace(hyper=hyper)
    if w_init is not None:
        problem = problem.replace(w_init=jnp.asarray(w_init, problem.w_init.dtype))
    model = _solve_jit(problem)
    if problem.data.host_lifetime and not isinstance(model.d, jax.core.Tracer):
        # The host kernel reads A from a registry entry owned by problem.data: finish while it is alive.
        model = jax.block_until_ready(model)
    if problem.data.n_valid is not None:  # sharded over a device mesh
        model = _unshard(model, problem.data)
    return model


def _unshard(model: NMFModel, data: DataLayout) -> NMFModel:
    """A sharded fit's model with h's mesh-padding columns dropped and every array replicated on every device
    of the mesh: each process (after ``jax.distributed.initialize()``) then holds the whole model, and
    ``np.asarray`` works on every process. Within a trace over the problem itself (``jit(solve)``), where the mesh
    of a dense A is not known, only the padding is dropped."""
    n_valid, mesh = data.n_valid, data.mesh
    if mesh is None:
        return dataclasses.replace(model, h=model.h[:, :n_valid]) if n_valid != data.shape[1] else model
    return _replicate(model, n_valid, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _replicate(model: NMFModel, n_valid: int, replicated: jax.sharding.NamedSharding) -> NMFModel:
    model = dataclasses.replace(model, h=model.h[:, :n_valid])
    return jax.tree.map(lambda x: lax.with_sharding_constraint(x, replicated), model)


@jax.jit
def _solve_jit(problem: Problem) -> NMFModel:
    config = problem.config
    if config.masked != (getattr(problem.data, "mask", None) is not None):
        raise ValueError(f"Config.masked is {config.masked} but the data {'lack' if config.masked else 'carry'} "
                         "a mask; build problems with prepare()")
    G_TH, G_TW = target_grams(config, problem.hyper)
    state = init_state(config, problem.w_init, problem.data.shape[1])
    if config.loop == "while":
        state = lax.while_loop(lambda s: running(s, config.maxit), lambda s: step(problem, s, G_TH, G_TW), state)
    else:
        # Fixed-length scan: reverse-mode differentiable; finished iterations are masked no-ops.
        def body(s, _):
            new = step(problem, s, G_TH, G_TW)
            keep = running(s, config.maxit)
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, s), None

        state, _ = lax.scan(body, state, None, length=config.maxit)
    return finish_model(config, state, problem.w_init)


def nmf(A: Any, k: int, **options: Any) -> NMFModel:
    """Non-negative matrix factorization ``A ≈ w diag(d) h`` by alternating NNLS, as RcppML 1.0.0's ``nmf()``.

    Minimises ``|A - W H|_F^2`` (+ penalties) over W (m, k) >= 0 and H (k, n) >= 0 for A (m, n): features in
    rows, samples in columns. Returns an ``NMFModel`` with unit-scaled ``w`` columns and ``h`` rows (``norm``)
    and the scales ``d``, sorted by d descending (``sort``).

    Args:
        A: (m, n) non-negative data: numpy, jax or scipy.sparse. ``layout="auto"`` keeps dense input dense and
            densifies sparse input only when it has >= 20% non-zeros on CPU (6% on accelerators) or at most 4M
            entries, each only when its working set fits the memory budget (``max_memory_bytes``, default half
            of physical memory; ``estimate_memory``), else the other layout; ``MemoryError`` when neither fits.
            The sparse path runs in O(nnz k) memory and time per product, never forming the dense matrix: on CPU
            a compiled CSR kernel called from the jit-compiled fit (``HostSparseData``; reverse-mode
            differentiable, not forward-mode), on accelerators XLA gathers (``SparseData``).
        k: rank, ``1 <= k <= min(m, n)``; ``"auto"`` chooses it by ``cross_validate`` over 2..min(20, m-1, n-1)
            with three replicates (``_cv.auto_rank``; RcppML's ``k = "auto"``), then fits at that rank.
        tol, maxit: stop when the relative change of the total squared error stays below ``tol`` for 5
            consecutive iterations (RcppML's rule), or after ``maxit`` iterations.
        seed: an int reproduces RcppML exactly (R's ``set.seed(seed); runif(m*k)``, column-major); a
            ``jax.random`` key draws W with JAX; an (m, k) matrix is used as the initial W. ``None``: a fresh seed.
        L1, L2: lasso (``B - L1``, 0 <= L1 < 1) and ridge (``G + L2 I``) per factor; a scalar or a (W, H) pair.
        nonneg: non-negativity per factor (scalar or (W, H)).
        solver: ``"cholesky"`` (solve then clip at 0: RcppML's default when k < 32 and L1 = 0; not exact NNLS),
            ``"cd"`` (sequential coordinate descent, exact NNLS to ``cd_tol``/``cd_maxit``), ``"bpp"`` (block
            principal pivoting, exact NNLS), ``"hals"`` (warm-started coordinate descent, at most 10 sweeps per
            update: inexact, never increases the objective; the fastest to a given loss in
            ``experiments/bench_converge.py``), ``"rcppml"`` (RcppML's rule: Cholesky when k < 32 and no L1, else
            CD) or ``"auto"`` (RcppML's rule below k = 32, HALS from 32 on; see ``_options.resolve_solver``).
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
            each update descends its surrogate from the current factor: ``solver="auto"`` is CD below k = 32,
            HALS from 32); ``"proj_adv"`` is RcppML's PROJ_ADV
            (``G - |lam| a G_T``, faithful and non-convergent); ``"project"`` removes a fraction ``min(|lam|, 1)``
            of the class-mean differences from the right-hand side of the H update (``removal_project_rhs``;
            minimises no stated objective, kept for comparison).
        remove, remove_lambda: a grouping of the samples (labels, length n; missing labels are left out) whose
            between-group scatter is penalised with weight ``remove_lambda >= 0`` as ``removal="scatter"`` does,
            alongside any target: e.g. ``remove=batch`` with ``target_H=compute_target(h, cell_type)`` and a
            positive ``target_lambda`` removes the batch while enriching the cell types. The objective is then
            ``|A - W H|^2 + lam_T |E - T|^2 + remove_lambda tr(E M_batch E')`` (loss="mse" only), the reported
            ``loss``; the W update majorizes the target term's dependence on W's scale, so it never increases.
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
        max_memory_bytes: memory budget of the fit in bytes (per device with ``devices``; default
            ``memory_budget``: half of physical memory, or of an accelerator's).
        sparse_kernel: the sparse layout's kernel: ``"auto"`` (``"host"``, the CPU CSR kernel, on CPU; ``"ell"``,
            XLA gathers, elsewhere), ``"host"`` or ``"ell"``.

        loss: the objective, ``sum_ij o_ij D(a_ij | mu_ij)`` over every observed entry (zeros included, for sparse
            and dense input alike; ``_losses`` states each D and its update): ``"mse"`` (default, the squared error
            above), ``"poisson"`` (alias ``"kl"``: ``a log(a/mu) - a + mu``), ``"nb"`` (negative binomial NLL, size
            ``dispersion``), ``"gamma"`` (Itakura-Saito; zeros are treated as missing), ``"tweedie"`` (the
            beta-divergence with beta = 2 - ``power``; zeros missing for power >= 2; ``"inverse_gaussian"`` is
            power 3), ``"huber"`` (``delta``) and ``"mae"`` (smoothed, ``delta`` default 1e-4). Each half is a
            majorize-minimize step, so the reported ``loss`` (+ scatter penalty) never increases. Non-MSE losses
            ignore ``solver`` (it must stay ``"auto"``; huber/mae also take ``"cd"``: their weighted NNLS is CD
            warm-started at the current factor), need ``nonneg=True`` for the multiplicative ones, accept L1, L2,
            targets (lam > 0) and the scatter removal (every loss; gamma/tweedie take no L2), refuse
            ``removal="proj_adv"``/``"project"`` removals. Only poisson can keep sparse input sparse
            (``layout="sparse"``, or ``"auto"`` when dense does not fit the memory budget; the other losses need
            the model at every entry), on one device: with ``devices=`` every loss takes the dense layout split
            by columns. ``nmf_chunked`` takes every loss.
        power: Tweedie power p in [1, 3] (default 1.5, RcppML's); an array leaf (``solve(problem, power=p)``).
        delta: Huber / MAE threshold > 0 (default 1.345 for huber, 1e-4 for mae); an array leaf.
        dispersion: NB size r: a number or (m,) array (fixed; an array leaf), or ``"per_row"`` (default) /
            ``"global"``: maximum likelihood, updated after every W half by safeguarded Newton steps.
        robust: RcppML's spelling: ``True`` is ``loss="huber", delta=1.345``, ``"mae"`` is ``loss="mae"``, a number
            is a Huber delta (on raw residuals here; RcppML's are Pearson residuals of its distribution).
        loss_mode: ``"jnmf"`` (default: the losses above) or ``"rcppml"`` (RcppML's IRLS, ``jnmf._irls``).

    Deviations from RcppML (reference §18): ‖A‖² is summed exactly in float64 (RcppML's float32 sum is biased by
    ~5e-5 relative); the sort by d is stable; the sparse fused-CD iteration-0 quirk is not reproduced (x starts
    at 0); targets are validated; the W target works.
    """
    if options.get("loss_mode", "jnmf") == "rcppml":
        model = _rcppml_loss(A, k, FitOptions.of("nmf", options))[0]
        _log.warn_if_not_converged(model, tol=options.get("tol", 1e-4))
        return model
    if isinstance(k, str) and k == "auto":  # RcppML's k = "auto": the rank cross-validation picks
        from ._cv import auto_rank

        FitOptions.of("nmf", options)  # unknown options are refused before the cross-validation runs
        k = auto_rank(A, **{name: value for name, value in options.items() if name not in ("target_H", "target_W")})
    model = solve(build_problem(A, k, FitOptions.of("nmf", options)))
    check_finite(model)
    _log.warn_if_not_converged(model, loop=options.get("loop", "while"), tol=options.get("tol", 1e-4))
    return model


# The options RcppML's IRLS path takes (``_irls.fit_rcppml_loss``); any other one set away from its default is
# refused there rather than ignored.
_RCPPML_LOSS_OPTIONS = ("tol", "maxit", "seed", "w_init", "L1", "L2", "cd_maxit", "dtype", "loss", "power",
                        "dispersion", "robust", "loss_mode", "solver")


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (np.ndim(value) == 0 and np.ndim(default) == 0 and value == default)


def _rcppml_loss(A: Any, k: Any, opts: FitOptions) -> tuple[NMFModel, dict]:
    """``nmf(..., loss_mode="rcppml")``: RcppML's IRLS fit (``_irls.fit_rcppml_loss``, which checks A and its own
    arguments) with nmf's seed rule."""
    from ._irls import fit_rcppml_loss

    check_loss(opts)
    defaults = FitOptions()
    for field in dataclasses.fields(FitOptions):
        if field.name not in _RCPPML_LOSS_OPTIONS and not _is_default(getattr(opts, field.name),
                                                                      getattr(defaults, field.name)):
            raise ValueError(f"{field.name}= does not apply to loss_mode='rcppml' (RcppML's IRLS path takes "
                             f"{', '.join(n for n in _RCPPML_LOSS_OPTIONS if n != 'loss_mode')}); use loss_mode='jnmf'")
    if opts.solver not in ("auto", "cd", "rcppml"):
        raise ValueError(f"solver={opts.solver!r}: RcppML's IRLS losses always use its coordinate descent "
                         "(solver='auto' or 'cd')")
    shape = np.shape(A)  # scipy.sparse and arrays alike
    if len(shape) != 2:
        raise ValueError(f"A must be a 2-D matrix, got shape {shape}")
    m, n = shape
    k = V.check_rank(k, m, n)
    dtype = check_dtype(opts.dtype)
    if opts.w_init is not None and opts.seed is not None:
        raise ValueError("give either seed or w_init, not both")
    kind, value = check_seed(opts.w_init if opts.w_init is not None else opts.seed,
                             "w_init" if opts.w_init is not None else "seed", (m, k))
    w0 = np.asarray(initial_w(kind, value, m, k, dtype))
    dispersion = "per_row" if opts.dispersion is None else opts.dispersion
    extra = {} if opts.power is None else {"tweedie_power": opts.power}
    return fit_rcppml_loss(A, k, loss=opts.loss, robust=opts.robust, dispersion=dispersion, w_init=w0, tol=opts.tol,
                           maxit=opts.maxit, L1=V.check_pair(opts.L1, "L1"), L2=V.check_pair(opts.L2, "L2"),
                           cd_maxit=opts.cd_maxit, dtype=dtype, **extra)


_LEADING = (inspect.Parameter("A", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("k", inspect.Parameter.POSITIONAL_OR_KEYWORD))
nmf.__signature__ = signature_of(nmf, _LEADING)
prepare.__signature__ = signature_of(prepare, _LEADING)


def check_finite(model: NMFModel) -> None:
    """Refuse to hand back a NaN model (e.g. a singular Gram matrix under Cholesky with nonneg=False) or an all-zero
    one (every d at the scaling's 1e-15 floor)."""
    # On the host: eager jnp ops here would compile once per new shape.
    finite = all(bool(np.all(np.isfinite(np.asarray(x)))) for x in (model.w, model.d, model.h, model.loss))
    if not finite:
        raise FloatingPointError(
            f"the fit produced non-finite values by iteration {int(model.iter)}; the Gram matrix was probably "
            "singular (try solver='cd', an L2 penalty, or a smaller k)")
    # A is refused when all zero, so a model whose every scale sits at the 1e-15 floor of the scaling has lost all
    # signal in the arithmetic (e.g. W W' overflowed: HALS then keeps its start, a zero model, instead of a NaN).
    if np.all(np.asarray(model.d, np.float64) <= 2e-15):
        raise FloatingPointError(
            f"every component of the fit is zero by iteration {int(model.iter)} (all d at the 1e-15 floor): the "
            "products under- or overflowed the dtype (an initial W of extreme scale?); rescale A or w_init, or use "
            "float64")
