"""Gradient-based tuning of target_lambda with optax, against the answer of a grid sweep.

Goal (the vignette's trade-off made explicit): the largest class separation of the guided embedding whose MSE
ratio to the unguided fit stays at most ``--max-mse-ratio`` (1.5). Class separation is
``jnmf.class_separation`` (between-class share of the embedding's scatter w.r.t. island, in [0, 1]).

* Grid: ``jnmf.sweep`` over ``--grid-num`` lambdas in [0, ``--grid-stop``] (converged fits, tol and maxit from
  the config); the answer is the grid lambda with the highest separation among those within the MSE budget.
* Gradient: a differentiable fit (``jnmf.prepare_differentiable``: ``maxit`` fixed scan iterations) and Adam on
  ``J(lam) = -separation(lam) + rho * max(0, mse_ratio(lam) - budget)^2`` (cosine-decayed learning rate), with
  ``jax.value_and_grad`` through the fit. The tuned lambda is then refitted with ``jnmf.nmf`` (the usual
  stopping rule) and scored like the grid.

Data, k, the target and the fit settings come from ``experiments/lambda_sweep.toml``. Run:
``python experiments/tune_lambda.py [--max-mse-ratio 1.5] [--seeds 42 1 2] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnmf

ROOT = Path(__file__).resolve().parents[1]


def scores(model, A, labels, mse_base: float) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # islands with < 10 cells are dropped by assess, as in RcppML
        m = jnmf.assess(model, labels, metrics=("nmi", "ari", "classification"), classifiers=("knn",)).metrics
    return {"separation": float(jnmf.class_separation(model, labels)), "mse_ratio": jnmf.evaluate(model, A) / mse_base,
            "nmi": float(m["nmi"]), "ari": float(m["ari"]), "knn_acc": float(m["accuracy_knn"]),
            "iter": int(model.iter)}


def grid_answer(A, k, T, labels, seed, fit, budget, lams) -> dict:
    t0 = time.perf_counter()
    result = jnmf.sweep(A, k, target_lambda=lams, seeds=seed, target_H=T, **fit)
    sep = np.asarray(jax.vmap(lambda m: jnmf.class_separation(m, labels))(result.model))
    loss = result.diagnostics()["loss"]
    ratio = loss / loss[0] if lams[0] == 0 else None
    if ratio is None:
        raise ValueError("the lambda grid must start at 0 (the unguided fit is the MSE-ratio denominator)")
    seconds = time.perf_counter() - t0
    ok = ratio <= budget
    best = int(np.flatnonzero(ok)[np.argmax(sep[ok])])
    # Where the MSE ratio crosses the budget, by linear interpolation between grid points.
    above = np.flatnonzero(~ok)
    crossing = None
    if above.size and above[0] > 0:
        i = above[0]
        crossing = float(lams[i - 1] + (budget - ratio[i - 1]) / (ratio[i] - ratio[i - 1]) * (lams[i] - lams[i - 1]))
    return {"lambda": float(lams[best]), "index": best, "crossing": crossing, "seconds": seconds,
            "separation": sep.tolist(), "mse_ratio": ratio.tolist(), "model": result.member(best)}


def gradient_answer(A, k, T, labels, seed, budget, args) -> dict:
    problem = jnmf.prepare_differentiable(A, k, maxit=args.maxit, seed=seed, target_H=T)
    base_loss = jnmf.solve(problem, target_lambda=0.0).loss

    def objective(lam):
        model = jnmf.solve(problem, target_lambda=lam)
        ratio = model.loss / base_loss
        sep = jnmf.class_separation(model, labels)
        return -sep + args.rho * jnp.maximum(ratio - budget, 0.0) ** 2, (sep, ratio)

    step_fn = jax.jit(jax.value_and_grad(objective, has_aux=True))
    # The cosine decay lets Adam settle instead of oscillating around the MSE-budget boundary.
    opt = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps))
    lam = jnp.asarray(args.lambda0, problem.w_init.dtype)
    state = opt.init(lam)
    t0 = time.perf_counter()
    trace = []
    for i in range(args.steps):
        (value, (sep, ratio)), grad = step_fn(lam)
        trace.append({"step": i, "lambda": float(lam), "objective": float(value), "separation": float(sep),
                      "mse_ratio": float(ratio), "grad": float(grad)})
        updates, state = opt.update(grad, state)
        lam = optax.apply_updates(lam, updates)
    (_, (sep, ratio)), _ = step_fn(lam)
    trace.append({"step": args.steps, "lambda": float(lam), "separation": float(sep), "mse_ratio": float(ratio)})
    return {"lambda": float(lam), "seconds": time.perf_counter() - t0, "trace": trace}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "lambda_sweep.toml")
    parser.add_argument("--max-mse-ratio", type=float, default=1.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--grid-stop", type=float, default=0.3)
    parser.add_argument("--grid-num", type=int, default=61)
    parser.add_argument("--maxit", type=int, default=100, help="iterations of the differentiable fit")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--lambda0", type=float, default=0.05)
    parser.add_argument("--rho", type=float, default=100.0, help="penalty weight on the MSE-ratio excess")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    if cfg["fit"].get("dtype") == "float64":
        jax.config.update("jax_enable_x64", True)

    data = jnmf.datasets.load_hawaiibirds(cfg["data"].get("dir"))
    A, labels = data.A, data.obs[cfg["data"]["labels"]]
    k = cfg["fit"]["k"]
    fit = {key: cfg["fit"][key] for key in ("tol", "maxit", "dtype")}
    base = jnmf.nmf(A, k, seed=cfg["target"]["seed"], **fit)
    T = np.asarray(jnmf.compute_target(base.h, labels, whiten=cfg["target"]["whiten"]))
    lams = np.round(np.linspace(0.0, args.grid_stop, args.grid_num), 10)
    budget = args.max_mse_ratio

    rows = []
    for seed in args.seeds:
        mse_base = jnmf.evaluate(jnmf.nmf(A, k, seed=seed, **fit), A)
        grid = grid_answer(A, k, T, labels, seed, fit, budget, lams)
        grad = gradient_answer(A, k, T, labels, seed, budget, args)
        refit = jnmf.nmf(A, k, seed=seed, target_H=T, target_lambda=grad["lambda"], **fit)
        row = {"seed": seed, "budget": budget,
               "grid": {"lambda": grid["lambda"], "crossing": grid["crossing"], "seconds": grid["seconds"],
                        "fits": len(lams), **scores(grid["model"], A, labels, mse_base)},
               "gradient": {"lambda": grad["lambda"], "seconds": grad["seconds"], "steps": args.steps,
                            **scores(refit, A, labels, mse_base)},
               "trace": grad["trace"], "grid_curve": {"lambda": lams.tolist(), "separation": grid["separation"],
                                                       "mse_ratio": grid["mse_ratio"]}}
        rows.append(row)
        print(f"seed {seed}: goal max separation with MSE ratio <= {budget}")
        for i in range(0, len(grad["trace"]), max(1, args.steps // 6)):
            t = grad["trace"][i]
            print(f"  step {t['step']:3d}  lambda {t['lambda']:.4f}  separation {t['separation']:.4f}  "
                  f"MSE ratio (scan fit) {t['mse_ratio']:.4f}")
        crossing = "n/a" if grid["crossing"] is None else f"{grid['crossing']:.4f}"
        print(f"  {'':9s} {'lambda':>8s} {'separation':>10s} {'MSE ratio':>9s} {'NMI':>6s} {'ARI':>6s} {'kNN':>6s} "
              f"{'iter':>5s} {'seconds':>8s}")
        for name in ("grid", "gradient"):
            r = row[name]
            print(f"  {name:9s} {r['lambda']:8.4f} {r['separation']:10.4f} {r['mse_ratio']:9.4f} {r['nmi']:6.3f} "
                  f"{r['ari']:6.3f} {r['knn_acc']:6.3f} {r['iter']:5d} {r['seconds']:8.2f}")
        print(f"  grid: {len(lams)} fits, step {lams[1] - lams[0]:.4f}; interpolated MSE-ratio crossing at lambda "
              f"{crossing}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
