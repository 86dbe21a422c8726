"""The fitted model: an immutable pytree ``A ≈ w · diag(d) · h``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NMFModel:
    """A fitted NMF ``A ≈ w · diag(d) · h``; every field is an array, so models batch under ``vmap``.

    Attributes:
        w: (m, k) feature loadings, columns scaled to unit norm (L1 by default).
        d: (k,) component scales, sorted descending when the fit sorts.
        h: (k, n) sample loadings, rows scaled to unit norm.
        iter: () number of outer iterations performed.
        loss: () last total squared error ``|A - w diag(d) h|_F^2`` (by the Gram identity, as RcppML).
        loss_history: (maxit,) per-iteration loss, NaN after the last iteration.
        converged: () whether the relative loss change stayed below ``tol`` for 5 consecutive iterations.
        tol: () last relative loss change.
        w_init: (m, k) the initial W the fit started from.
        dispersion: (m,) the estimated negative binomial sizes r of a ``loss="nb"`` fit with
            ``dispersion="per_row"``/``"global"``, else None.
    """

    w: jax.Array
    d: jax.Array
    h: jax.Array
    iter: jax.Array
    loss: jax.Array
    loss_history: jax.Array
    converged: jax.Array
    tol: jax.Array
    w_init: jax.Array
    dispersion: jax.Array | None = None

    @property
    def k(self) -> int:
        return int(self.d.shape[-1])

    def replace(self, **changes: Any) -> NMFModel:
        """A copy with some fields replaced (models are immutable)."""
        return dataclasses.replace(self, **changes)

    def reconstruct(self) -> jax.Array:
        """The dense (m, n) reconstruction ``w diag(d) h``."""
        return (self.w * self.d) @ self.h

    def embedding(self) -> jax.Array:
        """The (n, k) sample embedding ``(diag(d) h)'`` used by ``assess`` and the vignette."""
        return (self.d[..., :, None] * self.h).swapaxes(-1, -2)

    def save(self, path: str | os.PathLike, settings: dict[str, Any] | None = None) -> Path:
        """Write the model to a portable ``.npz`` (no pickle) with the recorded fit ``settings``; see ``jnmf.load``."""
        from ._io import save

        return save(self, path, settings)

    def __repr__(self) -> str:
        shape = f"m={self.w.shape[-2]}, n={self.h.shape[-1]}, k={self.d.shape[-1]}"
        batch = self.d.shape[:-1]
        if batch:
            return f"NMFModel({shape}, batch={batch})"
        status = "converged" if bool(self.converged) else "not converged"
        return f"NMFModel({shape}, iter={int(self.iter)}, loss={float(self.loss):.6g}, {status})"


def evaluate(model: NMFModel, A: Any, mask: Any = None, *, loss: str = "mse", power: Any = None,
             delta: Any = None, dispersion: Any = None) -> float:
    """Mean squared error of the model's reconstruction (or, for another ``loss``, its total objective), over A's
    observed entries, in float64.

    Parameters
    ----------
    model : NMFModel
        An unbatched model of A's shape.
    A : array or scipy.sparse matrix
        The data (m, n). NaN entries are missing, as in ``nmf``: they are left out.
    mask : array or scipy.sparse matrix, optional
        Boolean (or 0/1) of A's shape, True = ignore the entry, as ``nmf``'s ``mask``; combined with A's NaN.

    Returns
    -------
    float
        Without missing entries: ``mean((A - w diag(d) h)^2)`` over all m·n entries (zeros included), equal to
        RcppML's ``evaluate(model, A)`` and the vignette's MSE, computed without densifying a sparse A. With a
        mask or NaN: the mean over the observed entries only (the error the masked fit minimises, divided by
        their count; NaN if none is observed), computed densely, as the masked fit itself is.
        ``loss`` other than ``"mse"`` (``"poisson"``/``"kl"``, ``"nb"``, ``"gamma"``, ``"tweedie"``,
        ``"inverse_gaussian"``, ``"huber"``, ``"mae"``, with ``power``, ``delta``, ``dispersion`` as in ``nmf``):
        the fit's stated objective, the *sum* ``sum o D(a | mu)`` over observed entries (``_losses``), equal to
        the ``loss`` of a fit with that loss. For ``"nb"`` without ``dispersion``, r is the model's own estimate
        (``model.dispersion``) when it has one, so the value is the fit's reported NLL; with
        ``dispersion="per_row"``/``"global"``, or a model without one, r is the maximum-likelihood size at this
        model.
    """
    from ._input import _check_mask, canonical_sparse

    W = np.asarray(model.w, np.float64) * np.asarray(model.d, np.float64)
    H = np.asarray(model.h, np.float64)
    if W.ndim != 2:
        raise ValueError(f"model must be unbatched (w of shape (m, k)), got w of shape {W.shape}")
    m, n = W.shape[0], H.shape[1]
    if A.shape != (m, n):
        raise ValueError(f"A must have shape {(m, n)} to match the model, got {A.shape}")
    M = None if mask is None else _check_mask(mask, (m, n), "mask")
    if loss == "nb" and dispersion is None and model.dispersion is not None:
        dispersion = np.asarray(model.dispersion, np.float64)
    if loss != "mse" or power is not None or delta is not None or dispersion is not None:
        from ._losses import evaluate_loss

        if sp.issparse(A):
            A = canonical_sparse(A, np.float64, "A", check=False)
            if M is None and not np.isnan(A.data).any():
                return evaluate_loss(W, H, A, None, loss, power, delta, dispersion)
            A = A.toarray()
        A = np.asarray(A, np.float64)
        nan = np.isnan(A)
        ignore = nan if M is None else (nan | M)
        return evaluate_loss(W, H, np.where(ignore, 0.0, A), ignore if ignore.any() else None, loss, power, delta,
                             dispersion)
    if sp.issparse(A):
        # Canonical copy: duplicates summed (|A|^2 from raw COO data would count them apart), DIA padding dropped.
        A = canonical_sparse(A, np.float64, "A", check=False)
        if M is None and not np.isnan(A.data).any():
            a2 = float(A.data @ A.data)
            cross = _sparse_cross(A, W, H)
            fit2 = float(np.sum((W.T @ W) * (H @ H.T)))
            return max(a2 - 2.0 * cross + fit2, 0.0) / (m * n)
        A = A.toarray()
    else:
        A = np.asarray(A, np.float64)
    nan = np.isnan(A)
    if M is None and not nan.any():
        a2 = float(np.vdot(A, A))
        cross = float(np.vdot(A, W @ H))
        fit2 = float(np.sum((W.T @ W) * (H @ H.T)))
        return max(a2 - 2.0 * cross + fit2, 0.0) / (m * n)
    ignore = nan if M is None else (nan | M)
    observed = int(ignore.size - np.count_nonzero(ignore))
    if observed == 0:
        return float("nan")
    resid = np.where(ignore, 0.0, np.where(nan, 0.0, A) - W @ H)
    return float(np.vdot(resid, resid)) / observed


def _sparse_cross(A: sp.csr_matrix, W: np.ndarray, H: np.ndarray) -> float:
    """``sum_ij A_ij (WH)_ij`` over the non-zeros only, without the dense m x n product."""
    coo = A.tocoo()
    total = 0.0
    for start in range(0, coo.nnz, 1 << 20):
        sl = slice(start, start + (1 << 20))
        total += float(np.sum(coo.data[sl] * np.einsum("ik,ik->i", W[coo.row[sl]], H.T[coo.col[sl]])))
    return total
