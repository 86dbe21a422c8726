"""Benchmark of rank selection: the 10-rank x 10-replicate CV grid in one call against a loop of ``nmf()`` calls,
and ``jnmf.consensus`` against the ``cnmf`` package (spectra agreement, chosen k, time), on hawaiibirds.

``python experiments/bench_choose_k.py [--out results/bench_choose_k] [--cnmf-python /work/venv-cnmf/bin/python]``

cnmf (1.7.x, a comparison only, never a dependency) runs in its own virtual environment as a subprocess, on the
same data (cells x species = A', all 183 species kept, cNMF's unit-variance scaling), k, replicates and density
threshold; jnmf then factorizes cNMF's own normalised matrix, so both see the same numbers. Timings are wall
seconds of one run on this machine; no assertion depends on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

import jnmf
from jnmf import _consensus, _cv

CNMF_SCRIPT = textwrap.dedent("""
    import json, sys, time, numpy as np, anndata as ad, scipy.sparse as sp
    from cnmf import cNMF
    from cnmf.cnmf import load_df_from_npz
    work, ks = sys.argv[1], json.loads(sys.argv[2])
    reps, k_main, dt = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    X = sp.load_npz(work + "/counts.npz").tocsr()  # cells x genes
    a = ad.AnnData(X=X)
    a.obs_names = [f"c{i}" for i in range(X.shape[0])]
    a.var_names = [f"g{j}" for j in range(X.shape[1])]
    a.write_h5ad(work + "/counts.h5ad")
    open(work + "/genes.txt", "w").write("\\n".join(a.var_names))
    t = time.perf_counter()
    c = cNMF(output_dir=work, name="hb")
    c.prepare(counts_fn=work + "/counts.h5ad", components=ks, n_iter=reps, seed=14, genes_file=work + "/genes.txt")
    t_prep = time.perf_counter() - t
    c.factorize(worker_i=0, total_workers=1)
    c.combine()
    t_fact = time.perf_counter() - t
    c.k_selection_plot(close_fig=True)
    t_ksel = time.perf_counter() - t
    c.consensus(k=k_main, density_threshold=dt, show_clustering=False, close_clustergram_fig=True)
    t_all = time.perf_counter() - t
    stats = load_df_from_npz(c.paths["k_selection_stats"])
    spectra = load_df_from_npz(c.paths["consensus_spectra"] % (k_main, str(dt).replace(".", "_")))
    norm = ad.read_h5ad(c.paths["normalized_counts"]).X
    norm = norm.toarray() if sp.issparse(norm) else np.asarray(norm)
    np.savez(work + "/cnmf_out.npz", norm=norm, spectra=spectra.values, k=stats["k"].values,
             silhouette=stats["silhouette"].values, prediction_error=stats["prediction_error"].values)
    json.dump(dict(prepare_s=t_prep, factorize_s=t_fact - t_prep, k_selection_s=t_ksel - t_fact,
                   consensus_s=t_all - t_ksel, total_s=t_all), open(work + "/cnmf_times.json", "w"))
""")


def cv_grid_vs_loop(A, ks, seeds, report) -> dict:
    kwargs = dict(test_fraction=0.05, tol=1e-4, maxit=100)
    t = time.perf_counter()
    res = jnmf.cross_validate(A, ks, seeds=seeds, **kwargs)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    res = jnmf.cross_validate(A, ks, seeds=seeds, **kwargs)
    warm = time.perf_counter() - t
    n_fits = len(ks) * len(seeds)
    report(f"grid: {n_fits} fits, cold {cold:.1f} s, warm {warm:.1f} s ({n_fits / warm:.2f} fits/s), "
           f"padded={res.padded}, iterations {res.iter.min()}..{res.iter.max()} (sum {res.iter.sum()})")
    masks = {s: _cv.holdout_mask(A.shape, 0.05, s) for s in seeds}
    dense = A.toarray()

    def loop():
        out = np.zeros((len(ks), len(seeds)))
        for i, k in enumerate(ks):
            for r, s in enumerate(seeds):
                mod = jnmf.nmf(A, k, seed=s, mask=masks[s], tol=1e-4, maxit=100)
                resid = dense - (np.asarray(mod.w) * np.asarray(mod.d)) @ np.asarray(mod.h)
                out[i, r] = np.mean(resid[masks[s]] ** 2)
        return out

    t = time.perf_counter()
    loop_test = loop()
    loop_cold = time.perf_counter() - t
    t = time.perf_counter()
    loop_test = loop()
    loop_warm = time.perf_counter() - t
    report(f"loop of nmf(): cold {loop_cold:.1f} s, warm {loop_warm:.1f} s ({n_fits / loop_warm:.2f} fits/s); "
           f"grid speed-up warm {loop_warm / warm:.2f}x, cold {loop_cold / cold:.2f}x; "
           f"max |test MSE grid - loop| / loop = {np.max(np.abs(res.test_mse / loop_test - 1)):.1e}")
    return dict(n_fits=n_fits, grid_cold_s=cold, grid_warm_s=warm, loop_cold_s=loop_cold, loop_warm_s=loop_warm,
                grid_fits_per_s=n_fits / warm, loop_fits_per_s=n_fits / loop_warm, speedup_warm=loop_warm / warm,
                speedup_cold=loop_cold / cold, total_iterations=int(res.iter.sum()), max_iterations=int(res.iter.max()),
                max_rel_diff_test=float(np.max(np.abs(res.test_mse / loop_test - 1))), chosen_k=res.k)


def consensus_vs_cnmf(A, ks, reps, k_main, dt, cnmf_python, report) -> dict:
    import scipy.sparse as sp

    with tempfile.TemporaryDirectory() as work:
        sp.save_npz(work + "/counts.npz", sp.csr_matrix(A.T))
        t = time.perf_counter()
        proc = subprocess.run([cnmf_python, "-c", CNMF_SCRIPT, work, json.dumps(ks), str(reps), str(k_main), str(dt)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError("cnmf failed:\n" + proc.stderr[-3000:])
        out = dict(np.load(work + "/cnmf_out.npz"))
        times = json.load(open(work + "/cnmf_times.json"))
    times["subprocess_wall_s"] = wall
    X = out["norm"].T  # genes x cells: jnmf's orientation (features x samples)
    t = time.perf_counter()
    ours = jnmf.consensus(X, ks, reps=reps, seed=0, density_threshold=2.0, tol=1e-4, maxit=100)
    t_ksel_cold = time.perf_counter() - t
    t = time.perf_counter()  # the same call again: its programs are compiled now
    ours = jnmf.consensus(X, ks, reps=reps, seed=0, density_threshold=2.0, tol=1e-4, maxit=100)
    t_ksel = time.perf_counter() - t
    t = time.perf_counter()
    main = jnmf.consensus(X, k_main, reps=reps, seed=0, density_threshold=dt, tol=1e-4, maxit=100)
    t_main = time.perf_counter() - t
    table = _consensus.k_selection_table(ours)
    w_cnmf = out["spectra"].T  # (genes, k)
    C = np.corrcoef(np.asarray(main.model.w).T, w_cnmf.T)[:k_main, k_main:]
    r, c = linear_sum_assignment(-C)
    corr = C[r, c]
    n_fits = len(ks) * reps
    pick = dict(jnmf=int(table["k"][np.argmax(table["silhouette"])]),
                cnmf=int(out["k"][np.argmax(out["silhouette"])]))
    report(f"consensus: jnmf k-selection cold {t_ksel_cold:.1f} s, warm {t_ksel:.1f} s + k={k_main} {t_main:.1f} s "
           f"({n_fits / t_ksel:.1f} fits/s warm); "
           f"cnmf factorize {times['factorize_s']:.1f} s, k-selection {times['k_selection_s']:.1f} s, consensus "
           f"{times['consensus_s']:.1f} s ({n_fits / times['factorize_s']:.1f} fits/s); matched spectra correlation "
           f"{np.array2string(np.sort(corr)[::-1], precision=4)}; most stable k: jnmf {pick['jnmf']}, "
           f"cnmf {pick['cnmf']}")
    return dict(ks=list(ks), reps=reps, k=k_main, density_threshold=dt, jnmf_k_selection_s=t_ksel,
                jnmf_k_selection_cold_s=t_ksel_cold,
                jnmf_consensus_s=t_main, jnmf_fits_per_s=n_fits / t_ksel, cnmf=times,
                cnmf_fits_per_s=n_fits / times["factorize_s"], spectra_correlation=corr.tolist(),
                jnmf_silhouette=table["silhouette"].tolist(), cnmf_silhouette=out["silhouette"].tolist(),
                jnmf_prediction_error=table["prediction_error"].tolist(),
                cnmf_prediction_error=out["prediction_error"].tolist(), most_stable_k=pick,
                jnmf_silhouette_k=float(main.silhouette), jnmf_kept=int(main.kept.sum()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench_choose_k")
    ap.add_argument("--cnmf-python", default="/work/venv-cnmf/bin/python")
    ap.add_argument("--skip-cnmf", action="store_true")
    ap.add_argument("--skip-cv", action="store_true")
    ap.add_argument("--k", type=int, default=8, help="the rank whose consensus spectra are compared with cnmf's")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    A = jnmf.datasets.load_hawaiibirds().A

    def report(msg):
        print(msg, flush=True)

    results = {} if args.skip_cv else {"cv": cv_grid_vs_loop(A, list(range(2, 12)), list(range(1, 11)), report)}
    if not args.skip_cnmf:
        results["consensus"] = consensus_vs_cnmf(A, [4, 6, 8, 10, 12], 20, args.k, 0.5, args.cnmf_python, report)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
