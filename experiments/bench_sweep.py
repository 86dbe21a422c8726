"""Throughput of a 64-member target_lambda grid on hawaiibirds: jnmf.sweep against loops of single fits.

Methods, all fitting the same 64 guided models (k = 8, tol 1e-4, maxit 100, seed 42, float32, T from the seed-42
baseline, as in the vignette):

* ``sweep``: ``jnmf.sweep(A, 8, target_lambda=grid, ...)`` with the default lanes (16 per CPU device: a lane whose
  member converges takes the next one) and with ``lanes=64`` (every member at once: a plain vmapped grid);
* ``vmap(solve)``: the one-liner ``jax.jit(jax.vmap(lambda lam: jnmf.solve(problem, target_lambda=lam)))``;
* ``loop nmf``: ``[jnmf.nmf(A, 8, target_lambda=lam, ...) for lam in grid]``, the way RcppML users run a grid;
* ``loop solve``: ``[jnmf.solve(problem, target_lambda=lam) for lam in grid]`` on one prepared problem (no input
  validation per fit);
* ``sklearn``: ``NMF(solver="cd", tol=0, max_iter=<that member's jnmf iteration count>)`` per member: equal
  iterations (scikit-learn has no target, so this times the factorisation itself).

Warm times (compile excluded; medians over ``--repeats``); compile time is reported separately (first call minus
a warm call). Grids: ``enrich`` (lambda in [0, 0.3]) and ``signed`` (lambda in [-0.3, 0.3], removal="project").
Run: ``python experiments/bench_sweep.py [--repeats 5] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

import jnmf

K = 8
FIT = dict(tol=1e-4, maxit=100)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _first_and_warm(fn, repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    return first, _median_time(fn, repeats)


def bench_grid(name, A, T, lams, removal, repeats) -> dict:
    n = len(lams)
    common = dict(target_H=T, removal=removal, seed=42, **FIT)
    out = {"grid": name, "members": n, "lambda_range": [float(lams[0]), float(lams[-1])], "removal": removal}

    singles = [jnmf.nmf(A, K, target_lambda=float(lam), **common) for lam in lams]  # also warms nmf up
    iters = np.asarray([int(m.iter) for m in singles])
    out["iter_sum"], out["iter_max"] = int(iters.sum()), int(iters.max())

    methods = {}
    sweep_kw = dict(target_lambda=lams, seeds=42, target_H=T, removal=removal, **FIT)
    result = None
    for label, lanes in (("sweep", None), ("sweep lanes=64", n)):
        def run(lanes=lanes):
            nonlocal result
            result = jnmf.sweep(A, K, lanes=lanes, **sweep_kw)
            jax.block_until_ready(result.model.d)  # numpy (already ready) when gathered on the host
        first, warm = _first_and_warm(run, repeats)
        methods[label] = {"seconds": warm, "compile_s": first - warm, "lanes": result.lanes}
        if lanes is None:
            swept = result

    problem = jnmf.prepare(A, K, target_lambda=0.0, **common)
    batched = jax.jit(jax.vmap(lambda lam: jnmf.solve(problem, target_lambda=lam)))
    lam_arr = jnp.asarray(lams, problem.w_init.dtype)
    first, warm = _first_and_warm(lambda: batched(lam_arr).d.block_until_ready(), repeats)
    methods["vmap(solve)"] = {"seconds": warm, "compile_s": first - warm}

    def loop_nmf():
        for lam in lams:
            jnmf.nmf(A, K, target_lambda=float(lam), **common)

    def loop_solve():
        for lam in lam_arr:
            model = jnmf.solve(problem, target_lambda=lam)
        model.d.block_until_ready()

    loop_solve()  # warm: the per-call conversions compile once
    methods["loop nmf"] = {"seconds": _median_time(loop_nmf, max(1, repeats // 2))}
    methods["loop solve"] = {"seconds": _median_time(loop_solve, max(1, repeats // 2))}

    def loop_sklearn():
        for it in iters:
            est = NMF(n_components=K, solver="cd", init="random", random_state=0, max_iter=int(it), tol=0.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                est.fit(A)

    methods["sklearn cd"] = {"seconds": _median_time(loop_sklearn, max(1, repeats // 3))}
    for m in methods.values():
        m["fits_per_s"] = n / m["seconds"]
    out["methods"] = methods

    # Agreement of the sweep with the loop of single fits (float32: a member may stop one iteration apart when
    # its relative loss change is within rounding of tol).
    swept_iter = swept.diagnostics()["iter"]
    same = swept_iter == iters
    h = np.asarray(swept.model.h)
    out["agreement"] = {
        "iter_equal": int(same.sum()),
        "iter_off_by_one": int(np.sum(np.abs(swept_iter - iters) == 1)),
        "max_abs_h_diff_equal_iter": float(max(np.max(np.abs(h[i] - np.asarray(singles[i].h)))
                                              for i in np.flatnonzero(same))),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--grids", nargs="+", default=["enrich", "signed"], choices=["enrich", "signed", "proj_adv"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    data = jnmf.datasets.load_hawaiibirds(args.data_dir)
    A, island = data.A, data.obs["island"]
    T = np.asarray(jnmf.compute_target(jnmf.nmf(A, K, seed=42, **FIT).h, island))
    grids = {
        "enrich": (np.linspace(0.0, 0.3, args.members), "proj_adv"),
        "signed": (np.linspace(-0.3, 0.3, args.members), "project"),
        "proj_adv": (np.linspace(-0.3, 0.3, args.members), "proj_adv"),
    }
    env = {"devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(), "jax": jax.__version__,
           "machine": platform.machine()}
    print(f"hawaiibirds 183 x 1183, k = {K}, {args.members} members, float32; {env['cpus']} CPUs, "
          f"devices {env['devices']}")
    results = []
    for name in args.grids:
        lams, removal = grids[name]
        r = bench_grid(name, A, T, lams, removal, args.repeats)
        results.append(r)
        print(f"\ngrid {name}: lambda in [{lams[0]:.2f}, {lams[-1]:.2f}], removal={removal}; iterations per member: "
              f"sum {r['iter_sum']}, max {r['iter_max']}")
        base = r["methods"]["loop nmf"]["fits_per_s"]
        print(f"  {'method':16s} {'fits/s':>8s} {'x loop nmf':>10s} {'seconds':>8s} {'compile s':>9s}")
        for label, m in r["methods"].items():
            compile_s = f"{m['compile_s']:9.2f}" if "compile_s" in m else f"{'':9s}"
            print(f"  {label:16s} {m['fits_per_s']:8.1f} {m['fits_per_s'] / base:10.2f} {m['seconds']:8.3f} "
                  f"{compile_s}")
        a = r["agreement"]
        print(f"  sweep vs loop: {a['iter_equal']}/{r['members']} equal iteration counts "
              f"({a['iter_off_by_one']} one apart: float32 ties at tol); max |h diff| where equal "
              f"{a['max_abs_h_diff_equal_iter']:.1e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
