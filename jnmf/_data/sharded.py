"""A sparse A whose columns (samples) are split across a 1-D device mesh: the sparse layout of sharded fits.

Device d holds the column block ``A_d`` (m x n_d, padded with zero columns to equal widths) as two ``EllBlocks``,
by columns and by rows, with one geometry (piece width, block count) shared by all devices so that the blocks
stack into arrays sharded over the mesh. The two products of an alternating update are ``shard_map``s:

* ``F A`` (k x n): F is replicated, each device multiplies its own columns, the result stays split by columns
  like H;
* ``H A'`` (k x m): each device multiplies its own columns of H and A, and the k x m partial products are summed
  across devices (``psum``), the only communication of the product.

The rest of the driver is partitioned by XLA's sharding propagation, as for the dense layout (``shard_columns``).
The XLA gather kernel runs on every platform here (the host CSR kernel of ``HostSparseData`` is not partitioned).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .ell import EllBlocks, _ell_arrays, _ell_geometry, _ell_width

_AXIS = "cols"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ShardedSparseData:
    """Sparse (m, n_pad) data split by columns over ``mesh`` (see the module docstring).

    ``cols_*`` (D, nb, B, L) / (D, nb * B): each device's ``EllBlocks`` of its columns; ``rows_*`` the same for
    its block's rows. ``n_valid`` columns are data, the rest zero padding (``solve`` drops them from h).
    """

    cols_idx: jax.Array
    cols_val: jax.Array
    cols_owner: jax.Array
    rows_idx: jax.Array
    rows_val: jax.Array
    rows_owner: jax.Array
    mesh: Mesh = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    n_valid: int = dataclasses.field(metadata=dict(static=True))
    host_lifetime = False

    @property
    def n_local(self) -> int:
        return self.shape[1] // self.mesh.size

    def left(self, F: jax.Array) -> jax.Array:
        """``F A`` for F (k, m) → (k, n_pad), split by columns."""
        n_local = self.n_local

        def local(idx, val, owner, F):
            return EllBlocks(idx[0], val[0], owner[0], n_local).times(F)

        spec = P(_AXIS)
        return jax.shard_map(local, mesh=self.mesh, in_specs=(spec, spec, spec, P()),
                             out_specs=P(None, _AXIS))(self.cols_idx, self.cols_val, self.cols_owner, F)

    def right(self, H: jax.Array) -> jax.Array:
        """``H A'`` for H (k, n_pad) split by columns → (k, m), replicated."""
        m = self.shape[0]

        def local(idx, val, owner, H):
            return jax.lax.psum(EllBlocks(idx[0], val[0], owner[0], m).times(H), _AXIS)

        spec = P(_AXIS)
        return jax.shard_map(local, mesh=self.mesh, in_specs=(spec, spec, spec, P(None, _AXIS)),
                             out_specs=P())(self.rows_idx, self.rows_val, self.rows_owner, H)


def shard_sparse_columns(A: Any, dtype: Any, devices: Any) -> ShardedSparseData:
    """A (m, n) (scipy.sparse or numpy, on the host) as ``ShardedSparseData`` over a 1-D mesh of ``devices``.

    Every process builds the blocks of all devices on the host (the shared geometry needs every block's counts)
    and transfers only its own devices' blocks (``jax.make_array_from_callback``).
    """
    devices = list(devices)
    D = len(devices)
    mesh = Mesh(np.asarray(devices, dtype=object), (_AXIS,))
    csc = sp.csc_matrix(A, dtype=dtype)
    csc.sum_duplicates()
    csc.sort_indices()
    m, n = csc.shape
    n_local = -(-n // D)
    n_pad = n_local * D

    def block(d: int) -> sp.csc_matrix:
        lo, hi = min(d * n_local, n), min((d + 1) * n_local, n)
        out = csc[:, lo:hi]
        if hi - lo < n_local:  # zero columns up to the common width
            out = sp.hstack([out, sp.csc_matrix((m, n_local - (hi - lo)), dtype=dtype)], format="csc")
        return out

    blocks = [block(d) for d in range(D)]
    transposed = [sp.csc_matrix(b.T) for b in blocks]
    for t in transposed:
        t.sort_indices()

    def geometry(mats: list[sp.csc_matrix]) -> tuple[int, int, int]:
        counts = [np.diff(x.indptr).astype(np.int64) for x in mats]
        L = _ell_width(np.concatenate(counts))
        nb, B = _ell_geometry(max(int(np.sum(-(-c // L))) for c in counts), L)
        return L, nb, B

    arrays = {}
    for name, mats in (("cols", blocks), ("rows", transposed)):
        L, nb, B = geometry(mats)
        parts = [_ell_arrays(x, dtype, L, nb, B) for x in mats]
        for i, field in enumerate(("idx", "val", "owner")):
            stacked = [p[i] for p in parts]
            shape = (D, *stacked[0].shape)
            sharding = NamedSharding(mesh, P(_AXIS))
            arrays[f"{name}_{field}"] = jax.make_array_from_callback(
                shape, sharding, lambda index, stacked=stacked: np.stack(stacked[index[0]])[(slice(None),) + index[1:]])
    return ShardedSparseData(**arrays, mesh=mesh, shape=(m, n_pad), n_valid=n)
