"""Figures of the guided-NMF vignette: UMAP panels and per-class factor composition.

matplotlib and umap-learn are optional dependencies (``pip install "jnmf[figures]"``); they are imported only
when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._targets import label_codes


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('figures need matplotlib: pip install "jnmf[figures]"') from e
    return plt


def factor_composition(h: Any, labels: Any) -> tuple[np.ndarray, list[str]]:
    """Mean factor proportions per class: columns of h (k, n) scaled to unit sum, averaged within each class.

    Returns (P, levels) with P (k, C); samples with a zero column or a missing label are left out.
    """
    h = np.asarray(h, np.float64)
    codes, levels = label_codes(labels, h.shape[1])
    codes = np.asarray(codes)
    sums = h.sum(axis=0)
    ok = (sums > 0) & (codes >= 0)
    props = np.where(ok, h / np.where(sums > 0, sums, 1.0), 0.0)
    P = np.zeros((h.shape[0], len(levels)))
    for c in range(len(levels)):
        members = ok & (codes == c)
        if members.any():
            P[:, c] = props[:, members].mean(axis=1)
    return P, [str(v) for v in levels]


def umap_embedding(x: Any, *, n_neighbors: int = 15, min_dist: float = 0.3, metric: str = "cosine",
                   seed: int = 42) -> np.ndarray:
    """2-D UMAP of an (n, k) embedding with the vignette's settings (uwot: cosine, 15 neighbours, 0.3)."""
    try:
        import umap
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('UMAP needs umap-learn: pip install "jnmf[figures]"') from e
    # A fixed random_state makes umap-learn single-threaded; say so explicitly to silence its warning.
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(np.asarray(x, np.float64)))


def plot_umap_panels(coords: Sequence[np.ndarray], labels: Any, titles: Sequence[str], path: str,
                     *, label_name: str = "class") -> None:
    """One scatter panel per method (2-D coordinates, n x 2 each), coloured by label; saved as PNG."""
    plt = _pyplot()
    codes, levels = label_codes(labels, len(coords[0]))
    codes = np.asarray(codes)
    cmap = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(coords), figsize=(4.2 * len(coords), 4.6), squeeze=False)
    for ax, xy, title in zip(axes[0], coords, titles, strict=True):
        for c, level in enumerate(levels):
            sel = codes == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.7, color=cmap(c % cmap.N), label=str(level))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(levels), 10), title=label_name, markerscale=3,
               frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_factor_composition(compositions: Sequence[np.ndarray], levels: Sequence[str], titles: Sequence[str],
                            path: str) -> None:
    """Stacked bars of mean factor proportion per class, one panel per method; saved as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(compositions), figsize=(4.2 * len(compositions), 4.6), squeeze=False,
                             sharey=True)
    cmap = plt.get_cmap("Set2")
    x = np.arange(len(levels))
    for ax, P, title in zip(axes[0], compositions, titles, strict=True):
        bottom = np.zeros(len(levels))
        for f in range(P.shape[0]):
            ax.bar(x, P[f], bottom=bottom, color=cmap(f % cmap.N), label=f"F{f + 1}")
            bottom += P[f]
        ax.set_xticks(x, levels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0][0].set_ylabel("Mean factor proportion")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 10), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
