"""The data matrix A (m x n) as seen by the solver: dense, or sparse in two sorted coordinate layouts.

Both layouts provide the two products of an alternating update, ``F A`` (k x n, for the H update) and
``H A'`` (k x m, for the W update), inside jit. The sparse layout never forms a dense m x n array: each product
is a gather of k-vectors per non-zero followed by a sorted segment sum, O(nnz k) time and memory.
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

# Dense products beat gather/segment-sum on CPU unless A is quite sparse; measured in experiments/bench_nmf.py.
_DENSE_DENSITY = 0.05
_DENSE_BYTES_LIMIT = 4 * 2**30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseData:
    """A dense (m, n) data matrix."""

    A: jax.Array

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape

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


def prepare_data(A: Any, dtype: Any, layout: str = "auto") -> DenseData | SparseData:
    """Convert validated input to the solver's layout (``"auto"``, ``"dense"`` or ``"sparse"``)."""
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
