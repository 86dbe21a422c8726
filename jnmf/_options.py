"""Every option of a fit, declared once and validated once, outside jit.

``FitOptions`` holds the options of ``nmf`` (and so of ``prepare``, ``nmf_chunked``, ``sweep``'s fixed options,
``graph`` layers and the estimators) with their defaults. ``FitOptions.resolve(m, n, k)`` checks them against the
problem's shape, in one place and before any compute, and returns a ``Resolved``: the static ``Config``, the array
``Hyper`` and the initial W. Entry points never re-derive a rule written here: the ``solver="auto"`` rule
(``resolve_solver``), seeds (``check_seed``/``initial_w``), the scalar-lambda rule (``lambda_pair``), overrides of
a prepared problem (``check_overrides``) and the target Gram matrices (``target_grams``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._penalties import target_gram
from ._rrng import r_runif_matrix

SOLVERS = ("auto", "cholesky", "cd", "bpp", "hals", "rcppml")
NORMS = ("L1", "L2", "none")
REMOVALS = ("scatter", "proj_adv", "project")
LOOPS = ("while", "scan")
LAYOUTS = ("auto", "dense", "sparse")
SPARSE_KERNELS = ("auto", "host", "ell")
_SEED_LIMIT = 2**31 - 1  # R's set.seed takes a 32-bit signed integer; larger seeds would wrap to another stream


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
    loss: str = "mse"  # _losses.LOSSES; non-"mse" fits run _losses.loss_step
    dispersion: str = "fixed"  # negative binomial size r: "fixed" (Hyper.dispersion), "per_row" or "global"
    # HALS sweeps in the numba kernel (``nnls_hals(host=True)``): CPU, unsharded, while driver.
    hals_host: bool = False


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
    # Loss parameters (``_losses``), None for "mse" so that its pytree (and program) is unchanged.
    power: jax.Array | None = None  # () Tweedie power p (1 for poisson, 2 for gamma, 3 for inverse Gaussian)
    delta: jax.Array | None = None  # () Huber / smoothed-MAE threshold
    dispersion: jax.Array | None = None  # (m,) negative binomial size r (fixed, or the estimate's start)


def default_dtype() -> Any:
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def check_dtype(dtype: Any, name: str = "dtype") -> Any:
    dtype = jnp.dtype(default_dtype() if dtype is None else dtype)
    if dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"{name} must be float32 or float64, got {dtype}")
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(f"{name}=float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', True))")
    return dtype


def resolve_solver(solver: str, k: int, L1: Any = (0.0, 0.0), scatter: bool = False, *, nonneg: Any = (True, True),
                   masked: bool = False, loop: str = "while", batched: bool = False, target: bool = False) -> str:
    """The NNLS solver of a fit.

    ``"rcppml"`` is RcppML's rule: Cholesky-then-clip when k < 32 with no L1 (and no scatter removal, whose
    majorize-minimize updates must descend from the current iterate, which solve-then-clip does not), else its
    coordinate descent (100 sweeps at most; in float32 it always runs them all). Pass it to reproduce RcppML's
    fits to the digit (the vignette rows, the fixtures). ``"auto"`` is ``"hals"`` (``_nnls.nnls_hals``):
    coordinate descent warm-started at the current factor, each column stopping once a sweep moves it by
    < 0.3x its first sweep (at most 10 sweeps; accelerated HALS). Each update descends its NNLS from the current
    iterate, so the loss never increases and the scatter removal's majorization holds; it applies wherever CD
    does (nonneg=False, masks, ``loop="scan"``, grids). Guided fits below k = 32 keep RcppML's rule: a target
    (``target=True``: target_H or target_W given, whatever its lambda, so a lambda grid has one solver)
    converges there in 15-19 iterations against HALS's 100 (hawaiibirds, k = 8, lambda = 0.1), and the
    vignette's rows stay RcppML's; a scatter removal takes CD (with a kept target, HALS's inexact updates let the
    reported SSE + scatter, which leaves out the target term, rise by up to 3e-5 relative late in a fit; exact CD
    keeps it monotone). Measured in
    ``experiments/bench_converge.py`` (README, "Time to a given loss"): the exact BPP (``"bpp"``) and 100-sweep
    CD cost 3-38x HALS per iteration at k = 50 for about the same loss per iteration, and Cholesky-then-clip
    below k = 32 plateaus above the loss HALS reaches. ``L1`` may be a pair or a grid of pairs (any non-zero
    entry counts).
    """
    any_l1 = bool(np.any(np.asarray(L1, np.float64) != 0))
    if solver == "rcppml" or (solver == "auto" and (target or scatter) and k < 32):
        return "cholesky" if k < 32 and not any_l1 and not scatter else "cd"
    if solver == "auto":
        return "hals"
    if solver == "bpp" and not all(nonneg):
        raise ValueError("solver='bpp' solves non-negative least squares; with nonneg=False use solver='cd'")
    if solver == "cholesky" and any_l1:
        raise ValueError("solver='cholesky' does not support L1 (it needs an exact NNLS); use solver='cd'")
    if solver == "cholesky" and scatter:
        raise ValueError("solver='cholesky' (solve then clip) is not an exact NNLS, so a scatter removal (remove=, "
                         "or removal='scatter' with a negative target_lambda) would not descend its objective; use "
                         "solver='cd', 'hals' or 'auto'")
    return solver


def is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def check_seed(seed: Any, name: str = "seed", shape: tuple[int, int] | None = None, *, axis: bool = False
               ) -> tuple[str, Any]:
    """Classify a seed as ``(kind, value)``, kind one of ``"none"``, ``"int"``, ``"key"``, ``"rawkey"``,
    ``"matrix"``; with ``axis`` a 1-D sequence of ints, a 1-D key array or an (S, m, k) stack is a grid of seeds.

    Ints must lie in R's ``set.seed`` range [0, 2^31 - 1] (a larger one would silently wrap onto another seed's
    stream). Matrices (initial W) need ``shape`` (m, k) and are checked finite and non-negative."""
    if seed is None:
        return "none", None
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, a jax.random key or an initial W matrix, got a bool")
    if is_key(seed):
        if seed.ndim > (1 if axis else 0):
            raise ValueError(f"{name}: a key array must be {'0-D or 1-D' if axis else '0-D'}, got shape {seed.shape}")
        return "key", seed
    arr = np.asarray(seed)
    if arr.dtype == bool:
        raise TypeError(f"{name} must be integers, jax.random keys or initial W matrices, got booleans")
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint32 and arr.ndim in ((1, 2) if axis else (1,)) and arr.shape[-1] == 2:
            return "rawkey", arr  # legacy jax.random.PRNGKey data
        if arr.ndim > (1 if axis else 0):
            raise ValueError(f"{name}: integer seeds must be a scalar{' or a 1-D sequence' if axis else ''}, got "
                             f"shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"{name} grid is empty")
        if arr.min() < 0 or arr.max() > _SEED_LIMIT:
            raise ValueError(f"{name} must be an integer in [0, 2^31 - 1] (R's set.seed range), got "
                             f"{arr.min() if arr.min() < 0 else arr.max()}")
        return "int", (int(arr) if arr.ndim == 0 else arr.astype(np.int64))
    if shape is not None and arr.dtype.kind in "fiu" and arr.ndim in ((2, 3) if axis else (2,)):
        stack = arr if arr.ndim == 3 else arr[None]
        if stack.shape[-2:] != tuple(shape):
            raise ValueError(f"{name}: initial W matrices must be (m, k) = {tuple(shape)}"
                             f"{' or a stack (S, m, k)' if axis else ''}, got shape {arr.shape}")
        checked = np.stack([V.check_matrix(w, f"{name} (initial W)" if arr.ndim == 2 else f"{name}[{i}] (initial W)",
                                           tuple(shape), nonneg=True) for i, w in enumerate(stack)])
        return "matrix", (checked[0] if arr.ndim == 2 else checked)
    allowed = "an int, a jax.random key" + (" or an (m, k) initial W" if shape is not None else "")
    if axis:
        allowed += ", or a 1-D sequence of ints, a 1-D key array" + (" or an (S, m, k) stack" if shape else "")
    raise TypeError(f"{name} must be {allowed}; got {type(seed).__name__} of shape {arr.shape}")


def fresh_seed() -> int:
    """A new R-style seed from numpy's entropy (``seed=None``): recorded in the model's ``w_init``."""
    return int(np.random.default_rng().integers(0, _SEED_LIMIT))


def initial_w(kind: str, value: Any, m: int, k: int, dtype: Any) -> jax.Array:
    """The initial W (m, k) (or a stack (S, m, k) for a seed grid) of a checked seed: R's ``set.seed(seed);
    runif(m*k)`` for an int, ``jax.random.uniform`` for a key, the matrix itself, a fresh seed for none."""
    if kind == "none":
        kind, value = "int", fresh_seed()
    if kind == "int":
        if np.ndim(value) == 0:
            return jnp.asarray(r_runif_matrix(int(value), m, k), dtype)
        return jnp.asarray(np.stack([r_runif_matrix(int(s), m, k) for s in value]), dtype)
    if kind in ("key", "rawkey"):
        keys = jnp.asarray(value)
        draw = lambda key: jax.random.uniform(key, (m, k), dtype)  # noqa: E731
        single = keys.ndim == 0 if kind == "key" else keys.ndim == 1
        return draw(keys) if single else jax.vmap(draw)(keys)
    return jnp.asarray(value, dtype)


def lambda_pair(value: Any, has_W: bool, has_H: bool, name: str = "target_lambda") -> tuple[float, float]:
    """``target_lambda`` as a (W, H) pair: a scalar applies to every target given (H only, as RcppML, if only
    target_H); a lambda for a side without a target is an error (RcppML silently ignores it)."""
    lam = V.check_pair(value, name)
    if np.ndim(value) == 0:
        if lam[0] != 0 and not has_W and not has_H:
            raise ValueError(f"{name} is {lam[0]} but target_H and target_W are None; give a target "
                             "(RcppML silently ignores the lambda) or leave target_lambda at 0")
        lam = (lam[0] if has_W else 0.0, lam[1] if has_H else 0.0)
    for side, present, target in ((0, has_W, "target_W"), (1, has_H, "target_H")):
        if not present and lam[side] != 0:
            raise ValueError(f"{name} for the {'W' if side == 0 else 'H'} side is {lam[side]} "
                             f"but {target} is None; give {target} or set that lambda to 0")
    return lam


def remove_groups(labels: Any, n: int) -> np.ndarray:
    """The (g, n) one-hot rows of a grouping to remove (``remove=``); missing labels give zero columns."""
    from ._targets import label_codes

    codes, _ = label_codes(labels, n, name="remove")
    used = np.unique(codes[codes >= 0])
    if used.size < 2:
        raise ValueError(f"remove must have at least 2 groups among its labelled samples, got {used.size}: "
                         "there is no between-group difference to remove")
    return (codes[None, :] == used[:, None]).astype(np.float64)


def target_grams(config: Config, hyper: Hyper) -> tuple[jax.Array | None, jax.Array | None]:
    """``(G_TH, G_TW)``: the Gram matrices ``T T' / n`` of the H and W targets (None where there is none), formed
    once per fit from the whole targets (PROJ_ADV's curvature)."""
    return (target_gram(hyper.target_H) if config.target_H else None,
            target_gram(hyper.target_W) if config.target_W else None)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Validated options of one problem: the static ``config``, the array ``hyper``, the initial ``w0`` (m, k), and
    what data placement needs (``layout``, ``sparse_kernel``, ``devices``, ``max_memory_bytes``, ``dtype``)."""

    config: Config
    hyper: Hyper
    w0: jax.Array
    dtype: Any
    layout: str
    sparse_kernel: str
    devices: tuple[jax.Device, ...] | None
    max_memory_bytes: int | None


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """The options of a fit and their defaults; their meaning is documented once, in ``nmf``.

    ``FitOptions(**options)`` refuses unknown names like a function signature; ``resolve`` checks the values.
    """

    tol: Any = 1e-4
    maxit: Any = 100
    seed: Any = None
    w_init: Any = None
    L1: Any = 0.0
    L2: Any = 0.0
    nonneg: Any = True
    upper_bound: Any = 0.0
    solver: str = "auto"
    norm: str = "L1"
    sort: bool = True
    target_H: Any = None
    target_W: Any = None
    target_lambda: Any = 0.0
    removal: str = "scatter"
    remove: Any = None
    remove_lambda: Any = 1.0
    cd_maxit: Any = 100
    cd_tol: Any = 1e-8
    layout: str = "auto"
    sparse_kernel: str = "auto"
    loop: str = "while"
    dtype: Any = None
    mask: Any = None
    devices: Any = None
    max_memory_bytes: Any = None
    loss: str = "mse"
    power: Any = None
    delta: Any = None
    dispersion: Any = None
    robust: Any = False
    loss_mode: str = "jnmf"

    @classmethod
    def of(cls, where: str, options: dict[str, Any]) -> FitOptions:
        """``FitOptions(**options)`` with a ``where() got an unexpected keyword argument`` error for unknown names."""
        names = {f.name for f in dataclasses.fields(cls)}
        for name in options:
            if name not in names:
                import difflib

                close = difflib.get_close_matches(name, sorted(names), n=1)
                # difflib misses abbreviations ("tolerance" for "tol"): a known name that starts the unknown one
                close = close or [known for known in sorted(names, key=len, reverse=True) if name.startswith(known)
                                  and len(known) >= 3][:1]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}")
        return cls(**options)

    def resolve(self, m: int, n: int, k: Any, *, masked: bool = False, L1_grid: Any = None,
                lambda_grid: Any = None) -> Resolved:
        """Check every option against A's shape (m, n) and the rank k; build ``Config``, ``Hyper`` and the initial W.

        ``L1_grid`` and ``lambda_grid`` (grids of (W, H) pairs, ``sweep``) let ``solver="auto"`` choose for the
        whole grid: CD when any member has L1, or a negative H lambda with the scatter removal.
        """
        V.check_choice(self.layout, "layout", LAYOUTS)
        V.check_choice(self.sparse_kernel, "sparse_kernel", SPARSE_KERNELS)
        dtype = check_dtype(self.dtype)
        k = V.check_rank(k, m, n)
        maxit = V.check_int(self.maxit, "maxit", 1)
        cd_maxit = V.check_int(self.cd_maxit, "cd_maxit", 1)
        budget = None if self.max_memory_bytes is None else V.check_int(self.max_memory_bytes, "max_memory_bytes", 1)
        tol = V.check_real(self.tol, "tol", low=0.0)
        cd_tol = V.check_real(self.cd_tol, "cd_tol", low=0.0)
        L1 = V.check_pair(self.L1, "L1", low=0.0, high=1.0, high_open=True)
        L2 = V.check_pair(self.L2, "L2", low=0.0)
        upper_bound = V.check_pair(self.upper_bound, "upper_bound", low=0.0)
        nonneg = V.check_bool_pair(self.nonneg, "nonneg")
        V.check_choice(self.solver, "solver", SOLVERS)
        V.check_choice(self.norm, "norm", NORMS)
        V.check_choice(self.removal, "removal", REMOVALS)
        V.check_choice(self.loop, "loop", LOOPS)
        from ._losses import check_loss

        spec = check_loss(self, k)
        if not isinstance(self.sort, (bool, np.bool_)):
            raise TypeError(f"sort must be a bool, got {self.sort!r}")

        TH = None if self.target_H is None else V.check_matrix(self.target_H, "target_H", (k, n))
        TW = None if self.target_W is None else V.check_matrix(self.target_W, "target_W", (m, k))
        lam = lambda_pair(self.target_lambda, TW is not None, TH is not None)
        Y = None
        remove_lambda = None
        if self.remove is not None:
            Y = remove_groups(self.remove, n)
            remove_lambda = V.check_real(self.remove_lambda, "remove_lambda", low=0.0)
        lam_grid = np.asarray([lam] if lambda_grid is None else lambda_grid, np.float64).reshape(-1, 2)
        if self.removal == "scatter" and np.any(lam_grid[:, 0] < 0):
            raise ValueError(f"target_lambda for the W side is {lam_grid[:, 0].min()}: removal='scatter' removes "
                             "groups of samples (the H side) only; use removal='proj_adv' or 'project' for a W-side "
                             "removal")
        scatter = Y is not None or (self.removal == "scatter" and TH is not None and bool(np.any(lam_grid[:, 1] < 0)))
        spec.check_penalties(self, L1, L2, nonneg, lam_grid, TH is not None, TW is not None, Y is not None, masked,
                             L1_grid, lambda_grid)
        if Y is not None and TH is not None and spec.loss != "mse" and bool(np.any(lam_grid[:, 1] > 0)):
            raise ValueError(f"target_H with a positive target_lambda beside remove= is supported for loss='mse' "
                             f"only (its joint objective), got loss={spec.loss!r}; fit the removal alone, or use "
                             "loss='mse'")
        if scatter and self.norm == "none":
            raise ValueError("norm='none' cannot be used with a scatter removal (remove=, or removal='scatter' with a "
                             "negative target_lambda): the penalty is not scale-invariant, so W's scale must be "
                             "pinned (norm='L1' or 'L2')")
        solver = resolve_solver(self.solver, k, L1 if L1_grid is None else L1_grid, scatter, nonneg=nonneg,
                                masked=masked, loop=self.loop, batched=L1_grid is not None or lambda_grid is not None,
                                target=TH is not None or TW is not None) if spec.loss == "mse" else spec.solver
        if self.solver == "auto" and solver == "cholesky" and 5 * k >= 2 * min(m, n):
            # Solve-then-clip drifts from the NNLS optimum as k nears min(m, n) (measured on uniform data: relative
            # error 0.32 vs 0.05 for CD at k = 20 on 30 x 20, 0.29 vs 0.22 at k = 0.5 min(m, n)).
            import warnings

            warnings.warn(f"solver='auto' with a target is RcppML's Cholesky-then-clip at k = {k} < 32, which is not "
                          f"an exact NNLS and can fit poorly at k close to min(m, n) = {min(m, n)}; pass solver='cd' "
                          "(or 'bpp') for an exact NNLS, or solver='rcppml' to keep RcppML's rule without this warning",
                          UserWarning, stacklevel=4)

        if self.w_init is not None and self.seed is not None:
            raise ValueError("give either seed or w_init, not both")
        if self.w_init is not None:
            kind, value = "matrix", V.check_matrix(self.w_init, "w_init", (m, k), nonneg=True)
        else:
            kind, value = check_seed(self.seed, "seed", (m, k))
        if kind == "matrix" and not np.any(value):
            raise ValueError(f"{'w_init' if self.w_init is not None else 'seed'}: the initial W is all zeros, so "
                             "every update stays zero (a zero model); give a non-zero initial W")
        w0 = initial_w(kind, value, m, k, dtype)

        devices = None
        if self.devices is not None:
            devices = tuple(self.devices)
            if not devices or not all(isinstance(d, jax.Device) for d in devices):
                raise ValueError(f"devices must be a non-empty sequence of jax.Device, got {self.devices!r}")
            for bad, why in ((masked, "a mask (or NaN entries in A)"), (TH is not None, "target_H (it couples all "
                             "samples)"), (Y is not None, "remove= (the penalty couples all samples)"),
                             (L1[1] > 0 and not nonneg[1], "L1 on H with nonneg=False for H")):
                if bad:
                    raise ValueError(f"devices: sharded fits do not support {why}")

        config = Config(k=k, maxit=maxit, solver=solver, norm=self.norm, sort=bool(self.sort), nonneg=nonneg,
                        cd_maxit=cd_maxit, target_H=TH is not None, target_W=TW is not None, removal=self.removal,
                        loop=self.loop, masked=masked, remove=Y is not None, loss=spec.loss,
                        dispersion=spec.dispersion_mode,
                        hals_host=solver == "hals" and self.loop == "while" and devices is None
                        and jax.default_backend() == "cpu")
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
            **spec.leaves(m, dtype),
        )
        return Resolved(config=config, hyper=hyper, w0=w0, dtype=dtype, layout=self.layout,
                        sparse_kernel=self.sparse_kernel, devices=devices, max_memory_bytes=budget)


def check_overrides(config: Config, hyper: Hyper, **values: Any) -> Hyper:
    """``hyper`` with the overrides of ``solve(problem, target_lambda=, L1=, L2=, tol=, remove_lambda=)`` applied.

    Concrete values are checked as ``FitOptions.resolve`` checks them (same messages); traced values (``vmap``,
    ``grad``) cannot be inspected and are taken as they are.
    """
    dtype = hyper.tol.dtype
    changes = {}
    for name, value in values.items():
        if value is None:
            continue
        concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(value))
        if name == "target_lambda":
            if concrete:
                lam = lambda_pair(np.asarray(value), config.target_W, config.target_H) if np.ndim(value) <= 1 else None
                if lam is None:
                    raise ValueError(f"target_lambda must be a scalar or a (W, H) pair, got shape {np.shape(value)}")
                resolve_solver(config.solver, config.k, hyper.L1,
                               config.remove or (config.removal == "scatter" and config.target_H and lam[1] < 0))
                value = lam
            changes[name] = _pair_array(value, config, dtype)
        elif name in ("L1", "L2"):
            if concrete:
                bounds = dict(low=0.0, high=1.0, high_open=True) if name == "L1" else dict(low=0.0)
                pair = V.check_pair(np.asarray(value), name, **bounds)
                if name == "L1":
                    resolve_solver(config.solver, config.k, pair)
            changes[name] = jnp.broadcast_to(jnp.asarray(value, dtype), (2,))
        elif name in ("tol", "remove_lambda"):
            if name == "remove_lambda" and not config.remove:
                raise ValueError("remove_lambda given but the problem has no remove= grouping (prepare(..., remove=))")
            if concrete:
                V.check_real(np.asarray(value), name, low=0.0)
            changes[name] = jnp.asarray(value, dtype)
        else:  # pragma: no cover - the callers pass only the names above
            raise TypeError(f"unknown override {name!r}")
    return dataclasses.replace(hyper, **changes) if changes else hyper


def _pair_array(lam: Any, config: Config, dtype: Any) -> jax.Array:
    lam = jnp.asarray(lam, dtype)
    if lam.ndim == 0:
        zero = jnp.zeros_like(lam)
        return jnp.stack([lam if config.target_W else zero, lam if config.target_H else zero])
    return jnp.broadcast_to(lam, (2,))


def signature_of(function: Any, leading: tuple[inspect.Parameter, ...], exclude: tuple[str, ...] = ()
                 ) -> inspect.Signature:
    """The signature ``function(A, k, *, <every FitOptions field with its default>)`` shown by ``help()`` and IDEs for
    entry points that take ``**options`` (the options are declared once, in ``FitOptions``)."""
    params = list(leading) + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                              for f in dataclasses.fields(FitOptions) if f.name not in exclude]
    return inspect.Signature(params, return_annotation=inspect.signature(function).return_annotation)
