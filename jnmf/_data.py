"""The data matrix A (m x n) as seen by the solver: dense, or sparse in two sorted coordinate layouts.

Both layouts provide the two products of an alternating update, ``F A`` (k x n, for the H update) and
``H A'`` (k x m, for the W update), inside jit. The sparse layout never forms a dense m x n array: each product
is a gather of k-vectors per non-zero followed by a sorted segment sum, O(nnz k) time and memory.

A dense matrix may carry a mask of entries to ignore (missing data). Its A holds 0 at masked entries, so the
products above are ``F (O * A)`` and ``H (O * A)'`` with O = 1 - mask, and it adds the per-column Gram matrices
``G_j = F diag(o_j) F'`` that a masked NNLS update needs, and the squared error over observed entries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST

# XLA's CPU gather/segment-sum costs ~10-20 ns per (non-zero x k) against ~0.3 ns per (entry x k) for a dense
# GEMM: on a 14,000 x 2,600 matrix at k = 20 the dense products were still 3-4x faster at 2% non-zeros. So sparse
# input is densified whenever that fits, unless it is sparser than 0.5%.
_DENSE_DENSITY = 0.005
_DENSE_BYTES_LIMIT = 4 * 2**30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseData:
    """A dense (m, n) data matrix, optionally with a boolean (m, n) ``mask`` (True = ignore; A is 0 there)."""

    A: jax.Array
    mask: jax.Array | None = None

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
class SparseData:
    """A sparse (m, n) data matrix stored twice: column-sorted (CSC order) and row-sorted (CSR order)."""

    col_vals: jax.Array
    col_rows: jax.Array
    col_cols: jax.Array
    row_vals: jax.Array
    row_rows: jax.Array
    row_cols: jax.Array
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

    def left(self, F: jax.Array) -> jax.Array:
        contrib = self.col_vals[:, None] * F.T[self.col_rows]
        out = jax.ops.segment_sum(contrib, self.col_cols, num_segments=self.shape[1], indices_are_sorted=True)
        return out.T

    def right(self, H: jax.Array) -> jax.Array:
        contrib = self.row_vals[:, None] * H.T[self.row_cols]
        out = jax.ops.segment_sum(contrib, self.row_rows, num_segments=self.shape[0], indices_are_sorted=True)
        return out.T


def _masked_grams(F: jax.Array, O: jax.Array) -> jax.Array:
    """``G_j = sum_i O_ij F[:, i] F[:, i]' + 1e-15 I`` for F (k, q), O (q, p) → (p, k, k).

    One (k*k, q) x (q, p) GEMM of the row outer products with the observation weights.
    """
    k, q = F.shape
    outer = (F[:, None, :] * F[None, :, :]).reshape(k * k, q)
    G = jnp.dot(outer, O, precision=_HIGHEST).reshape(k, k, -1)
    # Same jitter as features.gram: an entirely masked column gets G = 1e-15 I and a zero solution.
    return jnp.moveaxis(G, -1, 0) + 1e-15 * jnp.eye(k, dtype=F.dtype)


def _sparse_from_scipy(A: sp.spmatrix | sp.sparray, dtype: Any) -> SparseData:
    csc = sp.csc_matrix(A)
    csc.sum_duplicates()
    csc.sort_indices()
    cols = np.repeat(np.arange(csc.shape[1], dtype=np.int32), np.diff(csc.indptr))
    csr = csc.tocsr()
    csr.sort_indices()
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int32), np.diff(csr.indptr))
    return SparseData(
        col_vals=jnp.asarray(csc.data, dtype),
        col_rows=jnp.asarray(csc.indices, jnp.int32),
        col_cols=jnp.asarray(cols),
        row_vals=jnp.asarray(csr.data, dtype),
        row_rows=jnp.asarray(rows),
        row_cols=jnp.asarray(csr.indices, jnp.int32),
        shape=tuple(int(s) for s in csc.shape),
    )


def choose_layout(A: Any, layout: str, itemsize: int) -> str:
    """Resolve ``layout="auto"``: dense for dense input, or sparse input that is dense enough and fits."""
    if layout != "auto":
        return layout
    if not sp.issparse(A):
        return "dense"
    m, n = A.shape
    density = A.nnz / max(m * n, 1)
    fits = m * n * itemsize <= _DENSE_BYTES_LIMIT
    return "dense" if fits and density >= _DENSE_DENSITY else "sparse"


def split_mask(A: Any, mask: Any, itemsize: int, layout: str = "auto") -> tuple[Any, np.ndarray | None]:
    """Fold NaN entries of A into ``mask`` (True = ignore) and zero the masked entries of A.

    Returns ``(A, None)`` unchanged when nothing is masked (no mask, or an all-False one, and no NaN). Otherwise
    returns a dense A with 0 at masked entries (whatever they held: NaN, inf, negative) and the dense boolean
    mask. ``mask`` may be a boolean (or 0/1) array or scipy.sparse matrix of A's shape. Masked fits use the dense
    layout: sparse A is densified if it fits in the dense memory limit (4 GiB), else this raises.
    """
    if isinstance(A, (str, bytes)) or A is None:
        return A, None  # check_data names the type error
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
        M = _check_mask(mask, shape)
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


def _check_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    M = mask.toarray() if sp.issparse(mask) else np.asarray(mask)
    if M.shape != shape:
        raise ValueError(f"mask must have the shape of A, {shape}, got {M.shape}")
    if M.dtype != bool:
        if not (np.issubdtype(M.dtype, np.integer) or np.issubdtype(M.dtype, np.floating)) or not np.all(
                (M == 0) | (M == 1)):
            raise ValueError(f"mask must be boolean (True = ignore the entry) or 0/1, got dtype {M.dtype}")
        M = M.astype(bool)
    return M


def prepare_data(A: Any, dtype: Any, layout: str = "auto", mask: np.ndarray | None = None) -> DenseData | SparseData:
    """Convert validated input to the solver's layout (``"auto"``, ``"dense"`` or ``"sparse"``).

    With a boolean ``mask`` (from ``split_mask``; A already 0 at masked entries) the layout is always dense.
    """
    if mask is not None:
        dense = A.toarray() if sp.issparse(A) else A
        return DenseData(jnp.asarray(dense, dtype), jnp.asarray(mask, bool))
    layout = choose_layout(A, layout, np.dtype(dtype).itemsize)
    if layout == "dense":
        dense = A.toarray() if sp.issparse(A) else A
        return DenseData(jnp.asarray(dense, dtype))
    if layout == "sparse":
        return _sparse_from_scipy(A if sp.issparse(A) else sp.csc_matrix(np.asarray(A)), dtype)
    raise ValueError(f"layout must be 'auto', 'dense' or 'sparse', got {layout!r}")


def squared_norm(A: Any) -> float:
    """``|A|_F^2`` in float64 on the host: exact and deterministic (RcppML's float32 running sum is biased)."""
    if sp.issparse(A):
        v = np.asarray(A.data, np.float64)
    else:
        v = np.asarray(A, np.float64)
    return float(np.dot(v.ravel(), v.ravel()))
