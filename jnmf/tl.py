"""AnnData tools in scanpy's style: ``jnmf.tl.nmf(adata, n_comps)`` writes the factorization into ``adata``.

Conventions follow ``sc.pp.pca``: ``n_comps``, ``random_state=0`` (default calls are reproducible), ``mask_var``
(``"highly_variable"`` when present), loadings of the fitted genes in ``varm`` (zeros elsewhere), every
parameter in ``uns[key_added]["params"]``, and errors that name the matrix the user passed (``adata.X``,
``adata.layers['counts']``), not the ``A`` that ``jnmf.nmf`` receives.

anndata is an optional dependency (``pip install jnmf[anndata]``); this module never imports it, it only uses the
AnnData interface (``X``, ``layers``, ``obs``, ``obsm``, ``varm``, ``uns``, ``copy``).
"""

from __future__ import annotations

import contextlib
import enum
import numbers
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _validate as V
from ._guided import check_labels, guided_nmf
from ._options import _SEED_LIMIT, REMOVALS, check_seed, fresh_seed
from ._solve import nmf as _nmf

__all__ = ["inmf", "nmf"]


class _Default(enum.Enum):
    """``mask_var``'s default, as scanpy's ``pca``: ``"highly_variable"`` when ``adata.var`` has that column."""

    HVG_IF_PRESENT = 0

    def __repr__(self) -> str:
        return "'highly_variable' if in adata.var"


_HVG_IF_PRESENT = _Default.HVG_IF_PRESENT


def nmf(
    adata: Any,
    n_comps: int | None = None,
    *,
    layer: str | None = None,
    mask_var: Any = _HVG_IF_PRESENT,
    random_state: Any = 0,
    labels_key: str | None = None,
    batch_key: str | None = None,
    target_lambda: float = 0.1,
    removal: str = "scatter",
    batch_lambda: float = 1.0,
    whiten: bool = True,
    key_added: str = "nmf",
    copy: bool = False,
    k: int | None = None,
    **nmf_options: Any,
) -> Any:
    """Factorize ``adata`` (cells x genes) with ``jnmf.nmf`` on ``A = X'`` (genes x cells), as scanpy's ``pp.pca``.

    Writes ``adata.obsm["X_" + key_added]`` = the cell embedding ``(diag(d) h)'`` (n_cells, n_comps),
    ``adata.varm[key_added + "_W"]`` = the gene loadings ``w`` (n_genes, n_comps), columns summing to 1 over the
    fitted genes and 0 for genes outside ``mask_var`` (as ``sc.pp.pca`` writes ``varm["PCs"]``), and
    ``adata.uns[key_added]`` = ``{"d", "iter", "loss", "loss_history", "converged", "params"}``, ``params``
    recording every parameter of the call (the seed actually used as ``random_state``, the ``**nmf_options``).

    Guidance (the vignette's two-step recipe, both fits from the same seed): ``labels_key`` names an ``obs`` column of
    cell labels whose class structure is enriched (``target_lambda > 0`` with ``T = compute_target(base.h,
    labels)``); ``batch_key`` names an ``obs`` column whose information is removed. With ``removal="scatter"``
    (default) that is ``nmf(remove=batch, remove_lambda=batch_lambda)``, the between-batch scatter penalty, and it
    combines with ``labels_key`` (remove the batch, keep the cell types, in one fit). ``"project"`` and
    ``"proj_adv"`` remove ``T = compute_target(base.h, batch)`` with ``-target_lambda`` (alone). Missing labels
    leave a cell unguided; labels with fewer than 2 classes are refused before any fit.

    Parameters
    ----------
    adata : AnnData
        Cells in rows, genes in columns, non-negative values (NaN entries are missing and masked).
    n_comps : int
        Number of factors (the rank k of ``jnmf.nmf``), ``1 <= n_comps <= min(n_cells, n_fitted_genes)``.
    layer : str, optional
        Use ``adata.layers[layer]`` instead of ``adata.X``.
    mask_var : str, bool array, None or False
        The genes to fit (True = fit), as ``sc.pp.pca``'s ``mask_var``: a boolean ``adata.var`` column name or a
        boolean array over ``adata.var_names``. Default: ``"highly_variable"`` if ``adata.var`` has that column,
        else all genes; ``None`` or ``False`` fits all genes.
    random_state : int, None, numpy RandomState or Generator
        The seed of the initial W (an int is R's ``set.seed``, reproducing RcppML). Default 0, so default calls
        are reproducible (scanpy's default); ``None`` draws a fresh seed, recorded in ``params["random_state"]``.
    labels_key, batch_key : str, optional
        ``obs`` columns for enrichment or removal (see above).
    target_lambda : float
        Guidance strength (>= 0; its sign comes from the key).
    removal : {"scatter", "project", "proj_adv"}
        Removal mode for ``batch_key``: ``"scatter"`` (stated objective, monotone; default), ``"project"`` or
        ``"proj_adv"`` (RcppML).
    batch_lambda : float
        ``remove_lambda`` of the scatter removal (>= 0).
    whiten : bool
        OAS-ZCA whiten the target (``compute_target``).
    key_added : str
        Prefix of the keys written.
    copy : bool
        Return a modified copy instead of writing into ``adata`` (which then returns None).
    k : int, optional
        Deprecated alias of ``n_comps`` (a ``FutureWarning``).
    **nmf_options
        Passed to ``jnmf.nmf`` (``tol``, ``maxit``, ``solver``, ``L1``, ``L2``, ...). ``mask`` (entries to ignore) is
        given like X, cells x genes; ``w_init`` and ``target_W`` like ``varm``, genes x n_comps; all three over all
        genes (``mask_var`` subsets them). ``seed`` is a deprecated alias of ``random_state``.

    Returns
    -------
    AnnData or None
        The modified copy with ``copy=True``, else None (``adata`` is modified in place).

    Raises
    ------
    ValueError, TypeError, KeyError
        Before any fit, naming the argument, the ``obs``/``var`` column or the matrix (``adata.X``,
        ``adata.layers['counts']``) that is wrong: e.g. negative values in ``adata.X``, labels of one class.

    Warnings
    --------
    With ``labels_key``, the embedding ``X_nmf`` was pulled toward the class targets of those labels: scores of
    it against the same labels (``jnmf.assess``, kNN accuracy) partly measure the guidance itself. Evaluate on
    held-out cells (``jnmf.GuidedNMF`` in a scikit-learn pipeline embeds them without labels).

    Examples
    --------
    >>> import jnmf, scanpy as sc
    >>> adata = sc.datasets.pbmc68k_reduced()          # doctest: +SKIP
    >>> jnmf.tl.nmf(adata, 10, layer="counts")          # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_nmf")         # doctest: +SKIP
    """
    for attr in ("X", "obs", "var", "obsm", "varm", "uns", "layers"):
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
    if not isinstance(whiten, (bool, np.bool_)):
        raise TypeError(f"whiten must be a bool, got {whiten!r}")

    X, source = _matrix(adata, layer)
    genes, mask_record = _variable_mask(adata, mask_var)
    n_comps = _n_comps(n_comps, k, X.shape[0], X.shape[1] if genes is None else genes.size)
    seed = _seed(random_state, nmf_options, "tl.nmf")
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

    options = _subset_gene_options(nmf_options, genes, X.shape[1])
    A = (X if genes is None else X[:, genes]).T  # genes x cells; a scipy CSR X becomes CSC without a copy
    if options.get("mask") is not None:  # given like X (cells x genes); nmf wants A's orientation
        mask = options["mask"]
        options["mask"] = mask.T if hasattr(mask, "T") else np.asarray(mask).T
    remove = {"remove": columns["batch_key"], "remove_lambda": batch_lam} if scatter else {}
    with _naming(source if genes is None else f"{source}[:, mask_var]"):
        if labels is None and not scatter:
            model = _nmf(A, n_comps, seed=seed, **options)
        else:
            model = guided_nmf(A, n_comps, labels, target_lambda=lam, removal=removal, whiten=whiten, seed=seed,
                               guidance="enrich" if labels_key is not None else "remove", **remove,
                               **options).model

    if copy:
        adata = adata.copy()
    adata.obsm["X_" + key_added] = np.asarray(model.embedding())
    adata.varm[key_added + "_W"] = _loadings(np.asarray(model.w), genes, X.shape[1])
    params = {"n_comps": n_comps, "random_state": seed, "mask_var": mask_record, "layer": layer,
              "labels_key": labels_key, "batch_key": batch_key, "target_lambda": lam, "removal": removal,
              "batch_lambda": batch_lam, "whiten": bool(whiten), **_plain(nmf_options)}
    adata.uns[key_added] = {"d": np.asarray(model.d), **_record(model, params)}
    return adata if copy else None


def _n_comps(n_comps: Any, k: Any, n_obs: int, n_vars: int) -> int:
    """``n_comps`` (or its deprecated alias ``k``), an int in [1, min(n_obs, n_vars)]."""
    if k is not None:
        warnings.warn("k is deprecated, use n_comps (scanpy's name for the number of components)", FutureWarning,
                      stacklevel=3)
        if n_comps is not None:
            raise TypeError("give n_comps or its deprecated alias k, not both")
        n_comps = k
    if n_comps is None:
        raise TypeError("n_comps (the number of factors) is required")
    n_comps = V.check_int(n_comps, "n_comps", 1)
    if n_comps > min(n_obs, n_vars):
        raise ValueError(f"n_comps must be <= min(n_cells, n_fitted_genes) = min({n_obs}, {n_vars}), got {n_comps}")
    return n_comps


def _seed(random_state: Any, options: dict[str, Any], who: str) -> int:
    """The int seed of ``random_state`` (scanpy's convention: int, None = fresh, RandomState / Generator), or of
    the deprecated ``seed`` option (popped from ``options``)."""
    if "seed" in options:
        seed = options.pop("seed")
        warnings.warn(f"{who}: seed= is deprecated, use random_state= (scanpy's name)", FutureWarning, stacklevel=3)
        explicit = not (isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool)
                        and random_state == 0)
        if explicit:
            raise TypeError("give random_state or its deprecated alias seed, not both")
        random_state = seed
    if random_state is None:
        return fresh_seed()
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, _SEED_LIMIT))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, _SEED_LIMIT))
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, numbers.Integral):
        raise TypeError(f"random_state must be an int, None or a numpy RandomState/Generator, got "
                        f"{type(random_state).__name__} (an explicit initial W goes in w_init)")
    return check_seed(int(random_state), "random_state")[1]


def _variable_mask(adata: Any, mask_var: Any) -> tuple[np.ndarray | None, Any]:
    """(indices of the genes to fit, or None for all; the value recorded in ``params["mask_var"]``)."""
    if mask_var is _HVG_IF_PRESENT:
        mask_var = "highly_variable" if "highly_variable" in adata.var else None
    if mask_var is None or mask_var is False:
        return None, None
    n_vars = adata.var.shape[0]
    if isinstance(mask_var, str):
        if mask_var not in adata.var:
            raise KeyError(f"mask_var {mask_var!r} is not a column of adata.var (have: {list(adata.var.columns)})")
        column = adata.var[mask_var]
        if column.isna().any() or not (column.dtype == bool or str(column.dtype) == "boolean"):
            raise TypeError(f"mask_var: adata.var[{mask_var!r}] must be a boolean column without missing values "
                            f"(True = fit the gene), got dtype {column.dtype}")
        values, record = column.to_numpy(dtype=bool), mask_var
    else:
        values = np.asarray(mask_var)
        if values.dtype != bool or values.shape != (n_vars,):
            raise TypeError(f"mask_var must be an adata.var column name, a boolean array of length n_vars = "
                            f"{n_vars}, None or False; got {type(mask_var).__name__} of dtype {values.dtype} and "
                            f"shape {values.shape}")
        record = values.copy()
    if not values.any():
        raise ValueError(f"mask_var selects no gene (all {n_vars} False); there is nothing to fit")
    return (None if values.all() else np.flatnonzero(values)), record


def _subset_gene_options(options: dict[str, Any], genes: np.ndarray | None, n_vars: int) -> dict[str, Any]:
    """nmf options with the fitted genes' part of the gene-indexed ones: ``mask`` (cells x genes) by column,
    ``w_init`` and ``target_W`` (genes x k) by row; each must span all genes."""
    out = dict(options)
    if genes is None:
        return out
    for name, axis in (("mask", 1), ("w_init", 0), ("target_W", 0)):
        value = out.get(name)
        if value is None:
            continue
        if np.ndim(value) != 2 or np.shape(value)[axis] != n_vars:
            raise ValueError(f"{name} must cover all {n_vars} genes of adata (axis {axis}) when mask_var selects "
                             f"a subset, got shape {np.shape(value)}")
        out[name] = value[:, genes] if axis == 1 else value[genes]
    return out


def _loadings(w: np.ndarray, genes: np.ndarray | None, n_vars: int) -> np.ndarray:
    """Loadings over all genes: the fitted genes' rows of w, zeros elsewhere (as ``sc.pp.pca``'s ``varm``)."""
    if genes is None:
        return w
    full = np.zeros((n_vars, w.shape[1]), w.dtype)
    full[genes] = w
    return full


# A (or As[i], inmf's name) as a word in jnmf's messages: the matrix tl gave nmf, which the user never named.
_MATRIX_NAME = re.compile(r"\bAs\[(\d+)\]|\bA\b")


@contextlib.contextmanager
def _naming(source: str, batches: list[str] | None = None) -> Iterator[None]:
    """Re-raise jnmf's input errors with the matrix the user passed (``adata.X``, ``adata.layers['counts']``, a
    batch of it) in place of ``A``, the argument tl passed to ``jnmf.nmf`` (its transpose, genes x cells)."""
    try:
        yield
    except (ValueError, TypeError, MemoryError) as err:
        message = str(err)

        def name(match: re.Match) -> str:
            if match.group(1) is not None and batches is not None:
                return f"{source} (cells of batch {batches[int(match.group(1))]!r})"
            return source

        renamed = _MATRIX_NAME.sub(name, message)
        if renamed == message:
            raise
        if re.search(r"\d+ x \d+|shape", renamed):
            renamed += f" (jnmf factorizes the transpose of {source}: genes x cells)"
        try:
            new = type(err)(renamed)
        except Exception:  # pragma: no cover - an exception class with another constructor
            raise err from None
        raise new.with_traceback(err.__traceback__) from None


def _record(model: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A fit's ``uns`` entry: iterations, loss and its history, convergence, and every parameter (None included:
    anndata >= 0.11 writes None to h5ad)."""
    return {
        "iter": int(model.iter),
        "loss": float(model.loss),
        "loss_history": np.asarray(model.loss_history),
        "converged": bool(model.converged),
        "params": dict(params),
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
    n_comps: int | None = None,
    *,
    batch_key: str,
    layer: str | None = None,
    mask_var: Any = _HVG_IF_PRESENT,
    random_state: Any = 0,
    lambda_: float = 5.0,
    key_added: str = "inmf",
    copy: bool = False,
    ref_dataset: Any = None,
    quantiles: int = 50,
    min_cells: int = 20,
    max_sample: int | None = 1000,
    k: int | None = None,
    **inmf_options: Any,
) -> Any:
    """Integrative NMF (LIGER's iNMF, ``jnmf.inmf``) of ``adata`` (cells x genes) with one batch per level of
    ``adata.obs[batch_key]``, then LIGER's quantile alignment (``jnmf.quantile_norm``).

    Batches are the levels of ``obs[batch_key]`` in sorted order (categories in their order for a categorical);
    within a batch, cells keep their order in ``adata``. Writes, rows in ``adata``'s cell order:
    ``adata.obsm["X_" + key_added]`` = the aligned embedding (n_cells, n_comps), ``obsm["X_" + key_added +
    "_raw"]`` = the unaligned ``H_i'``; ``adata.varm[key_added + "_W"]`` = the shared W (n_genes, n_comps) and
    ``varm[key_added + "_V_" + level]`` = each batch's V_i (both 0 for genes outside ``mask_var``);
    ``adata.uns[key_added]`` = ``{"batches", "iter", "loss", "loss_history", "converged", "params"}``, ``params``
    recording every parameter of the call.

    Parameters
    ----------
    adata : AnnData
        Cells in rows, genes in columns, non-negative values.
    n_comps : int
        Number of factors (the rank k of ``jnmf.inmf``).
    batch_key : str
        The ``obs`` column of batch labels (no missing values).
    layer : str, optional
        Use ``adata.layers[layer]`` instead of ``adata.X``.
    mask_var : str, bool array, None or False
        The genes to fit, as ``tl.nmf`` (default ``"highly_variable"`` if present).
    random_state : int, None, numpy RandomState or Generator
        Seed of the initial factors (default 0; None draws one, recorded in ``params["random_state"]``).
    lambda_ : float
        iNMF penalty (LIGER's default 5).
    key_added : str
        Prefix of the keys written.
    copy : bool
        Return a modified copy instead of writing into ``adata`` (which then returns None).
    ref_dataset : optional
        The reference batch of the alignment, a level of ``batch_key`` (default the largest batch).
    quantiles, min_cells, max_sample
        Passed to ``quantile_norm``.
    k : int, optional
        Deprecated alias of ``n_comps``.
    **inmf_options
        Passed to ``jnmf.inmf`` (``tol``, ``maxit``, ``layout``, ...); ``seed`` is a deprecated alias of
        ``random_state``.

    Returns
    -------
    AnnData or None
        The modified copy with ``copy=True``, else None.
    """
    from ._inmf import inmf as _inmf
    from ._inmf import quantile_norm

    for attr in ("X", "obs", "var", "obsm", "varm", "uns", "layers"):
        if not hasattr(adata, attr):
            raise TypeError(f"adata must be an AnnData object, got {type(adata).__name__} (no .{attr})")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}")
    for name in ("masks", "w_init", "v_init", "h_init"):
        if name in inmf_options:
            raise TypeError(f"tl.inmf does not take {name}; call jnmf.inmf on the batch matrices instead")
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key {batch_key!r} is not a column of adata.obs (have: {list(adata.obs.columns)})")
    X, source = _matrix(adata, layer)
    genes, mask_record = _variable_mask(adata, mask_var)
    labels = adata.obs[batch_key]
    if labels.isna().any():
        raise ValueError(f"batch_key {batch_key!r}: {int(labels.isna().sum())} cells have no batch label")
    levels = list(labels.cat.categories) if hasattr(labels, "cat") else sorted(set(labels.tolist()))
    values = np.asarray(labels.astype(object))
    idx = [np.flatnonzero(values == level) for level in levels]
    keep = [j for j, ix in enumerate(idx) if ix.size]
    levels, idx = [levels[j] for j in keep], [idx[j] for j in keep]
    n_vars = X.shape[1] if genes is None else genes.size
    n_comps = _n_comps(n_comps, k, max(ix.size for ix in idx), n_vars)
    seed = _seed(random_state, inmf_options, "tl.inmf")
    ref = None
    if ref_dataset is not None:
        if ref_dataset not in levels:
            raise ValueError(f"ref_dataset {ref_dataset!r} is not a batch of {batch_key!r} (have: {levels})")
        ref = levels.index(ref_dataset)

    fitted = X if genes is None else X[:, genes]
    As = [fitted[ix].T for ix in idx]  # genes x cells per batch
    with _naming(source if genes is None else f"{source}[:, mask_var]", [str(level) for level in levels]):
        model = _inmf(As, n_comps, lambda_=lambda_, seed=seed, **inmf_options)
    order = np.concatenate(idx)
    aligned = quantile_norm(model, ref_dataset=ref, quantiles=quantiles, min_cells=min_cells, max_sample=max_sample)
    if copy:
        adata = adata.copy()
    emb, raw = np.empty_like(aligned), np.empty_like(aligned)
    emb[order], raw[order] = aligned, model.embedding(aligned=False)
    adata.obsm["X_" + key_added] = emb
    adata.obsm["X_" + key_added + "_raw"] = raw
    adata.varm[key_added + "_W"] = _loadings(np.asarray(model.w), genes, X.shape[1])
    for level, v in zip(levels, np.asarray(model.v), strict=True):
        adata.varm[f"{key_added}_V_{level}"] = _loadings(v, genes, X.shape[1])
    params = {"n_comps": n_comps, "batch_key": batch_key, "layer": layer, "mask_var": mask_record,
              "random_state": seed, "lambda_": float(lambda_), "ref_dataset": ref_dataset, "quantiles": quantiles,
              "min_cells": min_cells, "max_sample": max_sample, **_plain(inmf_options)}
    adata.uns[key_added] = {"batches": [str(level) for level in levels], **_record(model, params)}
    return adata if copy else None


def _matrix(adata: Any, layer: str | None) -> tuple[Any, str]:
    """``adata.X`` or ``adata.layers[layer]`` and how messages name it, with errors that name what the user passed."""
    if layer is None:
        X, source = adata.X, "adata.X"
    elif layer in adata.layers:
        X, source = adata.layers[layer], f"adata.layers[{layer!r}]"
    else:
        raise KeyError(f"layer {layer!r} is not in adata.layers (have: {list(adata.layers.keys())})")
    if X is None:
        raise ValueError("adata.X is None; give layer=...")
    return X, source
