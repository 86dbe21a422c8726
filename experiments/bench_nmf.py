"""Per-iteration time of jnmf against scikit-learn's NMF(solver="cd") at equal iteration counts (tol = 0).

Prints, for each problem, the median ms/iteration over several runs (compile time shown separately) and the
ratio sklearn / jnmf (> 1 means jnmf is faster); scikit-learn gets the fastest of the usual input forms
(``time_sklearn_best``). Usage: ``python experiments/bench_nmf.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp
from _timing import time_jnmf, time_sklearn_best  # experiments/ is on sys.path when run as a script

import jnmf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--ks", default=None, help="ranks of the synthetic problem (default 10,20,50,100)")
    parser.add_argument("--solvers", default="auto,cholesky,cd,bpp,hals", help="jnmf solvers to time")
    parser.add_argument("--skip-hawaiibirds", action="store_true")
    args = parser.parse_args()
    solvers = args.solvers.split(",")

    problems = []
    try:
        if not args.skip_hawaiibirds:
            problems.append(("hawaiibirds 183x1183", jnmf.datasets.load_hawaiibirds(args.data_dir).A, [8]))
    except FileNotFoundError as e:
        print(f"skipping hawaiibirds: {e}")
    rng = np.random.default_rng(0)
    S = sp.random(14_000, 2_600, density=0.15, random_state=rng, format="csc", dtype=np.float64)
    ks = [10, 20, 50, 100] if args.ks is None else [int(k) for k in args.ks.split(",")]
    problems.append(("synthetic 14000x2600 15% nnz", S, ks))

    header = (f"{'problem':30s} {'k':>3s} {'path':>22s} {'jnmf ms/it':>11s} {'compile ms':>11s} "
              f"{'sklearn ms/it':>14s} {'ratio':>6s}")
    print(header)
    print("-" * len(header))
    for name, A, ks in problems:
        for k in ks:
            sk, sk_input = time_sklearn_best(A, k, args.iters, max(2, args.repeats // 2))
            print(f"{name:30s} {k:3d} scikit-learn input: {sk_input}")
            for layout in ("dense", "sparse"):
                seen = set()
                for solver in solvers:
                    ms, compile_ms, used = time_jnmf(A, k, args.iters, args.repeats, layout=layout, solver=solver)
                    if used in seen:
                        continue
                    seen.add(used)
                    path = f"{layout}/{used}" + (" (auto)" if solver == "auto" else "")
                    print(f"{name:30s} {k:3d} {path:>22s} {ms:11.2f} {compile_ms:11.0f} {sk:14.2f} {sk / ms:6.2f}",
                          flush=True)

if __name__ == "__main__":
    main()
