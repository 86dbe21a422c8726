"""The dense layout: A (m, n) as one device array, optionally with a mask of entries to ignore (missing data).

Its A holds 0 at masked entries, so the products are ``F (O * A)`` and ``H (O * A)'`` with O = 1 - mask, and it
adds the per-column Gram matrices ``G_j = F diag(o_j) F'`` that a masked NNLS update needs, and the squared error
over observed entries. ``shard_columns`` splits its columns over a device mesh.
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseData:
    """A dense (m, n) data matrix, optionally with a boolean (m, n) ``mask`` (True = ignore; A is 0 there)."""

    A: jax.Array
    mask: jax.Array | None = None
    # Columns of A that are data when A was padded for a device mesh (``shard_columns``); None: all of them.
    n_valid: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    host_lifetime = False  # no host-side state: results never depend on a registry entry

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape

    @property
    def mesh(self) -> Any:
        """The device mesh A's columns are split over (``shard_columns``), or None."""
        sharding = getattr(self.A, "sharding", None)
        if isinstance(self.A, jax.core.Tracer) or not isinstance(sharding, jax.sharding.NamedSharding):
            return None
        return sharding.mesh

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


def _masked_grams(F: jax.Array, O: jax.Array) -> jax.Array:
    """``G_j = sum_i O_ij F[:, i] F[:, i]' + 1e-15 I`` for F (k, q), O (q, p) → (p, k, k).

    One (k*k, q) x (q, p) GEMM of the row outer products with the observation weights.
    """
    k, q = F.shape
    outer = (F[:, None, :] * F[None, :, :]).reshape(k * k, q)
    G = jnp.dot(outer, O, precision=_HIGHEST).reshape(k, k, -1)
    # Same jitter as features.gram: an entirely masked column gets G = 1e-15 I and a zero solution.
    return jnp.moveaxis(G, -1, 0) + 1e-15 * jnp.eye(k, dtype=F.dtype)


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


