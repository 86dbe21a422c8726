"""The 1,000,000 x 20,000 fit (issue 16): ms per iteration and peak memory of jnmf against scikit-learn.

A scRNA-like matrix of ``--cells`` (1,000,000) cells and ``--genes`` (20,000) genes at ``--density`` (2%: about
400M non-zeros), k = 20, ``--iters`` (5) iterations at tol = 0. jnmf's orientation is A (genes x cells);
scikit-learn gets X = A' (cells x genes) as CSR float32, its natural orientation. Both are the same three arrays:
A's CSC is X's CSR.

The matrix is generated without ever holding a COO or float64 copy (``scipy.sparse.random`` of 400M entries would
need ~10 GB): per-cell counts ``Binomial(genes, density * s_j)`` (library-size factor ``s_j``, lognormal with mean
1), then each block of cells draws its genes uniformly, sorts the (cell, gene) keys as int32 and redraws the
duplicates until every cell's genes are distinct (by symmetry the result is a uniform subset of the drawn size);
values ``log1p(1 + Poisson(mu_gene))`` in float32. The arrays are written straight into ``.npy`` files under
``--cache`` (a temporary name, then ``os.replace``; ``meta.json`` last marks the cache complete), so both fits
and later runs reuse them.

Each method runs in its own subprocess, so its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its
own: loading the arrays (into anonymous memory, not a memory map), building its input, the fit.
jnmf: ``prepare(A, 20, tol=0, maxit=N)`` then ``solve`` twice (the first compiles); ``nmf`` is exactly
``solve(prepare(...))``. ms/iteration is the warm solve / N; the layout is whatever ``layout="auto"`` picks
(printed), and ``jnmf.estimate_memory`` of that layout is printed next to the measured peak.
scikit-learn: ``NMF(n_components=20, solver="cd", init="random", max_iter=N, tol=0).fit(X)``, wall / N (the
convention of ``_timing.time_sklearn``). Prints a table and writes ``results/bench_million/results.json``.

Usage: ``python experiments/bench_million.py [--cells 1000000] [--genes 20000] [--density 0.02] [--iters 5]
[--cache /tmp/jnmf_million] [--methods jnmf,sklearn,products]``. On the 2-core, 24 GiB machine generation took
40 s (1.6 GB each for data and indices), the jnmf worker about 3 minutes and scikit-learn's under 1 minute
(docs/speed.md, "The 1,000,000-cell fit").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_FILES = ("data", "indices", "indptr")


def _rss_gib() -> float:
    """Current resident set size (VmRSS) in GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _cpu_s() -> float:
    """User + system CPU seconds of this process so far (less sensitive than wall time to other work's load)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _meta(cells: int, genes: int, density: float, seed: int) -> dict:
    return {"cells": cells, "genes": genes, "density": density, "seed": seed, "version": 1}


def generate(cells: int, genes: int, density: float, seed: int, cache: Path, block: int = 20_000) -> dict:
    """Write X (cells x genes) CSR float32 = A (genes x cells) CSC as ``data``/``indices``/``indptr`` ``.npy`` files
    under ``cache`` (reused when ``meta.json`` matches); returns the meta, with ``nnz``."""
    want = _meta(cells, genes, density, seed)
    meta_path = cache / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {key: meta.get(key) for key in want} == want and all((cache / f"{f}.npy").exists() for f in _FILES):
            print(f"matrix: reusing {cache} ({meta['nnz']:,} non-zeros)", flush=True)
            return meta
    cache.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    if block * genes >= 2**31:
        raise ValueError(f"block * genes must stay below 2**31 (int32 keys), got {block} * {genes}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    size = rng.lognormal(0.0, 0.4, cells)
    p = np.clip(density * size / size.mean(), 0.0, 1.0)
    counts = rng.binomial(genes, p).astype(np.int64)
    indptr = np.zeros(cells + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    idx_dtype = np.int32 if max(nnz, genes, cells) < 2**31 else np.int64
    gene_mu = rng.lognormal(-1.0, 1.0, genes)  # mean count per gene, above the 1 of a detected gene
    tmp = {f: cache / f"{f}.tmp.npy" for f in _FILES}
    data = np.lib.format.open_memmap(tmp["data"], mode="w+", dtype=np.float32, shape=(nnz,))
    indices = np.lib.format.open_memmap(tmp["indices"], mode="w+", dtype=idx_dtype, shape=(nnz,))
    for lo in range(0, cells, block):
        hi = min(lo + block, cells)
        c = counts[lo:hi]
        local = np.repeat(np.arange(hi - lo, dtype=np.int32), c)
        keys = local * np.int32(genes) + rng.integers(0, genes, local.size, dtype=np.int32)
        while True:
            keys.sort()
            dup = np.flatnonzero(keys[1:] == keys[:-1]) + 1
            if dup.size == 0:
                break
            # Redraw the gene of each repeat within its own cell (keys sorted by cell, so the cell is key // genes).
            keys[dup] = (keys[dup] // genes) * genes + rng.integers(0, genes, dup.size, dtype=np.int32)
        rows = keys % np.int32(genes)
        a, b = int(indptr[lo]), int(indptr[hi])
        indices[a:b] = rows
        data[a:b] = np.log1p(1.0 + rng.poisson(gene_mu[rows])).astype(np.float32)
    data.flush()
    indices.flush()
    del data, indices
    np.save(tmp["indptr"], indptr.astype(idx_dtype))
    for f in _FILES:
        os.replace(tmp[f], cache / f"{f}.npy")
    meta = {**want, "nnz": nnz, "generate_s": round(time.perf_counter() - t0, 1)}
    part = cache / "meta.tmp.json"
    part.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(part, meta_path)
    print(f"matrix: generated {nnz:,} non-zeros in {meta['generate_s']} s into {cache}", flush=True)
    return meta


def _load(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(cache / f"{f}.npy") for f in _FILES)


def worker_jnmf(cache: Path, meta: dict, k: int, iters: int, solver: str = "rcppml") -> dict:
    import jax
    import scipy.sparse as sp

    import jnmf
    from jnmf._data import sparse_kernel_for

    data, indices, indptr = _load(cache)
    A = sp.csc_matrix((data, indices, indptr), shape=(meta["genes"], meta["cells"]), copy=False)
    del data, indices, indptr
    loaded = _rss_gib()
    t0 = time.perf_counter()
    problem = jnmf.prepare(A, k, seed=1, tol=0.0, maxit=iters, solver=solver)
    prepare_s = time.perf_counter() - t0
    after_prepare = _rss_gib()
    times, cpu = [], []
    for _ in range(2):  # the first call compiles
        t0, c0 = time.perf_counter(), _cpu_s()
        model = jnmf.solve(problem)
        model.d.block_until_ready()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
    assert int(model.iter) == iters
    data_type = type(problem.data).__name__
    layout = "dense" if data_type == "DenseData" else "sparse"
    kernel = sparse_kernel_for("auto")
    est = jnmf.estimate_memory(*A.shape, k, int(A.nnz), layout=layout, sparse_kernel=kernel)
    return {"method": "jnmf", "platform": jax.devices()[0].platform, "layout": layout, "data": data_type,
            "sparse_kernel": kernel if layout == "sparse" else None, "solver": problem.config.solver,
            "ms_per_iter": times[1] / iters * 1e3, "cpu_ms_per_iter": cpu[1] / iters * 1e3,
            "first_solve_s": times[0], "warm_solve_s": times[1],
            "prepare_s": prepare_s, "loss": float(model.loss), "rss_loaded_gib": loaded,
            "rss_after_prepare_gib": after_prepare, "peak_rss_gib": _peak_gib(), "estimate_gib": est / 2**30}


def worker_sklearn(cache: Path, meta: dict, k: int, iters: int) -> dict:
    import warnings

    import scipy.sparse as sp
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    data, indices, indptr = _load(cache)
    X = sp.csr_matrix((data, indices, indptr), shape=(meta["cells"], meta["genes"]), copy=False)
    del data, indices, indptr
    loaded = _rss_gib()
    est = NMF(n_components=k, solver="cd", init="random", random_state=0, max_iter=iters, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0, c0 = time.perf_counter(), _cpu_s()
        est.fit(X)
        fit_s, fit_cpu = time.perf_counter() - t0, _cpu_s() - c0
    assert est.n_iter_ == iters
    return {"method": "scikit-learn", "input": "csr float32 (cells x genes)", "ms_per_iter": fit_s / iters * 1e3,
            "cpu_ms_per_iter": fit_cpu / iters * 1e3, "fit_s": fit_s,
            "loss": float(est.reconstruction_err_) ** 2,  # |X - W H|_F^2, as jnmf's loss
            "rss_loaded_gib": loaded, "peak_rss_gib": _peak_gib()}


def worker_products(cache: Path, meta: dict, k: int, iters: int) -> dict:
    """Where an iteration's time goes: each of the host kernel's two products once warm (best of ``iters``), and
    scipy's single-threaded CSC product for ``H A'`` (a scatter into the small m side instead of a gather from
    the n side)."""
    import scipy.sparse as sp

    from jnmf._csr_kernel import csr_times_t

    data, indices, indptr = _load(cache)
    m, n = meta["genes"], meta["cells"]
    A_csc = sp.csc_matrix((data, indices, indptr), shape=(m, n), copy=False)  # = A' by rows, as HostSparseData
    A_csr = A_csc.tocsr()
    rng = np.random.default_rng(0)
    W, H = rng.random((k, m), dtype=np.float32), rng.random((k, n), dtype=np.float32)
    HT = np.ascontiguousarray(H.T)
    runs = {"kernel_WA_ms": lambda: csr_times_t(indptr, indices, data, W),
            "kernel_HAt_ms": lambda: csr_times_t(A_csr.indptr, A_csr.indices, A_csr.data, H),
            "scipy_csc_HAt_ms": lambda: A_csc @ HT}
    res = {"method": "products"}
    for name, f in runs.items():
        f()
        times = []
        for _ in range(max(2, min(iters, 3))):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        res[name] = min(times) * 1e3
    return res


def _load_avg() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_worker(method: str, args: argparse.Namespace) -> dict:
    """One method in a fresh interpreter; its JSON result, or the failure (e.g. killed for memory)."""
    out = Path(args.cache) / f"result_{method}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", method, "--cache", args.cache, "--k", str(args.k),
           "--iters", str(args.iters), "--result", str(out), "--solver", args.solver]
    before = _load_avg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    wall = time.perf_counter() - t0
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest child so far
    if proc.returncode != 0 or not out.exists():
        res = {"method": method, "failed": f"exit status {proc.returncode}", "children_peak_rss_gib": child}
    else:
        res = json.loads(out.read_text())
    res.update(wall_s=wall, uptime_before=before, uptime_after=_load_avg())
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--density", type=float, default=0.02)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--iters", type=int, default=5)
    # As bench_scale: RcppML's rule (Cholesky-then-clip at k = 20), with which the README's numbers were measured.
    parser.add_argument("--solver", default="rcppml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="/tmp/jnmf_million")
    parser.add_argument("--methods", default="jnmf,sklearn",
                        help="comma-separated, run in this order: jnmf, sklearn, products (the two products alone)")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_million"))
    parser.add_argument("--worker", choices=("jnmf", "sklearn", "products"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("cells", "genes", "k", "iters"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not 0 < args.density <= 1:
        raise SystemExit(f"--density must be in (0, 1], got {args.density}")

    methods = args.methods.split(",")
    unknown = sorted(set(methods) - {"jnmf", "sklearn", "products"})
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)} (choose from jnmf, sklearn, products)")
    cache = Path(args.cache)
    if args.worker:
        meta = json.loads((cache / "meta.json").read_text())
        fn = {"jnmf": worker_jnmf, "sklearn": worker_sklearn, "products": worker_products}[args.worker]
        res = fn(cache, meta, args.k, args.iters, **({"solver": args.solver} if args.worker == "jnmf" else {}))
        part = Path(args.result).with_suffix(".tmp")
        part.write_text(json.dumps(res) + "\n")
        os.replace(part, args.result)
        return

    meta = generate(args.cells, args.genes, args.density, args.seed, cache)
    results = [run_worker(m, args) for m in methods]
    by = {r["method"]: r for r in results}
    jn, sk, pr = by.get("jnmf", {}), by.get("scikit-learn", by.get("sklearn", {})), by.get("products", {})
    print(f"\n{meta['genes']:,} genes x {meta['cells']:,} cells, {meta['nnz']:,} non-zeros "
          f"({meta['nnz'] / (meta['genes'] * meta['cells']):.2%}), k = {args.k}, {args.iters} iterations")
    print(f"{'method':14s} {'ms/iter':>9s} {'CPU ms/iter':>12s} {'peak RSS GiB':>13s} {'after load GiB':>15s} "
          f"{'estimate GiB':>13s}")
    for r in (jn, sk):
        if "ms_per_iter" in r:
            est = f"{r['estimate_gib']:13.2f}" if "estimate_gib" in r else f"{'':13s}"
            print(f"{r['method']:14s} {r['ms_per_iter']:9.0f} {r['cpu_ms_per_iter']:12.0f} {r['peak_rss_gib']:13.2f} "
                  f"{r['rss_loaded_gib']:15.2f} "
                  f"{est}")
        elif r:
            print(f"{r['method']:14s} failed: {r['failed']}")
    if "ms_per_iter" in jn:
        print(f"jnmf layout: {jn['layout']} ({jn['data']}, kernel {jn['sparse_kernel']}), solver {jn['solver']}, "
              f"prepare {jn['prepare_s']:.1f} s, first solve {jn['first_solve_s']:.1f} s")
    ratio = sk["ms_per_iter"] / jn["ms_per_iter"] if "ms_per_iter" in jn and "ms_per_iter" in sk else None
    if ratio is not None:
        print(f"scikit-learn / jnmf ms per iteration: {ratio:.2f}x")
    if "kernel_WA_ms" in pr:
        print(f"products (ms): host kernel W A {pr['kernel_WA_ms']:.0f}, host kernel H A' {pr['kernel_HAt_ms']:.0f}, "
              f"scipy CSC H A' (1 thread) {pr['scipy_csc_HAt_ms']:.0f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"matrix": meta, "k": args.k, "iters": args.iters, "jnmf": jn, "sklearn": sk, "products": pr,
               "ratio_sklearn_over_jnmf": ratio}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
