"""jnmf.inmf against pyliger 0.2.4's ``optimize_ALS``: objective values from the same data, init and lambda, and
ms per iteration on a 2-batch, 2,000 genes x 5,000 cells (total) problem, k = 20, in the same run.

pyliger needs its own environment (its pins clash with the project's)::

    python -m venv /work/venv-liger && /work/venv-liger/bin/pip install pyliger
    python experiments/bench_inmf.py [--liger-python /work/venv-liger/bin/python] [--iters 5]

The pyliger side runs in a subprocess of that interpreter (``--worker``), reading and writing .npz files.
pyliger's update order is jnmf's (every H_i, every V_i, then W, exact NNLS by block principal pivoting), so the
objectives agree to the accuracy of the inner solvers. Its iteration includes its objective (two dense norms per
batch), which jnmf forms by the Gram identity.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def worker(inp: str, out: str) -> None:
    """Run pyliger.optimize_ALS on the inputs of ``inp`` (cells x genes orientation) and save factors and time."""
    import anndata
    import pyliger

    z = np.load(inp, allow_pickle=False)
    b = int(z["b"])
    Xs = [sp.csr_matrix(z[f"X{i}"]) for i in range(b)]

    class Obj:  # the attributes optimize_ALS reads and writes
        pass

    obj = Obj()
    obj.adata_list = [anndata.AnnData(X=X, layers={"scale_data": X}) for X in Xs]
    obj.num_samples = b
    obj.var_genes = [str(g) for g in range(Xs[0].shape[1])]
    res = {}
    for iters in [int(x) for x in z["iters"]]:
        t = time.perf_counter()
        pyliger.optimize_ALS(obj, int(z["k"]), value_lambda=float(z["lam"]), thresh=0.0, max_iters=iters,
                             W_init=z["W"].copy(), V_init=[z[f"V{i}"].copy() for i in range(b)],
                             H_init=[z[f"H{i}"].copy() for i in range(b)])
        res[f"time_{iters}"] = time.perf_counter() - t
        res[f"W_{iters}"] = obj.adata_list[0].varm["W"]
        for i in range(b):
            res[f"V{i}_{iters}"] = obj.adata_list[i].varm["V"]
            res[f"H{i}_{iters}"] = obj.adata_list[i].obsm["H"]
    res["version"] = np.asarray(pyliger.__version__ if hasattr(pyliger, "__version__") else "0.2.4")
    np.savez(out, **res)


def run_pyliger(python: str, As, W, Vs, Hs, k, lam, iters, tmp):
    """As (genes x cells) and jnmf-oriented inits; returns {iters: (W, [V_i], [H_i], seconds)} jnmf-oriented."""
    inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
    arrays = {"b": len(As), "k": k, "lam": lam, "iters": np.asarray(iters), "W": W.T}
    for i, A in enumerate(As):
        arrays[f"X{i}"] = np.asarray(A.toarray() if sp.issparse(A) else A).T
        arrays[f"V{i}"], arrays[f"H{i}"] = Vs[i].T, Hs[i].T
    np.savez(inp, **arrays)
    subprocess.run([python, __file__, "--worker", inp, out], check=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"})
    z = np.load(out)
    return {t: (z[f"W_{t}"], [z[f"V{i}_{t}"] for i in range(len(As))], [z[f"H{i}_{t}"].T for i in range(len(As))],
                float(z[f"time_{t}"])) for t in iters}


def objective(As, W, Vs, Hs, lam):
    tot = 0.0
    for A, V, H in zip(As, Vs, Hs, strict=True):
        A = A.toarray() if sp.issparse(A) else A
        tot += np.sum((A - (W + V) @ H) ** 2) + lam * np.sum((V @ H) ** 2)
    return tot


def simulate(m, n, k, density, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.3, 1.0, (m, k))
    As = []
    for n_i in n:
        V = 0.3 * rng.gamma(0.3, 1.0, (m, k))
        H = rng.gamma(0.3, 1.0, (k, n_i))
        A = (W + V) @ H * (rng.random((m, n_i)) < density)  # dropout, as scaled single-cell counts
        As.append(sp.csr_matrix(A))
    return As


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--liger-python", default="/work/venv-liger/bin/python")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--worker", nargs=2)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax

    jax.config.update("jax_enable_x64", True)
    import jnmf
    from jnmf import _inmf

    have_liger = Path(args.liger_python).exists()
    with tempfile.TemporaryDirectory() as tmp:
        # 1. Objectives: same data, init and lambda, float64, iterations 1, 3 and 10.
        m, n, k, lam = 300, (400, 250), 10, 5.0
        As = simulate(m, n, k, 0.3)
        W0, V0, H0 = _inmf.initial_factors(1, m, n, k)
        Hs0 = [H0[i, :, :n_i] for i, n_i in enumerate(n)]
        its = [1, 3, 10]
        model = jnmf.inmf(As, k, w_init=W0, v_init=list(V0), h_init=Hs0, lambda_=lam, maxit=10, tol=0.0,
                          cd_tol=1e-12, cd_maxit=2000, dtype="float64")
        hist = np.asarray(model.loss_history)
        print(f"objective, {m} x {n}, k={k}, lambda={lam}, float64, same init:")
        if have_liger:
            ref = run_pyliger(args.liger_python, As, W0, list(V0), Hs0, k, lam, its, tmp)
            for t in its:
                W, Vs, Hs, _ = ref[t]
                obj = objective(As, W, Vs, Hs, lam)
                print(f"  iter {t:2d}: jnmf {hist[t - 1]:.10g}  pyliger {obj:.10g}  rel diff "
                      f"{abs(hist[t - 1] - obj) / obj:.2e}")
        else:
            print(f"  pyliger not found at {args.liger_python}; jnmf only: {hist[[t - 1 for t in its]]}")

        # 2. Speed: 2 batches, 2,000 genes x 5,000 cells total, k = 20, 10% non-zeros.
        m, n, k = 2000, (2500, 2500), 20
        As = simulate(m, n, k, 0.1, seed=1)
        W0, V0, H0 = _inmf.initial_factors(2, m, n, k)
        Hs0 = [H0[i, :, :n_i] for i, n_i in enumerate(n)]
        iters = args.iters
        print(f"\nspeed, 2 batches, {m} x {sum(n)} (total), k={k}, 10% non-zeros, {iters} iterations, "
              f"{os.cpu_count()} CPUs:")
        for dtype in ("float32", "float64"):
            for layout in ("dense", "sparse"):
                times = []
                for _rep in range(3):  # the first run compiles
                    t = time.perf_counter()
                    fit = jnmf.inmf(As, k, w_init=W0, v_init=list(V0), h_init=Hs0, lambda_=5.0, maxit=iters,
                                    tol=0.0, layout=layout, dtype=dtype)
                    jax.block_until_ready(fit.w)
                    times.append(time.perf_counter() - t)
                ms = 1e3 * np.median(times[1:]) / iters
                print(f"  jnmf {dtype} {layout:6s}: {ms:8.1f} ms/iteration (first call incl. compile "
                      f"{times[0]:.1f} s)")
                if dtype == "float32" and layout == "dense":
                    jn_ms = ms
        if have_liger:
            ref = run_pyliger(args.liger_python, As, W0, list(V0), Hs0, k, 5.0, [iters], tmp)
            ms = 1e3 * ref[iters][3] / iters
            print(f"  pyliger 0.2.4 (float64, numpy): {ms:8.1f} ms/iteration; ratio pyliger / jnmf float32 dense "
                  f"= {ms / jn_ms:.1f}")


if __name__ == "__main__":
    main()
