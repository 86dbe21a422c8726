"""Plots in scanpy's style: ``jnmf.pl.composition(adata, "island")``, ``jnmf.pl.embedding(model, labels)``.

Every function takes an AnnData (the embedding in ``adata.obsm[basis]``, labels in ``adata.obs[key]``), an
``NMFModel`` (its embedding ``(diag(d) h)'``) or arrays (n samples in rows), draws into ``ax=`` when one is given
(otherwise into a new figure) and returns the axes (grids: the figure). Nothing here changes matplotlib's backend:
a notebook keeps its own, and ``jnmf run`` selects Agg for itself before pyplot is imported.

Factor ``f`` has the same colour in every panel (``factor_colors(k)``: k distinct colours for any k).
matplotlib and umap-learn are optional (``pip install "jnmf[figures]"``) and imported when a figure is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Composition", "composition", "composition_grid", "embedding", "embedding_grid", "factor_colors",
           "factor_composition", "umap_coordinates"]

# A class with fewer samples than this is drawn as a narrower bar (width ~ sqrt(n / FULL_WIDTH_N)): its mean
# proportion rests on few samples, and a full-width bar would look as certain as one over hundreds.
FULL_WIDTH_N = 20
PANEL_INCHES = 4.5
DPI = 100


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('figures need matplotlib: pip install "jnmf[figures]"') from e
    return plt


def _is_anndata(data: Any) -> bool:
    return hasattr(data, "obsm") and hasattr(data, "obs")


def _samples_by_factors(data: Any, basis: str) -> np.ndarray:
    """The (n, k) embedding of an AnnData (``obsm[basis]``), an NMFModel, or an (n, k) array."""
    if _is_anndata(data):
        if basis not in data.obsm:
            raise KeyError(f"adata.obsm has no {basis!r} (have {sorted(data.obsm)}); run jnmf.tl.nmf first or "
                           "pass basis=")
        x = data.obsm[basis]
    elif hasattr(data, "embedding") and hasattr(data, "h"):
        if np.ndim(data.d) != 1:
            raise ValueError(f"model must be unbatched (d of shape (k,)), got d of shape {np.shape(data.d)}")
        x = data.embedding()
    else:
        x = data
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"data must be an AnnData, an NMFModel or an (n, k) array, got an array of shape {x.shape}")
    return x


def _labels(data: Any, labels: Any, n: int) -> np.ndarray | None:
    """Labels as given, or ``adata.obs[labels]`` when ``labels`` is a column name of an AnnData."""
    if isinstance(labels, str):
        if not _is_anndata(data):
            raise TypeError(f"labels={labels!r} names an obs column, which needs an AnnData; pass the labels instead")
        if labels not in data.obs:
            raise KeyError(f"adata.obs has no column {labels!r} (have {list(data.obs.columns)})")
        labels = data.obs[labels]
    if labels is None:
        return None
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (n,):
        raise ValueError(f"labels must have one entry per sample ({n}), got shape {labels.shape}")
    return labels


def _codes(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 = missing) and the sorted distinct labels, as strings."""
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in labels], bool)
    text = np.array([str(v) for v in labels], dtype=object)
    levels = sorted(set(text[~missing].tolist()))
    index = {v: i for i, v in enumerate(levels)}
    codes = np.array([-1 if miss else index[v] for v, miss in zip(text, missing, strict=True)], np.int64)
    return codes, levels


def factor_colors(k: int) -> np.ndarray:
    """``k`` distinct RGBA colours, one per factor; the same ``k`` gives the same colours in every panel.

    Parameters
    ----------
    k : int
        Number of factors (>= 1).

    Returns
    -------
    ndarray, shape (k, 4)
        tab10 for k <= 10, tab20 for k <= 20, evenly spaced hues of ``turbo`` beyond (never a repeated colour).

    Examples
    --------
    >>> jnmf.pl.factor_colors(12).shape
    (12, 4)
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    from matplotlib import colormaps

    if k <= 20:
        rgb = np.asarray(colormaps["tab10" if k <= 10 else "tab20"].colors[:k], np.float64)
        return np.column_stack([rgb, np.ones(k)])
    return np.asarray(colormaps["turbo"](np.linspace(0.03, 0.97, k)), np.float64)


@dataclasses.dataclass(frozen=True)
class Composition:
    """Mean factor proportions per class: ``P`` (k, C), the class names ``levels`` (C) and sizes ``n`` (C)."""

    P: np.ndarray
    levels: list[str]
    n: np.ndarray


def factor_composition(data: Any, labels: Any, *, basis: str = "X_nmf") -> Composition:
    """Each sample's embedding scaled to unit sum (its factor proportions), averaged within each class.

    With W's columns summing to 1, row j of the embedding ``(diag(d) h)'`` splits sample j's reconstructed total
    among the factors, so ``P[f, c]`` is the share of class c's signal that factor f carries.

    Parameters
    ----------
    data : AnnData, NMFModel or array (n, k)
        The embedding: ``adata.obsm[basis]``, ``model.embedding()`` or the array itself.
    labels : array (n,) or str
        The class of each sample, or an ``adata.obs`` column name. Missing labels (None, NaN) are left out, and so
        are samples whose embedding is all zero.
    basis : str
        The ``obsm`` key of an AnnData's embedding.

    Returns
    -------
    Composition
        ``P`` (k, C) with columns summing to 1 (0 for an empty class), ``levels``, ``n`` (samples per class).

    Examples
    --------
    >>> comp = jnmf.pl.factor_composition(model, island)  # doctest: +SKIP
    >>> comp.P.shape, comp.levels[:2], comp.n[:2]  # doctest: +SKIP
    ((8, 8), ['Hawaii', 'Kahoolawe'], array([593,   4]))
    """
    x = _samples_by_factors(data, basis)
    lab = _labels(data, labels, x.shape[0])
    if lab is None:
        raise ValueError("labels are required for a factor composition")
    codes, levels = _codes(lab)
    sums = x.sum(axis=1)
    ok = (sums > 0) & (codes >= 0)
    props = np.where(ok[:, None], x / np.where(sums > 0, sums, 1.0)[:, None], 0.0)
    P = np.zeros((x.shape[1], len(levels)))
    n = np.zeros(len(levels), np.int64)
    for c in range(len(levels)):
        members = ok & (codes == c)
        n[c] = int(members.sum())
        if n[c]:
            P[:, c] = props[members].mean(axis=0)
    return Composition(P, levels, n)


def composition(data: Any, labels: Any, *, basis: str = "X_nmf", ax: Any = None, title: str | None = None,
                legend: bool = True) -> Any:
    """Stacked bars of the mean factor proportions per class (``factor_composition``), one bar per class.

    Each class's tick reads ``name (n=...)``; classes with fewer than ``FULL_WIDTH_N`` (20) samples get narrower
    bars (width ~ sqrt(n / 20)). Factor f is ``factor_colors(k)[f]``.

    Parameters
    ----------
    data : AnnData, NMFModel or array (n, k)
        See ``factor_composition``.
    labels : array (n,) or str
        Classes, or an ``adata.obs`` column name.
    basis : str
        The ``obsm`` key of an AnnData's embedding.
    ax : matplotlib Axes, optional
        Draw here; default a new figure.
    title : str, optional
        The panel's title.
    legend : bool
        Add a legend of the factors (F1..Fk).

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> ax = jnmf.pl.composition(adata, "island")  # doctest: +SKIP
    """
    comp = factor_composition(data, labels, basis=basis)
    return _draw_composition(comp, ax=ax, title=title, legend=legend)


def _draw_composition(comp: Composition, *, ax: Any, title: str | None, legend: bool) -> Any:
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(PANEL_INCHES, PANEL_INCHES))
    k, C = comp.P.shape
    colors = factor_colors(k)
    x = np.arange(C)
    width = 0.8 * np.minimum(1.0, np.sqrt(comp.n / FULL_WIDTH_N))
    bottom = np.zeros(C)
    for f in range(k):
        ax.bar(x, comp.P[f], width=width, bottom=bottom, color=colors[f], label=f"F{f + 1}")
        bottom += comp.P[f]
    ax.set_xticks(x, [f"{name} (n={n})" for name, n in zip(comp.levels, comp.n, strict=True)], rotation=45,
                  ha="right", fontsize=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean factor proportion", fontsize=11)
    if title is not None:
        ax.set_title(title, fontsize=12)
    if legend:
        ax.legend(fontsize=8, ncol=max(1, math.ceil(k / 10)), loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  frameon=False)
    return ax


def umap_coordinates(data: Any, *, basis: str = "X_nmf", n_neighbors: int = 15, min_dist: float = 0.3,
                     metric: str = "cosine", seed: int = 42, n_jobs: int | None = None) -> Any:
    """2-D UMAP of an embedding with the vignette's settings (uwot: cosine distance, 15 neighbours, 0.3).

    Parameters
    ----------
    data : AnnData, NMFModel or array (n, k), or a list or tuple of them
        The embedding (see ``factor_composition``). A list gives one layout per entry, computed on up to
        ``n_jobs`` threads at once; each equals its own call bitwise.
    basis, n_neighbors, min_dist, metric, seed
        ``obsm`` key of an AnnData; umap-learn's settings (``seed`` is its ``random_state``).
    n_jobs : int, optional
        Threads for a list (default: the CPUs this process may use). umap-learn's layout epochs run without the
        GIL here, so threads scale; each layout is single-threaded, as umap-learn makes any seeded one.

    Returns
    -------
    ndarray, shape (n, 2), or a list of them for a list

    Examples
    --------
    >>> xy = jnmf.pl.umap_coordinates(model)  # doctest: +SKIP
    >>> panels = jnmf.pl.umap_coordinates([baseline, refined, removed])  # doctest: +SKIP
    """
    try:
        import umap
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('UMAP needs umap-learn: pip install "jnmf[figures]"') from e
    from . import _umap_fast

    many = isinstance(data, (list, tuple))
    xs = [_samples_by_factors(x, basis) for x in (data if many else [data])]
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1):
        raise ValueError(f"n_jobs must be a positive int or None, got {n_jobs!r}")
    _umap_fast.enable_umap_cache()

    def layout(x: np.ndarray) -> np.ndarray:
        # A fixed random_state makes umap-learn single-threaded; say so explicitly to silence its warning.
        reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(x))

    with _umap_fast.fast_small_data():  # the same layouts, faster (see _umap_fast)
        workers = min(len(xs), n_jobs or _cpu_count())
        if workers <= 1:
            out = [layout(x) for x in xs]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                out = list(pool.map(layout, xs))
    return out if many else out[0]


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def embedding(data: Any, labels: Any = None, *, basis: str = "X_umap", ax: Any = None, title: str | None = None,
              legend: bool = True, size: float = 6.0, label_name: str | None = None) -> Any:
    """Scatter of 2-D coordinates (first two columns), coloured by class.

    Parameters
    ----------
    data : AnnData, NMFModel or array (n, >= 2)
        Coordinates: ``adata.obsm[basis]`` (default ``"X_umap"``, as ``sc.pl.umap``), an array (e.g. from
        ``umap_coordinates``), or a model (its first two factors).
    labels : array (n,) or str, optional
        Classes (or an ``adata.obs`` column); colours are ``factor_colors(number of classes)``.
    basis : str
        The ``obsm`` key of an AnnData's coordinates.
    ax : matplotlib Axes, optional
        Draw here; default a new figure.
    title : str, optional
        The panel's title.
    legend : bool
        Add a legend of the classes.
    size : float
        Marker size.
    label_name : str, optional
        The legend's title (default: the obs column's name, when ``labels`` is one).

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> ax = jnmf.pl.embedding(jnmf.pl.umap_coordinates(model), island, title="baseline")  # doctest: +SKIP
    """
    xy = _samples_by_factors(data, basis)
    if xy.shape[1] < 2:
        raise ValueError(f"data must have at least 2 columns (coordinates), got shape {xy.shape}")
    if label_name is None and isinstance(labels, str):
        label_name = labels
    lab = _labels(data, labels, xy.shape[0])
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(PANEL_INCHES, PANEL_INCHES))
    if lab is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7, color="0.3", linewidths=0)
    else:
        codes, levels = _codes(lab)
        colors = factor_colors(max(len(levels), 1))
        for c, level in enumerate(levels):
            sel = codes == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, alpha=0.7, color=colors[c], label=level, linewidths=0)
        if legend:
            ax.legend(title=label_name, markerscale=2.5, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                      frameon=False)
    if title is not None:
        ax.set_title(title, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1" if basis == "X_umap" or not _is_anndata(data) else f"{basis}[0]", fontsize=10)
    ax.set_ylabel("UMAP2" if basis == "X_umap" or not _is_anndata(data) else f"{basis}[1]", fontsize=10)
    return ax


def _grid(n_panels: int, ncols: int | None):
    plt = _pyplot()
    ncols = ncols or max(1, math.ceil(math.sqrt(n_panels)))
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_INCHES * ncols, PANEL_INCHES * nrows + 0.9),
                             squeeze=False, dpi=DPI)
    flat = axes.ravel()
    for ax in flat[n_panels:]:
        ax.remove()
    return fig, flat[:n_panels]


def _metric_title(title: str, metrics: Mapping[str, float] | None) -> str:
    if not metrics:
        return title
    return title + "\n" + " · ".join(f"{name} {value:.3f}" for name, value in metrics.items()
                                     if value is not None and np.isfinite(value))


def embedding_grid(coords: Sequence[Any], labels: Any, titles: Sequence[str], *,
                   metrics: Sequence[Mapping[str, float]] | None = None, label_name: str = "class",
                   ncols: int | None = None) -> Any:
    """A grid of ``embedding`` panels (one per method), one shared legend, metrics in the titles.

    Parameters
    ----------
    coords : sequence of arrays (n, 2) (or AnnData / models, see ``embedding``)
        One per panel, e.g. ``umap_coordinates`` of each method's embedding.
    labels : array (n,)
        Classes, shared by the panels.
    titles : sequence of str
        One per panel.
    metrics : sequence of mappings, optional
        Per panel, e.g. ``{"NMI": 0.49, "kNN": 0.90}``, written under the title.
    label_name : str
        The legend's title.
    ncols : int, optional
        Columns of the grid (default ceil(sqrt(panels))).

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> fig = jnmf.pl.embedding_grid([xy1, xy2], island, ["baseline", "guided"])  # doctest: +SKIP
    """
    if len(coords) != len(titles) or (metrics is not None and len(metrics) != len(titles)):
        raise ValueError(f"coords, titles and metrics must have one entry per panel, got {len(coords)}, "
                         f"{len(titles)} and {None if metrics is None else len(metrics)}")
    fig, axes = _grid(len(coords), ncols)
    for i, (ax, xy, title) in enumerate(zip(axes, coords, titles, strict=True)):
        embedding(xy, labels, ax=ax, title=_metric_title(title, metrics[i] if metrics else None), legend=False)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), title=label_name, markerscale=3,
                   fontsize=11, title_fontsize=11, frameon=False)
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1))
    return fig


def composition_grid(data: Sequence[Any], labels: Any, titles: Sequence[str], *, basis: str = "X_nmf",
                     ncols: int | None = None) -> Any:
    """A grid of ``composition`` panels (one per model), one shared factor legend; F1..Fk same colour throughout.

    Parameters
    ----------
    data : sequence of AnnData, NMFModel or arrays (n, k)
        One per panel.
    labels : array (n,)
        Classes, shared by the panels.
    titles : sequence of str
        One per panel.
    basis : str
        The ``obsm`` key of AnnData inputs.
    ncols : int, optional
        Columns of the grid (default ceil(sqrt(panels))).

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> fig = jnmf.pl.composition_grid([base, guided], island, ["baseline", "guided"])  # doctest: +SKIP
    """
    if len(data) != len(titles):
        raise ValueError(f"data and titles must have one entry per panel, got {len(data)} and {len(titles)}")
    fig, axes = _grid(len(data), ncols)
    kmax = 0
    for ax, item, title in zip(axes, data, titles, strict=True):
        comp = factor_composition(item, labels, basis=basis)
        _draw_composition(comp, ax=ax, title=title, legend=False)
        kmax = max(kmax, comp.P.shape[0])
    handles, names = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hn: len(hn[0]))
    fig.legend(handles, names, loc="lower center", ncol=min(kmax, 10), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1))
    return fig
