"""Per-iteration time of jnmf against scikit-learn's NMF(solver="cd") at equal iteration counts (tol = 0).

Prints, for each problem, the median ms/iteration over several runs (compile time shown separately) and the
ratio sklearn / jnmf (> 1 means jnmf is faster). Usage: ``python experiments/bench_nmf.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

import jnmf


def _time_jnmf(A, k, iters, repeats, **opts):
    problem = jnmf.prepare(A, k, seed=1, tol=0.0, maxit=iters, **opts)
    t0 = time.perf_counter()
    jnmf.solve(problem).d.block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = jnmf.solve(problem)
        model.d.block_until_ready()
        times.append(time.perf_counter() - t0)
    assert int(model.iter) == iters
    per_iter = np.median(times) / iters
    # First call minus a warm call: compilation (clipped at 0, since timing noise can exceed it for small fits).
    return per_iter * 1e3, max(first - np.median(times), 0.0) * 1e3, problem.config.solver


def _time_sklearn(A, k, iters, repeats):
    times = []
    for _ in range(repeats):
        est = NMF(n_components=k, solver="cd", init="random", random_state=0, max_iter=iters, tol=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            est.fit(A)
            times.append(time.perf_counter() - t0)
        assert est.n_iter_ == iters
    return np.median(times) / iters * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    problems = []
    try:
        A = jnmf.datasets.load_hawaiibirds(args.data_dir).A
        problems.append(("hawaiibirds 183x1183", A, [8]))
    except FileNotFoundError as e:
        print(f"skipping hawaiibirds: {e}")
    rng = np.random.default_rng(0)
    S = sp.random(14_000, 2_600, density=0.15, random_state=rng, format="csc", dtype=np.float64)
    problems.append(("synthetic 14000x2600 15% nnz", S, [10, 20, 50]))

    header = (f"{'problem':30s} {'k':>3s} {'path':>22s} {'jnmf ms/it':>11s} {'compile ms':>11s} "
              f"{'sklearn ms/it':>14s} {'ratio':>6s}")
    print(header)
    print("-" * len(header))
    for name, A, ks in problems:
        for k in ks:
            sk = _time_sklearn(A, k, args.iters, max(2, args.repeats // 2))
            for layout in ("dense", "sparse"):
                seen = set()
                for solver in ("auto", "cholesky", "cd"):
                    ms, compile_ms, used = _time_jnmf(A, k, args.iters, args.repeats, layout=layout, solver=solver)
                    if used in seen:
                        continue
                    seen.add(used)
                    path = f"{layout}/{used}" + (" (auto)" if solver == "auto" else "")
                    print(f"{name:30s} {k:3d} {path:>22s} {ms:11.2f} {compile_ms:11.0f} {sk:14.2f} {sk / ms:6.2f}",
                          flush=True)

if __name__ == "__main__":
    main()
