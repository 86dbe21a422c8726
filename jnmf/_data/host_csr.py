"""The sparse layout on CPU: A and A' as CSR on the host, multiplied by a compiled kernel (``_csr_kernel``) through a
``jax.pure_callback`` (about three times as fast as the XLA gathers of ``EllBlocks`` on CPU, where XLA's gather
code is scalar).
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

from .._csr_kernel import csr_scatter_t, csr_times_t, use_scatter

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
    X2 = X.reshape(-1, X.shape[-1])
    if use_scatter(M.shape[1], M.shape[0], X2.shape[0], M.data.dtype.itemsize):
        Mt = _host_lookup(key)[1 - which]  # M' as CSR: the other orientation, already held
        out = csr_scatter_t(Mt.indptr, Mt.indices, Mt.data, X2, M.shape[0])
    else:
        out = csr_times_t(M.indptr, M.indices, M.data, X2)
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
    n_valid = None  # never padded
    mesh = None
    host_lifetime = True  # results depend on the registry entry: keep the data alive until they are ready

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


