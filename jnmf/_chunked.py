"""Fits of a matrix held on disk as column chunks, streamed once per iteration, never loaded whole.

``nmf_chunked(paths, k, ...)`` factors ``A = [A_1 | A_2 | ...]`` (m x n) given as files written by
``scipy.sparse.save_npz`` (or in-memory matrices), each holding consecutive columns (samples). It runs the
iterations of ``nmf()`` with the same arguments, targets and missing data included (same kernels, same stopping
rule, same iteration count; equal to float rounding), as a host-level loop around jit-compiled per-chunk kernels:

* H update, chunk by chunk: column block ``H_c`` solves the NNLS with ``G = W W' (+ L2)`` and ``B = W A_c (- L1)``,
  which needs only W; the same pass accumulates ``R = sum_c H_c A_c'`` (k x m) from the raw ``H_c``;
* the diagonal scaling of H needs all of H's rows (``d_H = |H[i, :]|``), so H (k x n) stays in memory: it is
  k/m of A's dense size (2% for k = 20 on 1,000 genes) and is the output anyway. Scaling is linear, so
  ``H_unit A' = diag(1/d_H) R``: one pass over the data per iteration, not two;
* W update from ``G = H H'`` and ``B = H A'`` (k x k and k x m), loss by the Gram identity with ``|A|^2`` summed
  once over the chunks, as ``step`` does.

Targets. ``target_H`` (k x n, the size of H) is held in memory and sliced per chunk: enrichment (lambda > 0:
``G + lam I``, ``B_c + lam T_c``) is per column, and PROJ_ADV (``G - |lam| a G_T``) needs only ``G_T = T T' / n``
of the whole T, formed once. ``removal="project"`` with lambda < 0 projects ``B = W A`` off T's class contrasts,
which mixes all columns of B (its class means over all samples), so no column of H can be solved before every
chunk is read: B (k x n) is formed in a first read, projected in memory as ``nmf()`` does, and H solved block by
block in a second read (two reads per iteration). ``target_W`` acts on the W update, which is in memory.

Missing data (``masks``, NaN entries). When any chunk has a masked entry the fit is masked, as ``nmf(mask=...)``
is: every chunk takes the dense layout with its mask (all False where it has none), column j of the H update
solves with its own ``G_j = W diag(o_j) W'``, and the W update's per-row ``G_i = H diag(o_i) H'`` are summed over
the chunks in the same read (``m x k x k``, from the raw blocks, rescaled by ``1/(d_a d_b)`` like R). The loss
of a masked fit is the SSE over observed entries of the new W and H, formed directly as ``nmf()`` does; it needs
A again, so iteration t's loss is summed in the read of iteration t+1 (convergence is decided before that read's
H update is used) and one read after the last iteration: iterations + 1 reads in all, not 2 x iterations.

Other losses (``loss=``, ``_losses``). Their H half is per column (``h_update`` on the chunk, from W); the W half's
statistics are sums over columns (``w_stats``: beta Q and P, k x m; huber/mae the per-row weighted Grams, m x k x
k, and right-hand side), formed in the same read from the raw H block (the model ``W' X`` needs no scaling) and
divided by ``d_H`` after it. An estimated NB size (``dispersion="per_row"``/``"global"``) takes its Newton steps'
per-row sums in three more reads. The objective needs the new model, so iteration t's is summed in the read of
t + 1, as for masked data (iterations + 1 reads in all, plus the NB ones). Chunks take the dense layout (with the
mask of a masked fit); sparse poisson chunks stay sparse (``CooData``) where a dense chunk exceeds the budget.

Each unmasked chunk of an MSE fit is put in the solver's dense or sparse layout by the ``layout="auto"`` rule
against the memory budget (``choose_layout``), sparse with the platform's kernel (``sparse_kernel_for``): EllBlocks
chunks round their block shapes up to powers of two so that chunks of similar size reuse one compiled kernel; a
host-CSR chunk (``HostSparseData``, CPU) is kept until the products dispatched on it are done.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from . import _log, _losses
from . import _validate as V
from ._data import DenseData, HostSparseData, SparseData, holds_host_data, prepare_data
from ._input import split_mask, squared_norm
from ._model import NMFModel
from ._options import FitOptions, signature_of, target_grams
from ._penalties import GRAM_JITTER, removal_project_rhs, scale_rows
from ._solve import check_finite
from ._step import advance, finish_model, h_solve, init_state, running, w_half

__all__ = ["nmf_chunked"]

_HIGHEST = lax.Precision.HIGHEST


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def _shape_of(item: Any, name: str) -> tuple[int, int]:
    """Shape of a chunk or a mask without reading its values (a ``save_npz`` file stores it apart)."""
    if _is_path(item):
        with np.load(item) as z:
            if "shape" in z.files and "format" in z.files:
                shape = tuple(int(s) for s in z["shape"])
            else:
                shape = None
        if shape is None:
            shape = tuple(sp.load_npz(item).shape)  # not a save_npz file: scipy names the problem
    elif sp.issparse(item):
        shape = tuple(int(s) for s in item.shape)
    elif item is None or isinstance(item, bytes):
        raise TypeError(f"{name} must be a .npz path, a numpy/jax array or a scipy.sparse matrix, "
                        f"got {type(item).__name__}")
    else:
        shape = tuple(int(s) for s in np.shape(item))
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D matrix (features x samples), got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape}); it needs at least one row and one column")
    return shape


def _read(chunk: Any, mask: Any, i: int, itemsize: int) -> tuple[Any, np.ndarray | None]:
    """Chunk i checked, with NaN entries folded into its mask and masked entries zeroed (``split_mask``):
    ``(A_i, None)`` when nothing in it is masked."""
    A = sp.load_npz(chunk) if _is_path(chunk) else chunk
    mask = sp.load_npz(mask) if _is_path(mask) else mask
    try:
        A, M = split_mask(A, mask, itemsize, mask_name=f"masks[{i}]", name=f"chunks[{i}]")
    except ValueError as e:  # e.g. a chunk too large for the dense layout that masked fits use
        raise ValueError(f"chunks[{i}]: {e}") from None
    return V.check_data(A, f"chunks[{i}]"), M


@functools.partial(jax.jit, static_argnames=("config", "has_target"))
def _h_chunk(W, H_prev, E0, data, rhs, warm, hyper, T, G_T, config, has_target):
    """Raw H block (k, n_c) of one chunk (before the global scaling; ``h_solve`` on the chunk's columns), its
    ``H_c A_c'`` (k, m) and, for masked data, its per-row Gram sums ``sum_j o_ij h_j h_j'`` as (k*k, m). ``rhs``:
    ``W A_c`` already modified for the target (two-read removal), or None to form ``W A_c`` here."""
    if not has_target:
        config = dataclasses.replace(config, target_H=False)
    X = h_solve(config, hyper, W, data.left(W) if rhs is None else rhs,
                data.left_grams(W) if config.masked else None, H_prev, E0, warm, G_T, T=T)
    S = None
    if config.masked:
        # As _masked_grams, but without its jitter: that is added once, to the sum over chunks (_w_step).
        k = X.shape[0]
        observed = jnp.logical_not(data.mask).astype(X.dtype)
        S = jnp.dot((X[:, None, :] * X[None, :, :]).reshape(k * k, -1), observed.T, precision=_HIGHEST)
    return X, data.right(X), S


@jax.jit
def _left(W, data):
    return data.left(W)


@jax.jit
def _chunk_sse(data, dW, H):
    return data.observed_sse(dW, H)


@functools.partial(jax.jit, static_argnames=("bounds",))
def _project_rhs(blocks, hyper, G_T, bounds):
    """``removal="project"`` on the whole ``B = W A - L1`` (k, n) from its chunk blocks, as ``apply_target`` does
    in ``nmf()`` (G is not used there); returns B's blocks again."""
    B = jnp.concatenate(blocks, axis=1) - hyper.L1[1]
    eye = jnp.eye(B.shape[0], dtype=B.dtype)
    B = removal_project_rhs(eye, B, hyper.target_H, G_T, hyper.target_lambda[1])[1]
    return jnp.split(B, bounds, axis=1)


class _Unscored(NamedTuple):
    """A masked fit's model after a W update, before its loss (the observed SSE) is known."""

    dW: jax.Array  # (k, m): diag(d) W'
    W: jax.Array  # (k, m): unit-scaled W'
    H: jax.Array  # (k, n): unit-scaled H
    d: jax.Array  # (k,)


@functools.partial(jax.jit, static_argnames=("config",))
def _w_step(state, H_raw, R, S, sq_norm, hyper, G_TW, config):
    """Scale H, then ``w_half`` from ``H A' = diag(1/d_H) R`` (and, masked, the per-row Grams ``S / (d_a d_b)``).

    Unmasked: the loss by the Gram identity and the convergence bookkeeping; returns the next state. Masked:
    returns the new model as ``_Unscored``: its loss, the observed SSE, needs A, and the next read sums it.
    """
    d_H, H = scale_rows(H_raw, config.norm)
    Gs = None
    if config.masked:
        k = config.k
        S = S / (d_H[:, None] * d_H[None, :]).reshape(k * k, 1)
        Gs = jnp.moveaxis(S.reshape(k, k, -1), -1, 0) + GRAM_JITTER * jnp.eye(k, dtype=S.dtype)
    d, W, loss = w_half(config, hyper, state, d_H, H, R / d_H[:, None], Gs, sq_norm, G_TW)
    if config.masked:
        return _Unscored(d[:, None] * W, W, H, d)
    return advance(state, W, H, d, loss, hyper.tol, config.patience)


_advance = jax.jit(advance, static_argnames=("patience_limit",))


# Non-MSE losses (``_losses``): the pieces of ``loss_step`` on one chunk's columns. ----------------------------------

@functools.partial(jax.jit, static_argnames=("config",))
def _loss_h_chunk(WT, E0, data, r, hyper, T, G_T, config):
    """Raw H block (k, n_c) of one chunk (``_losses.h_update``) and its sums for the W half (``w_stats``)."""
    X = _losses.h_update(config, hyper, WT, E0, data, r, G_T, T)
    return X, _losses.w_stats(config, hyper, WT, X, data, r)


@functools.partial(jax.jit, static_argnames=("config",))
def _loss_w_step(state, H_raw, stats, hyper, G_TW, config):
    """Scale H, then the W half from the chunks' summed statistics → (d, unit-scaled W', unit-scaled H)."""
    d_H, H = scale_rows(H_raw, config.norm)
    d, W = _losses.w_update(config, hyper, state, d_H, H, stats, G_TW)
    return d, W, H


@functools.partial(jax.jit, static_argnames=("config",))
def _loss_objective(data, dWT, H, r, hyper, config):
    return _losses.objective(config, hyper, data, dWT, H, r)


@functools.partial(jax.jit, static_argnames=("config", "need_grad"))
def _nb_chunk(data, dWT, H, s, config, need_grad):
    return _losses.nb_stats(config, data, _losses._model(dWT, H), s, need_grad)


_h0_chunk = jax.jit(_losses.h0_sums)
_advance_loss = jax.jit(_losses.advance_loss, static_argnames=("patience_limit",))


def _add(total: Any, part: Any) -> Any:
    """Sums over chunks of (tuples of) arrays; None entries (statistics not asked for) stay None."""
    if total is None:
        return part
    return jax.tree.map(lambda a, b: a + b, total, part)


def _fit_loss(config: Any, hyper: Any, plan: Any, n: int, cols: list[slice], load: Any, T_blocks: list[Any],
              G_TH: Any, G_TW: Any, h0_sums: Any) -> Any:
    """The iterations of ``_losses.loss_step`` over the chunks: one read per iteration for the H half and the W
    half's sums (plus ``_NB_NEWTON + 1`` for an estimated NB size); iteration t's objective is summed in the read of
    t + 1, and one read after the last. Returns the final state."""
    kconfig = dataclasses.replace(config, maxit=1)
    state = init_state(config, plan.w0, n)
    h0 = None if h0_sums is None else _losses.h0_fill(h0_sums, state.W, n)
    pending = None  # (W, H, d, r) of the last W update, whose objective the next read sums
    while True:
        current = state
        if pending is not None:  # the state the next H half starts from, before its objective is known
            pW, pH, pd, pr = pending
            current = state._replace(W=pW, H=pH, d=pd, n_iter=state.n_iter + 1, disp=pr)
        WT = current.W
        E0 = _losses.h_start(config, current, h0)
        r = _losses.current_dispersion(config, hyper, current)
        # After the maxit-th W update only its objective is needed: the last read solves nothing.
        solve = pending is None or int(state.n_iter) + 1 < config.maxit
        blocks, stats, value = [], None, jnp.zeros((), plan.dtype)
        for i, c in enumerate(cols):
            data = load(i)
            if pending is not None:
                value = value + _loss_objective(data, pd[:, None] * pW, pH[:, c], pr, hyper, kconfig)
            if solve:
                X, st = _loss_h_chunk(WT, E0[:, c], data, r, hyper, T_blocks[i], G_TH, kconfig)
                blocks.append(X)
                stats = _add(stats, st)
        if pending is not None:
            state = _advance_loss(state, pW, pH, pd, value, hyper.tol, patience_limit=config.patience, r=pr)
            pending = None
            _log.logger.info("nmf_chunked: iteration %d, loss %.6g", int(state.n_iter), float(state.loss))
            if not bool(running(state, config.maxit)):
                break
        d, W, H = _loss_w_step(state, jnp.concatenate(blocks, axis=1), stats, hyper, G_TW, kconfig)
        if config.loss == "nb" and config.dispersion != "fixed":
            dWT = d[:, None] * W

            def nb_sums(s, need_grad, dWT=dWT, H=H):
                total = None
                for i, c in enumerate(cols):
                    total = _add(total, _nb_chunk(load(i), dWT, H[:, c], s, kconfig, need_grad))
                return total

            r = _losses.newton_dispersion(config, nb_sums, r)
        pending = (W, H, d, r)
    return state


def nmf_chunked(chunks: Sequence[Any], k: int, *, masks: Sequence[Any] | None = None, **options: Any) -> NMFModel:
    """``nmf()`` of ``A = hstack(chunks)`` (m x n), reading one column chunk at a time (module docstring).

    Minimises ``sum_{ij observed} (A_ij - (W H)_ij)^2`` (+ the penalties and targets of ``nmf``) over W (m, k) and
    H (k, n), with H's columns split as A's are; or, with ``loss=``, ``sum_{ij observed} D(A_ij | (W H)_ij)``.

    Args:
        chunks: paths of ``scipy.sparse.save_npz`` files (or scipy.sparse / numpy matrices), each (m, n_c),
            consecutive columns of A in order. Every chunk is read once to check it and sum ``|A|^2``, then once
            per iteration (twice with ``removal="project"`` and a negative H lambda; once more at the end of a
            masked fit).
        k, tol, maxit, seed, w_init, L1, L2, nonneg, upper_bound, solver, norm, sort, cd_maxit, cd_tol, dtype:
            as ``nmf``; ``seed`` as an int draws the same initial W as ``nmf`` (it depends on m and k only).
        target_H: (k, n) target for the H update, in memory, for all n columns (column block c goes with chunk
            c); as ``nmf``.
        target_W: (m, k) target for the W update; as ``nmf``.
        target_lambda, removal: as ``nmf``: a scalar (every target given) or a (W, H) pair; a negative lambda
            removes the target's information by ``removal="proj_adv"`` or ``"project"`` (the latter reads every
            chunk twice per iteration: it needs ``W A`` whole before H can be solved).
        masks: entries to ignore (missing data), a sequence aligned with ``chunks``: ``masks[i]`` is None, a
            boolean (or 0/1) array or scipy.sparse matrix of chunk i's shape, or the path of such a matrix saved
            by ``scipy.sparse.save_npz``; True = ignore. NaN entries of a chunk are masked as well. A masked fit
            (any masked entry) runs every chunk in the dense layout (at most 4 GiB each), solves per-column and
            per-row Gram matrices (``m k^2`` memory for the W side), and its ``loss`` is the SSE over observed
            entries, as ``nmf(mask=...)``.
        loss, power, delta, dispersion, robust: as ``nmf`` (``loss_mode="rcppml"`` is refused): the same
            majorize-minimize iterations, chunk by chunk (module docstring); an estimated NB dispersion reads every
            chunk three more times per iteration, and a non-MSE fit reads them once more at the end.
        max_memory_bytes: budget for one unmasked chunk's working set (default half of physical memory); each
            such chunk takes the dense or sparse layout by ``layout="auto"``'s rule, ``MemoryError`` if neither
            fits.

    Returns an ``NMFModel`` (jax arrays, as from ``nmf``) with ``h`` (k, n) in memory; the same model as
    ``nmf(hstack(chunks), k, ...)`` with ``mask=hstack(masks)``, to float rounding, in the same iterations.
    Raises before reading any chunk's values when arguments, chunk shapes, targets or mask shapes disagree.
    """
    if _is_path(chunks) or not isinstance(chunks, Sequence) or len(chunks) == 0:
        raise TypeError(f"chunks must be a non-empty sequence of .npz paths or matrices, got {chunks!r}")
    if masks is None:
        masks = [None] * len(chunks)
    elif _is_path(masks) or not isinstance(masks, Sequence):
        raise TypeError(f"masks must be None or a sequence aligned with chunks (None, a matrix or a .npz path "
                        f"per chunk), got {type(masks).__name__}")
    elif len(masks) != len(chunks):
        raise ValueError(f"masks has {len(masks)} entries but chunks has {len(chunks)}; give one per chunk "
                         "(None for a chunk without masked entries)")
    for name in ("layout", "loop", "mask", "devices"):
        if name in options:
            raise TypeError(f"nmf_chunked() does not take {name!r}: chunks take the layout the memory budget allows, "
                            "the driver is a host loop, missing data are given per chunk as masks=, and chunked "
                            "fits run on one device")
    opts = FitOptions.of("nmf_chunked", options)
    if opts.loss_mode != "jnmf":
        raise ValueError(f"nmf_chunked does not take loss_mode={opts.loss_mode!r}: RcppML's IRLS losses run through "
                         "nmf() only; chunked fits take jnmf's losses (loss_mode='jnmf')")

    # Shapes first (a .npz file's shape is read without its values), so every argument is checked before the
    # data are read.
    shapes = [_shape_of(c, f"chunks[{i}]") for i, c in enumerate(chunks)]
    m = shapes[0][0]
    for i, (rows, _) in enumerate(shapes):
        if rows != m:
            raise ValueError(f"chunks[{i}] has {rows} rows, chunks[0] has {m}: chunks must share the rows")
    for i, mask in enumerate(masks):
        if mask is not None and (shape := _shape_of(mask, f"masks[{i}]")) != shapes[i]:
            raise ValueError(f"masks[{i}] must have the shape of chunks[{i}], {shapes[i]}, got {shape}")
    widths = [s[1] for s in shapes]
    n = sum(widths)
    # Validation, initial W, Config and Hyper (targets included) exactly as nmf() builds them, from A's shape.
    plan = opts.resolve(m, n, k)
    config, hyper = plan.config, plan.hyper
    if config.remove or (config.removal == "scatter" and config.target_H and float(hyper.target_lambda[1]) < 0):
        raise ValueError("nmf_chunked: the scatter removal (remove=, or removal='scatter' with a negative "
                         "target_lambda) is not supported for chunked fits yet (its majorize-minimize target couples "
                         "every column of H); use nmf(), or removal='project' / 'proj_adv' here")
    max_memory_bytes = plan.max_memory_bytes
    dt = plan.dtype
    itemsize = np.dtype(dt).itemsize

    loss = config.loss != "mse"
    # One read: values, NaN and masks, and |A|^2 (exact float64 sum, as squared_norm in prepare); for a
    # multiplicative loss the sums of its constant start of H (the same with or without an all-False mask).
    sq_norm, masked, h0_sums = 0.0, False, None
    for i, chunk in enumerate(chunks):
        A_c, M_c = _read(chunk, masks[i], i, itemsize)
        masked = masked or M_c is not None
        sq_norm += squared_norm(A_c)
        if config.loss in _losses.BETA:
            h0_sums = _add(h0_sums, _h0_chunk(_losses.place_loss_data(A_c, plan, M_c), plan.w0.T))
    if masked:
        config = dataclasses.replace(config, masked=True)
    # maxit only sizes the loss history (init_state) and stops the host loop; without it in the kernels' static
    # config, fits that differ only in maxit reuse the compiled per-chunk programs.
    kconfig = dataclasses.replace(config, maxit=1)

    def load(i: int) -> DenseData | SparseData | HostSparseData | _losses.CooData:
        A_c, M_c = _read(chunks[i], masks[i], i, itemsize)
        if config.masked:  # as nmf(mask=...): every column of a masked fit solves with its own Gram matrix
            return prepare_data(A_c, dt, mask=np.zeros(A_c.shape, bool) if M_c is None else M_c)
        if loss:  # dense, or sparse poisson as CooData when the dense chunk does not fit, as in nmf()
            return _losses.place_loss_data(A_c, plan, None)
        # bucket: power-of-two piece width and block count, so that chunks of similar size share compiled kernels
        return prepare_data(A_c, dt, "auto", k=config.k, max_memory_bytes=max_memory_bytes, bucket=True,
                            sparse_kernel=plan.sparse_kernel)

    starts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    cols = [slice(int(lo), int(hi)) for lo, hi in zip(starts[:-1], starts[1:], strict=True)]
    TH = None if hyper.target_H is None else np.asarray(hyper.target_H)
    T_blocks = [None if TH is None else jnp.asarray(TH[:, c]) for c in cols]
    G_TH, G_TW = target_grams(config, hyper)  # of the whole targets, as in nmf()
    if loss:
        return _finish(config, _fit_loss(config, hyper, plan, n, cols, load, T_blocks, G_TH, G_TW, h0_sums),
                       plan.w0, hyper.tol)
    # removal="project" mixes all columns of W A; it is decided here, where lambda is concrete, not under jit.
    two_reads = config.target_H and config.removal == "project" and float(hyper.target_lambda[1]) < 0
    # The second read solves from the projected B, which has H's L1 subtracted already (and "project" leaves G as
    # it is): no L1 and no target there, so that the solve sees exactly what nmf()'s does.
    hyper_projected = dataclasses.replace(hyper, L1=hyper.L1.at[1].set(0))
    sq = jnp.asarray(sq_norm, dt)

    def read(W, H_prev, E0, warm, rhs=None, sse_of=None, solve=True, rhs_only=False):
        """One read of every chunk: the H update's raw blocks, ``R`` and (masked) ``S`` from W; with
        ``rhs_only`` only the blocks of ``W A``; with ``sse_of = (diag(d) W, H)`` also that model's observed SSE."""
        blocks, R, S, sse = [], jnp.zeros((config.k, m), dt), None, jnp.zeros((), dt)
        if config.masked:
            S = jnp.zeros((config.k * config.k, m), dt)
        held = None
        for i, c in enumerate(cols):
            data = load(i)  # while the previous chunk's products run
            # A host-sparse chunk (HostSparseData) must outlive the products dispatched on it: its matrix is
            # released with the last instance.
            jax.block_until_ready(held)
            held = None
            if sse_of is not None:
                sse = sse + _chunk_sse(data, sse_of[0], sse_of[1][:, c])
            if rhs_only:
                blocks.append(_left(W, data))
            elif solve:
                if rhs is None:
                    X, R_c, S_c = _h_chunk(W, H_prev[:, c], E0[:, c], data, None, warm, hyper, T_blocks[i], G_TH,
                                           kconfig, config.target_H)
                else:
                    X, R_c, S_c = _h_chunk(W, H_prev[:, c], E0[:, c], data, rhs[i], warm, hyper_projected, None,
                                           None, kconfig, False)
                blocks.append(X)
                R = R + R_c
                if config.masked:
                    S = S + S_c
            if holds_host_data(data):
                held = (data, blocks[-1:], R, sse)
        jax.block_until_ready(held)
        return blocks, R, S, sse

    state = init_state(config, plan.w0, n)
    # Masked fits: the last W update's model, whose loss (and so convergence) the next read sums.
    pending = None
    while True:
        if pending is None:
            W, H_prev, d, warm = state.W, state.H, state.d, state.n_iter > 0
        else:
            W, H_prev, d, warm = pending.W, pending.H, pending.d, jnp.asarray(True)
        E0 = d[:, None] * H_prev
        sse_of = None if pending is None else (pending.dW, pending.H)
        # After the maxit-th W update only its loss is needed: the last read solves nothing.
        solve = pending is None or int(state.n_iter) + 1 < config.maxit
        rhs = None
        if two_reads and solve:
            rhs, _, _, sse = read(W, H_prev, E0, warm, sse_of=sse_of, rhs_only=True)
        else:
            blocks, R, S, sse = read(W, H_prev, E0, warm, sse_of=sse_of, solve=solve)
        if pending is not None:
            state = _advance(state, pending.W, pending.H, pending.d, sse, hyper.tol,
                             patience_limit=config.patience)
            pending = None
            _log.logger.info("nmf_chunked: iteration %d, loss %.6g", int(state.n_iter), float(state.loss))
            if not bool(running(state, config.maxit)):  # the driver's rule, evaluated on the host
                break
        if rhs is not None:
            rhs = _project_rhs(rhs, hyper, G_TH, tuple(int(s) for s in starts[1:-1]))
            blocks, R, S, _ = read(W, H_prev, E0, warm, rhs=rhs)
        out = _w_step(state, jnp.concatenate(blocks, axis=1), R, S, sq, hyper, G_TW, kconfig)
        if config.masked:
            pending = out
        else:
            state = out
            _log.logger.info("nmf_chunked: iteration %d, loss %.6g", int(state.n_iter), float(state.loss))
            if not bool(running(state, config.maxit)):
                break
    return _finish(config, state, plan.w0, hyper.tol)


def _finish(config: Any, state: Any, w0: jax.Array, tol: Any) -> NMFModel:
    model = finish_model(config, state, w0)
    check_finite(model)
    _log.warn_if_not_converged(model, tol=tol, what="nmf_chunked", stacklevel=4)  # nmf_chunked's caller
    return model


nmf_chunked.__signature__ = signature_of(nmf_chunked, (
    inspect.Parameter("chunks", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("k", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("masks", inspect.Parameter.KEYWORD_ONLY, default=None)), exclude=("layout", "loop", "mask",
                                                                                        "devices"))
