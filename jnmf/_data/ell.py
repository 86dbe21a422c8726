"""The sparse layout for accelerators: A by columns and by rows as ``EllBlocks`` (each column cut into pieces of at
most L non-zeros, padded to L); each product gathers the k-vectors of one block of pieces at a time and reduces
them inside XLA, O(nnz k) time and O(nnz + block k) memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseData:
    """A sparse (m, n) data matrix stored twice: by columns (for ``F A``) and by rows (for ``H A'``)."""

    cols: EllBlocks  # A's columns: F A
    rows: EllBlocks  # A's rows (the columns of A'): H A'
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    n_valid = None  # never padded
    mesh = None
    host_lifetime = False

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


def _sparse_from_scipy(A: sp.spmatrix | sp.sparray, dtype: Any, bucket: bool = False) -> SparseData:
    csc = sp.csc_matrix(A)
    csc.sum_duplicates()
    csc.sort_indices()
    csr_t = sp.csc_matrix(csc.T)  # A' by columns = A by rows
    csr_t.sort_indices()
    return SparseData(cols=_ell_blocks(csc, dtype, bucket), rows=_ell_blocks(csr_t, dtype, bucket),
                      shape=tuple(int(s) for s in csc.shape))


