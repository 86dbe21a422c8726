"""``integration_metrics()``: batch-removal and bio-conservation scores of an embedding, computed by scib-metrics.

The metrics are those of the scIB benchmark (Luecken et al. 2022, Nat. Methods 19:41) as the ``scib-metrics``
package implements them, with the settings of its ``Benchmarker`` (scib-metrics 0.5.10); this module only prepares
the inputs (embedding, integer-coded labels, one neighbour graph), calls the package's functions and aggregates
their values as ``Benchmarker.get_results`` does. scib-metrics is an optional dependency:
``pip install "jnmf[integration]"``; it is imported when the function is called, never at ``import jnmf``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._assess import _as_factor, _extract_embedding

__all__ = ["integration_metrics", "scale_integration_scores", "BATCH_METRICS", "BIO_METRICS"]

#: Batch-removal metrics, in Benchmarker's order (``BatchCorrection``); 1 = batches fully mixed.
BATCH_METRICS = ("bras", "ilisi", "kbet", "graph_connectivity", "pcr_comparison")
#: Bio-conservation metrics, in Benchmarker's order (``BioConservation``; k-means NMI and ARI are two entries).
BIO_METRICS = ("isolated_labels", "nmi_kmeans", "ari_kmeans", "silhouette_label", "clisi")
#: Metrics that may be asked for but are not in Benchmarker's default set (and so not in the scores by default).
EXTRA_METRICS = ("silhouette_batch", "nmi_leiden", "ari_leiden")
#: Neighbourhood sizes of Benchmarker: 15 (graph connectivity, Leiden), 50 (kBET), 90 (LISI).
NEIGHBORS = {"graph_connectivity": 15, "leiden": 15, "kbet": 50, "lisi": 90}
_KNN_METHODS = ("exact", "pynndescent")


def _import_scib_metrics():
    try:
        import scib_metrics
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'integration_metrics needs the scib-metrics package: pip install "jnmf[integration]" '
            f"(import failed: {err})") from err
    return scib_metrics


def _exact_neighbors(X: np.ndarray, n_neighbors: int, **_: Any):
    """Exact Euclidean kNN (self included) as a ``NeighborsResults``: scib-metrics' JAX search, which is exact
    on CPU and GPU (``lax.approx_min_k`` is approximate only on TPU)."""
    from scib_metrics.nearest_neighbors import jax_approx_min_k

    if n_neighbors > X.shape[0]:  # kbet_per_label catches ValueError from its search (score 0, as scib)
        raise ValueError(f"{n_neighbors} neighbours requested among {X.shape[0]} points")
    return jax_approx_min_k(np.ascontiguousarray(X, np.float32), n_neighbors=int(n_neighbors))


@contextlib.contextmanager
def _kbet_neighbor_search(knn: str):
    """``kbet_per_label`` finds neighbours on a diffusion map with ``scib_metrics.nearest_neighbors.pynndescent``
    (looked up at call time). For ``knn="exact"`` that search is the exact one too while the call runs."""
    if knn != "exact":
        yield
        return
    import scib_metrics.nearest_neighbors as nn_module

    saved = nn_module.pynndescent
    nn_module.pynndescent = _exact_neighbors
    try:
        yield
    finally:
        nn_module.pynndescent = saved


def _resolve_metrics(metrics: Any, have_labels: bool, have_pre: bool) -> tuple[str, ...]:
    known = BATCH_METRICS + BIO_METRICS + EXTRA_METRICS
    if isinstance(metrics, str) and metrics == "default":
        chosen = list(BATCH_METRICS)
        if have_labels:
            chosen += BIO_METRICS
        else:
            chosen.remove("graph_connectivity")  # connectivity of each label's subgraph: needs labels
        if not have_pre:
            chosen.remove("pcr_comparison")
        return tuple(chosen)
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        raise ValueError(f"metrics: expected 'default' or a sequence of names from {list(known)}, got {metrics!r}")
    chosen = []
    for name in metrics:
        if name not in known:
            raise ValueError(f"metrics: unknown metric {name!r}; expected names from {list(known)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"metrics: expected at least one of {list(known)}")
    needs_labels = [m for m in chosen if m in BIO_METRICS + ("graph_connectivity", "nmi_leiden", "ari_leiden")]
    if needs_labels and not have_labels:
        raise ValueError(f"metrics: {needs_labels} need labels (cell types); labels is None")
    if "pcr_comparison" in chosen and not have_pre:
        raise ValueError("metrics: 'pcr_comparison' needs x_pre, the unintegrated embedding; x_pre is None")
    return tuple(chosen)


def integration_metrics(
    x: Any,
    labels: Any = None,
    batch: Any = None,
    *,
    x_pre: Any = None,
    metrics: str | Sequence[str] = "default",
    knn: str = "exact",
    neighbors: Any = None,
    seed: int = 0,
) -> dict[str, float]:
    """scIB integration metrics of an embedding: batch removal, bio conservation, and their aggregate scores.

    Every metric is computed by the ``scib-metrics`` package (``pip install "jnmf[integration]"``) with the
    settings of its ``Benchmarker``: one Euclidean kNN graph with 90 neighbours, of which the first 15 are used
    for graph connectivity (and Leiden), 50 for kBET and all 90 for LISI; the embedding in float32. Each value
    is in [0, 1] with 1 = better (batches better mixed, cell types better kept) and is *raw*: not min-max scaled
    across methods. ``Benchmarker.get_results(min_max_scale=True)`` scales each metric over the compared
    methods; ``scale_integration_scores`` does that for a set of results from this function.

    Batch-removal metrics (``batch_score`` is their mean):

    * ``bras``: batch removal adapted silhouette (Rautenstrauch & Ohler 2025; ``scib_metrics.bras``): within each
      label, 1 - |silhouette of batch| with cosine distances and the mean distance to the other batches; 1 = the
      batches of a label overlap. Benchmarker's default since 0.5.10 (replacing ``silhouette_batch``).
    * ``ilisi``: integration LISI (Korsunsky et al. 2019; ``ilisi_knn``), the median over cells of the effective
      number of batches in a cell's neighbourhood (perplexity 30), scaled as (iLISI - 1) / (B - 1); 1 = every
      neighbourhood has all B batches in equal shares.
    * ``kbet``: kBET acceptance rate (Büttner et al. 2019; ``kbet_per_label``): a chi-square test of the batch
      composition of each cell's neighbourhood (on a diffusion map of the label's subgraph) against the global
      one, the fraction of cells not rejected at alpha = 0.05, averaged over labels; 1 = no neighbourhood deviates.
    * ``graph_connectivity`` (needs labels; ``graph_connectivity``): mean over labels of the fraction of the
      label's cells in the largest connected component of its 15-NN subgraph; 1 = each label one component.
    * ``pcr_comparison`` (needs ``x_pre``; ``pcr_comparison``): the relative drop in variance explained by the
      batch (principal component regression, batch one-hot) from ``x_pre`` to ``x``, clipped at 0; 1 = all batch
      variance removed, 0 = none (or more than before).

    Bio-conservation metrics (need ``labels``; ``bio_score`` is their mean):

    * ``isolated_labels`` (``isolated_labels``): rescaled silhouette of the labels found in the fewest batches;
      1 = those labels are compact and apart.
    * ``nmi_kmeans``, ``ari_kmeans`` (``nmi_ari_cluster_labels_kmeans``): NMI and ARI between k-means (JAX,
      k-means++, seed 0; k = number of labels) clusters and the labels; 1 = clusters are the labels.
    * ``silhouette_label`` (``silhouette_label``): (ASW + 1) / 2 of the labels, Euclidean; 1 = compact, separate.
    * ``clisi`` (``clisi_knn``): cell-type LISI scaled as (L - cLISI) / (L - 1); 1 = each neighbourhood holds one
      label.

    Not in the default set (ask for them in ``metrics``; they count in the scores only when asked for):
    ``silhouette_batch`` (scIB's original batch ASW, nearest-batch silhouette), ``nmi_leiden``/``ari_leiden``
    (NMI/ARI of Leiden clusters at the best of 10 resolutions; Benchmarker's option, off by default).

    Aggregation (``Benchmarker.get_results``): ``batch_score`` = mean of the batch metrics computed, ``bio_score``
    = mean of the bio metrics computed (NMI and ARI count as two), ``total`` = 0.4 batch + 0.6 bio (only when both
    are there). A metric that scib-metrics leaves undefined (NaN; e.g. kBET when every label lies in one batch) is
    reported as NaN and left out of the means.

    Without labels (``labels=None``; e.g. hawaiibirds, whose only grouping is the confound) only batch metrics
    are computed, with all cells as one label: ``kbet`` is then the global kBET acceptance rate and ``bras`` the
    global batch silhouette; graph connectivity is left out (it is a per-label measure).

    Parameters
    ----------
    x
        The integrated embedding: anything ``jnmf.assess`` accepts: an ``NMFModel`` (its ``(diag(d) h)'``), a
        factor-graph result (its ``embedding()``), or an (n, k) array of n cells.
    labels
        Length-n cell-type labels (strings, numbers or a categorical), or None for batch metrics only. Missing
        values are not allowed (scib-metrics has no notion of them).
    batch
        Length-n batch labels (the confound whose information should be gone), with at least 2 levels; required.
    x_pre
        The unintegrated embedding, (n, p) (Benchmarker uses a PCA of the unintegrated data), for
        ``pcr_comparison``; without it that metric is left out.
    metrics
        ``"default"`` (Benchmarker's default set, less what the inputs cannot support) or a sequence of names
        from ``BATCH_METRICS``, ``BIO_METRICS`` and ``EXTRA_METRICS``.
    knn
        Neighbour search: ``"exact"`` (default; scib-metrics' JAX brute-force search, exact on CPU and GPU, also
        for kBET's diffusion-map neighbours) or ``"pynndescent"`` (Benchmarker's approximate search,
        ``random_state=0``; its numba compilation takes about a minute per process). The two agree wherever
        pynndescent finds the true neighbours.
    neighbors
        A precomputed ``scib_metrics.nearest_neighbors.NeighborsResults`` of ``x`` (self included, >= 90
        neighbours or n - 1 when n <= 90), used instead of a search; kBET's diffusion-map search still follows
        ``knn``.
    seed
        Seed of the Leiden clustering (``nmi_leiden``/``ari_leiden``) only; scib-metrics' k-means uses its own
        fixed seed 0.

    Returns
    -------
    dict
        ``{metric: value}`` for each metric computed (floats, NaN where undefined), then ``batch_score``,
        ``bio_score`` (with labels) and ``total`` (with both), all floats in [0, 1], higher = better.

    Raises
    ------
    ImportError
        scib-metrics is not installed (the message names the extra: ``pip install "jnmf[integration]"``).
    ValueError
        A bad argument (named in the message): a non-finite or non-2-D ``x``; ``batch`` missing, of the wrong
        length, with missing values or a single level; ``labels`` of the wrong length, with missing values or a
        single level; ``x_pre`` with another number of cells or non-finite values; unknown ``metrics``/``knn``;
        ``neighbors`` of the wrong shape.
    """
    emb = _extract_embedding(x)
    n = emb.shape[0]
    if batch is None:
        raise ValueError("batch: required; the length-n batch labels whose information integration removes")
    bcodes, blevels = _as_factor(batch, n, "batch")
    if np.any(bcodes < 0):
        raise ValueError(f"batch: {int(np.sum(bcodes < 0))} missing values; expected a batch label for every cell")
    n_batches = int(np.unique(bcodes).size)
    if n_batches < 2:
        raise ValueError(f"batch: only one batch level is present ({blevels[int(bcodes[0])]!r}); batch-removal "
                         "metrics need at least 2 batches")
    have_labels = labels is not None
    if have_labels:
        lcodes, llevels = _as_factor(labels, n, "labels")
        if np.any(lcodes < 0):
            raise ValueError(f"labels: {int(np.sum(lcodes < 0))} missing values; scib metrics need a label for "
                             "every cell (drop those cells first)")
        if np.unique(lcodes).size < 2:
            raise ValueError("labels: only one label level is present; bio-conservation metrics need at least 2")
    else:
        lcodes = np.zeros(n, np.int64)
    pre = None
    if x_pre is not None:
        pre = _extract_embedding(x_pre)
        if pre.shape[0] != n:
            raise ValueError(f"x_pre: {pre.shape[0]} cells (rows), but x has {n}")
        pre = pre.astype(np.float32)
    if knn not in _KNN_METHODS:
        raise ValueError(f"knn: expected one of {list(_KNN_METHODS)}, got {knn!r}")
    chosen = _resolve_metrics(metrics, have_labels, pre is not None)

    sm = _import_scib_metrics()
    X = np.ascontiguousarray(emb, np.float32)
    needs_graph = any(m in chosen for m in ("ilisi", "clisi", "kbet", "graph_connectivity", "nmi_leiden",
                                            "ari_leiden"))
    k_max = min(NEIGHBORS["lisi"], n - 1)
    nn = None
    if needs_graph:
        if neighbors is not None:
            if not hasattr(neighbors, "subset_neighbors") or neighbors.indices.shape[0] != n:
                raise ValueError(f"neighbors: expected a NeighborsResults with {n} rows (one per cell)")
            if neighbors.indices.shape[1] < k_max:
                raise ValueError(f"neighbors: {neighbors.indices.shape[1]} neighbours per cell, need >= {k_max}")
            nn = neighbors.subset_neighbors(k_max)
        elif knn == "exact":
            nn = _exact_neighbors(X, k_max)
        else:
            nn = sm.nearest_neighbors.pynndescent(X, n_neighbors=k_max, random_state=0, n_jobs=1)

    def sub(key):
        return nn.subset_neighbors(min(NEIGHBORS[key], k_max))

    out: dict[str, float] = {}
    leiden = None
    for name in chosen:
        if name == "bras":
            value = sm.bras(X, lcodes, bcodes)
        elif name == "silhouette_batch":
            value = sm.silhouette_batch(X, lcodes, bcodes)
        elif name == "ilisi":
            value = sm.ilisi_knn(nn, bcodes)
        elif name == "kbet":
            with _kbet_neighbor_search(knn):
                value = sm.kbet_per_label(sub("kbet"), bcodes, lcodes)
        elif name == "graph_connectivity":
            value = sm.graph_connectivity(sub("graph_connectivity"), lcodes)
        elif name == "pcr_comparison":
            value = sm.pcr_comparison(pre, X, bcodes, categorical=True)
        elif name == "isolated_labels":
            value = sm.isolated_labels(X, lcodes, bcodes)
        elif name in ("nmi_kmeans", "ari_kmeans"):
            if "nmi_kmeans" not in out and "ari_kmeans" not in out:
                km = sm.nmi_ari_cluster_labels_kmeans(X, lcodes)
            value = km[name.split("_")[0]]
        elif name in ("nmi_leiden", "ari_leiden"):
            if leiden is None:
                leiden = sm.nmi_ari_cluster_labels_leiden(sub("leiden"), lcodes, optimize_resolution=True,
                                                          seed=seed)
            value = leiden[name.split("_")[0]]
        elif name == "silhouette_label":
            value = sm.silhouette_label(X, lcodes)
        elif name == "clisi":
            value = sm.clisi_knn(nn, lcodes)
        else:  # pragma: no cover - _resolve_metrics admits only the names above
            raise AssertionError(name)
        out[name] = float(value)
    return aggregate_scores(out)


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def aggregate_scores(values: Mapping[str, float]) -> dict[str, float]:
    """Metric values plus ``batch_score`` (mean of the batch metrics present), ``bio_score`` (mean of the bio
    metrics present) and ``total`` = 0.4 batch + 0.6 bio (when both are present), as ``Benchmarker.get_results``;
    NaN values are left out of the means. Existing score keys in ``values`` are recomputed."""
    scores = ("batch_score", "bio_score", "total")
    out = {k: float(v) for k, v in values.items() if k not in scores}
    batch_names = BATCH_METRICS + ("silhouette_batch",)
    bio_names = BIO_METRICS + ("nmi_leiden", "ari_leiden")
    batch_vals = [v for k, v in out.items() if k in batch_names]
    bio_vals = [v for k, v in out.items() if k in bio_names]
    if batch_vals:
        out["batch_score"] = _nanmean(batch_vals)
    if bio_vals:
        out["bio_score"] = _nanmean(bio_vals)
    if batch_vals and bio_vals:
        out["total"] = 0.4 * out["batch_score"] + 0.6 * out["bio_score"]
    return out


def scale_integration_scores(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Min-max scale each metric across methods, then re-aggregate: ``Benchmarker.get_results(min_max_scale=True)``.

    ``results`` maps a method name to the dict ``integration_metrics`` returned for it (all on the same data). Each
    metric is scaled to [0, 1] over the methods (best = 1, worst = 0; a metric equal for every method becomes 0,
    as scikit-learn's ``MinMaxScaler`` does), NaN left as NaN; then the scores are recomputed from the scaled
    values. Scaled scores rank methods within one comparison only; they change when a method is added.
    """
    names = list(dict.fromkeys(k for r in results.values() for k in r
                               if k not in ("batch_score", "bio_score", "total")))
    scaled: dict[str, dict[str, float]] = {m: {} for m in results}
    for name in names:
        col = np.array([results[m].get(name, np.nan) for m in results], np.float64)
        lo, hi = np.nanmin(col), np.nanmax(col)
        span = hi - lo
        for m, v in zip(results, col, strict=True):
            if name in results[m]:
                scaled[m][name] = float(np.nan if np.isnan(v) else ((v - lo) / span if span > 0 else 0.0))
    return {m: aggregate_scores(v) for m, v in scaled.items()}
