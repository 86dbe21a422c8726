"""The guided-NMF recipe of RcppML's vignette, written once: used by ``GuidedNMF``, ``tl.nmf`` and the main job.

Recipe (both fits from the same seed, so RcppML's vignette model is reproduced exactly)::

    base  = nmf(A, k, seed=seed, **options)
    T     = compute_target(base.h, labels, whiten)          # rows in base's order: components sorted by d
    model = nmf(A, k, seed=seed, target_H=T, target_lambda=+/-lam, removal=removal, **options)

Component alignment: T's rows follow ``base.h``, whose components ``nmf`` has sorted by d, and the guided fit
compares row i of T with its own internal component i (the order of the initial W). This is what RcppML does
(``compute_target(base$h)`` then ``nmf(target_H = T)``) and what the vignette's table was made with; jnmf keeps it
for parity rather than re-aligning T with the guided fit's unsorted order.

``remove=`` (a grouping to remove with the scatter penalty, ``remove_lambda``) needs no base fit of its own and
combines with the labels' target (remove the batch, keep the cell types).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from . import _validate as V
from ._model import NMFModel
from ._options import REMOVALS, check_seed, fresh_seed
from ._solve import nmf
from ._targets import compute_target, label_codes

GUIDANCE = ("enrich", "remove")


@dataclasses.dataclass(frozen=True)
class GuidedFit:
    """``model``: the guided fit (components sorted by d, as ``nmf`` sorts them); ``base``: the unguided fit its
    target came from (None without labels); ``target``: T (k, n) as the fit used it, row i for the fit's internal
    component i (``base.h``'s order); ``order``: the sort of the guided fit, so ``target[order]`` follows
    ``model``'s components; ``seed``: the seed of both fits."""

    model: NMFModel
    base: NMFModel | None
    target: np.ndarray | None
    order: np.ndarray
    seed: Any


def check_labels(labels: Any, n: int, name: str = "labels") -> tuple[np.ndarray, tuple]:
    """Codes and levels of guidance labels, refused before any fit when they cannot guide: fewer than 2 classes
    among the labelled samples would turn the target into a plain ridge penalty (every sample pulled to one mean)."""
    codes, levels = label_codes(labels, n, name=name)
    used = np.unique(codes[codes >= 0])
    if used.size < 2:
        raise ValueError(f"{name} must have at least 2 classes among its labelled samples, got {used.size} "
                         f"({int(np.sum(codes >= 0))} of {n} samples labelled): a target of one class is a ridge "
                         "penalty, not guidance")
    return codes, levels


def guided_nmf(A: Any, k: int, labels: Any = None, *, target_lambda: float = 0.1, guidance: str = "enrich",
               removal: str = "scatter", whiten: bool = True, seed: Any = None, remove: Any = None,
               remove_lambda: float = 1.0, base: NMFModel | None = None, **options: Any) -> GuidedFit:
    """The vignette's recipe (module docstring) on A (m, n): ``labels`` (length n) guide by ``guidance``:
    ``"enrich"`` (``+target_lambda``) or ``"remove"`` (``-target_lambda``, by ``removal``). ``remove`` adds the
    scatter penalty of another grouping. ``seed=None`` draws one seed for both fits (recorded in the result).
    ``base``: the unguided fit when it is already at hand (fitted with the same seed and options; not re-checked).
    Labels are checked before any compute. Returns a ``GuidedFit``."""
    V.check_choice(guidance, "guidance", GUIDANCE)
    V.check_choice(removal, "removal", REMOVALS)
    lam = V.check_real(target_lambda, "target_lambda", low=0.0)
    n = np.shape(A)[1]
    if labels is not None:
        check_labels(labels, n)
    if labels is None and remove is None:
        raise ValueError("guided_nmf needs labels (a target) or remove (a grouping to remove)")
    if check_seed(seed)[0] == "none":
        seed = fresh_seed()
    extra = {} if remove is None else {"remove": remove, "remove_lambda": remove_lambda}
    sort = options.pop("sort", True)
    base = T = None
    guide = {}
    if labels is not None:
        base = nmf(A, k, seed=seed, sort=sort, **options) if base is None else base
        T = np.asarray(compute_target(base.h, labels, whiten=whiten))
        guide = dict(target_H=T, target_lambda=lam if guidance == "enrich" else -lam, removal=removal)
    # Sorted here as nmf() sorts (stable, by d descending), so that the permutation is known.
    model = nmf(A, k, seed=seed, sort=False, **guide, **extra, **options)
    model, order = sort_by_d(model) if sort else (model, np.arange(model.k))
    return GuidedFit(model, base, T, order, seed)


def sort_by_d(model: NMFModel) -> tuple[NMFModel, np.ndarray]:
    """Sort components by d descending (stable), exactly as ``nmf(sort=True)`` does; returns the model and order."""
    d = np.asarray(model.d)
    order = np.argsort(-d, kind="stable")
    w, h = np.asarray(model.w)[:, order], np.asarray(model.h)[order]
    return model.replace(w=jnp.asarray(w), d=jnp.asarray(d[order]), h=jnp.asarray(h)), order
