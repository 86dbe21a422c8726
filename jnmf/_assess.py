"""``assess()``: embedding-quality metrics that reproduce RcppML 1.0.0's CPU ``assess()``.

The protocol (class filter, R-RNG k-means starts, sampled silhouette, stratified folds, kNN / glm / random forest,
RcppML's AUROC tie rule, batch mixing) is RcppML's, step for step, so that numbers computed here can be compared with
the ones in RcppML's vignettes. Pieces that no library provides exactly are written by hand and say why:

* R's RNG draws (``RRandom``), Hartigan-Wong k-means (``_kmeans``);
* R's ``glm`` IRLS with LINPACK's ``dqrdc2`` rank detection: under (quasi-)separation the fitted probabilities, and so
  the predictions, depend on glm's stopping rule, on its clamped logit link and on which columns ``dqrdc2`` pivots out;
  scikit-learn / statsmodels stop elsewhere;
* RcppML's AUROC, which breaks score ties by sample order instead of averaging them;
* R's ``sum``/``mean``/``rowSums``/``sd`` accumulate in long double; they are mimicked (``np.longdouble``) so that
  sums round as in R. On platforms whose long double is a plain double this degrades to ordinary double sums.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ._kmeans import r_kmeans, r_unique_rows
from ._rrng import RRandom
from ._targets import label_codes

__all__ = ["AssessResult", "assess"]

METRICS = ("ari", "nmi", "silhouette", "classification", "batch_mixing", "scib")
CLASSIFIERS = ("knn", "lr", "rf")
_CLF_FIELDS = ("accuracy", "f1", "precision", "recall", "auroc")
_LD = np.longdouble
_DBL_EPS = float(np.finfo(np.float64).eps)
_COMPILED: dict[str, Any] = {}  # numba kernels, compiled (or loaded from the disk cache) on first use


# ----------------------------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssessResult:
    """Result of :func:`assess` (immutable).

    ``metrics``: read-only mapping with RcppML's keys and order (``ari``, ``nmi``, ``silhouette``,
    ``<field>_<clf>`` for field in accuracy/f1/precision/recall/auroc, the pooled ``<field>_mean``, then
    ``batch_silhouette`` and ``batch_knn_entropy``). ``classification``: one read-only row per (fold, classifier),
    fold-major like RcppML's data.frame (keys classifier, fold, accuracy, f1, precision, recall, auroc), or None.
    ``params``: the settings used, RcppML's ``$params`` plus ``classes`` (kept levels) and ``dropped``.
    """

    metrics: Mapping[str, float]
    classification: tuple[Mapping[str, Any], ...] | None
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain (mutable, JSON-friendly) copy: ``{"metrics": {...}, "classification": [...], "params": {...}}``."""
        rows = None if self.classification is None else [dict(r) for r in self.classification]
        params = {
            k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
            for k, v in self.params.items()
        }
        return {"metrics": dict(self.metrics), "classification": rows, "params": params}

    def summary(self) -> str:
        """Text in the layout of RcppML's ``print.nmf_assessment``."""
        m, p = self.metrics, self.params
        out = [
            "Embedding Assessment",
            f"  {p['n_samples']} samples, {p['n_features']} features, {p['n_classes']} classes",
        ]
        if "nmi" in m or "ari" in m:
            out += ["", "Clustering:"]
            if "nmi" in m:
                out.append(f"  NMI:         {m['nmi']:.4f}")
            if "ari" in m:
                out.append(f"  ARI:         {m['ari']:.4f}")
        if "silhouette" in m:
            out.append(f"  Silhouette:  {m['silhouette']:.4f}")
        if "accuracy_mean" in m:
            out += [
                "",
                f"Classification (stratified {p['n_folds']}-fold CV):",
                f"  Mean Accuracy: {m['accuracy_mean']:.4f}",
                f"  Mean F1:       {m['f1_mean']:.4f}",
                f"  Mean AUROC:    {m['auroc_mean']:.4f}",
            ]
            for clf in p["classifiers"]:
                if f"accuracy_{clf}" in m:
                    out.append(f"    {clf:<4s}  Acc={m[f'accuracy_{clf}']:.4f}  F1={m[f'f1_{clf}']:.4f}")
        if "batch_silhouette" in m:
            out += [
                "",
                "Batch Mixing:",
                f"  Batch Silhouette: {m['batch_silhouette']:+.4f}  (lower = better mixing)",
                f"  Batch kNN Entropy: {m['batch_knn_entropy']:.4f}  (higher = better mixing)",
            ]
        return "\n".join(out)

    def __repr__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------------------------------------------
# R arithmetic helpers
# ----------------------------------------------------------------------------------------------------------------


def _ld_cumsum_last(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sequential long-double sum along ``axis`` (R's LDOUBLE accumulators add left to right)."""
    return np.cumsum(np.asarray(a, dtype=_LD), axis=axis).take(-1, axis=axis)


def _r_mean(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """R's ``mean()`` of doubles: long-double sum / n, then one refinement pass sum(x - mean) / n."""
    xa = np.asarray(x, dtype=np.float64)
    if axis is None:
        xa = xa.ravel()
        axis = 0
    n = xa.shape[axis]
    s = _ld_cumsum_last(xa, axis) / n
    if np.all(np.isfinite(s)):
        s = s + _ld_cumsum_last(xa.astype(_LD) - np.expand_dims(s, axis), axis) / n
    out = s.astype(np.float64)
    return float(out) if out.ndim == 0 else out


def _r_rowsums(a: np.ndarray) -> np.ndarray:
    """R's ``rowSums`` (last axis): long-double accumulation column by column."""
    acc = np.zeros(a.shape[:-1], dtype=_LD)
    for j in range(a.shape[-1]):
        acc += a[..., j]
    return acc.astype(np.float64)


def _seq_matvec(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``x %*% v`` (x (n, p), v (p,)) summed column by column, as the reference BLAS ``dgemv`` that R calls."""
    acc = np.zeros(x.shape[0])
    for j in range(x.shape[1]):
        acc += v[j] * x[:, j]
    return acc


def _r_scale_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``colMeans(x)`` and ``apply(x, 2, sd)`` (n - 1 denominator) with R's long-double accumulations."""
    n = x.shape[0]
    xl = x.astype(_LD)
    total = np.cumsum(xl, axis=0)[-1]
    means = (total / n).astype(np.float64)
    if n < 2:
        return means, np.full(x.shape[1], np.nan)
    # stats::var (cov.c): refined two-pass mean stored as double, then long-double deviations and products.
    m1 = total / n
    m1 = (m1 + np.cumsum(xl - m1, axis=0)[-1] / n).astype(np.float64)
    dev = xl - m1.astype(_LD)
    var = (np.cumsum(dev * dev, axis=0)[-1] / (n - 1)).astype(np.float64)
    return means, np.sqrt(var)


# ----------------------------------------------------------------------------------------------------------------
# clustering metrics
# ----------------------------------------------------------------------------------------------------------------


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """R's ``table(a, b)``: observed values only, sorted."""
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    ct = np.zeros((ua.size, ub.size), dtype=np.int64)
    np.add.at(ct, (ia, ib), 1)
    return ct


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Hubert-Arabie ARI = (a - E) / (0.5 (b + c) - E), E = b c / C(n, 2); 0 when the denominator is 0.

    Hand-written (not sklearn) for RcppML's degenerate-case rule: sklearn returns 1.0 where RcppML returns 0
    (e.g. both partitions all singletons); elsewhere they agree.
    """
    ct = _contingency(np.asarray(labels_true), np.asarray(labels_pred)).astype(np.float64)
    n = float(ct.sum())

    def c2(v):
        return v * (v - 1.0) / 2.0

    s_i = float(np.sum(c2(ct.sum(1))))
    s_j = float(np.sum(c2(ct.sum(0))))
    s_ij = float(np.sum(c2(ct)))
    expected = s_i * s_j / c2(n)
    denom = 0.5 * (s_i + s_j) - expected
    return 0.0 if denom == 0 else (s_ij - expected) / denom


def normalized_mutual_info(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """NMI = MI / sqrt(H_true H_pred) (natural log, geometric normalisation); 0 when the denominator is 0.

    Hand-written for RcppML's zero-denominator rule (sklearn returns 1.0 for two single-cluster partitions) and to
    sum in R's order.
    """
    ct = _contingency(np.asarray(labels_true), np.asarray(labels_pred))
    n = float(ct.sum())
    p_i = ct.sum(1) / n
    p_j = ct.sum(0) / n
    p_ij = ct / n
    h_true = -float(_ld_cumsum_last(p_i * np.log(p_i)))
    h_pred = -float(_ld_cumsum_last(p_j * np.log(p_j)))
    mi = 0.0
    for i in range(ct.shape[0]):
        for j in range(ct.shape[1]):
            if p_ij[i, j] > 0:
                mi += p_ij[i, j] * math.log(p_ij[i, j] / (p_i[i] * p_j[j]))
    denom = math.sqrt(h_true * h_pred)
    return 0.0 if denom == 0 else mi / denom


# R's rowSums/mean accumulate in long double, which numba cannot do; NumPy's long double is slow (casts dominate).
# The compiled path computes each sum in double-double (Sum2: exact to ~n^2 2^-106), and keeps the double rounding
# of it only where that is provably the rounding of R's long-double result: when the double-double value lies
# farther from every rounding midpoint between doubles than the long-double algorithm's own error bound. The few
# other entries (~1-5%) are recomputed by the NumPy long-double code, so the numbers are those of that code.
_LD_U = float(np.finfo(np.longdouble).eps) / 2.0  # unit roundoff of the long-double accumulator (2^-64 on x86)


def _ld_kernels_py():  # pragma: no cover - compiled by numba
    import numba

    @numba.njit(inline="always")
    def two_sum(a, b):
        s = a + b
        bb = s - a
        return s, (a - (s - bb)) + (b - bb)

    @numba.njit(inline="always")
    def certified(hi, rem, bound):
        # RN(value) == hi for every value within bound of hi + rem iff no midpoint between doubles lies in range
        if hi == 0.0:
            return rem == 0.0 and bound == 0.0
        up = (np.nextafter(hi, np.inf) - hi) * 0.5
        down = (hi - np.nextafter(hi, -np.inf)) * 0.5
        return rem + bound < up and rem - bound > -down

    @numba.njit(cache=True, nogil=True)
    def sqdist(x, rt, u, out, flag):
        # out[i, b] = RN(sum_j (rt[j, b] - x[i, j])^2) as long-double rowSums would round it, or flag[i, b].
        # The references b are the innermost loop (independent accumulators, so it vectorises without any
        # reassociation); each sum still runs over j in order.
        m, k = x.shape
        nr = rt.shape[1]
        s = np.empty(nr)
        c = np.empty(nr)
        for i in range(m):
            s[:] = 0.0
            c[:] = 0.0
            for j in range(k):
                xij = x[i, j]
                for b in range(nr):
                    d = rt[j, b] - xij
                    t = d * d
                    sb = s[b] + t
                    bb = sb - s[b]
                    c[b] += (s[b] - (sb - bb)) + (t - bb)
                    s[b] = sb
            for b in range(nr):
                hi = s[b] + c[b]
                rem = (s[b] - hi) + c[b]
                # sequential sum of k non-negative terms: |error| <= (k - 1) u S; margins for the dd error
                bound = (k + 1) * u * hi + hi * 2.0**-90
                out[i, b] = hi
                flag[i, b] = not certified(hi, rem, bound)

    @numba.njit(cache=True, nogil=True)
    def rowmean(x, u, out, flag):
        # out[i] = R's two-pass long-double mean of the non-negative row x[i], or flag[i]
        m, n = x.shape
        split = 134217729.0  # 2^27 + 1, Dekker's splitter
        for i in range(m):
            s = 0.0
            c = 0.0
            for j in range(n):
                s, e = two_sum(s, x[i, j])
                c += e
            sh = s + c
            sl = (s - sh) + c
            q = sh / n
            # exact q * n = p + pe (Dekker), so that the quotient's remainder is exact
            t = split * q
            qh = t - (t - q)
            ql = q - qh
            t = split * n
            nh = t - (t - n)
            nl = n - nh
            pr = q * n
            pe = ((qh * nh - pr) + qh * nl + ql * nh) + ql * nl
            ql2 = (((sh - pr) - pe) + sl) / n
            hi = q + ql2
            rem = (q - hi) + ql2
            mad = 0.0
            for j in range(n):
                mad += abs(x[i, j] - hi)
            mad = mad / n * 1.01
            # two-pass mean: |error| <= u (|mean| + (n + 2) (mean |x - s0|)), s0 within n u |mean| of the mean
            bound = u * (1.01 * hi + (n + 2) * (mad + n * u * hi)) + hi * 2.0**-90
            out[i] = hi
            flag[i] = not certified(hi, rem, bound)

    return sqdist, rowmean


def _mean_dists(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance of each row of x (n, k) to the rows of r (s, k), as `_mean_dists_reference` (bitwise).

    d_ib = sqrt(rowSums((r_b - x_i)^2)), mean_i = R's mean(d_i.), both sums in R's long double.
    """
    fns = _COMPILED.get("ld")
    if fns is None:
        fns = _COMPILED["ld"] = _ld_kernels_py()
    sqdist, rowmean = fns
    x = np.ascontiguousarray(x, dtype=np.float64)
    r = np.ascontiguousarray(r, dtype=np.float64)
    n = x.shape[0]
    d2 = np.empty((n, r.shape[0]))
    flag = np.empty((n, r.shape[0]), dtype=np.bool_)
    sqdist(x, np.ascontiguousarray(r.T), _LD_U, d2, flag)
    ii, bb = np.nonzero(flag)
    if ii.size:
        diffs = r[bb] - x[ii]
        d2[ii, bb] = _r_rowsums(diffs * diffs)
    dists = np.sqrt(np.maximum(d2, 0.0))
    out = np.empty(n)
    rflag = np.empty(n, dtype=np.bool_)
    rowmean(dists, _LD_U, out, rflag)
    rows = np.flatnonzero(rflag)
    if rows.size:
        out[rows] = _r_mean(dists[rows], axis=1)
    return out


def _mean_dists_reference(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """`_mean_dists` in NumPy long double, chunked (the oracle of the tests)."""
    n = x.shape[0]
    out = np.empty(n)
    chunk = max(1, 4_000_000 // max(1, r.shape[0] * x.shape[1]))
    for lo in range(0, n, chunk):
        xi = x[lo : lo + chunk]
        diffs = r[None, :, :] - xi[:, None, :]
        dists = np.sqrt(np.maximum(_r_rowsums(diffs * diffs), 0.0))
        out[lo : lo + chunk] = _r_mean(dists, axis=1)
    return out


def _approx_silhouette(emb: np.ndarray, codes: np.ndarray, spc: int, seed: int) -> float:
    """RcppML's sampled silhouette: a_i, b_i are mean distances to <= spc random members of each class.

    The own class is not excluded (a_i includes the zero self-distance when i was sampled) and the divisor is the
    sample size; references are drawn with ``sample.int`` after ``set.seed(seed)``, class by ascending code.
    """
    classes = np.unique(codes)
    if classes.size < 2:
        return 0.0
    rng = RRandom(seed)
    refs = []
    for c in classes:
        idx = np.flatnonzero(codes == c)
        s = min(spc, idx.size)
        refs.append(emb[idx[rng.sample_int(idx.size, s) - 1]])
    n = emb.shape[0]
    mean_d = np.empty((n, classes.size))
    for ci, r in enumerate(refs):
        mean_d[:, ci] = _mean_dists(emb, r)
    pos = np.searchsorted(classes, codes)
    a = mean_d[np.arange(n), pos]
    other = mean_d.copy()
    other[np.arange(n), pos] = np.inf
    b = other.min(1)
    denom = np.maximum(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        sil = np.where(denom > 0, (b - a) / denom, 0.0)
    return float(_r_mean(sil))


def _approx_batch_knn_entropy(emb: np.ndarray, batch: np.ndarray, n_batch: int, k: int, seed: int) -> float:
    """Mean over samples of the normalised entropy of batch labels among the k nearest reference samples.

    References: ``sample.int(n, min(n, max(5000, 10 k)))`` after ``set.seed(seed)``; self excluded; ties keep
    reference order; entropy divided by log(n_batch).
    """
    n = emb.shape[0]
    k = min(k, n - 1)
    rng = RRandom(seed)
    n_ref = min(n, max(5000, 10 * k))
    ref_idx = rng.sample_int(n, n_ref) - 1
    ref = emb[ref_idx]
    ref_b = batch[ref_idx]
    ref_sq = _r_rowsums(ref * ref)
    pos_of = np.full(n, -1, dtype=np.int64)
    pos_of[ref_idx] = np.arange(n_ref)
    max_ent = math.log(n_batch)
    ent = np.empty(n)
    chunk = max(1, 2_000_000 // n_ref)
    for lo in range(0, n, chunk):
        xi = emb[lo : lo + chunk]
        dots = np.zeros((xi.shape[0], n_ref))
        for j in range(emb.shape[1]):
            dots += ref[None, :, j] * xi[:, j, None]
        d2 = ref_sq[None, :] - 2.0 * dots + _r_rowsums(xi * xi)[:, None]
        rows = np.arange(xi.shape[0])
        self_pos = pos_of[lo : lo + chunk]
        has = self_pos >= 0
        d2[rows[has], self_pos[has]] = np.inf
        kk = np.minimum(k, np.isfinite(d2).sum(1))
        order = np.argsort(d2, axis=1, kind="stable")
        for r in range(xi.shape[0]):
            counts = np.bincount(ref_b[order[r, : kk[r]]], minlength=n_batch).astype(np.float64)
            props = counts / counts.sum()
            props = props[props > 0]
            e = -float(_ld_cumsum_last(props * np.log(props)))
            ent[lo + r] = e / max_ent if max_ent > 0 else 0.0
    return float(_r_mean(ent))


# ----------------------------------------------------------------------------------------------------------------
# classifiers
# ----------------------------------------------------------------------------------------------------------------


def _compute_auc(y: np.ndarray, s: np.ndarray) -> float:
    """RcppML's ``.compute_auc``: walk scores in decreasing order, ties in sample order (not averaged).

    Hand-written because every library averages tied ranks; kNN vote fractions and clamped glm probabilities tie
    often, so the two rules give different numbers.
    """
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if y.size == 0 or n_pos == 0 or n_neg == 0:
        return 0.5
    ys = y[np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")]
    auc = float(np.cumsum(ys)[~ys].sum())
    return auc / (n_pos * n_neg)


def _clf_metrics(pred: np.ndarray, truth: np.ndarray, prob: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy; macro precision/recall/F1 over all kept classes (0 when undefined); macro one-vs-rest AUROC."""
    accuracy = float(np.sum(pred == truth)) / truth.size
    prec = np.zeros(n_classes)
    rec = np.zeros(n_classes)
    f1 = np.zeros(n_classes)
    auc = np.zeros(n_classes)
    for c in range(n_classes):
        tp = int(np.sum((pred == c) & (truth == c)))
        fp = int(np.sum((pred == c) & (truth != c)))
        fn = int(np.sum((pred != c) & (truth == c)))
        pr = tp / (tp + fp) if tp + fp > 0 else 0.0
        rc = tp / (tp + fn) if tp + fn > 0 else 0.0
        prec[c], rec[c] = pr, rc
        f1[c] = 2 * pr * rc / (pr + rc) if pr + rc > 0 else 0.0
        scores = prob[:, c] if prob.shape[1] > c else np.zeros(truth.size)
        auc[c] = _compute_auc(truth == c, scores)
    return {
        "accuracy": accuracy,
        "f1": _r_mean(f1),
        "precision": _r_mean(prec),
        "recall": _r_mean(rec),
        "auroc": _r_mean(auc),
    }


def _knn_votes_py(xt_tr, x_te, sq_tr, sq_te, y_tr, k, votes):  # pragma: no cover - compiled by numba
    """votes[i, c] += 1 for each of the k nearest training points of x_te[i] with label c (see _knn_predict)."""
    n_tr = xt_tr.shape[1]
    dot = np.empty(n_tr)
    best_d = np.empty(k)
    best_i = np.empty(k, np.int64)
    for i in range(x_te.shape[0]):
        # training points innermost (independent accumulators: vectorised without reassociation); each dot
        # product still sums over features in order, as the column-by-column NumPy update did
        dot[:] = 0.0
        for j in range(xt_tr.shape[0]):
            xij = x_te[i, j]
            for b in range(n_tr):
                dot[b] += xt_tr[j, b] * xij
        # the first k of a stable argsort: insertion into a sorted list of k, after every equal distance
        cnt = 0
        for b in range(n_tr):
            v = sq_tr[b] - 2.0 * dot[b] + sq_te[i]
            if cnt < k:
                pos = cnt
                cnt += 1
            elif v < best_d[k - 1]:
                pos = k - 1
            else:
                continue
            while pos > 0 and best_d[pos - 1] > v:
                best_d[pos] = best_d[pos - 1]
                best_i[pos] = best_i[pos - 1]
                pos -= 1
            best_d[pos] = v
            best_i[pos] = b
        for t in range(k):
            votes[i, y_tr[best_i[t]]] += 1.0


def _knn_predict(x_tr, y_tr, x_te, k, n_classes):
    """Unweighted kNN on squared Euclidean distance ||a||^2 - 2 a.b + ||b||^2 (RcppML's formula, so distance ties
    fall the same way); neighbours by stable order (lower train index first), vote ties to the lowest class.

    The norms are summed in long double (R's rowSums), a.b over features in order; compiled (numba, no fastmath).
    """
    k = min(k, x_tr.shape[0])
    fn = _COMPILED.get("knn")
    if fn is None:
        import numba

        fn = _COMPILED["knn"] = numba.njit(cache=True, nogil=True)(_knn_votes_py)
    x_tr = np.ascontiguousarray(x_tr, dtype=np.float64)
    x_te = np.ascontiguousarray(x_te, dtype=np.float64)
    votes = np.zeros((x_te.shape[0], n_classes))
    fn(np.ascontiguousarray(x_tr.T), x_te, _r_rowsums(x_tr * x_tr), _r_rowsums(x_te * x_te),
       np.ascontiguousarray(y_tr, dtype=np.int64), k, votes)
    return votes.argmax(1), votes / k


def _dqrdc2(x: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """LINPACK ``dqrdc2`` (R's QR for ``lm``/``glm``): Householder QR with R's limited pivoting.

    Columns whose remaining norm falls below ``tol`` times their original norm move to the right and are left out
    of the fit; glm's coefficient for them is then 0 during IRLS and NA (ignored) in predictions. Ported because
    that rank decision, not the arithmetic, is what changes predictions under separation.
    Returns (qr, qraux, pivot (0-based), rank).
    """
    x = np.array(x, dtype=np.float64, order="F")
    n, p = x.shape
    qraux = np.sqrt(np.einsum("ij,ij->j", x, x))
    work1 = qraux.copy()
    work2 = qraux.copy()
    work2[work2 == 0.0] = 1.0
    jpvt = np.arange(p)
    k = p + 1  # Fortran's 1-based bookkeeping
    for l in range(min(n, p)):
        while not (l + 1 >= k or qraux[l] >= work2[l] * tol):
            for arr in (jpvt, qraux, work1, work2):
                arr[l:] = np.roll(arr[l:], -1)
            x[:, l:] = np.roll(x[:, l:], -1, axis=1)
            k -= 1
        if l + 1 == n:
            continue
        col = x[l:, l]
        nrmxl = math.sqrt(float(col @ col))
        if nrmxl == 0.0:
            continue
        if x[l, l] != 0.0:
            nrmxl = math.copysign(nrmxl, x[l, l])
        x[l:, l] *= 1.0 / nrmxl
        x[l, l] = 1.0 + x[l, l]
        for j in range(l + 1, p):
            t = -float(x[l:, l] @ x[l:, j]) / x[l, l]
            x[l:, j] += t * x[l:, l]
            if qraux[j] != 0.0:
                tt = max(1.0 - (abs(x[l, j]) / qraux[j]) ** 2, 0.0)
                if abs(tt) >= 1e-6:
                    qraux[j] = qraux[j] * math.sqrt(tt)
                else:
                    rest = x[l + 1 :, j]
                    qraux[j] = math.sqrt(float(rest @ rest))
                    work1[j] = qraux[j]
        qraux[l] = x[l, l]
        x[l, l] = -nrmxl
    return x, qraux, jpvt, min(k - 1, n)


def _dqrls(x: np.ndarray, y: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """R's ``Cdqrls``: least squares via ``dqrdc2`` + ``dqrsl``; coefficients in pivoted order, 0 beyond the rank."""
    qr, qraux, pivot, rank = _dqrdc2(x, tol)
    n, p = qr.shape
    qty = np.array(y, dtype=np.float64)
    for j in range(min(rank, n - 1)):
        if qraux[j] != 0.0:
            diag = qr[j, j]
            qr[j, j] = qraux[j]
            t = -float(qr[j:, j] @ qty[j:]) / qr[j, j]
            qty[j:] += t * qr[j:, j]
            qr[j, j] = diag
    b = np.zeros(p)
    b[:rank] = qty[:rank]
    for j in range(rank - 1, -1, -1):
        if qr[j, j] == 0.0:
            break
        b[j] = b[j] / qr[j, j]
        if j > 0:
            b[:j] += -b[j] * qr[:j, j]
    return b, pivot, rank


def _logit_linkinv(eta: np.ndarray) -> np.ndarray:
    """R's clamped logistic: exp(eta) is replaced by eps / 1/eps beyond |eta| > 30."""
    with np.errstate(over="ignore"):
        t = np.where(eta < -30.0, _DBL_EPS, np.where(eta > 30.0, 1.0 / _DBL_EPS, np.exp(np.clip(eta, -31, 31))))
    return t / (1.0 + t)


def _logit_mu_eta(eta: np.ndarray) -> np.ndarray:
    e = np.exp(np.clip(eta, -31, 31))
    return np.where(np.abs(eta) > 30.0, _DBL_EPS, e / ((1.0 + e) * (1.0 + e)))


def _binomial_deviance(y: np.ndarray, mu: np.ndarray) -> float:
    """sum 2 [y log(y / mu) + (1 - y) log((1 - y) / (1 - mu))] for y in {0, 1}, in R's operation order."""
    r = np.where(y == 1.0, np.log(1.0 / mu), np.log(1.0 / (1.0 - mu)))
    return float(_ld_cumsum_last(2.0 * r))


def glm_logit_fit(
    x: np.ndarray, y: np.ndarray, epsilon: float = 1e-8, maxit: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Unpenalised logistic regression by R's ``glm.fit`` IRLS (binomial, logit).

    x: (n, p) model matrix (include the intercept column); y: (n,) in {0, 1}. Starts at mu = (y + 0.5) / 2, solves
    each weighted least-squares step with ``dqrdc2`` (tol 1e-11), stops when |dev - dev_old| / (|dev| + 0.1) < epsilon
    or after ``maxit`` steps. Returns (coefficients (p,), pivot[:rank] for prediction).
    """
    y = np.asarray(y, dtype=np.float64)
    mu = (y + 0.5) / 2.0
    eta = np.log(mu / (1.0 - mu))
    mu = _logit_linkinv(eta)
    devold = _binomial_deviance(y, mu)
    p = x.shape[1]
    coef = np.zeros(p)
    used = np.arange(p)
    for _ in range(maxit):
        mu_eta = _logit_mu_eta(eta)
        z = eta + (y - mu) / mu_eta
        w = np.sqrt((mu_eta * mu_eta) / (mu * (1.0 - mu)))
        b, pivot, rank = _dqrls(x * w[:, None], z * w, min(1e-7, epsilon / 1000.0))
        if not np.all(np.isfinite(b)):
            break  # glm.fit: "non-finite coefficients", keeps the previous iterate
        start = np.zeros(p)
        start[pivot] = b
        used = pivot[:rank]
        eta = _seq_matvec(x, start)
        mu = _logit_linkinv(eta)
        dev = _binomial_deviance(y, mu)
        coef = start
        if abs(dev - devold) / (abs(dev) + 0.1) < epsilon:
            break
        devold = dev
    return coef, used


def _dqrls_batch_py(xt, yw, tol, b, pivot, rank):  # pragma: no cover - compiled by numba
    """``_dqrls`` for a batch of systems, in place: xt (q, p, n) = the transposed model matrices (overwritten), yw
    (q, n) right-hand sides (overwritten by Q'y); fills b (q, p) (pivoted order), pivot (q, p), rank (q,).

    The statements of ``_dqrdc2`` / ``_dqrls`` on rows of xt (a column of x is a contiguous row here), with every dot
    product through ``np.dot`` (the BLAS ddot that numpy's ``@`` calls) and the axpy updates written as the same
    one-multiply-one-add per element: no fastmath, so the results are those of the NumPy functions, bitwise.
    """
    nsys, p, n = xt.shape
    for s in range(nsys):
        x = xt[s]
        qraux = np.empty(p)
        for j in range(p):
            qraux[j] = math.sqrt(np.dot(x[j], x[j]))
        work1 = qraux.copy()
        work2 = qraux.copy()
        for j in range(p):
            if work2[j] == 0.0:
                work2[j] = 1.0
        jpvt = np.arange(p)
        k = p + 1
        tmp = np.empty(n)
        for l in range(min(n, p)):
            while not (l + 1 >= k or qraux[l] >= work2[l] * tol):
                # move column l to the end (np.roll(arr[l:], -1) in the NumPy port)
                jl, q0, w10, w20 = jpvt[l], qraux[l], work1[l], work2[l]
                tmp[:] = x[l]
                for j in range(l, p - 1):
                    jpvt[j] = jpvt[j + 1]
                    qraux[j] = qraux[j + 1]
                    work1[j] = work1[j + 1]
                    work2[j] = work2[j + 1]
                    x[j, :] = x[j + 1, :]
                jpvt[p - 1], qraux[p - 1], work1[p - 1], work2[p - 1] = jl, q0, w10, w20
                x[p - 1, :] = tmp
                k -= 1
            if l + 1 == n:
                continue
            xl = x[l, l:]
            nrmxl = math.sqrt(np.dot(xl, xl))
            if nrmxl == 0.0:
                continue
            if x[l, l] != 0.0:
                nrmxl = math.copysign(nrmxl, x[l, l])
            r = 1.0 / nrmxl
            for i in range(l, n):
                x[l, i] *= r
            x[l, l] = 1.0 + x[l, l]
            for j in range(l + 1, p):
                t = -np.dot(x[l, l:], x[j, l:]) / x[l, l]
                for i in range(l, n):
                    x[j, i] += t * x[l, i]
                if qraux[j] != 0.0:
                    v = abs(x[j, l]) / qraux[j]
                    tt = 1.0 - v * v
                    if tt < 0.0:
                        tt = 0.0
                    if abs(tt) >= 1e-6:
                        qraux[j] = qraux[j] * math.sqrt(tt)
                    else:
                        rest = x[j, l + 1 :]
                        qraux[j] = math.sqrt(np.dot(rest, rest))
                        work1[j] = qraux[j]
            qraux[l] = x[l, l]
            x[l, l] = -nrmxl
        rk = min(k - 1, n)
        # dqrsl: Q'y, then back-substitution over the first rk (pivoted) columns
        qty = yw[s]
        for j in range(min(rk, n - 1)):
            if qraux[j] != 0.0:
                diag = x[j, j]
                x[j, j] = qraux[j]
                t = -np.dot(x[j, j:], qty[j:]) / x[j, j]
                for i in range(j, n):
                    qty[i] += t * x[j, i]
                x[j, j] = diag
        bs = b[s]
        bs[:] = 0.0
        bs[:rk] = qty[:rk]
        for j in range(rk - 1, -1, -1):
            if x[j, j] == 0.0:
                break
            bs[j] = bs[j] / x[j, j]
            if j > 0:
                nb = -bs[j]
                for i in range(j):
                    bs[i] += nb * x[j, i]
        pivot[s, :] = jpvt
        rank[s] = rk



def _dqrls_batch(xt, yw, tol):
    """Compiled batch of ``_dqrls`` (numba, disk-cached, on first use): (b (q, p), pivot (q, p), rank (q,))."""
    fn = _COMPILED.get("dqrls")
    if fn is None:
        import numba

        fn = _COMPILED["dqrls"] = numba.njit(cache=True, nogil=True)(_dqrls_batch_py)
    q, p, _ = xt.shape
    b = np.zeros((q, p))
    pivot = np.zeros((q, p), dtype=np.int64)
    rank = np.zeros(q, dtype=np.int64)
    fn(xt, yw, float(tol), b, pivot, rank)
    return b, pivot, rank


def glm_logit_fit_many(
    x: np.ndarray, y: np.ndarray, epsilon: float = 1e-8, maxit: int = 25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``glm_logit_fit`` for q responses on one model matrix at once (one-vs-rest), with the same numbers.

    x: (n, p) model matrix; y: (q, n) in {0, 1}. The IRLS elementwise steps run on (active, n) arrays (NumPy's ufuncs
    are elementwise, so each row rounds as in a 1-D call) and the weighted least-squares steps in the compiled
    ``_dqrls_batch``; a response leaves the batch at the iteration where its own fit would stop. Returns
    (coefficients (q, p), pivot (q, p), rank (q,)); response r's ``used`` columns are ``pivot[r, :rank[r]]``.
    """
    y = np.asarray(y, dtype=np.float64)
    q, n = y.shape
    p = x.shape[1]
    xt = np.ascontiguousarray(x.T)
    tol = min(1e-7, epsilon / 1000.0)
    mu = (y + 0.5) / 2.0
    eta = np.log(mu / (1.0 - mu))
    mu = _logit_linkinv(eta)
    devold = _binomial_deviance_rows(y, mu)
    coef = np.zeros((q, p))
    pivot = np.tile(np.arange(p), (q, 1))
    rank = np.full(q, p, dtype=np.int64)
    act = np.arange(q)
    for _ in range(maxit):
        if act.size == 0:
            break
        e, m_, ya = eta[act], mu[act], y[act]
        mu_eta = _logit_mu_eta(e)
        z = e + (ya - m_) / mu_eta
        w = np.sqrt((mu_eta * mu_eta) / (m_ * (1.0 - m_)))
        b, piv, rk = _dqrls_batch(xt[None, :, :] * w[:, None, :], z * w, tol)
        ok = np.all(np.isfinite(b), axis=1)  # glm.fit: "non-finite coefficients" keeps the previous iterate
        act, b, piv, rk = act[ok], b[ok], piv[ok], rk[ok]
        if act.size == 0:
            break
        start = np.zeros((act.size, p))
        np.put_along_axis(start, piv, b, axis=1)
        eta_new = np.zeros((act.size, n))
        for j in range(p):
            eta_new += start[:, j, None] * x[None, :, j]
        mu_new = _logit_linkinv(eta_new)
        dev = _binomial_deviance_rows(y[act], mu_new)
        eta[act], mu[act], coef[act], pivot[act], rank[act] = eta_new, mu_new, start, piv, rk
        conv = np.abs(dev - devold[act]) / (np.abs(dev) + 0.1) < epsilon
        devold[act] = dev
        act = act[~conv]
    return coef, pivot, rank


def _binomial_deviance_rows(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``_binomial_deviance`` of each row of y, mu (q, n): (q,), long-double sums left to right."""
    r = np.where(y == 1.0, np.log(1.0 / mu), np.log(1.0 / (1.0 - mu)))
    return _ld_cumsum_last(2.0 * r, axis=-1).astype(np.float64)


def _lr_predict(x_tr, y_tr, x_te, n_classes):
    """One-vs-rest glm per class; probabilities row-normalised (zero rows left as is); argmax (first max)."""
    xm_tr = np.column_stack([np.ones(x_tr.shape[0]), x_tr])
    xm_te = np.column_stack([np.ones(x_te.shape[0]), x_te])
    prob = np.zeros((x_te.shape[0], n_classes))
    onehot = (y_tr[None, :] == np.arange(n_classes)[:, None]).astype(np.float64)
    coefs, pivots, ranks = glm_logit_fit_many(xm_tr, onehot)
    for c in range(n_classes):
        used = pivots[c, : ranks[c]]
        prob[:, c] = _logit_linkinv(_seq_matvec(xm_te[:, used], coefs[c, used]))
    rs = _r_rowsums(prob)
    rs[rs == 0] = 1.0
    prob = prob / rs[:, None]
    return prob.argmax(1), prob


def _lr_predict_reference(x_tr, y_tr, x_te, n_classes):
    """``_lr_predict`` one class at a time through the NumPy ``glm_logit_fit`` (the oracle of the tests)."""
    xm_tr = np.column_stack([np.ones(x_tr.shape[0]), x_tr])
    xm_te = np.column_stack([np.ones(x_te.shape[0]), x_te])
    prob = np.zeros((x_te.shape[0], n_classes))
    for c in range(n_classes):
        coef, used = glm_logit_fit(xm_tr, (y_tr == c).astype(np.float64))
        prob[:, c] = _logit_linkinv(_seq_matvec(xm_te[:, used], coef[used]))
    rs = _r_rowsums(prob)
    rs[rs == 0] = 1.0
    prob = prob / rs[:, None]
    return prob.argmax(1), prob


def _rf_predict(x_tr, y_tr, x_te, n_classes, random_state):
    """500-tree random forest (sqrt(p) features per split, leaves of 1, bootstrap) like randomForest's defaults.

    Probabilities are per-tree hard-vote fractions, as randomForest's ``type="vote"`` (sklearn's predict_proba
    averages leaf frequencies instead); the prediction is the majority vote, ties to the lowest class (randomForest
    breaks them at random). The trees come from scikit-learn's RNG, so only statistical agreement with R is possible.
    """
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(
        n_estimators=500, max_features="sqrt", min_samples_leaf=1, bootstrap=True, n_jobs=1, random_state=random_state
    )
    rf.fit(x_tr, y_tr)
    cls = rf.classes_.astype(np.int64)
    votes = np.zeros((x_te.shape[0], n_classes))
    rows = np.arange(x_te.shape[0])
    for tree in rf.estimators_:
        votes[rows, cls[tree.predict(x_te).astype(np.int64)]] += 1.0
    prob = votes / len(rf.estimators_)
    return votes.argmax(1), prob


def _stratified_folds(codes: np.ndarray, n_classes: int, n_folds: int, rng: RRandom) -> np.ndarray:
    """RcppML's folds: per class (level order) one ``sample(n_folds)``, recycled over the class's samples in order."""
    fold = np.zeros(codes.size, dtype=np.int64)
    for c in range(n_classes):
        idx = np.flatnonzero(codes == c)
        perm = rng.sample(n_folds)
        fold[idx] = np.resize(perm, idx.size)
    return fold


def _cv_classify(emb, codes, n_classes, n_folds, classifiers, k_nn, seed):
    rng = RRandom(seed)
    fold = _stratified_folds(codes, n_classes, n_folds, rng)
    rf_state = np.random.RandomState(
        seed % 2**32
    )  # one stream across folds, as R's RNG continues across randomForest calls
    rows = []
    for f in range(1, n_folds + 1):
        te = fold == f
        tr = ~te
        if not te.any() or not tr.any():
            continue
        x_tr, x_te = emb[tr], emb[te]
        y_tr, y_te = codes[tr], codes[te]
        mu, sd = _r_scale_stats(x_tr)
        sd = np.where((sd == 0) | ~np.isfinite(sd), 1.0, sd)
        xs_tr = (x_tr - mu) / sd
        xs_te = (x_te - mu) / sd
        for clf in classifiers:
            if clf == "knn":
                pred, prob = _knn_predict(xs_tr, y_tr, xs_te, k_nn, n_classes)
            elif clf == "lr":
                pred, prob = _lr_predict(xs_tr, y_tr, xs_te, n_classes)
            else:
                pred, prob = _rf_predict(x_tr, y_tr, x_te, n_classes, rf_state)
            rows.append({"classifier": clf, "fold": f, **_clf_metrics(pred, y_te, prob, n_classes)})
    return fold, rows


# ----------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------


def _extract_embedding(x: Any, layer: Any = None) -> np.ndarray:
    """n x k embedding: ``x.embedding()`` if present (factor-graph results; ``x.embedding(layer)`` when a layer is
    named), ``(d[:, None] * h).T`` for an NMF model (duck-typed: attributes ``d`` (k,) and ``h`` (k, n)), else ``x``
    itself as an n x k array."""
    if layer is not None:
        if not (hasattr(x, "layers") and callable(getattr(x, "embedding", None))):
            raise ValueError(f"layer: only a factor-graph result has layers; got layer={layer!r} with "
                             f"{type(x).__name__}")
        emb = np.asarray(x.embedding(layer), dtype=np.float64)
    elif callable(getattr(x, "embedding", None)):
        emb = np.asarray(x.embedding(), dtype=np.float64)
    elif hasattr(x, "d") and hasattr(x, "h"):
        d = np.asarray(x.d, dtype=np.float64).ravel()
        h = np.asarray(x.h, dtype=np.float64)
        if h.ndim != 2 or h.shape[0] != d.size:
            raise ValueError(f"x: model attributes must be d (k,) and h (k, n); got d {d.shape}, h {h.shape}")
        emb = (d[:, None] * h).T
    else:
        try:
            emb = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"x: expected an NMF model (with d and h) or an n x k numeric array ({err})") from None
    if emb.ndim != 2:
        raise ValueError(f"x: expected an n x k embedding (2-D), got an array of shape {emb.shape}")
    if not np.all(np.isfinite(emb)):
        bad = int(np.sum(~np.isfinite(emb)))
        raise ValueError(f"x: the embedding has {bad} non-finite values (NaN or inf); expected finite numbers")
    return np.ascontiguousarray(emb)


def _as_factor(values: Any, n: int, name: str) -> tuple[np.ndarray, list[Any]]:
    """R's ``as.factor`` through ``label_codes``: (codes (n,) 0-based with -1 for missing, levels).

    The length is checked here so that the message names the embedding's sample count.
    """
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of n = {n} values, got {type(values).__name__}")
    codes, levels = label_codes(values, name=name)
    if codes.shape[0] != n:
        raise ValueError(f"{name}: length {codes.shape[0]} does not match the number of samples in x ({n})")
    return codes.astype(np.int64), [v.item() if isinstance(v, np.generic) else v for v in levels]


def _check_int(name: str, value: Any, minimum: int | None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _resolve_names(name: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in items if not isinstance(v, str) or v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown name(s) {bad!r}; expected any of {list(allowed)}")
    return tuple(dict.fromkeys(items))


# ----------------------------------------------------------------------------------------------------------------
# assess
# ----------------------------------------------------------------------------------------------------------------


def assess(
    x: Any,
    labels: Any,
    *,
    batch: Any = None,
    metrics: str | Sequence[str] = "all",
    n_folds: int = 5,
    classifiers: str | Sequence[str] = ("knn", "lr", "rf"),
    k_nn: int = 15,
    seed: int = 42,
    min_class_size: int = 10,
    sil_samples_per_class: int = 200,
    batch_knn_k: int = 50,
    layer: str | int | None = None,
) -> AssessResult:
    """Judge an embedding against labels with RcppML's ``assess()`` protocol (CPU path).

    x: an NMF model (attributes ``d`` (k,), ``h`` (k, n); embedding E = (d[:, None] * h).T, n x k), an object with an
    ``embedding()`` method, or an n x k array (rows = samples). labels: n class labels (strings, numbers, a
    categorical; None/NaN are dropped). batch: optional n batch labels for the mixing metrics. layer: for a
    factor-graph result, the layer whose sample embedding is judged (name or build index; default the first built).

    Classes with fewer than ``min_class_size`` samples are dropped (with a warning). Then, on the raw E:
    ``nmi``/``ari`` of one Hartigan-Wong k-means (C clusters, 10 R-RNG starts), the sampled ``silhouette`` of the
    true labels; on stratified ``n_folds``-fold CV (z-scored features for kNN and LR): accuracy, macro
    F1/precision/recall and macro one-vs-rest AUROC per classifier (``knn``, ``lr`` = one-vs-rest glm, ``rf``), their
    pooled ``*_mean``; with a batch, ``batch_silhouette`` (lower = better mixing) and ``batch_knn_entropy`` (higher =
    better), and scib's integration metrics (``integration_metrics``: iLISI, kBET, graph connectivity, BRAS, PCR,
    isolated labels, k-means NMI/ARI, label silhouette, cLISI and the batch/bio/total scores) as ``scib_<name>``,
    on the same kept samples and labels (needs ``pip install "jnmf[integration]"``). ``metrics`` selects among
    "ari", "nmi", "silhouette", "classification", "batch_mixing", "scib" ("all": every one, the last two only with a
    batch). Everything but ``rf`` reproduces RcppML to rounding for the same seed.

    Scores of an embedding guided by the same labels (a target, ``refine``, ``GuidedNMF``'s training embedding)
    partly reflect the labels that shaped it: judge guidance on held-out samples (``GuidedNMF.transform``).

    Deviations from RcppML, all outside its tested path: empty label levels are always dropped (RcppML keeps them in
    ``n_classes`` when no sample is dropped); batch levels are kept as given, unused ones included, like RcppML;
    string levels sort by code point (R sorts by locale, which agrees for names of one case); classifier errors
    propagate instead of becoming NA rows; metric names must be spelled out (no partial matching).
    """
    # ---- validation: everything is checked before any metric is computed ----
    emb = _extract_embedding(x, layer)
    n, k = emb.shape
    if isinstance(metrics, str) and metrics == "all":
        do_metrics = METRICS if batch is not None else METRICS[:-2]
    else:
        do_metrics = _resolve_names("metrics", metrics, METRICS)
        if not do_metrics:
            raise ValueError(f"metrics: expected 'all' or a non-empty selection of {list(METRICS)}")
    classifiers = _resolve_names("classifiers", classifiers, CLASSIFIERS)
    if "classification" in do_metrics and not classifiers:
        raise ValueError(f"classifiers: expected at least one of {list(CLASSIFIERS)} when classification is requested")
    n_folds = _check_int("n_folds", n_folds, 2)
    k_nn = _check_int("k_nn", k_nn, 1)
    seed = _check_int("seed", seed, None)
    min_class_size = _check_int("min_class_size", min_class_size, 0)
    sil_samples_per_class = _check_int("sil_samples_per_class", sil_samples_per_class, 1)
    batch_knn_k = _check_int("batch_knn_k", batch_knn_k, 1)

    codes, levels = _as_factor(labels, n, "labels")
    counts = np.bincount(codes[codes >= 0], minlength=len(levels))
    keep_level = counts >= max(min_class_size, 1)
    if keep_level.sum() < 2:
        raise ValueError(
            f"labels: fewer than 2 classes with >= {min_class_size} samples "
            f"(class sizes: {dict(zip(map(str, levels), counts.tolist(), strict=True))})"
        )
    bcodes = blevels = None
    if batch is not None:
        bcodes, blevels = _as_factor(batch, n, "batch")
        if np.any(bcodes < 0):
            n_bad = int(np.sum(bcodes < 0))
            raise ValueError(f"batch: {n_bad} missing values; expected a batch label for every sample")

    keep = (codes >= 0) & keep_level[np.maximum(codes, 0)]
    dropped = {str(levels[i]): int(counts[i]) for i in np.flatnonzero(~keep_level) if counts[i] > 0}
    n_missing = int(np.sum(codes < 0))
    if not keep.all():
        parts = []
        if dropped:
            parts.append(
                f"{sum(dropped.values())} samples from {len(dropped)} small classes "
                f"(min_class_size={min_class_size}): " + ", ".join(f"{c} ({m})" for c, m in dropped.items())
            )
        if n_missing:
            parts.append(f"{n_missing} samples with missing labels")
        warnings.warn("assess: dropped " + " and ".join(parts), UserWarning, stacklevel=2)
    kept_levels = [levels[i] for i in np.flatnonzero(keep_level)]
    remap = np.cumsum(keep_level) - 1  # droplevels: kept levels renumbered in their original order
    emb = emb[keep]
    codes = remap[codes[keep]]
    n = emb.shape[0]
    n_classes = len(kept_levels)
    if "ari" in do_metrics or "nmi" in do_metrics:
        n_distinct = r_unique_rows(emb).size
        if n_classes >= n or n_distinct < n_classes:
            raise ValueError(
                f"x: k-means with {n_classes} clusters needs more samples ({n}) and at least as many distinct "
                f"embedding rows ({n_distinct}) as classes"
            )
    if bcodes is not None:
        bcodes = bcodes[keep]
    if "scib" in do_metrics:
        if bcodes is None:
            raise ValueError("metrics: 'scib' needs batch= (the grouping whose removal it scores)")
        from ._integration import _import_scib_metrics

        _import_scib_metrics()  # a clear ImportError naming the extra, before any metric is computed

    # ---- metrics, each block reseeded like RcppML ----
    out: dict[str, float] = {}
    if "ari" in do_metrics or "nmi" in do_metrics:
        km = r_kmeans(emb, n_classes, rng=RRandom(seed), nstart=10, iter_max=100)
        if "ari" in do_metrics:
            out["ari"] = adjusted_rand_index(codes, km.cluster)
        if "nmi" in do_metrics:
            out["nmi"] = normalized_mutual_info(codes, km.cluster)
    if "silhouette" in do_metrics:
        out["silhouette"] = _approx_silhouette(emb, codes, sil_samples_per_class, seed)
    rows = None
    if "classification" in do_metrics:
        _, rows = _cv_classify(emb, codes, n_classes, n_folds, classifiers, k_nn, seed)
        for clf in classifiers:
            sel = [r for r in rows if r["classifier"] == clf]
            for fld in _CLF_FIELDS:
                out[f"{fld}_{clf}"] = _r_mean([r[fld] for r in sel])
        for fld in _CLF_FIELDS:
            out[f"{fld}_mean"] = _r_mean([r[fld] for r in rows])
    n_batch = len(blevels) if blevels is not None else 0
    if "batch_mixing" in do_metrics and n_batch > 1:
        out["batch_silhouette"] = _approx_silhouette(emb, bcodes, sil_samples_per_class, seed + 1)
        out["batch_knn_entropy"] = _approx_batch_knn_entropy(emb, bcodes, n_batch, batch_knn_k, seed)
    if "scib" in do_metrics:
        from ._integration import integration_metrics

        # The same kept samples and labels as the RcppML metrics; keys prefixed so nothing of RcppML's changes.
        scib = integration_metrics(emb, codes, batch=bcodes, seed=seed)
        out.update({f"scib_{name}": float(value) for name, value in scib.items()})

    params = {
        "n_samples": n,
        "n_features": k,
        "n_classes": n_classes,
        "metrics": tuple(do_metrics),
        "n_folds": n_folds,
        "classifiers": classifiers,
        "k_nn": k_nn,
        "seed": seed,
        "min_class_size": min_class_size,
        "sil_samples_per_class": sil_samples_per_class,
        "batch_knn_k": batch_knn_k,
        "has_batch": batch is not None,
        "backend": "cpu",
        "classes": tuple(kept_levels),
        "dropped": MappingProxyType(dropped),
        "n_missing_labels": n_missing,
    }
    return AssessResult(
        metrics=MappingProxyType(out),
        classification=None if rows is None else tuple(MappingProxyType(r) for r in rows),
        params=MappingProxyType(params),
    )
