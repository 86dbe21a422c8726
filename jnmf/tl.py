"""AnnData tools in scanpy's style: ``jnmf.tl.nmf(adata, k)`` writes the factorization into ``adata``.

anndata is an optional dependency (``pip install jnmf[anndata]``); this module never imports it, it only uses the
AnnData interface (``X``, ``layers``, ``obs``, ``obsm``, ``varm``, ``uns``, ``copy``).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _validate as V
from ._guided import check_labels, guided_nmf
from ._options import REMOVALS, fresh_seed
from ._solve import nmf as _nmf

__all__ = ["inmf", "nmf"]


def nmf(
    adata: Any,
    k: int,
    *,
    layer: str | None = None,
    labels_key: str | None = None,
    batch_key: str | None = None,
    target_lambda: float = 0.1,
    removal: str = "scatter",
    batch_lambda: float = 1.0,
    whiten: bool = True,
    key_added: str = "nmf",
    copy: bool = False,
    **nmf_options: Any,
) -> Any:
    """Factorize ``adata`` (cells x genes) with ``jnmf.nmf`` on ``A = X'`` (genes x cells), as scanpy's ``tl.pca``.

    Writes ``adata.obsm["X_" + key_added]`` = the cell embedding ``(diag(d) h)'`` (n_cells, k),
    ``adata.varm[key_added + "_W"]`` = the gene loadings ``w`` (n_genes, k), columns summing to 1, and
    ``adata.uns[key_added]`` = ``{"d", "iter", "loss", "loss_history", "converged", "params"}``.

    Guidance (the vignette's two-step recipe, both fits from the same seed): ``labels_key`` names an ``obs`` column of
    cell labels whose class structure is enriched (``target_lambda > 0`` with ``T = compute_target(base.h,
    labels)``); ``batch_key`` names an ``obs`` column whose information is removed. With ``removal="scatter"``
    (default) that is ``nmf(remove=batch, remove_lambda=batch_lambda)``, the between-batch scatter penalty, and it
    combines with ``labels_key`` (remove the batch, keep the cell types, in one fit). ``"project"`` and
    ``"proj_adv"`` remove ``T = compute_target(base.h, batch)`` with ``-target_lambda`` (alone). Missing labels
    leave a cell unguided.

    Args:
        adata: an AnnData object with cells in rows.
        k: rank.
        layer: use ``adata.layers[layer]`` instead of ``adata.X``.
        labels_key, batch_key: ``obs`` columns for enrichment or removal (see above).
        target_lambda: guidance strength (>= 0; its sign comes from the key).
        removal: removal mode for ``batch_key``: ``"scatter"`` (stated objective, monotone; default),
            ``"project"`` or ``"proj_adv"`` (RcppML).
        batch_lambda: ``remove_lambda`` of the scatter removal (>= 0).
        whiten: OAS-ZCA whiten the target (``compute_target``).
        key_added: prefix of the keys written.
        copy: return a modified copy instead of writing into ``adata`` (which then returns None).
        **nmf_options: passed to ``jnmf.nmf`` (``seed``, ``tol``, ``maxit``, ``solver``, ``L1``, ``L2``, ...).
            ``seed=None`` draws one seed, recorded in ``uns[key_added]["params"]["seed"]``. ``mask`` (entries to
            ignore) is given like X, cells x genes; NaN entries of X are masked automatically.
    """
    for attr in ("X", "obs", "obsm", "varm", "uns", "layers"):
        if not hasattr(adata, attr):
            raise TypeError(f"adata must be an AnnData object, got {type(adata).__name__} (no .{attr})")
    if labels_key is not None and batch_key is not None and removal != "scatter":
        raise ValueError(f"labels_key and batch_key together need removal='scatter' (removal={removal!r} uses the "
                         "one H target for the batch)")
    for name, value in (("target_H", "labels_key/batch_key"), ("target_lambda", "target_lambda"),
                        ("remove", "batch_key"), ("remove_lambda", "batch_lambda")):
        if name in nmf_options:
            raise TypeError(f"{name} is set by tl.nmf from {value}; do not pass it in **nmf_options")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}")
    lam = V.check_real(target_lambda, "target_lambda", low=0.0)
    batch_lam = V.check_real(batch_lambda, "batch_lambda", low=0.0)
    V.check_choice(removal, "removal", REMOVALS)
    if copy:
        adata = adata.copy()

    X = _matrix(adata, layer)
    columns = {}
    for name, key in (("labels_key", labels_key), ("batch_key", batch_key)):
        if key is not None:
            if key not in adata.obs:
                raise KeyError(f"{name} {key!r} is not a column of adata.obs (have: {list(adata.obs.columns)})")
            columns[name] = adata.obs[key]
    scatter = batch_key is not None and removal == "scatter"
    # The column a compute_target is made of: the labels, or the batch for the project/proj_adv removal.
    labels = columns.get("labels_key", None if scatter else columns.get("batch_key"))
    key = labels_key if labels_key is not None else batch_key
    if labels is not None:  # before any fit: labels that cannot guide are refused
        check_labels(labels, X.shape[0], name=f"adata.obs[{key!r}]")

    seed = nmf_options.pop("seed", None)
    if seed is None:  # one seed for both fits of the guided recipe, and recorded
        seed = fresh_seed()
    A = X.T  # genes x cells; a scipy CSR X becomes CSC without a copy
    if nmf_options.get("mask") is not None:  # given like X (cells x genes); nmf wants A's orientation
        mask = nmf_options["mask"]
        nmf_options["mask"] = mask.T if hasattr(mask, "T") else np.asarray(mask).T
    remove = {"remove": columns["batch_key"], "remove_lambda": batch_lam} if scatter else {}
    if labels is None and not scatter:
        model = _nmf(A, k, seed=seed, **nmf_options)
    else:
        model = guided_nmf(A, k, labels, target_lambda=lam, guidance="enrich" if labels_key is not None else "remove",
                           removal=removal, whiten=whiten, seed=seed, **remove, **nmf_options).model

    adata.obsm["X_" + key_added] = np.asarray(model.embedding())
    adata.varm[key_added + "_W"] = np.asarray(model.w)
    guided = {"target_lambda": lam, "whiten": bool(whiten)} if key is not None else {}
    if batch_key is not None:
        guided["removal"] = removal
        if scatter:
            guided["batch_lambda"] = batch_lam
    params = {"k": int(k), "layer": layer, "labels_key": labels_key, "batch_key": batch_key, **guided,
              "seed": seed if isinstance(seed, numbers.Integral) else f"<{type(seed).__name__}>",
              **_plain(nmf_options)}
    adata.uns[key_added] = {"d": np.asarray(model.d), **_record(model, params)}
    return adata if copy else None


def _record(model: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A fit's ``uns`` entry: iterations, loss and its history, convergence, and the params (h5ad cannot store
    None: unset options are left out)."""
    return {
        "iter": int(model.iter),
        "loss": float(model.loss),
        "loss_history": np.asarray(model.loss_history),
        "converged": bool(model.converged),
        "params": {name: value for name, value in params.items() if value is not None},
    }


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """nmf options as h5ad-writable values; array-valued ones (a mask, w_init) are recorded by their shape only."""
    out = {}
    for name, value in options.items():
        if value is None or isinstance(value, (str, bool, numbers.Number)):
            out[name] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (str, bool, numbers.Number)) for v in value):
            out[name] = list(value)
        else:
            out[name] = f"<{type(value).__name__} of shape {np.shape(value)}>"
    return out


def inmf(
    adata: Any,
    k: int,
    *,
    batch_key: str,
    layer: str | None = None,
    lambda_: float = 5.0,
    key_added: str = "inmf",
    copy: bool = False,
    ref_dataset: Any = None,
    quantiles: int = 50,
    min_cells: int = 20,
    max_sample: int | None = 1000,
    **inmf_options: Any,
) -> Any:
    """Integrative NMF (LIGER's iNMF, ``jnmf.inmf``) of ``adata`` (cells x genes) with one batch per level of
    ``adata.obs[batch_key]``, then LIGER's quantile alignment (``jnmf.quantile_norm``).

    Batches are the levels of ``obs[batch_key]`` in sorted order (categories in their order for a categorical);
    within a batch, cells keep their order in ``adata``. Writes, rows in ``adata``'s cell order:
    ``adata.obsm["X_" + key_added]`` = the aligned embedding (n_cells, k), ``obsm["X_" + key_added + "_raw"]`` =
    the unaligned ``H_i'``; ``adata.varm[key_added + "_W"]`` = the shared W (n_genes, k) and
    ``varm[key_added + "_V_" + level]`` = each batch's V_i; ``adata.uns[key_added]`` = ``{"batches", "iter",
    "loss", "loss_history", "converged", "params"}``.

    Args:
        adata: an AnnData object with cells in rows.
        k: rank.
        batch_key: the ``obs`` column of batch labels (no missing values).
        layer: use ``adata.layers[layer]`` instead of ``adata.X``.
        lambda_: iNMF penalty (LIGER's default 5).
        key_added: prefix of the keys written.
        copy: return a modified copy instead of writing into ``adata`` (which then returns None).
        ref_dataset: the reference batch of the alignment, a level of ``batch_key`` (default the largest batch).
        quantiles, min_cells, max_sample: passed to ``quantile_norm``.
        **inmf_options: passed to ``jnmf.inmf`` (``seed``, ``tol``, ``maxit``, ``layout``, ...). ``seed=None``
            draws one seed, recorded in ``uns[key_added]["params"]["seed"]``.
    """
    from ._inmf import inmf as _inmf
    from ._inmf import quantile_norm

    for attr in ("X", "obs", "obsm", "varm", "uns", "layers"):
        if not hasattr(adata, attr):
            raise TypeError(f"adata must be an AnnData object, got {type(adata).__name__} (no .{attr})")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}")
    for name in ("masks", "w_init", "v_init", "h_init"):
        if name in inmf_options:
            raise TypeError(f"tl.inmf does not take {name}; call jnmf.inmf on the batch matrices instead")
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key {batch_key!r} is not a column of adata.obs (have: {list(adata.obs.columns)})")
    X = _matrix(adata, layer)
    labels = adata.obs[batch_key]
    if labels.isna().any():
        raise ValueError(f"batch_key {batch_key!r}: {int(labels.isna().sum())} cells have no batch label")
    levels = list(labels.cat.categories) if hasattr(labels, "cat") else sorted(set(labels.tolist()))
    values = np.asarray(labels.astype(object))
    idx = [np.flatnonzero(values == level) for level in levels]
    keep = [j for j, ix in enumerate(idx) if ix.size]
    levels, idx = [levels[j] for j in keep], [idx[j] for j in keep]
    ref = None
    if ref_dataset is not None:
        if ref_dataset not in levels:
            raise ValueError(f"ref_dataset {ref_dataset!r} is not a batch of {batch_key!r} (have: {levels})")
        ref = levels.index(ref_dataset)
    if copy:
        adata = adata.copy()

    seed = inmf_options.pop("seed", None)
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31 - 1))
    As = [X[ix].T for ix in idx]  # genes x cells per batch
    model = _inmf(As, k, lambda_=lambda_, seed=seed, **inmf_options)
    order = np.concatenate(idx)
    aligned = quantile_norm(model, ref_dataset=ref, quantiles=quantiles, min_cells=min_cells, max_sample=max_sample)
    emb, raw = np.empty_like(aligned), np.empty_like(aligned)
    emb[order], raw[order] = aligned, model.embedding(aligned=False)
    adata.obsm["X_" + key_added] = emb
    adata.obsm["X_" + key_added + "_raw"] = raw
    adata.varm[key_added + "_W"] = np.asarray(model.w)
    for level, v in zip(levels, np.asarray(model.v), strict=True):
        adata.varm[f"{key_added}_V_{level}"] = v
    params = {"k": int(k), "batch_key": batch_key, "layer": layer, "lambda_": float(lambda_),
              "ref_dataset": ref_dataset, "quantiles": quantiles, "min_cells": min_cells, "max_sample": max_sample,
              "seed": seed if isinstance(seed, numbers.Integral) else f"<{type(seed).__name__}>",
              **_plain(inmf_options)}
    adata.uns[key_added] = {"batches": [str(level) for level in levels], **_record(model, params)}
    return adata if copy else None


def _matrix(adata: Any, layer: str | None) -> Any:
    """``adata.X`` or ``adata.layers[layer]``, with errors that name what the user passed."""
    if layer is None:
        X = adata.X
    elif layer in adata.layers:
        X = adata.layers[layer]
    else:
        raise KeyError(f"layer {layer!r} is not in adata.layers (have: {list(adata.layers.keys())})")
    if X is None:
        raise ValueError("adata.X is None; give layer=...")
    return X
