"""ms per NNLS update: ``nnls_bpp`` (exact) vs ``nnls_cd`` (cd_maxit=100) vs ``cholesky_clip`` (not exact), float32.

Problems as in an ALS H-update on a 14,000 x 2,600 matrix A (15 % dense, uniform values): W (14,000, k) uniform,
G = W'W (k, k), B = W'A (k, 2,600). ``--als`` also times one full hand-built ALS iteration (H then W update,
p = 2,600 and 14,000 columns) at the first k. Medians of ``--repeats`` jitted calls after a warm-up call; the
objective gap to BPP's optimum is printed so that the speed of the inexact methods can be read against it.
Run: ``python experiments/bench_bpp.py [--ks 20 50 100] [--repeats 5] [--als]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's jnmf
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jnmf._bpp import nnls_bpp  # noqa: E402
from jnmf._nnls import cholesky_clip, nnls_cd  # noqa: E402


def timed(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def objective(G, B, X):
    return float(jnp.sum(0.5 * jnp.sum(X * (G @ X), 0) - jnp.sum(B * X, 0)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--als", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    m, n = 14_000, 2_600
    A = np.where(rng.random((m, n)) < 0.15, rng.random((m, n)), 0).astype(np.float32)
    Aj = jnp.asarray(A)
    bpp = jax.jit(nnls_bpp)
    bpp_info = jax.jit(lambda G, B: nnls_bpp(G, B, return_info=True)[1])
    cd = jax.jit(lambda G, B: nnls_cd(G, B, cd_maxit=100))
    clip = jax.jit(cholesky_clip)
    print(f"{'k':>4s} {'bpp ms':>8s} {'steps':>5s} {'cd ms':>8s} {'clip ms':>8s} {'cd/bpp':>7s} "
          f"{'clip/bpp':>8s} {'cd obj gap':>11s} {'clip obj gap':>12s}")
    for k in args.ks:
        W = jnp.asarray(rng.random((m, k)), jnp.float32)
        G = W.T @ W
        B = W.T @ Aj
        t_bpp = timed(bpp, G, B, repeats=args.repeats)
        t_cd = timed(cd, G, B, repeats=args.repeats)
        t_clip = timed(clip, G, B, repeats=args.repeats)
        f_bpp = objective(G, B, bpp(G, B))
        scale = abs(f_bpp)
        gap_cd = (objective(G, B, cd(G, B)) - f_bpp) / scale
        gap_clip = (objective(G, B, clip(G, B)) - f_bpp) / scale
        print(f"{k:4d} {t_bpp:8.1f} {int(bpp_info(G, B)):5d} {t_cd:8.1f} {t_clip:8.1f} {t_cd / t_bpp:7.2f} "
              f"{t_clip / t_bpp:8.2f} {gap_cd:11.2e} {gap_clip:12.2e}")
    if args.als:
        k = args.ks[0]
        W0 = jnp.asarray(rng.random((m, k)), jnp.float32)
        H0 = jnp.asarray(rng.random((k, n)), jnp.float32)

        def als(solver):
            @jax.jit
            def it(W, H):
                H = solver(W.T @ W, W.T @ Aj, H)
                W = solver(H @ H.T, H @ Aj.T, W.T).T
                return W, H

            return it

        for name, solver in [
            ("bpp", lambda G, B, X: nnls_bpp(G, B, X)),
            ("cd", lambda G, B, X: nnls_cd(G, B, X, cd_maxit=100)),
            ("clip", lambda G, B, X: cholesky_clip(G, B)),
        ]:
            step = als(solver)
            W, H = step(W0, H0)  # warm the iterate so the timed call starts from a realistic support
            print(f"ALS iteration k={k} {name:5s}: {timed(step, W, H, repeats=args.repeats):8.1f} ms")


if __name__ == "__main__":
    main()
