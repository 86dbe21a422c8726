"""Logging, the convergence warning and optional progress bars.

jnmf logs through the standard ``logging`` module under the logger ``"jnmf"`` (a ``NullHandler`` is attached, so
nothing is printed unless the application configures logging, e.g. ``logging.basicConfig(level="INFO")``). Progress
bars use ``tqdm`` when it is installed and are shown only when asked for (``verbose``); without tqdm the loops run
silently, with a log line at the end.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger("jnmf")
logger.addHandler(logging.NullHandler())

T = TypeVar("T")


class ConvergenceWarning(UserWarning):
    """A fit stopped at ``maxit`` before its convergence rule held (jnmf's analogue of scikit-learn's).

    Filter it as any warning: ``warnings.filterwarnings("ignore", category=jnmf.ConvergenceWarning)``.
    """


def warn_if_not_converged(model: Any, *, loop: str = "while", tol: Any = 1.0, what: str = "nmf",
                          stacklevel: int = 3) -> bool:
    """Warn with ``ConvergenceWarning`` when a single ``while``-loop fit used all ``maxit`` iterations unconverged.

    Called after the compiled fit has returned, on the host. Nothing happens for batched models (sweep lanes
    report ``converged`` per member in ``diagnostics()``), for ``loop="scan"`` fits (fixed length by design), for
    ``tol = 0`` (exactly ``maxit`` iterations asked for), or under a JAX transformation (the fields are tracers:
    no value can be read without a device sync inside the compiled program).

    Parameters
    ----------
    model : NMFModel
        The fitted model; ``maxit`` is read from ``loss_history``'s length.
    loop : {"while", "scan"}
        The fit's loop.
    tol : float or array
        The fit's ``tol``; no warning where it is 0.
    what : str
        The function named in the message.
    stacklevel : int
        Passed to ``warnings.warn`` (3: the caller of the function that calls this one).

    Returns
    -------
    bool
        Whether a warning was issued.

    Examples
    --------
    >>> model = jnmf.nmf(A, 8, maxit=5, tol=1e-12)  # doctest: +SKIP
    ConvergenceWarning: nmf stopped at maxit=5 without converging ...
    """
    import jax
    import numpy as np  # here, not at the top: ``import jnmf`` loads neither numpy nor jax

    if loop != "while" or not np.all(np.asarray(tol) > 0):
        return False
    converged, n_iter, history = model.converged, model.iter, model.loss_history
    if any(isinstance(x, jax.core.Tracer) for x in (converged, n_iter, model.tol)):
        return False
    if getattr(converged, "ndim", 0) != 0:
        return False
    maxit = int(history.shape[-1])
    if bool(converged) or int(n_iter) < maxit:
        return False
    warnings.warn(f"{what} stopped at maxit={maxit} without converging (last relative loss change "
                  f"{float(model.tol):.3g}); raise maxit, or loosen tol if that change is small enough for you",
                  ConvergenceWarning, stacklevel=stacklevel)
    return True


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, verbose: bool = False) -> Iterator[T]:
    """Iterate with a tqdm progress bar when ``verbose`` and tqdm is installed; log the loop's time at INFO.

    Parameters
    ----------
    iterable : iterable
        The loop.
    desc : str
        What the loop does (the bar's label and the log line's subject).
    total : int, optional
        Its length, when ``iterable`` has none.
    verbose : bool
        Show the bar (on stderr).

    Yields
    ------
    The items of ``iterable``.

    Examples
    --------
    >>> for key in progress(["a", "b"], desc="UMAP", verbose=False):
    ...     pass
    """
    bar = None
    if verbose:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # optional: plain loop
            tqdm = None
        if tqdm is not None:
            bar = tqdm(iterable, desc=desc, total=total, leave=False)
    t0 = time.perf_counter()
    count = 0
    for item in bar if bar is not None else iterable:
        count += 1
        yield item
    if bar is not None:
        bar.close()
    logger.info("%s: %d steps in %.2f s", desc, count, time.perf_counter() - t0)
