"""Cross-validated rank selection: a speckled hold-out of entries, fitted with the mask machinery, all ranks at once.

``cross_validate(A, ks, seeds=(1, 2, 3), test_fraction=0.05)`` holds out a pseudo-random "speckled" set of entries
per replicate (RcppML 1.0.0's hash, reference ``rcppml-cv-consensus-losses.md`` §1.3, reproduced bit for bit),
fits every (rank, replicate) with those entries masked (``prepare(..., mask=M)``: each column solves its own
NNLS over its observed entries, so held-out values are never read by an update), and reports the train and test
mean squared errors and a chosen rank.

All ranks in one program. The grid is padded to ``k_max = max(ks)``: member (k, r) starts from an initial W whose
last ``k_max - k`` columns are zero. Those components are inert in the engine's update: their rows of
``G = F F' + 1e-15 I`` are ``1e-15 e_i``, their rows of ``B = F A`` are 0, so Cholesky-then-clip, CD and HALS all give
them exactly 0; scaling gives ``d = 1e-15`` and ``0 / d = 0``; the stable sort by d puts them last; they add
exactly 0 to the loss. So k is data (which columns of ``w_init`` are zero) and the whole grid is one ``vmap`` of
``solve`` over (hold-out mask, initial W). The one engine detail that sees ``k_max`` is CD's inner stopping rule
(the mean relative step over all ``k_max`` coordinates): ``cd_tol`` is rescaled by ``k / k_max`` per member,
which restores the k-rank rule. Padding is refused (one program per rank instead) when targets are given (their
shape depends on k), when ``nonneg=False`` meets an L1 penalty (``B - L1`` would move the inactive rows), or when
the ranks would resolve to different solvers (``solver="rcppml"`` across k = 32); ``pad="auto"`` also falls back
when the padded arithmetic (``len(ks) k_max^2`` against ``sum k^2``, the per-column Gram cost) exceeds
``_PAD_MAX_RATIO``. Without padding each rank is one program over the replicates (vmapped). On CPU, with
``stop="train"``, the members are instead calls of one compiled fit (``_grid_host``; one per rank, or one for
all when padded): there a program holding the fits ran ~3x slower per iteration.

Stopping rules (``stop``):

* ``"train"`` (default): the engine's rule on the train loss (relative change below ``tol`` on ``patience``
  consecutive iterations); the test error is that of the final model. The fit never sees held-out values, so
  member (k, r) equals ``nmf(A, k, mask=holdout_r, seed=seeds[r])`` and changing the held-out values leaves the
  model bitwise equal.
* ``"rcppml"``: RcppML's CV loop (§1.6): stop when the test MSE has not improved for ``patience`` iterations or
  changed by less than ``tol`` relative once; report the *best* test MSE over iterations and the last-iterate
  train MSE. The held-out values then choose the stopping iteration (early stopping on the test set, an
  optimistic bias). Runs the engine one iteration at a time (``solve(maxit=1)`` restarted from the current unit
  W, which is the engine's own next iteration for the Cholesky solver; with CD the inner warm start is lost).

The rank (``rule``): ``"min"`` (RcppML's vignette): the k with the smallest mean test MSE over replicates, the
smallest such k on ties; ``"1se"``: the smallest k whose mean test MSE is within one standard error (over
replicates) of that minimum.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from ._model import NMFModel
from ._options import resolve_solver
from ._rrng import r_runif_matrix
from ._solve import prepare, solve

__all__ = ["CVResult", "cross_validate", "holdout_mask", "splitmix64_w", "choose_k", "auto_rank"]

_HIGHEST = lax.Precision.HIGHEST
# pad="auto" pads while the padded grid costs at most this many times the per-rank programs' arithmetic
# (the per-column Gram matrices, O(m n k^2) per iteration): padding trades that arithmetic for one compile instead
# of one per rank. Measured on hawaiibirds (2-core CPU, float32, HALS, ks 2..11 x 10 replicates, ratio 2.4): padded
# 10.0 s cold / 7.6 s warm, one program per rank 19.8 / 4.4 s. A first call (cold) is the common case, and any new
# shape is cold again, so padding is the default up to ratio 3.
_PAD_MAX_RATIO = 3.0
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FORBIDDEN = {
    "seed": "use seeds= (one per replicate)",
    "w_init": "initial W come from seeds= (init='r' or 'rcppml')",
    "loop": "cross_validate runs the forward driver",
    "layout": "masked fits always use the dense layout",
    "devices": "sharded fits do not support a mask",
    "sort": "the grid sorts components itself (inactive padding last)",
}


# -----------------------------------------------------------------------------------------------------------------
# hold-out mask and initialisation (RcppML §1.2-1.3)
# -----------------------------------------------------------------------------------------------------------------

def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (two xor-shift-multiply rounds and a final xor-shift)."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def _inv_prob(test_fraction: float) -> int:
    # RcppML casts the fraction to float32 and truncates its reciprocal (defect D1): 0.05 -> 19, 0.1 -> 9.
    return int(1.0 / float(np.float32(test_fraction)))


def holdout_mask(shape: tuple[int, int], test_fraction: float, seed: int, A: Any = None,
                 nonzeros: bool = False) -> np.ndarray:
    """RcppML's speckled hold-out: a boolean (m, n) mask, True = test entry.

    Entry (i, j) is held out iff ``mix(s + i c1 + j c2) < floor((2^64 - 1) / q)`` (mod 2^64, 0-based i, j, s the
    seed as uint32 with 0 -> 12345, ``mix`` SplitMix64's finaliser), ``q = floor(1 / float32(test_fraction))``:
    each entry is held out with probability 1/q (5.26 % for 0.05), independently of k and of the data.
    ``nonzeros=True`` (RcppML's ``mask="zeros"``) holds out only non-zero entries of A.
    """
    m, n = shape
    thr = np.uint64((2**64 - 1) // _inv_prob(test_fraction))
    s = np.uint64((int(seed) & 0xFFFFFFFF) or 12345)
    i = np.arange(m, dtype=np.uint64)[:, None]
    j = np.arange(n, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = s + i * _GOLDEN + j * np.uint64(0x6C62272E07BB0142)
    M = _mix(h) < thr
    if nonzeros:
        if A is None:
            raise ValueError("holdout_mask: nonzeros=True needs A")
        dense = A.toarray() if sp.issparse(A) else np.asarray(A)
        M &= dense != 0
    return M


def splitmix64_w(seed: int, m: int, k: int) -> np.ndarray:
    """RcppML's C++ initial W of a multi-rank CV fit (§1.2): SplitMix64(seed, 0 -> 12345) draws ``u / 2^64`` in
    float32, filling W' (k, m) column-major, i.e. W (m, k) row by row. Returns float64 (m, k) (float32 values)."""
    s = np.uint64(int(seed) % 2**64 or 12345)
    with np.errstate(over="ignore"):
        state = s + _GOLDEN * np.arange(1, m * k + 1, dtype=np.uint64)
    u = _mix(state).astype(np.float32) / np.float32(2.0**64)
    return u.astype(np.float64).reshape(m, k)


def _initial_w(init: str, seed: int, k: int, m: int) -> np.ndarray:
    if init == "r":  # what nmf(A, k, seed=seed) starts from
        return r_runif_matrix(int(seed), m, k)
    # RcppML's multi-rank sweep seeds each fit with (cv_seed + k) mod (2^31 - 1) (§1.1)
    return splitmix64_w((int(seed) + k) % (2**31 - 1), m, k)


# -----------------------------------------------------------------------------------------------------------------
# result
# -----------------------------------------------------------------------------------------------------------------

def choose_k(ks: Any, test_mse: Any, rule: str = "min") -> int:
    """The rank chosen from a (K, R) table of test MSEs (ranks x replicates).

    ``"min"``: argmin over k of the mean test MSE (smallest k on ties; RcppML's vignette). ``"1se"``: the smallest
    k whose mean is at most the minimum mean plus the standard error (std over replicates / sqrt(R)) at the
    minimum; needs R >= 2. Non-finite entries are ignored.
    """
    ks = np.asarray(ks)
    T = np.asarray(test_mse, np.float64)
    if T.ndim != 2 or T.shape[0] != ks.size:
        raise ValueError(f"test_mse must be (len(ks), replicates) = ({ks.size}, R), got shape {T.shape}")
    if rule not in ("min", "1se"):
        raise ValueError(f"rule must be 'min' or '1se', got {rule!r}")
    finite = np.isfinite(T)
    counts = finite.sum(axis=1)
    mean = np.where(counts > 0, np.where(finite, T, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)
    if not np.any(np.isfinite(mean)):
        raise ValueError("no finite test error to choose a rank from")
    best = int(np.nanargmin(mean))
    if rule == "min":
        return int(ks[best])
    row = T[best][np.isfinite(T[best])]
    if row.size < 2:
        raise ValueError("rule='1se' needs at least 2 replicates with a finite test error")
    se = float(np.std(row, ddof=1) / np.sqrt(row.size))
    return int(ks[np.flatnonzero(mean <= mean[best] + se)[0]])


@dataclasses.dataclass(frozen=True)
class CVResult:
    """Cross-validation of a grid of ranks (K) x replicates (R).

    Attributes
    ----------
    ks : (K,) int
        The ranks, ascending.
    seeds : (R,) int
        The replicate seeds (hold-out mask and initial W of replicate r).
    train_mse, test_mse : (K, R) float64
        Mean squared error over the fitted (train) and held-out (test) entries. ``stop="train"``: both of the
        final model; ``stop="rcppml"``: the last-iterate train MSE and the best test MSE over iterations.
    iter, best_iter : (K, R) int
        Iterations run; the 1-based iteration of the best test MSE (``stop="rcppml"``; ``iter`` otherwise).
    converged : (K, R) bool
        Stopped by ``tol`` (not by ``maxit`` or, with ``stop="rcppml"``, by patience).
    n_test : (R,) int
        Held-out entries per replicate.
    k : int
        The chosen rank by ``rule``.
    rule, stop, test_fraction : the settings; ``holdout_probability`` = 1 / floor(1 / float32(test_fraction)).
    padded : bool
        Whether all ranks ran as one padded program (else one program per rank); ``programs`` counts them and
        ``pad_reason`` says why padding was not used.
    models : NMFModel
        Batched (K, R) models padded to ``max(ks)`` components (the inactive ones last, d = 1e-15, w = h = 0);
        ``model(k, r)`` gives one, trimmed to its rank.
    test_history, train_history : (K, R, maxit) float64 or None
        Per-iteration MSEs (``stop="rcppml"`` only; NaN after the last iteration).
    """

    ks: np.ndarray
    seeds: np.ndarray
    train_mse: np.ndarray
    test_mse: np.ndarray
    iter: np.ndarray
    best_iter: np.ndarray
    converged: np.ndarray
    n_test: np.ndarray
    k: int
    rule: str
    stop: str
    test_fraction: float
    holdout_probability: float
    padded: bool
    programs: int
    pad_reason: str | None
    models: NMFModel
    test_history: np.ndarray | None = None
    train_history: np.ndarray | None = None

    @property
    def mean_test_mse(self) -> np.ndarray:
        """(K,) mean test MSE over replicates."""
        return np.mean(self.test_mse, axis=1)

    @property
    def mean_train_mse(self) -> np.ndarray:
        return np.mean(self.train_mse, axis=1)

    def choose(self, rule: str = "min") -> int:
        """The rank by another rule (see ``choose_k``)."""
        return choose_k(self.ks, self.test_mse, rule)

    def model(self, k: int, r: int = 0) -> NMFModel:
        """The fitted model of rank k, replicate index r, with its k components only."""
        i = int(np.flatnonzero(self.ks == k)[0]) if np.any(self.ks == k) else None
        if i is None:
            raise ValueError(f"k={k} is not one of the cross-validated ranks {self.ks.tolist()}")
        one = jax.tree.map(lambda x: x[i, r], self.models)
        return one.replace(w=one.w[:, :k], d=one.d[:k], h=one.h[:k], w_init=one.w_init[:, :k])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (replicate, k), replicates outer as RcppML's ``nmfCrossValidate`` data.frame."""
        return [dict(rep=int(self.seeds[r]), k=int(k), train_mse=float(self.train_mse[i, r]),
                     test_mse=float(self.test_mse[i, r]), best_iter=int(self.best_iter[i, r]),
                     total_iter=int(self.iter[i, r]))
                for r in range(self.seeds.size) for i, k in enumerate(self.ks)]

    def __repr__(self) -> str:
        return (f"CVResult(ks={self.ks.tolist()}, replicates={self.seeds.size}, k={self.k} by {self.rule!r}, "
                f"stop={self.stop!r}, padded={self.padded})")


# -----------------------------------------------------------------------------------------------------------------
# the grid programs
# -----------------------------------------------------------------------------------------------------------------

def _member_problem(problem, A_r, M_r, cd_tol):
    data = dataclasses.replace(problem.data, A=A_r, mask=M_r)
    return problem.replace(data=data, hyper=dataclasses.replace(problem.hyper, cd_tol=cd_tol))


def _errors(model, A_full, T_r, n_train, n_test):
    """(train MSE, test MSE) of one model; the train SSE is the masked fit's loss (observed entries only)."""
    pred = jnp.dot(model.w * model.d, model.h, precision=_HIGHEST)
    resid = jnp.where(T_r, A_full - pred, jnp.zeros_like(pred))
    return model.loss / n_train, jnp.sum(resid * resid) / n_test


def _member(problem, A_full, A_r, M_r, T_r, w0, cdt, ntr, nte):
    """One (rank, replicate) fit of stop='train' and its (train MSE, test MSE)."""
    model = solve(_member_problem(problem, A_r, M_r, cdt), w_init=w0)
    return model, _errors(model, A_full, T_r, ntr, nte)


_member_jit = jax.jit(_member)


@jax.jit
def _grid_direct(problem, A_full, A_fit, M_fit, T, W0, cd_tol, n_train, n_test):
    """stop='train': ``solve`` vmapped over replicates (data) and ranks (initial W, CD tolerance).

    A_fit, M_fit, T (R, m, n): fitted data (0 at masked entries), fit mask, test entries; W0 (K, R, m, k_max)."""
    over_k = jax.vmap(functools.partial(_member, problem, A_full), in_axes=(None, None, None, 0, 0, None, None))
    return jax.vmap(over_k, in_axes=(0, 0, 0, 1, None, 0, 0), out_axes=1)(A_fit, M_fit, T, W0, cd_tol, n_train,
                                                                          n_test)


def _grid_host(problem, A_full, A_fit, M_fit, T, W0, cd_tol, n_train, n_test):
    """``_grid_direct``'s result, (K, R) leading axes, from a host loop over one compiled fit.

    On a CPU the fits inside one program, vmapped or one after another (``lax.map``), ran ~3x slower per iteration
    than the same fits as separate calls (k = 8 on hawaiibirds, 5 replicates, HALS: 1.4-1.5 s against 0.54 s), and
    one compiled fit serves every replicate of a rank (one compile per rank, as before)."""
    K, R = W0.shape[:2]
    reps = [(A_fit[r], M_fit[r], T[r], n_train[r], n_test[r]) for r in range(R)]  # sliced once, not once per rank
    fits = [_member_jit(problem, A_full, A_r, M_r, T_r, W0[i, r], cd_tol[i], ntr, nte)
            for i in range(K) for r, (A_r, M_r, T_r, ntr, nte) in enumerate(reps)]
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]).reshape((K, R) + np.shape(xs[0])), *fits)


def _sorted(model):
    order = jnp.argsort(-model.d, stable=True)
    return model.replace(w=model.w[:, order], d=model.d[order], h=model.h[order])


@functools.partial(jax.jit, static_argnames=("maxit", "patience"))
def _grid_rcppml(problem, A_full, A_fit, M_fit, T, W0, cd_tol, n_train, n_test, tol, *, maxit, patience):
    """stop='rcppml': one engine iteration at a time (``solve`` with maxit=1 from the current unit W), RcppML's
    test-loss stopping rule (§1.6) per member; finished members are frozen."""
    K, R = W0.shape[:2]
    dtype = W0.dtype

    def one_iter(A_r, M_r, T_r, w, cdt, ntr, nte):
        model = solve(_member_problem(problem, A_r, M_r, cdt), w_init=w)
        return model, _errors(model, A_full, T_r, ntr, nte)

    over_k = jax.vmap(one_iter, in_axes=(None, None, None, 0, 0, None, None))
    grid_iter = jax.vmap(over_k, in_axes=(0, 0, 0, 1, None, 0, 0), out_axes=1)

    template = jax.eval_shape(lambda: grid_iter(A_fit, M_fit, T, W0, cd_tol, n_train, n_test)[0])
    nan = jnp.asarray(jnp.nan, dtype)
    state = dict(
        w=W0, model=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template),
        it=jnp.zeros((K, R), jnp.int32), best=jnp.full((K, R), jnp.inf, dtype),
        best_it=jnp.zeros((K, R), jnp.int32), count=jnp.zeros((K, R), jnp.int32),
        prev=jnp.full((K, R), nan), done=jnp.zeros((K, R), bool), conv=jnp.zeros((K, R), bool),
        train=jnp.full((K, R), nan), test_h=jnp.full((K, R, maxit), nan), train_h=jnp.full((K, R, maxit), nan))

    def body(s):
        model, (train, test) = grid_iter(A_fit, M_fit, T, s["w"], cd_tol, n_train, n_test)
        live = ~s["done"]
        it = s["it"]
        better = test < s["best"]
        best = jnp.where(better, test, s["best"])
        best_it = jnp.where(better, it + 1, s["best_it"])
        count = jnp.where(better, 0, s["count"] + 1)
        rel = jnp.abs(s["prev"] - test) / (jnp.abs(s["prev"]) + 1e-15)
        out_of_patience = count >= patience  # checked first (RcppML's order): such a stop is not "converged"
        conv = ~out_of_patience & (it > 0) & (rel < tol)
        done = out_of_patience | conv | (it + 1 >= maxit) | ~jnp.isfinite(test)

        def upd(new, old):
            return jnp.where(live.reshape(live.shape + (1,) * (new.ndim - 2)), new, old)

        # members are at different iterations: each writes its own history column
        onehot = jax.nn.one_hot(jnp.minimum(it, maxit - 1), maxit, dtype=bool)

        def put(h, v):
            return jnp.where(live[..., None] & onehot, v[..., None], h)

        return dict(
            w=upd(model.w, s["w"]), model=jax.tree.map(upd, model, s["model"]), it=upd(it + 1, it),
            best=upd(best, s["best"]), best_it=upd(best_it, s["best_it"]), count=upd(count, s["count"]),
            prev=upd(test, s["prev"]), done=s["done"] | (live & done), conv=upd(conv, s["conv"]),
            train=upd(train, s["train"]), test_h=put(s["test_h"], test), train_h=put(s["train_h"], train))

    s = lax.while_loop(lambda s: ~jnp.all(s["done"]), body, state)
    models = jax.vmap(jax.vmap(_sorted))(s["model"])
    models = models.replace(iter=s["it"], converged=s["conv"], w_init=W0)
    return models, s["train"], s["best"], s["best_it"], s["test_h"], s["train_h"]


# -----------------------------------------------------------------------------------------------------------------
# cross_validate
# -----------------------------------------------------------------------------------------------------------------

def _check_ks(ks: Any, m: int, n: int) -> np.ndarray:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, (bool, np.bool_)):
        ks = [ks]
    try:
        arr = np.asarray(list(ks))
    except TypeError:
        raise TypeError(f"ks must be a sequence of integer ranks, got {ks!r}") from None
    if arr.size == 0:
        raise ValueError("ks is empty")
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"ks must be a 1-D sequence of integer ranks, got {ks!r}")
    if len(set(arr.tolist())) != arr.size:
        raise ValueError(f"ks has duplicate ranks: {arr.tolist()}")
    bad = arr[(arr < 1) | (arr > min(m, n))]
    if bad.size:
        raise ValueError(f"ks must lie in 1..min(m, n) = 1..{min(m, n)}, got {bad.tolist()}")
    return np.sort(arr).astype(np.int64)


def _check_seeds(seeds: Any) -> np.ndarray:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, (bool, np.bool_)):
        seeds = [seeds]
    arr = np.asarray(list(seeds)) if not isinstance(seeds, (str, bytes)) else np.asarray([seeds])
    if arr.size == 0:
        raise ValueError("seeds is empty")
    if arr.dtype.kind not in "iu" or arr.ndim != 1 or np.any(arr < 0) or np.any(arr >= 2**31 - 1):
        raise ValueError(f"seeds must be integers in [0, 2^31 - 1), one per replicate, got {seeds!r}")
    if len(set(arr.tolist())) != arr.size:
        raise ValueError(f"seeds has duplicates: {arr.tolist()}")
    return arr.astype(np.int64)


def _dense(A: Any) -> np.ndarray:
    if sp.issparse(A):
        return np.asarray(A.toarray(), np.float64)
    return np.asarray(A, np.float64)


def _resolve_solver(solver: str, k: int, options: Mapping[str, Any]) -> str:
    """nmf's solver rule at rank k (``_options.resolve_solver``) for the options of a CV grid."""
    L1 = np.broadcast_to(np.asarray(options.get("L1", 0.0), np.float64), (2,))
    target = options.get("target_H") is not None or options.get("target_W") is not None
    scatter = options.get("remove") is not None or (target and options.get("removal", "scatter") == "scatter" and
                                                    np.any(np.asarray(options.get("target_lambda", 0.0)) < 0))
    return resolve_solver(solver, k, L1, bool(scatter), target=target)


def _pad_plan(ks: np.ndarray, pad: Any, options: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether the ranks run as one padded program, and if not, why."""
    if pad is False:
        return False, "pad=False"
    reason = None
    if options.get("target_H") is not None or options.get("target_W") is not None:
        reason = "targets have k rows/columns, so each rank needs its own target and program"
    nonneg = np.broadcast_to(np.asarray(options.get("nonneg", True)), (2,))
    L1 = np.broadcast_to(np.asarray(options.get("L1", 0.0), np.float64), (2,))
    if reason is None and np.any(~nonneg & (L1 != 0)):
        reason = "nonneg=False with L1 > 0 would move the inactive components (B - L1 has no zero rows)"
    solvers = {_resolve_solver(options.get("solver", "auto"), int(k), options) for k in ks}
    if reason is None and len(solvers) > 1:
        reason = (f"solver={options.get('solver', 'auto')!r} resolves to {sorted(solvers)} across ks (RcppML's rule: "
                  "Cholesky-then-clip below k = 32, CD from it)")
    if reason is not None:
        if pad is True:
            raise ValueError(f"pad=True is not possible: {reason}")
        return False, reason
    ratio = ks.size * float(ks.max()) ** 2 / float(np.sum(ks.astype(np.float64) ** 2))
    if pad == "auto" and ratio > _PAD_MAX_RATIO:
        return False, (f"padding to k = {ks.max()} would cost {ratio:.1f}x the per-rank arithmetic "
                       f"(> {_PAD_MAX_RATIO}); one program per rank")
    return True, None


def cross_validate(
    A: Any,
    ks: Any,
    *,
    seeds: Any = (1, 2, 3),
    test_fraction: float = 0.05,
    holdout: str = "all",
    init: str = "r",
    stop: str = "train",
    rule: str = "min",
    pad: Any = "auto",
    tol: float = 1e-4,
    maxit: int = 100,
    patience: int = 5,
    mask: Any = None,
    dtype: Any = None,
    **options: Any,
) -> CVResult:
    """Choose the rank of ``A ≈ w diag(d) h`` by speckled hold-out cross-validation (RcppML's semantics).

    For each replicate r a speckled set of entries (``holdout_mask(A.shape, test_fraction, seeds[r])``, each
    entry with probability ``1/floor(1/float32(test_fraction))``) is masked; every rank k is fitted on the rest,
    minimising ``sum_{(i,j) train} (A_ij - (w diag(d) h)_ij)^2``; the test MSE is the mean of
    ``(A_ij - (w diag(d) h)_ij)^2`` over the held-out entries, the train MSE the same over the fitted ones.

    Parameters
    ----------
    A : (m, n) array or scipy.sparse
        Non-negative data, features x samples (densified: masked fits use the dense layout).
    ks : sequence of int
        Ranks to compare, each in 1..min(m, n).
    seeds : sequence of int
        One replicate per seed: its hold-out mask and its initial W.
    test_fraction : float in (0, 1)
        Nominal hold-out fraction (RcppML's rounding, above).
    holdout : ``"all"`` or ``"nonzeros"``
        ``"nonzeros"`` holds out non-zero entries only (RcppML's ``mask="zeros"``); zeros are still fitted.
    init : ``"r"`` or ``"rcppml"``
        ``"r"``: member (k, r) starts where ``nmf(A, k, seed=seeds[r])`` does (R's ``runif``); ``"rcppml"``:
        RcppML's multi-rank CV start, SplitMix64(``seeds[r] + k``) (``splitmix64_w``).
    stop : ``"train"`` or ``"rcppml"``
        Stopping rule (module docstring): the engine's train-loss rule (default; held-out values never matter) or
        RcppML's test-loss rule (best test MSE reported; needs ``maxit >= 2``).
    rule : ``"min"`` or ``"1se"``
        How ``k`` is chosen (``choose_k``).
    pad : ``"auto"``, True or False
        Run all ranks as one program padded to ``max(ks)`` (module docstring) or one program per rank.
    tol, maxit, patience : float, int, int
        Stopping: relative change below ``tol`` (``patience`` consecutive times for ``stop="train"``; RcppML:
        once on the test MSE, or ``patience`` iterations without a new best test MSE).
    mask : array, optional
        Entries that are missing (True = ignore), as ``nmf``'s mask: neither fitted nor tested.
    dtype : float32 (default) or float64 (with jax x64).
    **options
        Passed to ``prepare`` for every fit: ``L1``, ``L2``, ``nonneg``, ``solver``, ``norm``, ``upper_bound``,
        ``cd_maxit``, ``cd_tol``, ``remove``/``remove_lambda`` (guided removal), ``target_H``/``target_W`` with
        ``target_lambda``, ``removal`` (a target may be a mapping ``{k: array}`` or a callable ``k -> array``;
        targets force one program per rank).

    Returns
    -------
    CVResult
        Train/test MSE per (k, replicate), the chosen ``k``, the fitted models.
    """
    for bad, hint in _FORBIDDEN.items():
        if bad in options:
            raise TypeError(f"cross_validate() got an unexpected keyword argument {bad!r} ({hint})")
    if not (sp.issparse(A) or hasattr(A, "shape")):
        A = np.asarray(A)
    if len(getattr(A, "shape", ())) != 2:
        raise ValueError(f"A must be a 2-D matrix (features x samples), got shape {getattr(A, 'shape', None)}")
    m, n = (int(s) for s in A.shape)
    ks = _check_ks(ks, m, n)
    seeds = _check_seeds(seeds)
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction, (int, float, np.floating)):
        raise TypeError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    for name, value, allowed in (("holdout", holdout, ("all", "nonzeros")), ("init", init, ("r", "rcppml")),
                                 ("stop", stop, ("train", "rcppml")), ("rule", rule, ("min", "1se"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if pad not in ("auto", True, False):
        raise ValueError(f"pad must be 'auto', True or False, got {pad!r}")
    if rule == "1se" and seeds.size < 2:
        raise ValueError("rule='1se' needs at least 2 seeds (replicates)")
    if isinstance(maxit, (bool, np.bool_)) or not isinstance(maxit, (int, np.integer)) or maxit < 1:
        raise ValueError(f"maxit must be an integer >= 1, got {maxit!r}")
    if stop == "rcppml" and maxit < 2:
        raise ValueError("stop='rcppml' needs maxit >= 2")
    if isinstance(patience, (bool, np.bool_)) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")

    dense = _dense(A)
    if not np.all(np.isfinite(dense) | np.isnan(dense)):
        raise ValueError("A has non-finite entries (inf); NaN entries are treated as missing")
    missing = np.isnan(dense)
    if mask is not None:
        user = mask.toarray() if sp.issparse(mask) else np.asarray(mask)
        if user.shape != (m, n):
            raise ValueError(f"mask must have A's shape {(m, n)}, got {user.shape}")
        if user.dtype != bool and not np.all((user == 0) | (user == 1)):
            raise ValueError("mask must be boolean (or 0/1), True = ignore")
        missing = missing | user.astype(bool)
    dense = np.where(missing, 0.0, dense)
    if np.any(dense < 0):
        raise ValueError("A must be non-negative")

    targets = {}
    for name in ("target_H", "target_W"):
        T = options.get(name)
        if T is None:
            continue
        if callable(T):
            targets[name] = {int(k): T(int(k)) for k in ks}
        elif isinstance(T, Mapping):
            lacking = [int(k) for k in ks if int(k) not in T]
            if lacking:
                raise ValueError(f"{name} mapping has no target for ranks {lacking}")
            targets[name] = {int(k): T[int(k)] for k in ks}
        elif ks.size == 1:
            targets[name] = {int(ks[0]): T}
        else:
            raise TypeError(f"{name} with several ks must be a mapping {{k: array}} or a callable k -> array")

    T_masks, fit_masks = [], []
    for s in seeds:
        H = holdout_mask((m, n), test_fraction, int(s), dense, nonzeros=holdout == "nonzeros") & ~missing
        if not H.any():
            raise ValueError(f"seed {int(s)}: test_fraction={test_fraction} holds out no entry of this {m} x {n} "
                             "matrix; use a larger test_fraction")
        T_masks.append(H)
        fit_masks.append(H | missing)
    T_masks, fit_masks = np.stack(T_masks), np.stack(fit_masks)
    n_test = T_masks.sum(axis=(1, 2))
    n_train = (~fit_masks).sum(axis=(1, 2))
    if np.any(n_train == 0):
        raise ValueError("every entry is held out or missing in some replicate")

    padded, reason = _pad_plan(ks, pad, options)
    groups = [ks] if padded else [np.asarray([k]) for k in ks]
    base = {key: v for key, v in options.items() if key not in targets}
    parts = []
    for group in groups:
        kmax = int(group.max())
        solver = _resolve_solver(options.get("solver", "auto"), kmax, options)
        extra = {name: t[kmax] for name, t in targets.items()}
        # prepare validates every option (and the data) once, outside jit, before any compute.
        problem = prepare(np.where(fit_masks[0], 0.0, dense), kmax, mask=fit_masks[0], tol=tol, maxit=1 if
                          stop == "rcppml" else maxit, w_init=_pad_w(_initial_w(init, seeds[0], kmax, m), kmax),
                          dtype=dtype, **{**base, "solver": solver, "sort": stop != "rcppml"}, **extra)
        if stop == "train" and problem.config.patience != patience:
            problem = problem.replace(config=dataclasses.replace(problem.config, patience=int(patience)))
        fdtype = problem.w_init.dtype
        W0 = np.stack([[_pad_w(_initial_w(init, s, int(k), m), kmax) for s in seeds] for k in group])
        cd_tol = float(problem.hyper.cd_tol) * group.astype(np.float64) / kmax  # k-rank CD rule (docstring)
        args = (problem, jnp.asarray(dense, fdtype), jnp.asarray(np.where(fit_masks, 0.0, dense), fdtype),
                jnp.asarray(fit_masks), jnp.asarray(T_masks), jnp.asarray(W0, fdtype), jnp.asarray(cd_tol, fdtype),
                jnp.asarray(n_train, fdtype), jnp.asarray(n_test, fdtype))
        if stop == "train":
            # On CPU the members are separate calls of one compiled fit (_grid_host; padded: one compile for all
            # ranks): a CPU gains nothing from batching work this size, and one program holding them ran ~3x slower.
            grid = _grid_host if jax.default_backend() == "cpu" else _grid_direct
            models, (train, test) = grid(*args)
            parts.append(dict(models=models, train=train, test=test, best_it=models.iter, th=None, trh=None))
        else:
            models, train, best, best_it, th, trh = _grid_rcppml(*args, jnp.asarray(tol, fdtype), maxit=int(maxit),
                                                                 patience=int(patience))
            parts.append(dict(models=models, train=train, test=best, best_it=best_it, th=th, trh=trh))
    kmax = int(ks.max())

    def cat(key):
        return np.concatenate([np.asarray(p[key]) for p in parts], axis=0)

    if padded:
        models = jax.tree.map(np.asarray, parts[0]["models"])
    else:  # one program per rank: pad each model to k_max with inert components so the table is rectangular
        models = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0),
                              *[_pad_model(jax.tree.map(np.asarray, p["models"]), kmax) for p in parts])
    train, test = cat("train").astype(np.float64), cat("test").astype(np.float64)
    hist = (cat("th").astype(np.float64), cat("trh").astype(np.float64)) if stop == "rcppml" else (None, None)
    return CVResult(
        ks=ks, seeds=seeds, train_mse=train, test_mse=test, iter=np.asarray(models.iter).astype(np.int64),
        best_iter=cat("best_it").astype(np.int64), converged=np.asarray(models.converged).astype(bool),
        n_test=n_test.astype(np.int64), k=choose_k(ks, test, rule), rule=rule, stop=stop,
        test_fraction=float(test_fraction), holdout_probability=1.0 / _inv_prob(test_fraction), padded=padded,
        programs=len(groups), pad_reason=reason, models=models, test_history=hist[0], train_history=hist[1])


def _pad_w(W: np.ndarray, kmax: int) -> np.ndarray:
    out = np.zeros((W.shape[0], kmax))
    out[:, :W.shape[1]] = W
    return out


def _pad_model(model: NMFModel, kmax: int) -> NMFModel:
    k = model.d.shape[-1]
    if k == kmax:
        return model

    def widen(x, axis, fill=0.0):
        shape = list(x.shape)
        shape[axis] = kmax - k
        return np.concatenate([x, np.full(shape, fill, x.dtype)], axis=axis)
    return model.replace(w=widen(model.w, -1), d=widen(model.d, -1, 1e-15), h=widen(model.h, -2),
                         w_init=widen(model.w_init, -1))


def auto_rank(A: Any, *, seed: Any = None, ks: Any = None, **options: Any) -> int:
    """The rank ``nmf(A, k="auto", ...)`` uses: ``cross_validate(A, ks, seeds=(1, 2, 3), ...).k``.

    ``ks`` defaults to 2..min(20, m - 1, n - 1) (at least 1..1). ``seed`` (an int) shifts the three replicate
    seeds to ``seed, seed + 1, seed + 2`` (None: 1, 2, 3); fit options (``tol``, ``maxit``, ``L1``, ``L2``,
    targets as mappings/callables, ``remove``, ``mask``, ``test_fraction``, ``rule``, ...) pass through.
    """
    m, n = (int(s) for s in A.shape)
    if ks is None:
        top = max(2, min(20, m - 1, n - 1))
        ks = range(2, top + 1) if min(m, n) >= 2 else [1]
    if seed is None:
        seeds = (1, 2, 3)
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        seeds = tuple(int(seed) + i for i in range(3))
    else:
        raise TypeError("k='auto' needs an integer seed (or None): the replicates draw their own initial W")
    for drop in ("w_init", "sort", "layout", "loop", "devices"):
        options.pop(drop, None)
    return cross_validate(A, ks, seeds=seeds, **options).k

