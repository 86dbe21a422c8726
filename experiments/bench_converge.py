"""Time to a given loss: jnmf's solvers against scikit-learn's CD and MU (and nmf-torch's HALS where installed).

For each matrix and k, every method runs from the same initial W0 (m, k) (uniform(0, 1) scaled by
sqrt(mean(A) / k), scikit-learn's random-init scale; scikit-learn and nmf-torch also get the same H0 (k, n), drawn
the same way; jnmf solves H from W0 first, as RcppML) and records its loss after every iteration. The loss is
the relative squared error ``|A - WH|_F^2 / |A|_F^2``. The best loss any method reaches is the reference;
the table gives each method's wall time to come within 1e-3 and 1e-4 (relative) of it ("-": never within the
time budget).

Timing: jnmf runs one fit of ``maxit`` iterations with tol = 0 (compiled before, compile time shown separately),
its ``loss_history`` gives the loss per iteration and the whole fit's wall time over its iteration count gives
the time per iteration. scikit-learn runs its own update functions (``sklearn.decomposition._nmf``'s
``_update_coordinate_descent`` and ``_multiplicative_update_w/_h``, the bodies of its fit loops) with a timer
around each iteration, the loss evaluated outside the timer; its input is float32 CSR for CD (its fastest form in
``bench_nmf.py``) and float32 dense or CSR for MU (whichever a short probe finds faster). nmf-torch's batch HALS
(PyTorch's CPU build, dense float32, 2 threads) runs one outer iteration at a time, timed around its own
``_update_H``/``_update_W``, in the separate venv ``--torch-python``.

Each method gets ``--budget`` seconds (jnmf: iterations estimated from a 3-iteration probe) and at most
``--maxit`` iterations. Matrices: the 14,000 x 2,600 uniform sparse matrix at 15 % (``bench_nmf.py``) and an
scRNA-like 14,000 x 2,700 genes x cells matrix at ~6 % non-zeros (negative-binomial counts from a rank-12 mean,
log1p). Run: ``python experiments/bench_converge.py out.png [--ks 10,50] [--quick] [--matrices uniform,scrna]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's jnmf
import jnmf  # noqa: E402
from jnmf._options import resolve_solver  # noqa: E402

JNMF_SOLVERS = ("auto", "cholesky", "cd", "bpp", "hals")


def uniform_matrix() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.random(14_000, 2_600, density=0.15, random_state=rng, format="csr", dtype=np.float64)


def scrna_matrix(m: int = 14_000, n: int = 2_700, rank: int = 12, seed: int = 0) -> sp.csr_matrix:
    """Genes x cells: counts ~ NB(mean mu, dispersion 0.5) with mu = library size x gene weights x programme
    usage (rank ``rank``), scaled so that ~6 % of entries are non-zero; returns log1p(counts) as float64 CSR."""
    rng = np.random.default_rng(seed)
    genes = rng.gamma(0.3, 1.0, (m, rank)) * (rng.random((m, rank)) < 0.3)
    usage = rng.dirichlet(np.full(rank, 0.2), n).T  # (rank, n)
    lib = rng.lognormal(0.0, 0.4, n)
    mu = genes @ usage * lib  # (m, n)
    mu *= 0.09 / mu.mean()
    theta = 0.5
    lam = rng.gamma(theta, mu / theta)
    counts = rng.poisson(lam)
    return sp.csr_matrix(np.log1p(counts))


def init_factors(A, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.sqrt(A.mean() / k)
    m, n = A.shape
    return scale * rng.random((m, k)), scale * rng.random((k, n))


def run_jnmf(A, W0, solver: str, budget: float, maxit: int) -> dict:
    """Loss per iteration, ms per iteration and compile seconds of one jnmf fit with tol = 0."""
    k = W0.shape[1]

    probe = jnmf.prepare(A, k, w_init=W0, tol=0.0, maxit=3, solver=solver)
    used = probe.config.solver
    jnmf.solve(probe).d.block_until_ready()  # compiles the 3-iteration program
    t0 = time.perf_counter()
    jnmf.solve(probe).d.block_until_ready()
    per_it = max((time.perf_counter() - t0) / 3, 1e-4)
    iters = int(min(maxit, max(5, budget / per_it)))
    t0 = time.perf_counter()
    problem = jnmf.prepare(A, k, w_init=W0, tol=0.0, maxit=iters, solver=solver)
    jnmf.solve(problem).d.block_until_ready()  # compile this maxit
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = jnmf.solve(problem)
    model.d.block_until_ready()
    wall = time.perf_counter() - t0
    compile_s = max(compile_s - wall, 0.0)
    n = int(model.iter)
    sq = sp.linalg.norm(A) ** 2 if sp.issparse(A) else float(np.sum(np.asarray(A) ** 2))
    loss = np.asarray(model.loss_history, np.float64)[:n] / sq
    # the final model's loss evaluated in float64, as a check on the Gram-identity history
    W = np.asarray(model.w, np.float64) * np.asarray(model.d, np.float64)
    H = np.asarray(model.h, np.float64)
    final = rel_loss(A, W, H, sq)
    times = wall * np.arange(1, n + 1) / n
    return dict(method=f"jnmf {solver}" + (f" ({used})" if solver == "auto" else ""), times=times.tolist(),
                loss=loss.tolist(), ms_per_it=1e3 * wall / n, compile_s=compile_s, final=final, iters=n)


def rel_loss(A, W, H, sq) -> float:
    """|A - WH|^2 / |A|^2 by the Gram identity in float64 (W (m, k), H (k, n))."""
    AH = (A @ H.T) if sp.issparse(A) else np.asarray(A) @ H.T  # (m, k)
    return float((sq - 2 * np.sum(AH * W) + np.sum((W.T @ W) * (H @ H.T))) / sq)


def run_sklearn(A, W0, H0, solver: str, budget: float, maxit: int) -> dict:
    from sklearn.decomposition._nmf import (
        _multiplicative_update_h,
        _multiplicative_update_w,
        _update_coordinate_descent,
    )

    sq = sp.linalg.norm(A) ** 2
    if solver == "cd":
        X, form = sp.csr_matrix(A, dtype=np.float32), "csr float32"
    else:
        forms = {"dense float32": np.asarray(A.toarray(), np.float32),
                 "csr float32": sp.csr_matrix(A, dtype=np.float32)}
        probe = {}
        for name, Xf in forms.items():
            W, H = W0.astype(np.float32), H0.astype(np.float32)
            t0 = time.perf_counter()
            for _ in range(2):
                W = _multiplicative_update_w(Xf, W, H, 2, 0, 0, 1.0)[0]
                H = _multiplicative_update_h(Xf, W, H, 2, 0, 0, 1.0)
            probe[name] = time.perf_counter() - t0
        form = min(probe, key=probe.get)
        X = forms[form]
    W = np.ascontiguousarray(W0.astype(X.dtype))
    Ht = np.ascontiguousarray(H0.T.astype(X.dtype))
    H = H0.astype(X.dtype)
    XT = X.T.tocsr() if sp.issparse(X) else np.ascontiguousarray(X.T)
    rng = np.random.RandomState(0)
    times, loss, elapsed = [], [], 0.0
    for _ in range(maxit):
        t0 = time.perf_counter()
        if solver == "cd":
            _update_coordinate_descent(X, W, Ht, 0.0, 0.0, False, rng)
            _update_coordinate_descent(XT, Ht, W, 0.0, 0.0, False, rng)
        else:
            W = _multiplicative_update_w(X, W, H, 2, 0, 0, 1.0)[0]
            H = _multiplicative_update_h(X, W, H, 2, 0, 0, 1.0)
        elapsed += time.perf_counter() - t0
        times.append(elapsed)
        loss.append(rel_loss(A, W.astype(np.float64), (Ht.T if solver == "cd" else H).astype(np.float64), sq))
        if elapsed > budget:
            break
    return dict(method=f"sklearn {solver} ({form})", times=times, loss=loss, ms_per_it=1e3 * elapsed / len(times),
                compile_s=0.0, final=loss[-1], iters=len(times))


_TORCH_SCRIPT = r"""
import json, sys, time
import numpy as np, scipy.sparse as sp, torch
from nmf.nmf_models import NMFBatchHALS
d = np.load(sys.argv[1])
X = sp.load_npz(sys.argv[2]).toarray().astype(np.float32)  # samples x features
budget, maxit = float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
# nmf-torch 0.1.1's fit has neither a custom init nor a per-iteration hook: its own batch HALS (run_nmf's
# algo="halsvar": up to 200 inner sweeps per update, hals_tol 0.05) is driven here one outer iteration at a time,
# from the shared initial factors, timing only the updates.
model = NMFBatchHALS(n_components=d["W0"].shape[1], init="random", beta_loss=2.0, tol=0.0, random_state=0,
                     alpha_W=0.0, l1_ratio_W=0.0, alpha_H=0.0, l1_ratio_H=0.0, fp_precision="float",
                     device_type="cpu", n_jobs=2, max_iter=maxit)
model._initialize_H_W = lambda eps=1e-6: (setattr(model, "H", torch.from_numpy(d["W0"].astype(np.float32))),
                                          setattr(model, "W", torch.from_numpy(d["H0"].astype(np.float32))))
t0 = time.perf_counter()
super(NMFBatchHALS, model).fit(X)
setup = time.perf_counter() - t0
ss = float(np.sum(X.astype(np.float64) ** 2))
out, elapsed = [], 0.0
for it in range(1, maxit + 1):
    t0 = time.perf_counter()
    model._update_H()
    model._update_W()
    elapsed += time.perf_counter() - t0
    H, W = model.H.numpy().astype(np.float64), model.W.numpy().astype(np.float64)
    out.append((it, elapsed, float(np.sum((X - H @ W) ** 2) / ss)))
    if elapsed > budget:
        break
print(json.dumps(dict(rows=out, setup=setup)))
"""


def run_torch(A, W0, H0, python: str, budget: float, maxit: int) -> dict | str:
    """nmf-torch's batch HALS, one outer iteration at a time (compile_s: its setup, the Grams); samples = A'."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "init.npz"), W0=H0.T, H0=W0.T)  # nmf-torch: X (samples, features) = A'
        sp.save_npz(os.path.join(tmp, "A.npz"), sp.csr_matrix(A.T))
        script = os.path.join(tmp, "run.py")
        Path(script).write_text(_TORCH_SCRIPT)
        try:
            res = subprocess.run([python, script, os.path.join(tmp, "init.npz"), os.path.join(tmp, "A.npz"),
                                  str(budget), str(maxit)], capture_output=True, text=True, timeout=4 * budget + 120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"nmf-torch failed: {e}"
    if res.returncode != 0:
        return f"nmf-torch failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    rows = out["rows"]
    return dict(method="nmf-torch HALS (dense float32)", times=[r[1] for r in rows], loss=[r[2] for r in rows],
                ms_per_it=1e3 * rows[-1][1] / rows[-1][0], compile_s=out["setup"], final=rows[-1][2],
                iters=rows[-1][0])


def time_to(run: dict, target: float) -> float | None:
    for t, v in zip(run["times"], run["loss"], strict=True):
        if v <= target:
            return t
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figure", help="path of the loss-vs-time figure (png)")
    ap.add_argument("--ks", default="10,20,50,100")
    ap.add_argument("--matrices", default="uniform,scrna")
    ap.add_argument("--quick", action="store_true", help="budget 8 s and at most 60 iterations per method")
    ap.add_argument("--budget", type=float, default=40.0, help="seconds per method and problem")
    ap.add_argument("--maxit", type=int, default=400)
    ap.add_argument("--solvers", default=",".join(JNMF_SOLVERS), help="jnmf solvers to run")
    ap.add_argument("--peers", default="cd,mu,torch", help="of sklearn cd, mu and nmf-torch")
    ap.add_argument("--torch-python", default="/work/venv-torch/bin/python")
    ap.add_argument("--json", default=None, help="also write the raw curves here")
    ap.add_argument("--from-json", default=None, help="print the tables and draw the figure of an earlier --json")
    args = ap.parse_args()
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        for res in results:
            print_table(res)
        plot(results, args.figure)
        print_summary(results)
        return
    if args.quick:
        args.budget, args.maxit = min(args.budget, 8.0), min(args.maxit, 60)
    ks = [int(k) for k in args.ks.split(",")]
    builders = {"uniform": ("uniform 14000x2600 15%", uniform_matrix), "scrna": ("scRNA-like 14000x2700", scrna_matrix)}
    peers = args.peers.split(",") if args.peers else []
    torch_ok = "torch" in peers and Path(args.torch_python).exists() and subprocess.run(
        [args.torch_python, "-c", "import nmf, torch"], capture_output=True).returncode == 0
    if "torch" in peers and not torch_ok:
        print(f"nmf-torch skipped: {args.torch_python} has no nmf-torch (make one: python3 -m venv DIR && "
              "DIR/bin/pip install torch nmf-torch, PyTorch's CPU build; then --torch-python DIR/bin/python)")
    results = []
    for key in args.matrices.split(","):
        label, build = builders[key]
        A = build()
        print(f"\n## {label}: {A.shape[0]} x {A.shape[1]}, {A.nnz / np.prod(A.shape):.1%} non-zeros", flush=True)
        for k in ks:
            W0, H0 = init_factors(A, k)
            runs, done = [], set()
            for solver in args.solvers.split(","):
                # a solver that "auto" resolves to is not run twice
                used = resolve_solver(solver, k)
                if used in done:
                    continue
                done.add(used)
                runs.append(run_jnmf(A, W0, solver, args.budget, args.maxit))
                print(f"  k={k} {runs[-1]['method']}: {runs[-1]['iters']} it, {runs[-1]['ms_per_it']:.1f} ms/it, "
                      f"final {runs[-1]['final']:.6f}", flush=True)
            for p in peers:
                if p in ("cd", "mu"):
                    runs.append(run_sklearn(A, W0, H0, p, args.budget, args.maxit))
                elif p == "torch" and torch_ok:
                    r = run_torch(A, W0, H0, args.torch_python, args.budget, args.maxit)
                    if isinstance(r, str):
                        print("  " + r)
                        continue
                    runs.append(r)
                else:
                    continue
                print(f"  k={k} {runs[-1]['method']}: {runs[-1]['iters']} it, {runs[-1]['ms_per_it']:.1f} ms/it, "
                      f"final {runs[-1]['final']:.6f}", flush=True)
            best = min(min(r["loss"]) for r in runs)
            results.append(dict(matrix=label, k=k, best=best, runs=runs))
            print_table(results[-1])
    plot(results, args.figure)
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    print_summary(results)


def print_table(res: dict) -> None:
    best = res["best"]
    print(f"\n### {res['matrix']}, k = {res['k']} (best relative loss {best:.6f})\n")
    print("| method | ms/iter | compile s | iters | final loss | s to 1e-3 | s to 1e-4 |")
    print("|---|---|---|---|---|---|---|")
    for r in res["runs"]:
        t3, t4 = (time_to(r, best * (1 + tol)) for tol in (1e-3, 1e-4))
        f = lambda t: "-" if t is None else f"{t:.2f}"  # noqa: E731
        print(f"| {r['method']} | {r['ms_per_it']:.1f} | {r['compile_s']:.1f} | {r['iters']} | {r['final']:.6f} | "
              f"{f(t3)} | {f(t4)} |", flush=True)


def print_summary(results: list[dict]) -> None:
    """The default's time to each threshold against the fastest peer (ratio > 1: jnmf faster)."""
    print("\n## jnmf default against the fastest peer (time to loss)\n")
    print("| matrix | k | tol | jnmf auto s | fastest peer | peer s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        auto = next((r for r in res["runs"] if r["method"].startswith("jnmf auto")), None)
        peers = [r for r in res["runs"] if not r["method"].startswith("jnmf")]
        if auto is None or not peers:
            continue
        for tol in (1e-3, 1e-4):
            target = res["best"] * (1 + tol)
            ta = time_to(auto, target)
            tp = [(time_to(r, target), r["method"]) for r in peers]
            reached = [(t, m) for t, m in tp if t is not None]
            tpb, name = min(reached) if reached else (None, "none reached")
            ratio = "-" if ta is None or tpb is None else f"{tpb / ta:.2f}"
            f = lambda t: "-" if t is None else f"{t:.2f}"  # noqa: E731
            print(f"| {res['matrix']} | {res['k']} | {tol:.0e} | {f(ta)} | {name} | {f(tpb)} | {ratio} |")
    print("\n## jnmf default to the loss the best peer reached in its budget\n")
    print("| matrix | k | best peer | its final loss | peer s | jnmf auto s | ratio | ms/iter auto / peer |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        auto = next((r for r in res["runs"] if r["method"].startswith("jnmf auto")), None)
        peers = [r for r in res["runs"] if not r["method"].startswith("jnmf")]
        if auto is None or not peers:
            continue
        peer = min(peers, key=lambda r: min(r["loss"]))
        target = min(peer["loss"])
        tp, ta = time_to(peer, target), time_to(auto, target)
        ratio = "-" if ta is None else f"{tp / ta:.2f}"
        print(f"| {res['matrix']} | {res['k']} | {peer['method']} | {target:.6f} | {tp:.2f} | "
              f"{'-' if ta is None else f'{ta:.2f}'} | {ratio} | {auto['ms_per_it']:.0f} / {peer['ms_per_it']:.0f} |")


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = sorted({r["k"] for r in results})
    rows = list(dict.fromkeys(r["matrix"] for r in results))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4 * len(cols), 3.4 * len(rows)), squeeze=False)
    colors: dict[str, str] = {}
    for res in results:
        ax = axes[rows.index(res["matrix"])][cols.index(res["k"])]
        for r in res["runs"]:
            gap = np.maximum(np.asarray(r["loss"]) / res["best"] - 1, 1e-7)
            # one colour per algorithm in every panel: "jnmf auto (hals)" is drawn as "jnmf hals", thicker
            base = r["method"].replace("auto (", "").rstrip(")") if "auto (" in r["method"] else r["method"]
            base = base.split(" (")[0]
            ax.loglog(r["times"], gap, label=r["method"], color=colors.setdefault(base, f"C{len(colors)}"),
                      lw=2.2 if "auto" in r["method"] else 1.0, marker="." if len(gap) < 15 else None)
        ax.axhline(1e-3, color="grey", lw=0.6, ls="--")
        ax.axhline(1e-4, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{res['matrix']}, k = {res['k']}", fontsize=9)
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("loss / best - 1")
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
