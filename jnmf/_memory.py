"""Working-set estimates of a fit, so that ``layout="auto"`` picks a layout that fits and nothing crashes the machine.

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

import numpy as np

_MEMORY_FRACTION = 0.5
_INDEX_BYTES = 4  # int32 row/column indices


def estimate_memory(m: int, n: int, k: int, nnz: int | None = None, layout: str = "dense",
                    dtype: Any = np.float32, sparse_kernel: str = "ell") -> int:
    """Bytes of one fit's working set for A (m, n) at rank k in ``layout`` (``"dense"`` or ``"sparse"``).

    ``nnz`` (number of stored non-zeros) is needed for ``"sparse"``, and ``sparse_kernel`` (``"host"`` or
    ``"ell"``, the default: the larger) says which sparse storage. ``dtype`` is the fit's float dtype.
    """
    item = np.dtype(dtype).itemsize
    factors = 6 * k * (m + n) * item
    if layout == "dense":
        return m * n * item + factors
    if layout == "sparse":
        if nnz is None:
            raise ValueError("estimate_memory: layout='sparse' needs nnz")
        if sparse_kernel == "host":
            return 2 * nnz * (item + _INDEX_BYTES) + (m + n + 2) * _INDEX_BYTES + factors
        return 2 * 2 * nnz * (item + _INDEX_BYTES) + (min(2**17, 2 * nnz) + nnz // 8) * k * item + factors
    raise ValueError(f"estimate_memory: layout must be 'dense' or 'sparse', got {layout!r}")


def default_budget() -> int:
    """Half of the physical memory of this machine, in bytes (4 GiB where the OS does not say)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(total * _MEMORY_FRACTION)


def gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"
