"""How per-iteration time grows with the matrix: jnmf sparse, jnmf dense (where it fits) and scikit-learn CD.

Random non-negative matrices of ``--sizes`` (m x n, default 2,000 x 10,000 up to 10,000 x 50,000) at ``--density``
(5%), k = 20, fixed iteration counts (tol = 0). For each size: median ms/iteration of ``jnmf.solve`` with
``layout="sparse"`` and ``layout="dense"`` (skipped when the dense working set exceeds the memory budget), and of
``sklearn.decomposition.NMF(solver="cd")`` on the CSR matrix; then the log-log slope of time against non-zeros
(1 = linear). The sparse layout runs with the platform's kernel (on CPU scipy's CSR product on a thread pool,
called from the jit-compiled fit) and, for comparison, with the XLA gather kernel that accelerators use.
scikit-learn gets the fastest of CSR/CSC float64 and CSR float32 (``time_sklearn_best``). Also the 14,000 x
2,600, 15% problem of the issue. Writes ``results/bench_scale/results.json`` and a plot
``docs/figures/bench_scale.png``.

Usage: ``python experiments/bench_scale.py [--sizes 2000x10000,5000x25000] [--iters 5] [--repeats 2]``. The
20,000 x 100,000 size (1e8 non-zeros) peaked at 8.3 GB of memory here (the matrix, scikit-learn's copy and jnmf's
two blocked layouts) and ran in about 45 s; pass it explicitly where that is available.
On a machine with an accelerator JAX uses it (``JAX_PLATFORMS`` unset); scikit-learn stays on the CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import scipy.sparse as sp
from _timing import time_jnmf, time_sklearn_best  # experiments/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


def random_matrix(m: int, n: int, density: float, seed: int = 0) -> sp.csr_matrix:
    """Uniform positions and values, float32 CSR (built column block by column block to bound peak memory)."""
    rng = np.random.default_rng(seed)
    blocks = []
    step = max(1, 2_000_000 // max(1, int(m * density)))
    for lo in range(0, n, step):
        w = min(step, n - lo)
        blocks.append(sp.random(m, w, density=density, random_state=rng, format="csc", dtype=np.float32))
    return sp.hstack(blocks, format="csr")


def slope(nnz, ms) -> float | None:
    pts = [(x, y) for x, y in zip(nnz, ms, strict=True) if y is not None]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


PATHS = (  # (result key, label, time_jnmf options)
    ("jnmf_sparse", "jnmf sparse", dict(layout="sparse")),
    ("jnmf_sparse_ell", "jnmf sparse, XLA gathers", dict(layout="sparse", sparse_kernel="ell")),
    ("jnmf_dense", "jnmf dense", dict(layout="dense")),
)


def run(m: int, n: int, density: float, k: int, iters: int, repeats: int, dense_max: float,
        solver: str = "rcppml") -> dict:
    A = random_matrix(m, n, density)
    row = {"m": m, "n": n, "density": density, "nnz": int(A.nnz), "k": k}
    for name, _, opts in PATHS:
        if opts["layout"] == "dense" and m * n > dense_max:
            row[f"{name}_ms"], row[f"{name}_skipped"] = None, f"m n > --dense-max {dense_max:.0e}"
            continue
        try:
            row[f"{name}_ms"] = time_jnmf(A, k, iters, repeats, solver=solver, **opts)[0]
        except MemoryError as e:
            row[f"{name}_ms"] = None
            row[f"{name}_skipped"] = str(e)
    row["sklearn_cd_ms"], row["sklearn_input"] = time_sklearn_best(A, k, iters, repeats)
    row["ratio_sklearn_over_sparse"] = row["sklearn_cd_ms"] / row["jnmf_sparse_ms"]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2000x10000,4000x20000,7000x35000,10000x50000")
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--iters", type=int, default=5)
    # RcppML's rule (Cholesky-then-clip at k = 20) isolates the products, which is what grows with size; the README's
    # table was measured with it (then the default). --solver auto times the default, HALS.
    parser.add_argument("--solver", default="rcppml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dense-max", type=float, default=1e9,
                        help="skip jnmf dense above this many entries (its host copy + device copy, 2x 4 bytes each)")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_scale"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "bench_scale.png"))
    args = parser.parse_args()

    print(f"devices: {jax.devices()}", flush=True)
    issue = run(14_000, 2_600, 0.15, args.k, args.iters, args.repeats, args.dense_max, args.solver)
    rows = [run(*map(int, s.split("x")), args.density, args.k, args.iters, args.repeats, args.dense_max, args.solver)
            for s in args.sizes.split(",")]
    nnz = [r["nnz"] for r in rows]
    names = [p[0] for p in PATHS] + ["sklearn_cd"]
    growth = {name: slope(nnz, [r[f"{name}_ms"] for r in rows]) for name in names}
    print("log-log slope of ms/iteration against nnz:", json.dumps(growth))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"platform": jax.devices()[0].platform, "iters": args.iters, "issue_problem": issue, "sizes": rows,
              "slope_vs_nnz": growth}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, label in [p[:2] for p in PATHS] + [("sklearn_cd", "scikit-learn CD")]:
        pts = [(r["nnz"], r[f"{name}_ms"]) for r in rows if r[f"{name}_ms"] is not None]
        if pts:
            ax.loglog(*zip(*pts, strict=True), "o-", label=f"{label} (slope {growth[name]:.2f})"
                      if growth[name] is not None else label)
    ax.set_xlabel(f"non-zeros ({args.density:.0%} dense, k = {args.k})")
    ax.set_ylabel("ms per iteration")
    ax.set_title(f"Per-iteration time ({result['platform']})")
    ax.legend()
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=120)


if __name__ == "__main__":
    main()
