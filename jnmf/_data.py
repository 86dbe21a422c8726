"""The data matrix A (m x n) as seen by the solver: dense, or sparse with a kernel chosen for the platform.

Every layout provides the two products of an alternating update, ``F A`` (k x n, for the H update) and
``H A'`` (k x m, for the W update), inside jit; none of the sparse ones forms a dense m x n array:

* ``SparseData`` (accelerators): A by columns and by rows as ``EllBlocks`` (each column cut into pieces of at
  most L non-zeros, padded to L); each product gathers the k-vectors of one block of pieces at a time and reduces
  them inside XLA, O(nnz k) time and O(nnz + block k) memory;
* ``HostSparseData`` (CPU): A and A' as CSR on the host, multiplied by a compiled kernel (``_csr_kernel``)
  through a ``jax.pure_callback`` (about three times as fast as the gathers on CPU, where XLA's gather code is
  scalar).

A dense matrix may carry a mask of entries to ignore (missing data). Its A holds 0 at masked entries, so the
products above are ``F (O * A)`` and ``H (O * A)'`` with O = 1 - mask, and it adds the per-column Gram matrices
``G_j = F diag(o_j) F'`` that a masked NNLS update needs, and the squared error over observed entries.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from ._csr_kernel import csr_times_t
from ._input import canonical_sparse
from ._memory import default_budget, estimate_memory, gib

_HIGHEST = lax.Precision.HIGHEST

# Density from which sparse input is densified (when the dense working set fits the memory budget, ``_memory``):
# the crossover of each sparse kernel with the dense GEMM, whole iterations at k = 20 on a 2-core CPU (ms
# sparse/dense).
# * host CSR kernel (CPU): 14,000 x 2,600 at 5% 7.4/15.6, 10% 12.3/15.8, 15% 16.9/15.2, 20% 21.7/15.4;
#   4,000 x 20,000 at 5% 12.9/31.8, 10% 23.0/32.3, 15% 33.0/32.1, 20% 42.2/34.2: 14%.
# * EllBlocks gathers: 4,000 x 20,000 at 3% 17/31, 5% 26/32, 8% 38/31; 14,000 x 2,600 at 3% 9/14, 5% 12/15,
#   8% 19/15, 15% 34/15: 6% (measured on CPU; on accelerators, where this kernel runs, not yet measured).
_DENSE_DENSITY = {"host": 0.14, "ell": 0.06}
# Below this many entries (16 MB in float32) a sparse A is densified whatever its density: the two callbacks of
# the host kernel cost ~0.3 ms an iteration, more than the GEMMs (5% non-zeros, k = 20, ms sparse/dense:
# 300 x 1,000 0.36/0.18, 1,000 x 3,000 1.29/0.93, 2,000 x 5,000 2.29/3.99).
_DENSE_ENTRIES = 2**22
_DENSE_BYTES_LIMIT = 4 * 2**30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseData:
    """A dense (m, n) data matrix, optionally with a boolean (m, n) ``mask`` (True = ignore; A is 0 there)."""

    A: jax.Array
    mask: jax.Array | None = None
    # Columns of A that are data when A was padded for a device mesh (``shard_columns``); None: all of them.
    n_valid: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape

    def _observed(self) -> jax.Array:
        return jnp.logical_not(self.mask).astype(self.A.dtype)

    def left_grams(self, F: jax.Array) -> jax.Array:
        """Per-column Gram matrices ``G_j = F diag(o_j) F' + 1e-15 I`` for F (k, m) → (n, k, k); needs a mask."""
        return _masked_grams(F, self._observed())

    def right_grams(self, H: jax.Array) -> jax.Array:
        """Per-row Gram matrices ``G_i = H diag(o_i) H' + 1e-15 I`` for H (k, n) → (m, k, k); needs a mask."""
        return _masked_grams(H, self._observed().T)

    def observed_sse(self, WT: jax.Array, H: jax.Array) -> jax.Array:
        """``sum_{ij observed} (A_ij - (WT' H)_ij)^2`` for WT (k, m), H (k, n), formed directly (not by the Gram
        identity, which needs per-entry weights)."""
        resid = self.A - jnp.dot(WT.T, H, precision=_HIGHEST)
        if self.mask is not None:
            resid = jnp.where(self.mask, jnp.zeros_like(resid), resid)
        return jnp.sum(resid * resid)

    def left(self, F: jax.Array) -> jax.Array:
        """``F A`` for F (k, m) → (k, n)."""
        return jnp.dot(F, self.A, precision=_HIGHEST)

    def right(self, H: jax.Array) -> jax.Array:
        """``H A'`` for H (k, n) → (k, m)."""
        return jnp.dot(H, self.A.T, precision=_HIGHEST)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EllBlocks:
    """One orientation of a sparse matrix for ``X M`` products, in blocked, padded (ELL) "virtual columns".

    Column j of M (its c_j non-zeros in row order) is cut into ``ceil(c_j / L)`` virtual columns of at most L
    entries; ``idx``/``val`` (nb, B, L) hold their row indices and values in blocks of B virtual columns (padding:
    value 0, index 0), ``owner`` (nb * B,) the column each virtual column belongs to (sorted; padding: the last).
    """

    idx: jax.Array
    val: jax.Array
    owner: jax.Array
    n_cols: int = dataclasses.field(metadata=dict(static=True))

    def times(self, X: jax.Array) -> jax.Array:
        """``X M`` for X (k, q) → (k, n_cols)."""
        X = jnp.asarray(X)
        XT = X.T
        # One block at a time: the gathered (B, L, k) rows of X' stay small and are reduced at once. On a 2-core
        # CPU the 14,000 x 2,600 (15%) products ran in 16 + 16 ms this way, against 150 + 470 ms for one gather of
        # all (nnz, k) rows followed by a segment sum over non-zeros, and 18 + 29 ms with an einsum in place of
        # the multiply-and-sum (which XLA fuses with the gather); the segment sum left is over pieces only.
        parts = lax.map(lambda b: jnp.sum(b[0][..., None] * XT[b[1]], axis=1), (self.val, self.idx))
        k = X.shape[0]
        out = jax.ops.segment_sum(parts.reshape(-1, k), self.owner, num_segments=self.n_cols,
                                  indices_are_sorted=True)
        return out.T


# Host sparse kernel (CPU) ------------------------------------------------------------------------------------------
#
# XLA's CPU backend has no sparse product, and its gather codegen is scalar: the EllBlocks products above run at
# ~0.2 ns per multiply-add (14,000 x 2,600 at 15%, k = 20: 16-17 ms each on 2 cores). On CPU the fit therefore
# calls a compiled CSR kernel (``_csr_kernel``, 6-7 ms there) from inside the jit-compiled driver through
# ``jax.pure_callback``. The matrix stays on the host in a registry and the program receives only an int32 key: as
# an operand the ~nnz-sized arrays would be copied into the callback at every call (13 ms for 44 MB), and as
# static data the compilation cache would keep every fitted matrix alive (and reuse a program for another matrix).

_HOST_REGISTRY: dict[int, tuple[sp.csr_matrix, sp.csr_matrix]] = {}
_HOST_REFS: dict[int, int] = {}  # live HostSparseData instances per registry entry
_HOST_KEYS = itertools.count(1)


def _host_lookup(key: Any) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    k = int(np.asarray(key).ravel()[0])
    try:
        return _HOST_REGISTRY[k]
    except KeyError:
        raise RuntimeError("the host sparse matrix of this fit was released before the fit finished: keep the "
                           "Problem (or SparseData) alive until its results are ready") from None


def _host_times(key: Any, words: Any, which: int, dtype: str) -> np.ndarray:
    """Callback: ``X M'`` with M the registry entry's matrix ``which`` (0: A' for ``F A``, 1: A for ``H A'``).

    X and the result travel as uint32 words (``_host_call``). X may carry leading batch axes (vmap): they are
    stacked into one product with more rows.
    """
    M = _host_lookup(key)[which]
    words = np.ascontiguousarray(np.asarray(words))
    X = words.view(dtype)
    if X.ndim == words.ndim and words.dtype.itemsize != X.dtype.itemsize:
        X = X[..., 0]  # (..., q, 2) words of a 64-bit float -> (..., q)
    lead = X.shape[:-1]
    out = csr_times_t(M.indptr, M.indices, M.data, X.reshape(-1, X.shape[-1]))
    return out.reshape(*lead, M.shape[0]).view(np.uint32).reshape(*lead, M.shape[0], *words.shape[X.ndim:])


def _host_call(key: jax.Array, X: jax.Array, which: int, rows: int) -> jax.Array:
    # Values cross the callback boundary as uint32 words: JAX converts callback operands and results to the
    # thread's default dtypes, and jax.enable_x64 (a thread-local context) is off in XLA's callback thread, so a
    # float64 X would arrive, and a float64 result be returned, rounded to float32.
    words = lax.bitcast_convert_type(X, jnp.uint32)
    out = jax.ShapeDtypeStruct((*X.shape[:-1], rows, *words.shape[X.ndim:]), jnp.uint32)
    fn = functools.partial(_host_times, which=which, dtype=np.dtype(X.dtype).name)
    return lax.bitcast_convert_type(jax.pure_callback(fn, out, key, words, vmap_method="expand_dims"), X.dtype)


# X -> X M' is linear in X, with adjoint G -> G M, the other orientation's product: reverse-mode derivatives (the
# scan driver under jax.grad) go through the host kernel too. Forward mode is not defined for a pure_callback.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _host_product(key: jax.Array, X: jax.Array, which: int, rows: int, cols: int) -> jax.Array:
    return _host_call(key, X, which, rows)


def _host_product_fwd(key, X, which, rows, cols):
    return _host_call(key, X, which, rows), key


def _host_product_bwd(which, rows, cols, key, g):
    return None, _host_call(key, g, 1 - which, cols)


_host_product.defvjp(_host_product_fwd, _host_product_bwd)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HostSparseData:
    """A sparse (m, n) data matrix held on the host as CSR (of A and of A'), multiplied by ``_csr_kernel`` from
    inside the jit-compiled fit (the CPU kernel; see the comment above ``_HOST_REGISTRY``).

    ``key`` (an int32 scalar, the pytree's only leaf) names the matrix in a host registry. Every concrete instance
    (also the copies that flattening makes: ``device_put``, ``tree_map``) holds a reference to the entry, which is
    dropped with the last one; a computation dispatched asynchronously must keep one alive until its results are
    ready (``solve`` and ``sweep`` block for this).
    """

    key: jax.Array
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

    def __post_init__(self):
        # Instances built while tracing hold a tracer, and vmap's axis specs plain ints: neither owns the entry.
        if isinstance(self.key, jax.core.Tracer) or not isinstance(self.key, (jax.Array, np.ndarray)):
            return
        key = int(self.key)
        if key in _HOST_REGISTRY:
            _HOST_REFS[key] = _HOST_REFS.get(key, 0) + 1
            weakref.finalize(self, _host_release, key)

    def left(self, F: jax.Array) -> jax.Array:
        """``F A`` for F (k, m) → (k, n)."""
        m, n = self.shape
        return _host_product(self.key, F, 0, n, m)

    def right(self, H: jax.Array) -> jax.Array:
        """``H A'`` for H (k, n) → (k, m)."""
        m, n = self.shape
        return _host_product(self.key, H, 1, m, n)


def host_sparse(A: sp.spmatrix | sp.sparray, dtype: Any) -> HostSparseData:
    """``HostSparseData`` of a scipy sparse matrix (duplicates summed, values cast to ``dtype``)."""
    csr = sp.csr_matrix(A, dtype=dtype)
    csr.sum_duplicates()
    csr.sort_indices()
    csr_t = sp.csr_matrix(csr.T)
    csr_t.sort_indices()
    key = next(_HOST_KEYS)
    _HOST_REGISTRY[key] = (csr_t, csr)
    return HostSparseData(key=jnp.asarray(key, jnp.int32), shape=tuple(int(s) for s in csr.shape))


def _host_release(key: int) -> None:
    _HOST_REFS[key] -= 1
    if _HOST_REFS[key] <= 0:
        del _HOST_REFS[key]
        _HOST_REGISTRY.pop(key, None)


def holds_host_data(tree: Any) -> bool:
    """Whether a pytree (e.g. a ``Problem``) holds ``HostSparseData``: its results depend on a host registry entry
    that must outlive the computation (``solve`` blocks until they are ready)."""
    return any(isinstance(x, HostSparseData) for x in jax.tree_util.tree_leaves(
        tree, is_leaf=lambda x: isinstance(x, HostSparseData)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseData:
    """A sparse (m, n) data matrix stored twice: by columns (for ``F A``) and by rows (for ``H A'``)."""

    cols: EllBlocks  # A's columns: F A
    rows: EllBlocks  # A's rows (the columns of A'): H A'
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

    def left(self, F: jax.Array) -> jax.Array:
        """``F A`` for F (k, m) → (k, n)."""
        return self.cols.times(F)

    def right(self, H: jax.Array) -> jax.Array:
        """``H A'`` for H (k, n) → (k, m)."""
        return self.rows.times(H)


# Entries per block (B * L): the block sizes that ran fastest on CPU were 1e5 - 4e5 entries (temp of ~10-30 MB
# for k = 20); smaller blocks pay the loop overhead, larger ones the memory traffic of one big gather.
_BLOCK_ENTRIES = 2**17


def _ell_width(counts: np.ndarray, bucket: bool = False) -> int:
    """Piece width L minimising the padded size ``sum_j ceil(c_j / L) L`` over a few quantiles of the non-zero
    column counts c_j (padding < L per column, so at most ~3x nnz with L = the median count). ``bucket`` rounds
    the candidates up to powers of two."""
    nonzero = counts[counts > 0]
    if nonzero.size == 0:
        widths = [1]
    else:
        widths = sorted({max(1, int(np.ceil(np.quantile(nonzero, q)))) for q in (0.5, 0.75, 0.9, 0.95, 0.99, 1.0)})
    if bucket:
        widths = sorted({1 << (w - 1).bit_length() for w in widths})
    size = [int(np.sum(-(-counts // w))) * w for w in widths]
    return widths[int(np.argmin(size))]


def _ell_geometry(n_pieces: int, L: int, bucket: bool = False) -> tuple[int, int]:
    """(blocks, pieces per block) holding ``n_pieces`` pieces of width L in blocks of ~``_BLOCK_ENTRIES``."""
    n_v = max(n_pieces, 1)
    B = max(1, min(n_v, _BLOCK_ENTRIES // L))
    nb = -(-n_v // B)
    if bucket:
        nb = 1 << (nb - 1).bit_length()
    return nb, B


def _ell_arrays(csc: sp.csc_matrix, dtype: Any, L: int, nb: int, B: int) -> tuple[np.ndarray, ...]:
    """Host arrays ``(idx, val, owner)`` of ``EllBlocks`` for a CSC matrix with sorted indices, in the given
    geometry (which must hold its pieces)."""
    m, n = csc.shape
    counts = np.diff(csc.indptr).astype(np.int64)
    n_virtual = -(-counts // L)
    total = nb * B
    if int(n_virtual.sum()) > total:
        raise ValueError(f"{int(n_virtual.sum())} pieces do not fit {nb} blocks of {B}")
    # Entry p of column j goes to virtual column start_j + p // L, slot p % L.
    col_of = np.repeat(np.arange(n), counts)
    pos = np.arange(csc.nnz) - np.repeat(csc.indptr[:-1], counts)
    start = np.concatenate([[0], np.cumsum(n_virtual)[:-1]])
    v = start[col_of] + pos // L
    idx = np.zeros((total, L), np.int32)
    val = np.zeros((total, L), dtype)
    idx[v, pos % L] = csc.indices
    val[v, pos % L] = csc.data
    owner = np.full(total, max(n - 1, 0), np.int32)
    owner[: int(n_virtual.sum())] = np.repeat(np.arange(n, dtype=np.int32), n_virtual)
    return idx.reshape(nb, B, L), val.reshape(nb, B, L), owner


def _ell_blocks(csc: sp.csc_matrix, dtype: Any, bucket: bool = False) -> EllBlocks:
    """``EllBlocks`` of a CSC matrix with sorted indices (width by ``_ell_width``; ``bucket`` also rounds the
    block count up to a power of two, so that matrices of similar size share compiled kernels)."""
    counts = np.diff(csc.indptr).astype(np.int64)
    L = _ell_width(counts, bucket)
    nb, B = _ell_geometry(int(np.sum(-(-counts // L))), L, bucket)
    idx, val, owner = _ell_arrays(csc, dtype, L, nb, B)
    return EllBlocks(idx=jnp.asarray(idx), val=jnp.asarray(val), owner=jnp.asarray(owner), n_cols=csc.shape[1])


def _masked_grams(F: jax.Array, O: jax.Array) -> jax.Array:
    """``G_j = sum_i O_ij F[:, i] F[:, i]' + 1e-15 I`` for F (k, q), O (q, p) → (p, k, k).

    One (k*k, q) x (q, p) GEMM of the row outer products with the observation weights.
    """
    k, q = F.shape
    outer = (F[:, None, :] * F[None, :, :]).reshape(k * k, q)
    G = jnp.dot(outer, O, precision=_HIGHEST).reshape(k, k, -1)
    # Same jitter as features.gram: an entirely masked column gets G = 1e-15 I and a zero solution.
    return jnp.moveaxis(G, -1, 0) + 1e-15 * jnp.eye(k, dtype=F.dtype)


def _sparse_from_scipy(A: sp.spmatrix | sp.sparray, dtype: Any, bucket: bool = False) -> SparseData:
    csc = sp.csc_matrix(A)
    csc.sum_duplicates()
    csc.sort_indices()
    csr_t = sp.csc_matrix(csc.T)  # A' by columns = A by rows
    csr_t.sort_indices()
    return SparseData(cols=_ell_blocks(csc, dtype, bucket), rows=_ell_blocks(csr_t, dtype, bucket),
                      shape=tuple(int(s) for s in csc.shape))


def choose_layout(A: Any, layout: str, itemsize: int, k: int = 1, max_memory_bytes: int | None = None,
                  sparse_kernel: str = "auto") -> str:
    """Resolve ``layout="auto"`` against a memory budget, and check that the chosen layout fits.

    ``"auto"`` prefers dense for dense input and for sparse input with at least ``_DENSE_DENSITY`` non-zeros for
    the sparse kernel (14% on CPU, 6% elsewhere) or at most ``_DENSE_ENTRIES`` (4M) entries, sparse otherwise; when
    the preferred layout's working set (``estimate_memory`` at rank k) exceeds ``max_memory_bytes`` (default: half
    of physical memory) it takes the other one. Raises ``MemoryError`` naming both sizes when nothing fits, or
    when an explicit ``"dense"``/``"sparse"`` does not fit.
    """
    budget = default_budget() if max_memory_bytes is None else int(max_memory_bytes)
    m, n = A.shape
    dtype = {4: np.float32, 8: np.float64}[itemsize]
    nnz = None

    def need(lay: str) -> int:
        nonlocal nnz
        if lay == "sparse" and nnz is None:
            nnz = int(A.nnz) if sp.issparse(A) else int(np.count_nonzero(np.asarray(A)))
        return estimate_memory(m, n, k, nnz, lay, dtype, sparse_kernel_for(sparse_kernel))

    if layout != "auto":
        if need(layout) > budget:
            raise MemoryError(f"layout={layout!r}: the fit of A ({m} x {n}, k={k}) needs about "
                              f"{gib(need(layout))}, above the memory budget of {gib(budget)} (max_memory_bytes); "
                              "try the other layout, nmf_chunked, or a larger budget")
        return layout
    if sp.issparse(A):
        density = A.nnz / max(m * n, 1)
        dense_from = _DENSE_DENSITY[sparse_kernel_for(sparse_kernel)]
        prefer_dense = density >= dense_from or m * n <= _DENSE_ENTRIES
        order = ("dense", "sparse") if prefer_dense else ("sparse", "dense")
    else:
        order = ("dense", "sparse")
    for lay in order:
        if need(lay) <= budget:
            return lay
    raise MemoryError(f"A ({m} x {n}, {nnz} non-zeros, k={k}) fits in neither layout: dense needs about "
                      f"{gib(need('dense'))}, sparse about {gib(need('sparse'))}, above the memory budget of "
                      f"{gib(budget)} (max_memory_bytes); fit it from column chunks on disk with nmf_chunked")


def split_mask(A: Any, mask: Any, itemsize: int, layout: str = "auto",
               mask_name: str = "mask", name: str = "A") -> tuple[Any, np.ndarray | None]:
    """Fold NaN entries of A into ``mask`` (True = ignore) and zero the masked entries of A.

    Returns ``(A, None)`` unchanged when nothing is masked (no mask, or an all-False one, and no NaN). Otherwise
    returns a dense A with 0 at masked entries (whatever they held: NaN, inf, negative) and the dense boolean
    mask. ``mask`` may be a boolean (or 0/1) array or scipy.sparse matrix of A's shape (errors call it
    ``mask_name``). Masked fits use the dense
    layout: sparse A is densified if it fits in the dense memory limit (4 GiB), else this raises.
    """
    if isinstance(A, (str, bytes)) or A is None:
        return A, None  # check_data names the type error
    if sp.issparse(A):
        # One canonical copy (duplicates summed, indices sorted, explicit zeros and DIA padding dropped, any format):
        # the caller's matrix is never modified, and every later step sees the same matrix whatever its storage.
        A = canonical_sparse(A, {4: np.float32, 8: np.float64}[itemsize], name, check=False)
    values = np.asarray(A.data) if sp.issparse(A) else np.asarray(A)
    shape = tuple(A.shape) if sp.issparse(A) else values.shape
    if len(shape) != 2:
        if mask is None:
            return A, None  # check_data names the shape error
        raise ValueError(f"A must be a 2-D matrix (features x samples), got shape {shape}")
    if mask is None:
        if not (np.issubdtype(values.dtype, np.floating) and np.isnan(values).any()):
            return A, None
        M = None
    else:
        M = _check_mask(mask, shape, mask_name)
    if layout == "sparse":
        raise ValueError("masked fits (a mask, or NaN entries in A) use the dense layout; got layout='sparse'")
    m, n = shape
    if m * n * itemsize > _DENSE_BYTES_LIMIT:
        raise ValueError(f"masked fits (a mask, or NaN entries in A) use the dense layout, but A ({m} x {n}) needs "
                         f"{m * n * itemsize / 2**30:.1f} GiB, above the {_DENSE_BYTES_LIMIT / 2**30:.0f} GiB limit")
    dense = A.toarray() if sp.issparse(A) else np.asarray(A)
    if np.issubdtype(dense.dtype, np.floating):
        nan = np.isnan(dense)
        M = nan if M is None else (M | nan)
    if not M.any():
        return A, None
    return np.where(M, np.zeros((), dense.dtype), dense), M


def _check_mask(mask: Any, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    M = mask.toarray() if sp.issparse(mask) else np.asarray(mask)
    if M.shape != shape:
        raise ValueError(f"{name} must have the shape of A, {shape}, got {M.shape}")
    if M.dtype != bool:
        if not (np.issubdtype(M.dtype, np.integer) or np.issubdtype(M.dtype, np.floating)) or not np.all(
                (M == 0) | (M == 1)):
            raise ValueError(f"{name} must be boolean (True = ignore the entry) or 0/1, got dtype {M.dtype}")
        M = M.astype(bool)
    return M


def sparse_kernel_for(kernel: str = "auto") -> str:
    """Resolve the sparse kernel: ``"host"`` (scipy CSR on a thread pool, ``HostSparseData``) where the fit runs
    on CPU, ``"ell"`` (``EllBlocks`` gathers inside XLA, ``SparseData``) on accelerators."""
    if kernel not in ("auto", "host", "ell"):
        raise ValueError(f"sparse_kernel must be 'auto', 'host' or 'ell', got {kernel!r}")
    if kernel == "auto":
        kernel = _SPARSE_KERNEL
    if kernel == "auto":
        return "host" if jax.default_backend() == "cpu" else "ell"
    return kernel


# What ``sparse_kernel="auto"`` resolves to before looking at the platform; tests and benchmarks set it to compare
# the two kernels through the public entry points.
_SPARSE_KERNEL = "auto"


def prepare_data(A: Any, dtype: Any, layout: str = "auto", mask: np.ndarray | None = None, k: int = 1,
                 max_memory_bytes: int | None = None, bucket: bool = False,
                 sparse_kernel: str = "auto") -> DenseData | SparseData | HostSparseData:
    """Convert validated input to the solver's layout (``"auto"``, ``"dense"`` or ``"sparse"``; see
    ``choose_layout`` for the memory budget at rank k). ``bucket``: see ``_ell_blocks``. The sparse layout uses
    ``sparse_kernel`` (``sparse_kernel_for``): ``HostSparseData`` on CPU, ``SparseData`` (EllBlocks) elsewhere.

    With a boolean ``mask`` (from ``split_mask``; A already 0 at masked entries) the layout is always dense.
    """
    if mask is not None:
        dense = A.toarray() if sp.issparse(A) else A
        return DenseData(jnp.asarray(dense, dtype), jnp.asarray(mask, bool))
    if layout not in ("auto", "dense", "sparse"):
        raise ValueError(f"layout must be 'auto', 'dense' or 'sparse', got {layout!r}")
    layout = choose_layout(A, layout, np.dtype(dtype).itemsize, k, max_memory_bytes, sparse_kernel)
    if layout == "dense":
        dense = A.toarray() if sp.issparse(A) else A
        return DenseData(jnp.asarray(dense, dtype))
    A = A if sp.issparse(A) else sp.csc_matrix(np.asarray(A))
    if sparse_kernel_for(sparse_kernel) == "host":
        return host_sparse(A, dtype)
    return _sparse_from_scipy(A, dtype, bucket)


def shard_columns(A: Any, dtype: Any, devices: Any) -> DenseData:
    """A (m, n) (numpy or scipy.sparse, on the host) as a dense A whose columns (samples) are split across a 1-D
    mesh ``("cols",)`` of ``devices``; see ``prepare(devices=...)``.

    Each device's block is built from its own column slice (``jax.make_array_from_callback``), so neither the
    host nor any device ever holds the whole dense matrix, and under ``jax.distributed.initialize()`` each process
    fills only its own devices' blocks. n is padded with zero columns to a multiple of the device count
    (``n_valid`` keeps the true n; ``solve`` drops the padded columns of h). A zero column of A gives ``F A`` a zero
    column, whose NNLS solution is 0 for every solver when H has no L1 with ``nonneg=False`` and no target
    (``prepare`` refuses those), and zero columns of H add exactly 0 to ``H A'``, ``H H'``, the row norms and the
    loss: the padded fit is the unpadded one.
    """
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = list(devices)
    mesh = Mesh(np.asarray(devices, dtype=object), ("cols",))
    m, n = A.shape
    n_pad = n + (-n % len(devices))
    csc = sp.csc_matrix(A) if sp.issparse(A) else None
    dense = None if csc is not None else np.asarray(A)

    def block(index: tuple[slice, slice]) -> np.ndarray:
        cols = index[1]
        start, stop = cols.start or 0, n_pad if cols.stop is None else cols.stop
        out = np.zeros((m, stop - start), dtype)
        lo, hi = min(start, n), min(stop, n)
        if hi > lo:
            out[:, : hi - lo] = csc[:, lo:hi].toarray() if csc is not None else dense[:, lo:hi]
        return out[index[0]]

    # jit follows its inputs' shardings: with A split by columns, XLA's partitioner keeps F A and H split the same
    # way and turns the k x m and k x k reductions over samples (H A', H H', the norms of H, the loss) into
    # all-reduces; no all-gather of A or H (tests/test_scale.py checks the compiled program).
    arr = jax.make_array_from_callback((m, n_pad), NamedSharding(mesh, P(None, "cols")), block)
    return DenseData(arr, n_valid=n)


def squared_norm(A: Any) -> float:
    """``|A|_F^2`` in float64 on the host: exact and deterministic (RcppML's float32 running sum is biased)."""
    if sp.issparse(A):
        v = np.asarray(A.data, np.float64)
    else:
        v = np.asarray(A, np.float64)
    return float(np.dot(v.ravel(), v.ravel()))
