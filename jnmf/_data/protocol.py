"""The protocol every data layout implements: what the driver may ask of the data matrix A (m x n)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class DataLayout(Protocol):
    """A (m, n) as the solver sees it, inside jit. Layouts: ``DenseData`` (``dense.py``, also the masked and the
    column-sharded dense layout), ``SparseData`` (``ell.py``, XLA gathers), ``HostSparseData`` (``host_csr.py``,
    the CPU kernel) and ``ShardedSparseData`` (``sharded.py``). ``placement.place`` chooses one.

    Attributes: ``shape`` (m, n) as stored (n may include mesh padding); ``n_valid`` the true n when the columns
    were padded for a device mesh, else None; ``mesh`` the device mesh A is split over, or None; ``host_lifetime``
    whether results depend on host-side state that must outlive the computation (``solve`` then blocks).
    Masked data (``DenseData`` with a mask) add ``left_grams``, ``right_grams`` and ``observed_sse``.
    """

    shape: tuple[int, int]
    n_valid: int | None
    mesh: Any
    host_lifetime: bool

    def left(self, F: jax.Array) -> jax.Array:
        """``F A`` for F (k, m) → (k, n)."""

    def right(self, H: jax.Array) -> jax.Array:
        """``H A'`` for H (k, n) → (k, m)."""
