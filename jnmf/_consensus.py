"""Consensus NMF: many replicates of one compiled fit, cNMF's consensus spectra and RcppML's cophenetic coefficient.

``consensus(A, k, reps=50)`` fits ``reps`` replicates (seeds ``seed + 1 .. seed + reps``: one ``jnmf.sweep``
program, or on a CPU one compiled fit called per replicate, ``_replicates``) and combines them as cNMF (Kotliar
et al. 2019, the ``cnmf`` package's ``consensus()``) does, in jnmf's orientation (A is features x samples, so a
*spectrum* is a column of w, a *usage* a row of h):

1. every replicate's k spectra are scaled to unit L2 norm and pooled (reps k spectra of length m);
2. local density: the mean euclidean distance of a spectrum to its ``n_neighbors = int(0.3 reps)`` nearest
   other spectra; spectra with density above ``density_threshold`` are outliers and dropped (>= 2 keeps all:
   unit non-negative vectors are at most sqrt(2) apart);
3. k-means (scikit-learn, ``n_clusters=k, n_init=10, random_state=1``) of the kept spectra; silhouette score
   (euclidean) of that clustering = the stability;
4. the consensus spectrum of a cluster is the element-wise median of its members, scaled to unit L1 norm;
5. usages are refit with the consensus w fixed (``jnmf.project``, the H half of an ALS iteration); the
   prediction error is ``|A - w diag(d) h|_F^2`` of that refit (cNMF's ``prediction_error``). Optionally the
   spectra are then refit with those usages fixed (``refit_spectra=True``; cNMF refits them on TPM data).

RcppML's ``consensus_nmf`` (reference ``rcppml-cv-consensus-losses.md`` §2) is computed from the same replicates:
each row of A (``cluster="rows"``, RcppML's choice: the features) is labelled by the first maximal entry of its
row of the replicate's sorted w (``cluster="columns"``: samples by h); the consensus matrix is the fraction of
replicates in which two rows share a label; ``hclust(as.dist(1 - C), "average")`` (R's algorithm with its tie
order, ``r_hclust_average``), ``cutree`` at k, and the cophenetic coefficient = Pearson correlation of
``1 - C`` with the cophenetic distances over all pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ._model import NMFModel
from ._options import initial_w
from ._project import project
from ._solve import prepare, solve
from ._sweep import sweep

__all__ = ["ConsensusResult", "consensus", "r_hclust_average", "cophenetic_coefficient", "k_selection_table"]

_FORBIDDEN = {"seeds": "use seed= and reps=", "w_init": "replicates draw their own initial W",
              "seed_offset": None, "loop": "consensus runs the forward driver"}


@dataclasses.dataclass(frozen=True)
class ConsensusResult:
    """A consensus factorization and its stability diagnostics.

    Attributes
    ----------
    model : NMFModel
        Consensus model: ``w`` (m, k) the L1-normalised median spectra (refit on A if ``refit_spectra``), ``h``
        (k, n) and ``d`` (k,) from the usage refit, sorted by d descending; ``loss`` its squared error.
    k, reps : int
    silhouette : float
        Silhouette score (euclidean) of the k-means clustering of the kept L2-normalised spectra (cNMF's
        stability; 1 = every replicate finds the same spectra).
    prediction_error : float
        ``|A - w diag(d) h|_F^2`` of the median spectra with refit usages (cNMF's ``prediction_error``).
    cophenetic : float
        RcppML's cophenetic coefficient of the consensus matrix of the ``cluster`` labels.
    consensus_matrix : (p, p) float64
        Co-assignment fraction over replicates (p = m rows or n columns, per ``cluster``).
    clusters : (p,) int
        ``cutree(hclust(1 - C, "average"), k)``, labels 1..k by first appearance (R's numbering).
    hclust_height : (p - 1,) float64
        Merge heights in merge order.
    spectra : (reps, m, k) float64
        Every replicate's unit-L1 w (sorted by d).
    kept : (reps * k,) bool
        Spectra kept by the density filter (replicate-major order); ``spectra_labels`` (reps * k,) their k-means
        cluster (-1 = dropped), ``local_density`` (reps * k,).
    replicate_loss : (reps,) float64
        Each replicate's final squared error; ``replicate_iter`` (reps,) its iterations.
    """

    model: NMFModel
    k: int
    reps: int
    silhouette: float
    prediction_error: float
    cophenetic: float
    consensus_matrix: np.ndarray
    clusters: np.ndarray
    hclust_height: np.ndarray
    spectra: np.ndarray
    kept: np.ndarray
    spectra_labels: np.ndarray
    local_density: np.ndarray
    replicate_loss: np.ndarray
    replicate_iter: np.ndarray

    @property
    def error_spread(self) -> dict[str, float]:
        """Replicate error spread: min, median, max loss and (max - min) / min."""
        loss = self.replicate_loss
        return {"min": float(loss.min()), "median": float(np.median(loss)), "max": float(loss.max()),
                "relative_range": float((loss.max() - loss.min()) / loss.min())}

    def __repr__(self) -> str:
        return (f"ConsensusResult(k={self.k}, reps={self.reps}, silhouette={self.silhouette:.4f}, "
                f"cophenetic={self.cophenetic:.4f}, prediction_error={self.prediction_error:.6g}, "
                f"kept={int(self.kept.sum())}/{self.kept.size})")


# -----------------------------------------------------------------------------------------------------------------
# R's hclust(method = "average") and the cophenetic coefficient
# -----------------------------------------------------------------------------------------------------------------

def r_hclust_average(D: Any) -> tuple[np.ndarray, np.ndarray]:
    """R's ``hclust(as.dist(D), method = "average")`` with R's tie order (reference §2.3).

    Murtagh's nearest-neighbour-list scheme: each index i keeps its nearest neighbour among higher indices (the
    first strict minimum); each step merges the first index with the smallest such distance into the lower of
    the pair, updates the average-linkage distances and the neighbour lists. scipy's ``linkage`` breaks the many
    ties of a consensus matrix differently. Returns ``(pairs, height)``: (p - 1, 2) 0-based (lower, upper)
    representative indices merged at each step and (p - 1,) heights, in merge order.
    """
    D = np.array(D, np.float64)
    p = D.shape[0]
    if D.shape != (p, p):
        raise ValueError(f"D must be a square matrix, got shape {D.shape}")
    np.fill_diagonal(D, np.inf)
    active = np.ones(p, bool)
    size = np.ones(p)
    nn = np.zeros(p, np.int64)
    disnn = np.full(p, np.inf)

    def nearest(i: int) -> None:
        cand = np.where(active[i + 1:], D[i, i + 1:], np.inf)
        if cand.size:
            j = int(np.argmin(cand))  # first strict minimum
            nn[i], disnn[i] = i + 1 + j, cand[j]
        else:
            disnn[i] = np.inf

    for i in range(p - 1):
        nearest(i)
    pairs = np.zeros((p - 1, 2), np.int64)
    height = np.zeros(p - 1)
    for step in range(p - 1):
        masked = np.where(active[:p - 1], disnn[:p - 1], np.inf)
        im = int(np.argmin(masked))
        jm = int(nn[im])
        i2, j2 = min(im, jm), max(im, jm)
        pairs[step], height[step] = (i2, j2), masked[im]
        active[j2] = False
        others = active.copy()
        others[i2] = False
        new = (size[i2] * D[i2] + size[j2] * D[j2]) / (size[i2] + size[j2])
        D[i2, others] = new[others]
        D[others, i2] = new[others]
        D[j2, :] = np.inf
        D[:, j2] = np.inf
        size[i2] += size[j2]
        nearest(i2)
        stale = np.flatnonzero(active[:p - 1] & ((nn[:p - 1] == i2) | (nn[:p - 1] == j2)))
        for i in stale:
            if i != i2:
                nearest(int(i))
    return pairs, height


def _cutree_and_cophenetic(pairs: np.ndarray, height: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``cutree(hc, k)`` (labels 1.. by first appearance) and the (p, p) cophenetic distance matrix."""
    p = pairs.shape[0] + 1
    members = {i: [i] for i in range(p)}
    coph = np.zeros((p, p))
    labels = np.arange(p)
    for step, (a, b) in enumerate(pairs):
        ma, mb = members[a], members.pop(b)
        coph[np.ix_(ma, mb)] = height[step]
        coph[np.ix_(mb, ma)] = height[step]
        ma.extend(mb)
        if step == p - k - 1:
            for rep, mem in members.items():
                labels[mem] = rep
    if k >= p:
        labels = np.arange(p)
    elif p - k - 1 < 0:
        labels = np.zeros(p, np.int64)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)  # representative clusters in order of first appearance
    rank = {int(labels[first[o]]): i + 1 for i, o in enumerate(order)}
    return np.asarray([rank[int(x)] for x in labels], np.int64), coph


def cophenetic_coefficient(labels: Any, k: int) -> dict[str, Any]:
    """RcppML's consensus statistics from (reps, p) hard labels (one label per row and replicate).

    Returns ``consensus`` (p, p) co-assignment fraction, ``clusters`` (cutree at k), ``height`` (merge order),
    ``pairs`` and ``cophenetic`` = Pearson correlation of ``1 - consensus`` with the cophenetic distance over
    the p (p - 1) / 2 pairs.
    """
    L = np.asarray(labels)
    if L.ndim != 2:
        raise ValueError(f"labels must be (reps, p), got shape {L.shape}")
    p = L.shape[1]
    C = np.zeros((p, p))
    for row in L:
        C += row[:, None] == row[None, :]
    C /= L.shape[0]
    pairs, height = r_hclust_average(1.0 - C)
    clusters, coph = _cutree_and_cophenetic(pairs, height, k)
    iu = np.triu_indices(p, 1)
    x, y = 1.0 - C[iu], coph[iu]
    coef = float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else float("nan")
    return {"consensus": C, "clusters": clusters, "height": height, "pairs": pairs, "cophenetic": coef}


# -----------------------------------------------------------------------------------------------------------------
# cNMF's consensus
# -----------------------------------------------------------------------------------------------------------------

def _local_density(S: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Mean euclidean distance of each row of S to its n_neighbors nearest other rows."""
    sq = np.sum(S * S, axis=1)
    D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * S @ S.T, 0.0))
    np.fill_diagonal(D, np.inf)
    nearest = np.partition(D, n_neighbors - 1, axis=1)[:, :n_neighbors]
    return nearest.mean(axis=1)


def _unit_model(w: np.ndarray, h_raw: np.ndarray, A: Any, dtype: Any) -> NMFModel:
    """A sorted, unit-scaled model ``w diag(d) h`` from unit-L1 w and raw h; loss = its squared error."""
    d = h_raw.sum(axis=1) + 1e-15
    h = h_raw / d[:, None]
    order = np.argsort(-d, kind="stable")
    w, d, h = w[:, order], d[order], h[order]
    pred = (w * d) @ h
    dense = A.toarray() if sp.issparse(A) else np.asarray(A, np.float64)
    loss = float(np.sum((dense - pred) ** 2))
    cast = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return NMFModel(w=cast(w), d=cast(d), h=cast(h), iter=jnp.asarray(0, jnp.int32), loss=cast(loss),
                    loss_history=cast([loss]), converged=jnp.asarray(True), tol=cast(0.0), w_init=cast(w))


def _replicates(A, k: int, seeds: list[int], options) -> NMFModel:
    """The replicate fits, models stacked on a leading (reps,) axis, each equal to ``nmf(A, k, seed=s, **options)``.

    On a CPU (no ``lanes`` or ``devices`` asked for) one compiled fit is called per seed: the sweep's program
    compiled twice as long there and ran no faster (hawaiibirds, 20 seeds, k = 6 / 10: 2.3 / 2.8 s cold and
    0.19 / 0.34 s warm, against 1.1 s cold and 0.30 / 0.34 s warm for separate fits). Elsewhere one ``jnmf.sweep``."""
    if jax.default_backend() != "cpu" or "lanes" in options or "devices" in options:
        return sweep(A, k, seeds=seeds, **options).model
    problem = prepare(A, k, seed=seeds[0], **options)
    m, dtype = problem.w_init.shape[0], problem.w_init.dtype
    models = [solve(problem, w_init=initial_w("int", s, m, k, dtype)) for s in seeds]
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *models)


def _consensus_one(A, k, reps, seed, density_threshold, local_neighborhood_size, n_init, kmeans_seed,
                   refit_spectra, cluster, sweep_options) -> ConsensusResult:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    fits = _replicates(A, k, [seed + i for i in range(1, reps + 1)], sweep_options)
    W = np.asarray(fits.w, np.float64)  # (reps, m, k), unit-L1 columns, sorted by d
    Hs = np.asarray(fits.h, np.float64)
    dtype = fits.w.dtype
    m = W.shape[1]
    spectra = np.transpose(W, (0, 2, 1)).reshape(reps * k, m)  # replicate-major
    norms = np.linalg.norm(spectra, axis=1, keepdims=True)
    S = spectra / np.where(norms > 0, norms, 1.0)
    n_neighbors = max(1, int(local_neighborhood_size * reps))
    density = _local_density(S, min(n_neighbors, S.shape[0] - 1)) if S.shape[0] > 1 else np.zeros(1)
    kept = density < density_threshold
    if kept.sum() < k:
        raise ValueError(f"density_threshold={density_threshold} keeps {int(kept.sum())} spectra, fewer than k={k}; "
                         "raise density_threshold")
    km = KMeans(n_clusters=k, n_init=n_init, random_state=kmeans_seed).fit(S[kept])
    labels = np.full(S.shape[0], -1)
    labels[kept] = km.labels_
    sil = float(silhouette_score(S[kept], km.labels_, metric="euclidean")) if k > 1 else float("nan")
    med = np.stack([np.median(S[labels == c], axis=0) for c in range(k)], axis=1)  # (m, k)
    w = med / (med.sum(axis=0, keepdims=True) + 1e-15)

    dense = A.toarray() if sp.issparse(A) else np.asarray(A, np.float64)
    fixed = NMFModel(w=jnp.asarray(w, dtype), d=jnp.ones(k, dtype), h=jnp.zeros((k, 1), dtype),
                     iter=jnp.asarray(0), loss=jnp.asarray(0.0, dtype), loss_history=jnp.zeros(1, dtype),
                     converged=jnp.asarray(True), tol=jnp.asarray(0.0, dtype), w_init=jnp.asarray(w, dtype))
    h_raw = np.asarray(project(fixed, A, solver="cd"), np.float64)  # exact NNLS, as cNMF's refit
    model = _unit_model(w, h_raw, dense, dtype)
    prediction_error = float(model.loss)
    if refit_spectra:  # W' with the usages fixed: the same NNLS on A' with h' as the fixed factor
        hu = np.asarray(model.h, np.float64) * np.asarray(model.d, np.float64)[:, None]
        sc = hu.sum(axis=1, keepdims=True) + 1e-15
        fixed_h = fixed.replace(w=jnp.asarray((hu / sc).T, dtype), w_init=jnp.asarray((hu / sc).T, dtype))
        w_raw = np.asarray(project(fixed_h, dense.T, solver="cd"), np.float64).T  # (m, k), A ≈ w_raw (hu / sc)
        ws = w_raw.sum(axis=0) + 1e-15
        model = _unit_model(w_raw / ws, (hu / sc) * ws[:, None], dense, dtype)

    if cluster == "rows":
        hard = np.argmax(W, axis=2)  # (reps, m): first maximum over the sorted components
    else:
        hard = np.argmax(Hs * np.asarray(fits.d, np.float64)[:, :, None], axis=1)  # (reps, n)
    stats = cophenetic_coefficient(hard, k)
    loss = np.asarray(fits.loss, np.float64).reshape(reps)
    return ConsensusResult(model=model, k=k, reps=reps, silhouette=sil, prediction_error=prediction_error,
                           cophenetic=stats["cophenetic"], consensus_matrix=stats["consensus"],
                           clusters=stats["clusters"], hclust_height=stats["height"], spectra=W, kept=kept,
                           spectra_labels=labels, local_density=density, replicate_loss=loss,
                           replicate_iter=np.asarray(fits.iter).reshape(reps))


def consensus(
    A: Any,
    k: Any,
    *,
    reps: int = 50,
    seed: int = 0,
    density_threshold: float = 0.5,
    local_neighborhood_size: float = 0.30,
    n_init: int = 10,
    kmeans_seed: int = 1,
    refit_spectra: bool = False,
    cluster: str = "rows",
    **options: Any,
) -> ConsensusResult | dict[int, ConsensusResult]:
    """Consensus NMF of A (m, n) at rank k (or each rank of a sequence): cNMF's spectra, RcppML's cophenetic.

    Objective of each replicate: ``min |A - w diag(d) h|_F^2`` (``nmf``'s, from seed ``seed + i``, i = 1..reps);
    the consensus is the median of k-means clusters of the replicates' L2-normalised spectra (module docstring).

    Parameters
    ----------
    A : (m, n) array or scipy.sparse
        Non-negative data, features x samples.
    k : int or sequence of int
        Rank(s); a sequence returns ``{k: ConsensusResult}`` (the data of a ``k_selection_plot``).
    reps : int >= 2
        Replicates: one ``jnmf.sweep``, or on a CPU (without ``lanes``/``devices``) one compiled fit per replicate.
    seed : int
        Replicate i uses ``seed + i`` (RcppML's ``consensus_nmf(seed=...)`` convention: seed 42 -> 43..62).
    density_threshold, local_neighborhood_size : float
        cNMF's outlier filter (defaults 0.5 and 0.30); ``density_threshold >= 2`` keeps every spectrum.
    n_init, kmeans_seed : int
        scikit-learn KMeans settings (cNMF: 10 and 1).
    refit_spectra : bool
        Also refit w with the consensus usages fixed (one NNLS on A').
    cluster : ``"rows"`` or ``"columns"``
        What the cophenetic coefficient clusters: rows by argmax of w (RcppML) or columns by argmax of h.
    **options
        Passed to ``jnmf.sweep`` / ``nmf`` for every replicate (``tol``, ``maxit``, ``L1``, ``L2``, ``solver``,
        ``target_H`` with ``target_lambda``, ``remove``, ``dtype``, ``lanes``, ...).

    Returns
    -------
    ConsensusResult or dict[int, ConsensusResult]
    """
    for bad, hint in _FORBIDDEN.items():
        if bad in options:
            raise TypeError(f"consensus() got an unexpected keyword argument {bad!r}" + (f" ({hint})" if hint else ""))
    if not (sp.issparse(A) or hasattr(A, "shape")):
        A = np.asarray(A)
    if len(getattr(A, "shape", ())) != 2:
        raise ValueError(f"A must be a 2-D matrix (features x samples), got shape {getattr(A, 'shape', None)}")
    m, n = (int(s) for s in A.shape)
    single = isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))
    ks = [k] if single else list(k) if isinstance(k, Sequence) or isinstance(k, (range, np.ndarray)) else None
    if not ks or any(not isinstance(x, (int, np.integer)) or isinstance(x, (bool, np.bool_)) for x in ks):
        raise TypeError(f"k must be an integer rank or a sequence of them, got {k!r}")
    for x in ks:
        if not 1 <= int(x) <= min(m, n):
            raise ValueError(f"k must lie in 1..min(m, n) = 1..{min(m, n)}, got {int(x)}")
    for name, value in (("reps", reps), ("seed", seed), ("n_init", n_init), ("kmeans_seed", kmeans_seed)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if reps < 2:
        raise ValueError(f"reps must be >= 2, got {reps}")
    if seed < 0 or seed + reps >= 2**31 - 1:
        raise ValueError(f"seed must be >= 0 with seed + reps < 2^31 - 1, got seed={seed}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    for name, value in (("density_threshold", density_threshold),
                        ("local_neighborhood_size", local_neighborhood_size)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating)) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if local_neighborhood_size > 1:
        raise ValueError(f"local_neighborhood_size must be in (0, 1], got {local_neighborhood_size}")
    if cluster not in ("rows", "columns"):
        raise ValueError(f"cluster must be 'rows' or 'columns', got {cluster!r}")
    if not isinstance(refit_spectra, (bool, np.bool_)):
        raise TypeError(f"refit_spectra must be a bool, got {refit_spectra!r}")
    out = {int(x): _consensus_one(A, int(x), int(reps), int(seed), float(density_threshold),
                                  float(local_neighborhood_size), int(n_init), int(kmeans_seed), bool(refit_spectra),
                                  cluster, options) for x in ks}
    return out[int(ks[0])] if single else out


def k_selection_table(results: dict[int, ConsensusResult]) -> dict[str, np.ndarray]:
    """The data of cNMF's ``k_selection_plot``: ks, silhouette (stability), prediction error, cophenetic."""
    ks = np.asarray(sorted(results))
    return {"k": ks, "silhouette": np.asarray([results[k].silhouette for k in ks]),
            "prediction_error": np.asarray([results[k].prediction_error for k in ks]),
            "cophenetic": np.asarray([results[k].cophenetic for k in ks])}

