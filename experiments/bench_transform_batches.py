"""Cost of new batch sizes in ``NMF.transform`` (issue 19, item 1): compiles and wall time per call.

One ``jnmf.NMF(8)`` fit on hawaiibirds-sized data (1,183 samples x 183 features, random non-negative; the
numbers do not depend on the values), then ``transform`` of 100, 101, ..., 100 + ``--sizes`` - 1 rows, each size
for the first time, then each again. Peer in the same run: the unpadded projection (``_project_jit`` on the
batch's own shape, what ``transform`` did before bucketing). Prints, per variant, the compilations (counted from
``jax.monitoring``'s backend-compile events), the median first-call time over the sizes and the median repeat
time. Run: ``python experiments/bench_transform_batches.py [--sizes 6]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # time this checkout's jnmf, not whichever one is installed
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jnmf  # noqa: E402
from jnmf._data import prepare_data  # noqa: E402
from jnmf._project import _project_jit  # noqa: E402

_EVENT = "/jax/core/compile/backend_compile_duration"


def unpadded_transform(est: jnmf.NMF, X: np.ndarray) -> np.ndarray:
    """The projection on the batch's own shape (no bucket), as transform computed it before issue 19."""
    model = est.model_
    dtype = model.w.dtype
    data = prepare_data(X.T, dtype)
    hyper = [jnp.asarray(x, dtype) for x in (est.L1, est.L2, 0.0, 1e-8)]
    h = _project_jit(model.w, model.d, data, None, *hyper, solver="cd", nonneg=True, removal="scatter", cd_maxit=100)
    return (np.asarray(model.d)[:, None] * np.asarray(h)).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, default=6)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X = rng.gamma(0.5, size=(1183, 183))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = jnmf.NMF(8, random_state=0, max_iter=20).fit(X)
    sizes = range(100, 100 + args.sizes)
    compiles: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(duration) if event == _EVENT else None)
    rows = {}
    for name, fn in (("unpadded (before)", lambda x: unpadded_transform(est, x)), ("transform (bucketed)",
                                                                                 est.transform)):
        start = len(compiles)
        first, again = [], []
        for n in sizes:
            t = time.perf_counter()
            fn(X[:n])
            first.append(time.perf_counter() - t)
        for n in sizes:
            t = time.perf_counter()
            fn(X[:n])
            again.append(time.perf_counter() - t)
        rows[name] = (len(compiles) - start, statistics.median(first), statistics.median(again))
    print(f"NMF(8) on 1183 x 183, transform of {len(sizes)} new sizes {sizes.start}..{sizes.stop - 1} (backend "
          f"{jax.default_backend()})")
    print(f"{'variant':24s} {'compiles':>8s} {'median first call':>18s} {'median repeat':>14s}")
    for name, (n_compiles, first, again) in rows.items():
        print(f"{name:24s} {n_compiles:8d} {first * 1e3:15.1f} ms {again * 1e3:11.1f} ms")
    before, after = rows["unpadded (before)"][1], rows["transform (bucketed)"][1]
    print(f"first-call median ratio unpadded / bucketed: {before / after:.1f}x")


if __name__ == "__main__":
    main()
