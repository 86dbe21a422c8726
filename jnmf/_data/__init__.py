"""The data matrix A (m x n) as seen by the solver: one protocol (``protocol.DataLayout``), one file per layout
(``dense``, ``ell``, ``host_csr``, ``sharded``), and ``placement`` (layout choice, density rules, memory budget).

Every layout provides the two products of an alternating update, ``F A`` (k x n, for the H update) and ``H A'``
(k x m, for the W update), inside jit; none of the sparse ones forms a dense m x n array.
"""

from .dense import DenseData, shard_columns
from .ell import EllBlocks, SparseData
from .host_csr import _HOST_REGISTRY, HostSparseData, holds_host_data, host_sparse
from .placement import (
    choose_layout,
    estimate_memory,
    gib,
    layout_for,
    memory_budget,
    place,
    prepare_data,
    sparse_kernel_for,
)
from .protocol import DataLayout
from .sharded import ShardedSparseData, shard_sparse_columns

__all__ = [
    "_HOST_REGISTRY",
    "DataLayout",
    "DenseData",
    "EllBlocks",
    "HostSparseData",
    "ShardedSparseData",
    "SparseData",
    "choose_layout",
    "estimate_memory",
    "gib",
    "holds_host_data",
    "host_sparse",
    "layout_for",
    "memory_budget",
    "place",
    "prepare_data",
    "shard_columns",
    "shard_sparse_columns",
    "sparse_kernel_for",
]
