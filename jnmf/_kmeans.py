"""R's ``stats::kmeans`` (Hartigan-Wong, AS 136) with R's multi-start protocol.

Written by hand because no Python library implements Hartigan-Wong: scikit-learn only has Lloyd/Elkan, whose
partitions differ (ARI 0.996 against the HW one on the hawaiibirds baseline embedding), so RcppML's NMI/ARI could not be
reproduced with them.
The port follows R's ``kmns.f`` statement by statement, in plain Python floats so that every distance is summed in the
same order and precision as the Fortran (the data are small: ~1e3 x 10).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._rrng import RRandom

# kmns.f's BIG is the single-precision literal 1.E30 widened to double.
_BIG = float(np.float32(1e30))


@dataclass(frozen=True)
class KMeansResult:
    """One k-means fit: ``cluster`` (m,) 0-based, ``centers`` (k, p), ``withinss`` (k,), ``size`` (k,)."""

    cluster: np.ndarray
    centers: np.ndarray
    withinss: np.ndarray
    size: np.ndarray
    iter: int
    ifault: int

    @property
    def tot_withinss(self) -> float:
        return float(np.sum(self.withinss))


def _sqdist(a: list[float], c: list[float]) -> float:
    s = 0.0
    for aj, cj in zip(a, c, strict=True):
        d = aj - cj
        s += d * d
    return s


def _sqdist_below(a: list[float], c: list[float], bound: float) -> float | None:
    """Squared distance if it is < bound, else None (kmns.f's early exit; partial sums never decrease)."""
    s = 0.0
    for aj, cj in zip(a, c, strict=True):
        d = aj - cj
        s += d * d
        if s >= bound:
            return None
    return s


def _transfer(a, c, nc, an1, an2, i, l1, l2):
    al1 = float(nc[l1])
    alw = al1 - 1.0
    al2 = float(nc[l2])
    alt = al2 + 1.0
    c1 = c[l1]
    c2 = c[l2]
    ai = a[i]
    for j in range(len(ai)):
        c1[j] = (c1[j] * al1 - ai[j]) / alw
        c2[j] = (c2[j] * al2 + ai[j]) / alt
    nc[l1] -= 1
    nc[l2] += 1
    an2[l1] = alw / al1
    an1[l1] = alw / (alw - 1.0) if alw > 1.0 else _BIG
    an1[l2] = alt / al2
    an2[l2] = alt / (alt + 1.0)


def _hw_kernel_py(a, c, iter_max):  # pragma: no cover - compiled by numba
    """AS 136 stages on a (m, p) C-contiguous float64, c (k, p) initial centres (overwritten).

    Returns (ic1 (m,) 0-based, nc (k,), n_iter, ifault); ifault 3 flags an empty initial cluster. Every float
    operation is the one of the pure-Python port (`_hartigan_wong_python`), in the same order: no fastmath, so no
    reassociation or FMA contraction, and the results are bitwise equal.
    """
    m, p = a.shape
    k = c.shape[0]
    ic1 = np.zeros(m, np.int64)
    ic2 = np.zeros(m, np.int64)
    # Initial assignment: the closest and second-closest centre of every point.
    for i in range(m):
        dt1 = 0.0
        for j in range(p):
            dd = a[i, j] - c[0, j]
            dt1 += dd * dd
        dt2 = 0.0
        for j in range(p):
            dd = a[i, j] - c[1, j]
            dt2 += dd * dd
        i1, i2 = 0, 1
        if dt1 > dt2:
            i1, i2 = 1, 0
            dt1, dt2 = dt2, dt1
        for L in range(2, k):
            db = 0.0
            below = True
            for j in range(p):
                dd = a[i, j] - c[L, j]
                db += dd * dd
                if db >= dt2:
                    below = False
                    break
            if not below:
                continue
            if db >= dt1:
                dt2 = db
                i2 = L
            else:
                dt2 = dt1
                i2 = i1
                dt1 = db
                i1 = L
        ic1[i] = i1
        ic2[i] = i2

    nc = np.zeros(k, np.int64)
    c[:, :] = 0.0
    for i in range(m):
        L = ic1[i]
        nc[L] += 1
        for j in range(p):
            c[L, j] += a[i, j]
    an1 = np.zeros(k)
    an2 = np.zeros(k)
    itran = np.ones(k, np.int64)
    ncp = np.full(k, -1, np.int64)
    for L in range(k):
        if nc[L] == 0:
            return ic1, nc, 0, 3
        aa = float(nc[L])
        for j in range(p):
            c[L, j] = c[L, j] / aa
        an2[L] = aa / (aa + 1.0)
        an1[L] = aa / (aa - 1.0) if aa > 1.0 else _BIG

    d = np.zeros(m)
    live = np.zeros(k, np.int64)
    indx = 0
    ifault = 2
    max_qtr = 50 * m
    n_iter = 0
    # Point indices are 1-based inside the stages (``step``) because LIVE/NCP store Fortran step numbers.
    for it in range(1, iter_max + 1):
        n_iter = it
        # --- optimal-transfer stage (AS 136.1) ---
        for L in range(k):
            if itran[L] == 1:
                live[L] = m + 1
        done = False
        for i in range(m):
            step = i + 1
            indx += 1
            l1 = ic1[i]
            if nc[l1] != 1:
                if ncp[l1] != 0:
                    s = 0.0
                    for j in range(p):
                        dd = a[i, j] - c[l1, j]
                        s += dd * dd
                    d[i] = s * an1[l1]
                l2 = ic2[i]
                ll = l2
                s = 0.0
                for j in range(p):
                    dd = a[i, j] - c[l2, j]
                    s += dd * dd
                r2 = s * an2[l2]
                l1_dead = step >= live[l1]
                for L in range(k):
                    if (l1_dead and step >= live[L]) or L == l1 or L == ll:
                        continue
                    bound = r2 / an2[L]
                    dc = 0.0
                    below = True
                    for j in range(p):
                        dd = a[i, j] - c[L, j]
                        dc += dd * dd
                        if dc >= bound:
                            below = False
                            break
                    if not below:
                        continue
                    r2 = dc * an2[L]
                    l2 = L
                if r2 >= d[i]:
                    ic2[i] = l2
                else:
                    indx = 0
                    live[l1] = m + step
                    live[l2] = m + step
                    ncp[l1] = step
                    ncp[l2] = step
                    _transfer_nb(a, c, nc, an1, an2, i, l1, l2)
                    ic1[i] = l2
                    ic2[i] = l1
            if indx == m:
                done = True
                break
        if done:
            ifault = 0
            break
        for L in range(k):
            itran[L] = 0
            live[L] -= m

        # --- quick-transfer stage (AS 136.2) ---
        icoun = 0
        istep = 0
        qtr_exceeded = False
        while True:
            stop = False
            for i in range(m):
                icoun += 1
                istep += 1
                if istep >= max_qtr:
                    qtr_exceeded = True
                    stop = True
                    break
                l1 = ic1[i]
                l2 = ic2[i]
                if nc[l1] != 1:
                    if istep <= ncp[l1]:
                        s = 0.0
                        for j in range(p):
                            dd = a[i, j] - c[l1, j]
                            s += dd * dd
                        d[i] = s * an1[l1]
                    if istep < ncp[l1] or istep < ncp[l2]:
                        bound = d[i] / an2[l2]
                        s = 0.0
                        below = True
                        for j in range(p):
                            dd = a[i, j] - c[l2, j]
                            s += dd * dd
                            if s >= bound:
                                below = False
                                break
                        if below:
                            icoun = 0
                            indx = 0
                            itran[l1] = 1
                            itran[l2] = 1
                            ncp[l1] = istep + m
                            ncp[l2] = istep + m
                            _transfer_nb(a, c, nc, an1, an2, i, l1, l2)
                            ic1[i] = l2
                            ic2[i] = l1
                if icoun == m:
                    stop = True
                    break
            if stop:
                break
        if qtr_exceeded:
            ifault = 4
            break
        if k == 2:
            ifault = 0
            break
        for L in range(k):
            ncp[L] = 0
    return ic1, nc, n_iter, ifault


def _transfer_nb_py(a, c, nc, an1, an2, i, l1, l2):  # pragma: no cover - compiled by numba
    al1 = float(nc[l1])
    alw = al1 - 1.0
    al2 = float(nc[l2])
    alt = al2 + 1.0
    for j in range(a.shape[1]):
        c[l1, j] = (c[l1, j] * al1 - a[i, j]) / alw
        c[l2, j] = (c[l2, j] * al2 + a[i, j]) / alt
    nc[l1] -= 1
    nc[l2] += 1
    an2[l1] = alw / al1
    an1[l1] = alw / (alw - 1.0) if alw > 1.0 else _BIG
    an1[l2] = alt / al2
    an2[l2] = alt / (alt + 1.0)


_transfer_nb = _transfer_nb_py  # replaced by its compiled version before the kernel (which calls it) is compiled
_COMPILED: dict[str, Any] = {}


def _hw_kernel(a: np.ndarray, c: np.ndarray, iter_max: int):
    """The compiled AS 136 stages (numba, cached on disk); compiled on first use so ``import jnmf`` stays light."""
    fn = _COMPILED.get("hw")
    if fn is None:
        import numba

        global _transfer_nb
        _transfer_nb = numba.njit(cache=True, nogil=True)(_transfer_nb_py)
        fn = _COMPILED["hw"] = numba.njit(cache=True, nogil=True)(_hw_kernel_py)
    return fn(a, c, iter_max)


def hartigan_wong(x: np.ndarray, centers: np.ndarray, iter_max: int = 100) -> KMeansResult:
    """Hartigan-Wong k-means from given initial centres, as R's ``kmeans(x, centers, algorithm="Hartigan-Wong")``.

    x: (m, p) float64; centers: (k, p) distinct rows, 1 < k < m. Minimises sum_i ||x_i - c_{cl(i)}||^2 by
    optimal-transfer and quick-transfer passes (compiled with numba; bitwise equal to the pure-Python port
    `_hartigan_wong_python`). ``ifault``: 0 ok, 2 not converged in ``iter_max``, 4 quick-transfer step limit (50 m)
    hit; both warn like R. An empty initial cluster raises (R: "empty cluster").
    """
    xa = np.ascontiguousarray(x, dtype=np.float64)
    m, p = xa.shape
    k = int(centers.shape[0])
    if not 1 < k < m:
        raise ValueError(f"number of cluster centres must lie between 2 and nrow(x) - 1 = {m - 1}, got {k}")
    c = np.array(centers, dtype=np.float64, order="C")
    ic1, nc, n_iter, ifault = _hw_kernel(xa, c, int(iter_max))
    if ifault == 3:
        raise RuntimeError("empty cluster: try a better set of initial centers")
    return _finish(xa, ic1, nc, int(n_iter), int(ifault), m, k, p)


def _finish(xa, ic1, nc, n_iter, ifault, m, k, p) -> KMeansResult:
    if ifault == 2:
        warnings.warn(f"k-means did not converge in {n_iter} iterations", RuntimeWarning, stacklevel=3)
    elif ifault == 4:
        warnings.warn(
            f"k-means Quick-TRANSfer stage steps exceeded maximum (= {50 * m})", RuntimeWarning, stacklevel=3
        )

    # Final centres and within-SS from scratch, in kmns.f's loop order (column-major over j, then points), so the
    # totals compared across starts round exactly as in R.
    cl = np.asarray(ic1, dtype=np.int64)
    size = np.asarray(nc, dtype=np.int64)
    sums = np.zeros((k, p))
    for j in range(p):
        sums[:, j] = np.bincount(cl, weights=xa[:, j], minlength=k)
    cen = sums / size[:, None].astype(np.float64)
    terms = (xa - cen[cl]) ** 2  # (m, p)
    wss = np.bincount(np.tile(cl, p), weights=terms.T.ravel(), minlength=k)
    return KMeansResult(cluster=cl, centers=cen, withinss=wss, size=size, iter=n_iter, ifault=ifault)


def _hartigan_wong_python(x: np.ndarray, centers: np.ndarray, iter_max: int = 100) -> KMeansResult:
    """The pure-Python, statement-by-statement port of ``kmns.f`` (slow: ~60 ms per start on 1e3 x 10).

    Kept as the oracle that the compiled `hartigan_wong` is tested against (bitwise); same contract.

    x: (m, p) float64; centers: (k, p) distinct rows, 1 < k < m. Minimises sum_i ||x_i - c_{cl(i)}||^2 by
    optimal-transfer and quick-transfer passes. ``ifault``: 0 ok, 2 not converged in ``iter_max``, 4 quick-transfer
    step limit (50 m) hit; both warn like R. An empty initial cluster raises (R: "empty cluster").
    """
    xa = np.ascontiguousarray(x, dtype=np.float64)
    m, p = xa.shape
    k = int(centers.shape[0])
    if not 1 < k < m:
        raise ValueError(f"number of cluster centres must lie between 2 and nrow(x) - 1 = {m - 1}, got {k}")
    a = xa.tolist()
    c = np.asarray(centers, dtype=np.float64).tolist()
    ic1 = [0] * m
    ic2 = [0] * m

    # Initial assignment: the closest and second-closest centre of every point.
    for i in range(m):
        ai = a[i]
        dt1 = _sqdist(ai, c[0])
        dt2 = _sqdist(ai, c[1])
        i1, i2 = 0, 1
        if dt1 > dt2:
            i1, i2 = 1, 0
            dt1, dt2 = dt2, dt1
        for L in range(2, k):
            db = _sqdist_below(ai, c[L], dt2)
            if db is None:
                continue
            if db >= dt1:
                dt2 = db
                i2 = L
            else:
                dt2 = dt1
                i2 = i1
                dt1 = db
                i1 = L
        ic1[i] = i1
        ic2[i] = i2

    nc = [0] * k
    c = [[0.0] * p for _ in range(k)]
    for i in range(m):
        L = ic1[i]
        nc[L] += 1
        cl = c[L]
        ai = a[i]
        for j in range(p):
            cl[j] += ai[j]
    an1 = [0.0] * k
    an2 = [0.0] * k
    itran = [1] * k
    ncp = [-1] * k
    for L in range(k):
        if nc[L] == 0:
            raise RuntimeError("empty cluster: try a better set of initial centers")
        aa = float(nc[L])
        c[L] = [v / aa for v in c[L]]
        an2[L] = aa / (aa + 1.0)
        an1[L] = aa / (aa - 1.0) if aa > 1.0 else _BIG

    d = [0.0] * m
    live = [0] * k
    indx = 0
    ifault = 2
    max_qtr = 50 * m
    n_iter = 0
    # Point indices are 1-based inside the stages (``step``) because LIVE/NCP store Fortran step numbers.
    for n_iter in range(1, iter_max + 1):  # noqa: B007 (reported as KMeansResult.iter)
        # --- optimal-transfer stage (AS 136.1) ---
        for L in range(k):
            if itran[L] == 1:
                live[L] = m + 1
        done = False
        for i in range(m):
            step = i + 1
            indx += 1
            l1 = ic1[i]
            if nc[l1] != 1:
                ai = a[i]
                if ncp[l1] != 0:
                    d[i] = _sqdist(ai, c[l1]) * an1[l1]
                l2 = ic2[i]
                ll = l2
                r2 = _sqdist(ai, c[l2]) * an2[l2]
                l1_dead = step >= live[l1]
                for L in range(k):
                    if (l1_dead and step >= live[L]) or L == l1 or L == ll:
                        continue
                    dc = _sqdist_below(ai, c[L], r2 / an2[L])
                    if dc is None:
                        continue
                    r2 = dc * an2[L]
                    l2 = L
                if r2 >= d[i]:
                    ic2[i] = l2
                else:
                    indx = 0
                    live[l1] = m + step
                    live[l2] = m + step
                    ncp[l1] = step
                    ncp[l2] = step
                    _transfer(a, c, nc, an1, an2, i, l1, l2)
                    ic1[i] = l2
                    ic2[i] = l1
            if indx == m:
                done = True
                break
        if done:
            ifault = 0
            break
        for L in range(k):
            itran[L] = 0
            live[L] -= m

        # --- quick-transfer stage (AS 136.2) ---
        icoun = 0
        istep = 0
        qtr_exceeded = False
        while True:
            stop = False
            for i in range(m):
                icoun += 1
                istep += 1
                if istep >= max_qtr:
                    qtr_exceeded = True
                    stop = True
                    break
                l1 = ic1[i]
                l2 = ic2[i]
                if nc[l1] != 1:
                    ai = a[i]
                    if istep <= ncp[l1]:
                        d[i] = _sqdist(ai, c[l1]) * an1[l1]
                    if istep < ncp[l1] or istep < ncp[l2]:
                        if _sqdist_below(ai, c[l2], d[i] / an2[l2]) is not None:
                            icoun = 0
                            indx = 0
                            itran[l1] = 1
                            itran[l2] = 1
                            ncp[l1] = istep + m
                            ncp[l2] = istep + m
                            _transfer(a, c, nc, an1, an2, i, l1, l2)
                            ic1[i] = l2
                            ic2[i] = l1
                if icoun == m:
                    stop = True
                    break
            if stop:
                break
        if qtr_exceeded:
            ifault = 4
            break
        if k == 2:
            ifault = 0
            break
        for L in range(k):
            ncp[L] = 0

    return _finish(xa, ic1, nc, n_iter, ifault, m, k, p)


def r_unique_rows(x: np.ndarray) -> np.ndarray:
    """Indices of ``unique(x)`` rows in R: first occurrences, in order.

    R's ``unique.matrix`` compares rows through ``paste(row, collapse="\\r")``, i.e. each value printed with 15
    significant digits, so rows equal to 15 digits count as duplicates there; mimicked here for identical starts.
    """
    xa = np.asarray(x, dtype=np.float64)
    if xa.shape[0] == 0 or xa.shape[1] == 0:
        return np.arange(min(xa.shape[0], 1), dtype=np.int64)  # no rows, or one empty row repeated
    # Only rows whose first value prints like another row's first value can be duplicates: format the full rows of
    # those alone (formatting every value costs ~0.1 s on 2,600 x 15).
    first = [format(v + 0.0, ".15g") for v in xa[:, 0].tolist()]
    _, inv, cnt = np.unique(np.asarray(first), return_inverse=True, return_counts=True)
    shared = cnt[inv] > 1
    if not shared.any():
        return np.arange(xa.shape[0], dtype=np.int64)
    cand = np.flatnonzero(shared)
    keep = np.ones(xa.shape[0], dtype=bool)
    keep[cand] = False
    keep[_unique_rows_by_text(xa[cand], cand)] = True
    return np.flatnonzero(keep).astype(np.int64)


def _unique_rows_by_text(xa: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``index`` of the rows of xa whose 15-digit text is new, in order."""
    seen: set[tuple[str, ...]] = set()
    keep = []
    for i, row in zip(index.tolist(), xa.tolist(), strict=True):
        key = tuple(format(v + 0.0, ".15g") for v in row)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def r_kmeans(x: np.ndarray, k: int, *, rng: RRandom, nstart: int = 10, iter_max: int = 100) -> KMeansResult:
    """``stats::kmeans(x, centers=k, nstart=nstart, iter.max=iter_max)`` with R's RNG stream ``rng``.

    Each start takes ``k`` distinct rows of ``unique(x)`` via ``sample.int``; the first start is kept unless a later
    one has a strictly smaller total within-cluster sum of squares (R's rule).
    """
    xa = np.asarray(x, dtype=np.float64)
    cn = xa[r_unique_rows(xa)]
    mm = cn.shape[0]
    if mm < k:
        raise ValueError(f"more cluster centers ({k}) than distinct data points ({mm})")
    if nstart == 1:
        # R draws from all rows when nstart == 1 and falls back to unique rows only if duplicates were drawn.
        start = xa[rng.sample_int(xa.shape[0], k) - 1]
        if r_unique_rows(start).size < k:
            start = cn[rng.sample_int(mm, k) - 1]
        return hartigan_wong(xa, start, iter_max)
    best = hartigan_wong(xa, cn[rng.sample_int(mm, k) - 1], iter_max)
    best_ss = _r_sum(best.withinss)
    for _ in range(1, nstart):
        fit = hartigan_wong(xa, cn[rng.sample_int(mm, k) - 1], iter_max)
        ss = _r_sum(fit.withinss)
        if ss < best_ss:
            best, best_ss = fit, ss
    return best


def _r_sum(v: np.ndarray) -> float:
    """R's ``sum()`` of doubles: sequential accumulation in long double, rounded once."""
    acc = np.longdouble(0.0)
    for val in np.asarray(v, dtype=np.float64):
        acc += np.longdouble(val)
    return float(acc)
