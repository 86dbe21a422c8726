"""Removal of label information on hawaiibirds: RcppML's PROJ_ADV against jnmf's convergent removal modes.

Fits the vignette's models (k = 8, tol 1e-4, maxit 100, seed 42, T = compute_target(baseline h, island)) and
prints, per method: NMI, ARI and kNN accuracy of ``jnmf.assess`` w.r.t. island (RcppML's protocol: classes with
fewer than 10 cells dropped), the MSE ratio to the baseline, iterations and convergence. Lower NMI/ARI/kNN at a
small MSE ratio is better removal.

Methods: ``proj_adv`` (RcppML, lambda = -0.10); ``curvature`` (the first ``removal="project"`` kernel,
``G + |lam| tr(G)/tr(G_T) G_T``, re-created here to compare); ``project`` (the current ``removal_project_rhs``:
``B - |lam| B P``, P the projector onto the class contrasts); enrichment (+0.10) for reference.

Run: ``python experiments/removal_modes.py [--float32] [--json PATH]``. float64 by default: PROJ_ADV's chaotic
iterates overflow float32 by iteration ~87 and ``nmf`` refuses the non-finite model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import warnings

import jax
import jax.numpy as jnp

import jnmf
from jnmf import _features

CURVATURE_LAMBDAS = (-0.1, -0.5, -1.0)
PENALTY_LAMBDAS = (-0.1, -0.3, -0.5, -1.0)


def curvature_removal(G, B, T, G_T, lam):
    """The first penalty kernel: adds ``|lam| a/2 x' G_T x`` (a = tr G / tr G_T) to each column's problem."""
    ratio = jnp.where(jnp.trace(G_T) > 1e-10, jnp.trace(G) / jnp.maximum(jnp.trace(G_T), 1e-10), 0.0)
    return G + jnp.abs(lam) * ratio * G_T, B


@contextlib.contextmanager
def removal_kernel(kernel):
    """Swap the kernel behind ``removal="project"``; compiled fits are dropped so the swap takes effect."""
    saved = _features.removal_project_rhs
    _features.removal_project_rhs = kernel
    jax.clear_caches()
    try:
        yield
    finally:
        _features.removal_project_rhs = saved
        jax.clear_caches()


def scores(model, A, island, mse_base):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # assess warns about the three islands with < 10 cells, as RcppML does
        m = jnmf.assess(model, island, metrics=("nmi", "ari", "classification"), classifiers=("knn",)).metrics
    return {
        "nmi": m["nmi"],
        "ari": m["ari"],
        "knn_acc": m["accuracy_knn"],
        "mse_ratio": jnmf.evaluate(model, A) / mse_base,
        "iter": int(model.iter),
        "converged": bool(model.converged),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float32", action="store_true", help="fit in float32 (PROJ_ADV may then fail)")
    parser.add_argument("--json", help="also write the table to this file")
    args = parser.parse_args()
    if not args.float32:
        jax.config.update("jax_enable_x64", True)

    data = jnmf.datasets.load_hawaiibirds()
    A, island = data.A, data.obs["island"]
    fit = dict(tol=1e-4, maxit=100, seed=42)
    base = jnmf.nmf(A, 8, **fit)
    mse_base = jnmf.evaluate(base, A)
    T = jnmf.compute_target(base.h, island)

    runs = [
        ("baseline", 0.0, lambda: base),
        ("enrich", 0.10, lambda: jnmf.nmf(A, 8, target_H=T, target_lambda=0.10, **fit)),
        ("proj_adv", -0.10, lambda: jnmf.nmf(A, 8, target_H=T, target_lambda=-0.10, removal="proj_adv", **fit)),
    ]
    rows = []
    for name, lam, make in runs:
        t0 = time.perf_counter()
        try:
            result = scores(make(), A, island, mse_base)
        except FloatingPointError as err:  # PROJ_ADV in float32
            print(f"{name} {lam}: {err}")
            nan = float("nan")
            result = {"nmi": nan, "ari": nan, "knn_acc": nan, "mse_ratio": nan, "iter": -1, "converged": False}
        rows.append({"method": name, "lambda": lam, **result, "seconds": time.perf_counter() - t0})
    for name, kernel, lams in (("curvature", curvature_removal, CURVATURE_LAMBDAS),
                               ("project", _features.removal_project_rhs, PENALTY_LAMBDAS)):
        with removal_kernel(kernel):
            for lam in lams:
                t0 = time.perf_counter()
                model = jnmf.nmf(A, 8, target_H=T, target_lambda=lam, removal="project", **fit)
                rows.append({"method": name, "lambda": lam, **scores(model, A, island, mse_base),
                             "seconds": time.perf_counter() - t0})

    dtype = "float32" if args.float32 else "float64"
    print(f"hawaiibirds, k = 8, seed 42, {dtype}; baseline MSE {mse_base:.7f}")
    print(f"{'method':<10} {'lambda':>7} {'NMI':>6} {'ARI':>6} {'kNN':>6} {'MSE x':>6} {'iter':>5} {'conv':>5}")
    for r in rows:
        print(f"{r['method']:<10} {r['lambda']:>7.2f} {r['nmi']:>6.3f} {r['ari']:>6.3f} {r['knn_acc']:>6.3f} "
              f"{r['mse_ratio']:>6.2f} {r['iter']:>5d} {str(r['converged']):>5}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"dtype": dtype, "mse_base": mse_base, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
