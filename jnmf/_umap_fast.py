"""umap-learn's small-data UMAP, the same layout in less time (``jnmf.pl.umap_coordinates``).

Two costs of umap-learn 0.5 on a few thousand samples, neither changing its result:

* below 4,096 samples it forms all pairwise distances through scikit-learn's ``pairwise_distances`` with its numba
  metric as a Python callable, one call per pair (1.2 s of a 2.1 s UMAP of 1,183 points). ``fast_small_data``
  evaluates the same numba function over the same float32 rows in one compiled loop, filled in the same order
  (upper triangle, mirror, diagonal): the layout is bitwise equal (tested);
* its numba kernels are compiled without numba's disk cache, ~10 s in every new process. ``enable_umap_cache``
  turns numba's own cache on for them (what ``cache=True`` does), so later processes load them in about a second.

And one cost of several layouts in one process: the layout epochs (0.98 s of a 1.1 s UMAP of 1,183 points) hold the
GIL. ``fast_small_data`` swaps in the same epoch compiled without it, so ``jnmf.pl.umap_coordinates`` of a list
runs one layout per core (1.9x for six on two cores), each bitwise its own call's.
"""

from __future__ import annotations

import contextlib
import threading
import types

import numba
import numpy as np
from umap.distances import cosine as _cosine

_cache_enabled = False


def enable_umap_cache() -> None:
    """Turn on numba's disk cache for umap-learn's compiled functions (once per process; best effort: where no
    cache folder is writable numba keeps compiling in memory)."""
    global _cache_enabled
    if _cache_enabled:
        return
    import umap.distances
    import umap.layouts
    import umap.sparse
    import umap.spectral
    import umap.umap_
    import umap.utils
    from numba.core.registry import CPUDispatcher

    for mod in (umap.umap_, umap.layouts, umap.utils, umap.distances, umap.spectral, umap.sparse):
        for fn in vars(mod).values():
            if isinstance(fn, CPUDispatcher):
                try:
                    fn.enable_caching()
                except Exception:  # noqa: BLE001 - no writable cache location: compile as before
                    pass
    _cache_enabled = True


_swap_lock = threading.Lock()
_swap_depth = 0
_swap_originals: dict = {}
_nogil_epoch_fn = None


def _nogil_epoch():
    """umap-learn's layout epoch (``umap.layouts._optimize_layout_euclidean_single_epoch``, the same Python
    function, fastmath, serial) compiled with ``nogil=True``, so layouts on several threads run at once.

    The function object is copied under another qualified name because numba's disk cache keys an entry by name,
    signature and bytecode but not by the ``nogil`` flag: under umap-learn's name it would load the GIL-holding
    build that ``enable_umap_cache`` stored.
    """
    global _nogil_epoch_fn
    if _nogil_epoch_fn is None:
        import umap.layouts

        f = umap.layouts._optimize_layout_euclidean_single_epoch
        g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_nogil", f.__defaults__, f.__closure__)
        g.__qualname__ = f.__qualname__ + "_nogil"
        fn = numba.njit(g, fastmath=True, parallel=False, nogil=True)
        try:
            fn.enable_caching()
        except Exception:  # noqa: BLE001 - no writable cache location: compile in memory
            pass
        _nogil_epoch_fn = fn
    return _nogil_epoch_fn


@contextlib.contextmanager
def fast_small_data():
    """Within the block, umap-learn's small-data distance matrix for its cosine metric is formed by one compiled
    loop (``_cosine_matrix``) instead of scikit-learn's per-pair Python loop (any other call passes through), and
    its serial layout epoch releases the GIL (``_nogil_epoch``): the same layouts, bitwise.

    umap-learn's ``UMAP.fit`` calls ``pairwise_distances(X, metric=cosine)`` (its module's name for scikit-learn's
    function) on its float32 copy of the data; that name is swapped for the block. A precomputed matrix given as
    ``metric="precomputed"`` would not do: scikit-learn refuses the slightly negative distances (-1e-7) float32
    rounding gives parallel rows, which umap-learn's own path keeps. The swap is counted, so blocks entered from
    several threads at once restore umap-learn's functions when the last one leaves.
    """
    import umap.layouts
    import umap.umap_

    global _swap_depth
    with _swap_lock:
        if _swap_depth == 0:
            original = umap.umap_.pairwise_distances

            def pairwise_distances(X, Y=None, metric="euclidean", **kwds):
                if (metric is _cosine and Y is None and not kwds and isinstance(X, np.ndarray) and X.ndim == 2
                        and X.dtype == np.float32):
                    # scikit-learn's callable branch: upper triangle, then out + out.T, then the diagonal.
                    return _cosine_matrix(np.ascontiguousarray(X), np.zeros((X.shape[0], X.shape[0]), np.float32))
                return original(X, Y, metric=metric, **kwds)

            _swap_originals["pairwise_distances"] = original
            umap.umap_.pairwise_distances = pairwise_distances
            # umap-learn's private name (0.5.12); where it is gone the layouts are the same, one thread at a time.
            if hasattr(umap.layouts, "_nb_optimize_layout_euclidean_single_epoch"):
                _swap_originals["epoch"] = umap.layouts._nb_optimize_layout_euclidean_single_epoch
                umap.layouts._nb_optimize_layout_euclidean_single_epoch = _nogil_epoch()
        _swap_depth += 1
    try:
        yield
    finally:
        with _swap_lock:
            _swap_depth -= 1
            if _swap_depth == 0:
                umap.umap_.pairwise_distances = _swap_originals.pop("pairwise_distances")
                if "epoch" in _swap_originals:
                    umap.layouts._nb_optimize_layout_euclidean_single_epoch = _swap_originals.pop("epoch")


# Not cached on disk: numba's cache would not notice a change of umap-learn's cosine (another file).
@numba.njit
def _cosine_matrix(x, out):
    n = x.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = _cosine(x[i], x[j])
    for i in range(n):
        for j in range(i + 1, n):
            out[j, i] = out[i, j]
    for i in range(n):
        out[i, i] = _cosine(x[i], x[i])
    return out
