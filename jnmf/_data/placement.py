"""Where and how the data of a fit live: the layout choice (density rules against a memory budget, the sparse kernel
of the platform), the one memory budget of single- and multi-device fits and sweeps, and the working-set estimates.

Working sets.
The estimate counts the arrays one iteration of the driver holds at once (XLA may fuse some away, so it is an upper
bound up to small k x k terms):

* dense: A (m n), and the factor-sized arrays: W, its previous value, ``F A`` / ``H A'`` and the NNLS residual
  on each side, about ``6 k (m + n)`` entries;
* sparse, host CSR kernel (CPU, ``HostSparseData``): A and A' as CSR (value + int32 index per non-zero, and the
  row pointers), plus the factor arrays (the kernel's copies of X' and of its result are factor-sized);
* sparse, XLA gather kernel (``SparseData``): A stored by columns and by rows as padded blocks (``EllBlocks``:
  value + int32 index per slot), counted at 2 slots per non-zero (padding is typically < 30%, at most ~3x for
  very skewed column counts), the gathered rows of one block (``min(2**17, 2 nnz) k`` values) and the per-piece
  partial products (counted as ``nnz k / 8``: pieces hold 8 or more non-zeros unless the matrix is extremely
  sparse), plus the factor arrays.

Budget: ``max_memory_bytes`` if given, else half of the machine's physical memory (``SC_PHYS_PAGES``), the same
fraction ``sweep`` uses of free memory. Physical rather than free memory: the input itself is often what fills
the free memory, and a fit that needs more than half of the machine is refused either way.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .dense import DenseData, shard_columns
from .ell import SparseData, _sparse_from_scipy
from .host_csr import HostSparseData, host_sparse
from .sharded import ShardedSparseData, shard_sparse_columns

_MEMORY_FRACTION = 0.5
_INDEX_BYTES = 4  # int32 row/column indices
# From 2^31 non-zeros scipy stores CSR indices and row pointers as int64 (the host kernel takes either width).
_INT32_NNZ = 2**31 - 1


def estimate_memory(m: int, n: int, k: int, nnz: int | None = None, layout: str = "dense",
                    dtype: Any = np.float32, sparse_kernel: str = "ell") -> int:
    """Bytes of one fit's working set for A (m, n) at rank k in ``layout`` (``"dense"`` or ``"sparse"``).

    ``nnz`` (number of stored non-zeros) is needed for ``"sparse"``, and ``sparse_kernel`` (``"host"`` or
    ``"ell"``, the default: the larger) says which sparse storage. ``dtype`` is the fit's float dtype. The host
    CSR counts 8-byte indices from nnz = 2^31 on (scipy's int64 CSR): a 1,000,000 x 20,000 atlas with 2.6e9
    non-zeros needs 2 x 2.6e9 x (4 + 8) B = 58.1 GiB for A and A' in float32, plus 6 k (m + n) x 4 B of factors
    (1.14 GiB at k = 50).
    """
    item = np.dtype(dtype).itemsize
    factors = 6 * k * (m + n) * item
    if layout == "dense":
        return m * n * item + factors
    if layout == "sparse":
        if nnz is None:
            raise ValueError("estimate_memory: layout='sparse' needs nnz")
        if sparse_kernel == "host":
            index = 8 if nnz > _INT32_NNZ else _INDEX_BYTES
            return 2 * nnz * (item + index) + (m + n + 2) * index + factors
        return 2 * 2 * nnz * (item + _INDEX_BYTES) + (min(2**17, 2 * nnz) + nnz // 8) * k * item + factors
    raise ValueError(f"estimate_memory: layout must be 'dense' or 'sparse', got {layout!r}")


def memory_budget(devices: Any = None) -> int:
    """The default memory budget, in bytes per device: half of this machine's physical memory, shared by this
    process's devices of ``devices`` when they are host (CPU) devices; half of an accelerator's own memory
    (``bytes_limit``) otherwise. Physical rather than free memory: the input itself is often what fills the free
    memory, and a fit that needs more than half of the machine is refused either way. Fits, sharded fits and sweeps
    all use this one rule (``max_memory_bytes`` overrides it)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    budget = int(total * _MEMORY_FRACTION)
    if devices is None:
        return budget
    devices = list(devices)
    local = [d for d in devices if d.process_index == jax.process_index()] or devices
    if local[0].platform != "cpu":
        try:
            return int(int(local[0].memory_stats()["bytes_limit"]) * _MEMORY_FRACTION)
        except Exception:  # backends that do not report memory keep the host-based budget
            pass
    return budget // len(local)


def gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"



# Density from which sparse input is densified (when the dense working set fits the memory budget, ``_memory``):
# the crossover of each sparse kernel with the dense GEMM, whole iterations at k = 20 on a 2-core CPU (ms
# sparse/dense).
# * host CSR kernel (CPU), HALS with its numba sweeps (2026-12-04): 14,000 x 2,600 at 15% 22.9/29.6, 20% 29.1/28.5,
#   25% 34.0/29.1, 40% 51.2/31.3; 4,000 x 20,000 at 15% 49.5/78.9, 20% 61.5/80.4; at k = 10 and 50 on 14,000 x
#   2,600 the same crossover (15% 0.86 and 0.90 of dense, 25% 1.21 and 1.24): 20%. (An earlier release, whose
#   fits took RcppML's rule at k = 20, measured 14%: 15% 16.9/15.2 on 14,000 x 2,600.)
# * EllBlocks gathers: 4,000 x 20,000 at 3% 17/31, 5% 26/32, 8% 38/31; 14,000 x 2,600 at 3% 9/14, 5% 12/15,
#   8% 19/15, 15% 34/15: 6% (measured on CPU; on accelerators, where this kernel runs, not yet measured).
_DENSE_DENSITY = {"host": 0.20, "ell": 0.06}
# Below this many entries (16 MB in float32) a sparse A is densified whatever its density: the two callbacks of
# the host kernel cost ~0.3 ms an iteration, more than the GEMMs (5% non-zeros, k = 20, ms sparse/dense:
# 300 x 1,000 0.36/0.18, 1,000 x 3,000 1.29/0.93, 2,000 x 5,000 2.29/3.99).
_DENSE_ENTRIES = 2**22


def choose_layout(A: Any, layout: str, itemsize: int, k: int = 1, max_memory_bytes: int | None = None,
                  sparse_kernel: str = "auto") -> str:
    """Resolve ``layout="auto"`` for a matrix A against a memory budget, and check that the chosen layout fits
    (``layout_for`` with A's shape and non-zero count)."""
    m, n = A.shape
    if sp.issparse(A):
        return layout_for(m, n, int(A.nnz), True, layout, itemsize, k, max_memory_bytes, sparse_kernel)
    return layout_for(m, n, lambda: int(np.count_nonzero(np.asarray(A))), False, layout, itemsize, k,
                      max_memory_bytes, sparse_kernel)


def layout_for(m: int, n: int, nnz: Any, sparse_input: bool, layout: str, itemsize: int, k: int = 1,
               max_memory_bytes: int | None = None, sparse_kernel: str = "auto") -> str:
    """The layout of an (m, n) matrix with ``nnz`` non-zeros (an int, or a function counting them when needed).

    ``"auto"`` prefers dense for dense input and for sparse input with at least ``_DENSE_DENSITY`` non-zeros for
    the sparse kernel (20% on CPU, 6% elsewhere) or at most ``_DENSE_ENTRIES`` (4M) entries, sparse otherwise; when
    the preferred layout's working set (``estimate_memory`` at rank k) exceeds ``max_memory_bytes`` (default:
    ``memory_budget()``) it takes the other one. Raises ``MemoryError`` naming both sizes when nothing fits, or
    when an explicit ``"dense"``/``"sparse"`` does not fit.
    """
    budget = memory_budget() if max_memory_bytes is None else int(max_memory_bytes)
    dtype = {4: np.float32, 8: np.float64}[itemsize]
    kernel = sparse_kernel_for(sparse_kernel)
    count = [nnz]

    def need(lay: str) -> int:
        if lay == "sparse" and callable(count[0]):
            count[0] = count[0]()
        return estimate_memory(m, n, k, None if lay == "dense" else count[0], lay, dtype, kernel)

    if layout != "auto":
        if need(layout) > budget:
            raise MemoryError(f"layout={layout!r}: the fit of A ({m} x {n}, k={k}) needs about "
                              f"{gib(need(layout))}, above the memory budget of {gib(budget)} (max_memory_bytes); "
                              "try the other layout, nmf_chunked, or a larger budget")
        return layout
    if sparse_input:
        prefer_dense = nnz / max(m * n, 1) >= _DENSE_DENSITY[kernel] or m * n <= _DENSE_ENTRIES
        order = ("dense", "sparse") if prefer_dense else ("sparse", "dense")
    else:
        order = ("dense", "sparse")
    for lay in order:
        if need(lay) <= budget:
            return lay
    raise MemoryError(f"A ({m} x {n}, {count[0]} non-zeros, k={k}) fits in neither layout: dense needs about "
                      f"{gib(need('dense'))}, sparse about {gib(need('sparse'))}, above the memory budget of "
                      f"{gib(budget)} (max_memory_bytes); fit it from column chunks on disk with nmf_chunked")


def sparse_kernel_for(kernel: str = "auto") -> str:
    """Resolve the sparse kernel: ``"host"`` (scipy CSR on a thread pool, ``HostSparseData``) where the fit runs
    on CPU, ``"ell"`` (``EllBlocks`` gathers inside XLA, ``SparseData``) on accelerators."""
    if kernel not in ("auto", "host", "ell"):
        raise ValueError(f"sparse_kernel must be 'auto', 'host' or 'ell', got {kernel!r}")
    if kernel == "auto":
        return "host" if jax.default_backend() == "cpu" else "ell"
    return kernel


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




def place(A: Any, dtype: Any, layout: str, mask: np.ndarray | None, k: int, devices: Any = None,
          max_memory_bytes: int | None = None, sparse_kernel: str = "auto"
          ) -> DenseData | SparseData | HostSparseData | ShardedSparseData:
    """The data of one fit: ``prepare_data`` on one device, or A's columns split over ``devices`` (dense, or
    ``ShardedSparseData`` by the same density rule, ``choose_layout`` with the gather kernel, since the host
    kernel is not partitioned), each device's block checked against its budget (``memory_budget(devices)``)."""
    if devices is None:
        return prepare_data(A, dtype, layout, mask=mask, k=k, max_memory_bytes=max_memory_bytes,
                            sparse_kernel=sparse_kernel)
    devices = list(devices)
    m, n = A.shape
    n_local = -(-n // len(devices))
    budget = memory_budget(devices) if max_memory_bytes is None else int(max_memory_bytes)
    # Each device's column block decides: its shape (m, n_local) and its share of the non-zeros; the gather kernel
    # is the one that is partitioned (the host kernel is not).
    if sp.issparse(A):
        nnz = -(-int(A.nnz) // len(devices))
    else:
        nnz = lambda: -(-int(np.count_nonzero(np.asarray(A))) // len(devices))  # noqa: E731
    try:
        chosen = layout_for(m, n_local, nnz, sp.issparse(A), layout, np.dtype(dtype).itemsize, k, budget, "ell")
    except MemoryError as err:
        raise MemoryError(f"devices: per device (A's {n_local} of {n} columns on each of {len(devices)} devices): "
                          f"{err}") from None
    if chosen == "sparse":
        return shard_sparse_columns(A, dtype, devices)
    return shard_columns(A, dtype, devices)
