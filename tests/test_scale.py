"""Scale: one fit sharded across devices, memory budgets and layouts, fits streamed from column chunks on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from jnmf import estimate_memory

FIELDS = ("w", "d", "h")


def _max_rel(a, b):
    """Largest |a - b| per field, relative to the field's largest magnitude."""
    out = 0.0
    for f in FIELDS + ("loss",):
        x, y = np.asarray(getattr(a, f)), np.asarray(getattr(b, f))
        out = max(out, float(np.max(np.abs(x - y)) / np.max(np.abs(y))))
    return out


# ---------------------------------------------------------------------------------------------------------------
# sparse and dense layouts give the same model
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(params=["host", "ell"])
def sparse_kernel(request):
    """Run a test with each sparse kernel (``sparse_kernel=``): the CSR kernel on the host (CPU default) and
    EllBlocks gathers in XLA."""
    return request.param


def test_sparse_and_dense_layouts_same_model_on_fixtures(toy_ref, hawaiibirds, sparse_kernel):
    # float32 (the default) on hawaiibirds: w and h are unit-scaled (atol), d carries the data's scale (rtol).
    dense = jnmf.nmf(hawaiibirds.A, 8, seed=42, layout="dense", solver="rcppml")
    sparse = jnmf.nmf(hawaiibirds.A, 8, seed=42, layout="sparse", sparse_kernel=sparse_kernel, solver="rcppml")
    assert int(dense.iter) == int(sparse.iter)
    for f in ("w", "h"):
        np.testing.assert_allclose(np.asarray(getattr(sparse, f)), np.asarray(getattr(dense, f)), atol=1e-4)
    np.testing.assert_allclose(np.asarray(sparse.d), np.asarray(dense.d), rtol=1e-4)
    # The toy fit's relative loss change sits at tol near the end, so float32 rounding of the products can move
    # its stop by one iteration (32 vs 33); in float64 both layouts give the same iterations and model.
    with jax.enable_x64(True):
        A = sp.csc_matrix(toy_ref["A"])
        dense = jnmf.nmf(A, 3, seed=1, layout="dense", solver="rcppml")
        sparse = jnmf.nmf(A, 3, seed=1, layout="sparse", sparse_kernel=sparse_kernel, solver="rcppml")
    assert int(dense.iter) == int(sparse.iter)
    assert _max_rel(sparse, dense) <= 1e-10


def test_sparse_products_equal_dense_products_for_skewed_columns(sparse_kernel):
    # Column counts from 0 to all rows: columns cut into several pieces, empty columns, padded blocks.
    rng = np.random.default_rng(5)
    m, n = 300, 90
    counts = np.concatenate([[0, 0, m], rng.integers(0, 40, n - 3)])
    dense = np.zeros((m, n))
    for j, c in enumerate(counts):
        dense[rng.choice(m, c, replace=False), j] = rng.random(c) + 0.1
    with jax.enable_x64(True):
        data = jnmf.prepare(sp.csr_matrix(dense), 4, seed=1, layout="sparse", sparse_kernel=sparse_kernel).data
        F, H = rng.random((4, m)), rng.random((4, n))
        np.testing.assert_allclose(np.asarray(data.left(F)), F @ dense, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(data.right(H)), H @ dense.T, rtol=1e-12, atol=1e-12)
    if sparse_kernel == "ell":
        assert isinstance(data, jnmf.SparseData)
        assert data.cols.val.shape[-1] < m  # the full column was cut into pieces narrower than it
    else:
        assert isinstance(data, jnmf.HostSparseData)


def test_host_kernel_batches_differentiates_and_releases_its_matrix():
    import gc

    import jax.numpy as jnp

    import jnmf._data

    rng = np.random.default_rng(2)
    S = sp.random(60, 45, density=0.3, random_state=rng, format="csr")
    with jax.enable_x64(True):
        dense = jnmf.prepare(S, 3, seed=1, layout="dense")
        host = jnmf.prepare(S, 3, seed=1, layout="sparse")
        assert isinstance(host.data, jnmf.HostSparseData)
        # vmap: the batched factors reach the kernel as one product with more rows.
        grid = jnp.asarray([0.0, 0.1, 0.3])
        fits = [jax.vmap(lambda l2, p=p: jnmf.solve(p, L2=l2))(grid) for p in (dense, host)]
        np.testing.assert_array_equal(np.asarray(fits[0].iter), np.asarray(fits[1].iter))
        np.testing.assert_allclose(np.asarray(fits[1].h), np.asarray(fits[0].h), atol=1e-12)
        # Reverse mode through the scan driver: the kernel's adjoint is the other orientation's product.
        grads = []
        for layout in ("dense", "sparse"):
            p = jnmf.prepare_differentiable(S, 3, seed=1, layout=layout, maxit=8)
            grads.append(jax.grad(lambda lam, p=p: jnp.sum(jnmf.solve(p, L2=lam).h ** 2))(0.1))
        np.testing.assert_allclose(float(grads[1]), float(grads[0]), rtol=1e-10)
    # The registry entry lives as long as an instance holding it: copies made by pytree flattening count too.
    key = int(host.data.key)
    copy = jax.tree.map(lambda x: x, host)
    del host, fits
    gc.collect()
    assert key in jnmf._data._HOST_REGISTRY
    del copy
    gc.collect()
    assert key not in jnmf._data._HOST_REGISTRY
    stale = jnmf.HostSparseData(key=jnp.asarray(key, jnp.int32), shape=(60, 45))
    with pytest.raises(Exception, match="released before the fit finished"):
        stale.left(jnp.ones((3, 60))).block_until_ready()


def test_csr_kernel_matches_scipy_and_propagates_nan():
    from jnmf._csr_kernel import csr_times_t

    rng = np.random.default_rng(3)
    M = sp.random(70, 50, density=0.25, random_state=rng, format="csr")  # rows of 0..~25 non-zeros: both loops
    X = rng.random((5, 50))
    np.testing.assert_allclose(csr_times_t(M.indptr, M.indices, M.data, X), X @ M.T.toarray(), rtol=1e-13)
    X[2, M.indices[0]] = np.nan
    out = csr_times_t(M.indptr, M.indices, M.data, X)
    assert np.isnan(out[2, 0]) and np.isfinite(np.delete(out, 2, axis=0)).all()
    M32 = M.astype(np.float32)
    assert csr_times_t(M32.indptr, M32.indices, M32.data, X).dtype == np.float32


def test_csr_scatter_kernel_matches_scipy_and_propagates_nan():
    # The scatter form of X M' (read in M' order, for a large X' and a small result): same product.
    from jnmf._csr_kernel import csr_scatter_t

    rng = np.random.default_rng(4)
    M = sp.random(70, 50, density=0.25, random_state=rng, format="csr")
    Mt = sp.csr_matrix(M.T)
    X = rng.random((5, 50))
    np.testing.assert_allclose(csr_scatter_t(Mt.indptr, Mt.indices, Mt.data, X, 70), X @ M.T.toarray(), rtol=1e-13)
    X[2, M.indices[0]] = np.nan
    out = csr_scatter_t(Mt.indptr, Mt.indices, Mt.data, X, 70)
    assert np.isnan(out[2, 0]) and np.isfinite(np.delete(out, 2, axis=0)).all()
    M32 = Mt.astype(np.float32)
    assert csr_scatter_t(M32.indptr, M32.indices, M32.data, X, 70).dtype == np.float32


def test_fit_through_the_scatter_product_equals_the_gather_one(monkeypatch):
    # Forced onto the scatter form for every product (thresholds 0 / unbounded): the same fit, float64.
    from jnmf import _csr_kernel

    rng = np.random.default_rng(5)
    A = sp.random(40, 300, density=0.2, random_state=rng, format="csr")
    with jax.enable_x64(True):
        ref = jnmf.nmf(A, 4, seed=1, layout="sparse", dtype="float64", tol=0, maxit=15)
        monkeypatch.setattr(_csr_kernel, "SCATTER_MIN_OPERAND", 0)
        monkeypatch.setattr(_csr_kernel, "SCATTER_MAX_RESULT", 1 << 40)
        assert _csr_kernel.use_scatter(10, 10, 4, 8)
        calls = []
        scatter = _csr_kernel.csr_scatter_t
        monkeypatch.setattr(jnmf._data.host_csr, "csr_scatter_t", lambda *a: calls.append(1) or scatter(*a))
        got = jnmf.nmf(A, 4, seed=1, layout="sparse", dtype="float64", tol=0, maxit=15)
    assert len(calls) >= 2 * 15  # both products of every iteration took the scatter form
    for a, b in ((got.w, ref.w), (got.d, ref.d), (got.h, ref.h)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------------------------------
# sharded == single device (4 host-platform devices, in a subprocess: the device count is fixed at start-up)
# ---------------------------------------------------------------------------------------------------------------

_SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import jnmf
    from jnmf._solve import _solve_jit
    assert len(jax.devices()) == 4, jax.devices()
    toy, birds = np.load(sys.argv[1]), jnmf.datasets.load_hawaiibirds().A
    out = {"diff": [], "iters": []}
    with jax.enable_x64(True):
        for A, k, seed, kw in ((toy, 3, 1, {}), (toy, 3, 1, dict(solver="cd", L1=0.05, L2=0.1)),
                               (birds, 8, 42, {}), (birds, 8, 42, dict(solver="cd", norm="L2")),
                               (toy, 3, 1, dict(layout="sparse")), (birds, 8, 42, dict(layout="sparse")),
                               (birds, 8, 42, dict(layout="sparse", solver="cd", L2=0.1))):
            one = jnmf.nmf(A, k, seed=seed, **{**kw, "layout": "dense"})
            four = jnmf.nmf(A, k, seed=seed, devices=jax.devices(), **kw)
            assert four.h.shape == one.h.shape, (four.h.shape, one.h.shape)
            rel = [np.max(np.abs(np.asarray(getattr(four, f)) - np.asarray(getattr(one, f))))
                   / np.max(np.abs(np.asarray(getattr(one, f)))) for f in ("w", "d", "h", "loss")]
            out["diff"].append(float(max(rel)))
            out["iters"].append([int(one.iter), int(four.iter)])
        problem = jnmf.prepare(toy, 3, seed=1, devices=jax.devices())
        hlo = _solve_jit.lower(problem).compile().as_text()
        out["all_gather"] = hlo.count("all-gather")
        out["all_reduce"] = hlo.count("all-reduce")
        out["spec"] = [str(s) for s in problem.data.A.sharding.spec]
        out["padded"] = [problem.data.shape[1], problem.data.n_valid]
        sparse = jnmf.prepare(toy, 3, seed=1, devices=jax.devices(), layout="sparse")
        out["sparse_type"] = type(sparse.data).__name__
        hlo = _solve_jit.lower(sparse).compile().as_text()
        out["sparse_all_gather"] = hlo.count("all-gather")
        out["sparse_all_reduce"] = hlo.count("all-reduce")
        try:
            jnmf.prepare(toy, 3, seed=1, devices=jax.devices(), target_H=np.ones((3, 30)), target_lambda=0.1)
        except ValueError as e:
            out["error"] = str(e)
    print(json.dumps(out))
""")


def test_sharded_fit_equals_single_device(toy_ref, hawaiibirds, tmp_path):
    np.save(tmp_path / "toy.npy", toy_ref["A"])
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "toy.npy")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(a == b for a, b in out["iters"]), out["iters"]
    assert max(out["diff"]) <= 1e-10, out["diff"]
    # Columns split over the mesh; XLA's partitioning reduces over samples and never gathers A or H.
    assert out["spec"] == ["None", "cols"]
    assert out["all_gather"] == 0 and out["all_reduce"] > 0
    assert out["padded"] == [32, 30]  # 30 samples padded to 32 over 4 devices
    # The sparse layout: per-device blocks, shard_map products whose only communication is the psum of H A'.
    assert out["sparse_type"] == "ShardedSparseData"
    assert out["sparse_all_gather"] == 0 and out["sparse_all_reduce"] > 0
    assert "target_H" in out["error"]


def test_devices_argument_is_validated(toy_ref):
    with pytest.raises(ValueError, match="devices must be"):
        jnmf.prepare(toy_ref["A"], 3, seed=1, devices=[])
    with pytest.raises(ValueError, match="layout must be one of 'auto', 'dense', 'sparse'"):
        jnmf.prepare(toy_ref["A"], 3, seed=1, devices=jax.devices(), layout="csr")
    with pytest.raises(MemoryError, match="per device"):
        jnmf.prepare(toy_ref["A"], 3, seed=1, devices=jax.devices(), max_memory_bytes=100)


# ---------------------------------------------------------------------------------------------------------------
# memory budget
# ---------------------------------------------------------------------------------------------------------------

def test_estimate_memory_counts_data_and_factors():
    m, n, k = 1000, 2000, 10
    factors = 6 * k * (m + n) * 4
    assert estimate_memory(m, n, k, layout="dense") == m * n * 4 + factors
    assert estimate_memory(m, n, k, 5000, "sparse") == 4 * 5000 * 8 + (10000 + 5000 // 8) * k * 4 + factors
    assert estimate_memory(m, n, k, 5000, "sparse", sparse_kernel="host") == 2 * 5000 * 8 + 3002 * 4 + factors
    assert estimate_memory(m, n, k, layout="dense", dtype=np.float64) == 2 * estimate_memory(m, n, k)
    with pytest.raises(ValueError, match="needs nnz"):
        estimate_memory(m, n, k, layout="sparse")


def test_estimate_memory_of_a_2_6e9_non_zero_atlas_counts_int64_indices():
    m, n, k, nnz = 1_000_000, 20_000, 50, 2_600_000_000
    factors = 6 * k * (m + n) * 4
    host = estimate_memory(m, n, k, nnz, "sparse", sparse_kernel="host")
    assert host == 2 * nnz * (4 + 8) + (m + n + 2) * 8 + factors  # int64 indices and row pointers past 2^31
    assert abs(host / 2**30 - 59.2) < 0.1
    below = 2**31 - 1  # still int32
    assert estimate_memory(m, n, k, below, "sparse", sparse_kernel="host") == 2 * below * 8 + (m + n + 2) * 4 + factors
    assert estimate_memory(m, n, k, layout="dense") == m * n * 4 + factors  # 74.5 GiB dense


def test_host_kernel_takes_int64_indices():
    from jnmf._csr_kernel import csr_times_t
    from jnmf._data.host_csr import host_sparse

    rng = np.random.default_rng(4)
    M = sp.random(40, 30, density=0.3, random_state=rng, format="csr")
    X = rng.random((3, 30))
    i64, p64 = M.indices.astype(np.int64), M.indptr.astype(np.int64)
    out = csr_times_t(p64, i64, M.data, X)
    np.testing.assert_allclose(out, X @ M.T.toarray(), rtol=1e-13)
    np.testing.assert_array_equal(out, csr_times_t(M.indptr, M.indices, M.data, X))
    # a CSR whose index arrays are int64 (as scipy builds them from 2^31 non-zeros) gives the same products
    big = sp.csr_matrix((M.data, i64, p64), shape=M.shape)
    with jax.enable_x64(True):
        data = host_sparse(big, np.float64)
        W = jax.numpy.asarray(rng.random((3, 40)))
        H = jax.numpy.asarray(rng.random((3, 30)))
        np.testing.assert_allclose(np.asarray(data.left(W)), np.asarray(W) @ M.toarray(), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(data.right(H)), np.asarray(H) @ M.T.toarray(), rtol=1e-12)


def test_auto_layout_follows_the_budget():
    rng = np.random.default_rng(0)
    m, n, k = 1000, 1000, 2
    S = sp.random(m, n, density=0.2, random_state=rng, format="csc")
    dense_need = estimate_memory(m, n, k, layout="dense")
    sparse_need = estimate_memory(m, n, k, S.nnz, "sparse", sparse_kernel="host")  # the CPU kernel
    assert sparse_need < dense_need
    assert isinstance(jnmf.prepare(S, k, seed=1).data, jnmf.DenseData)  # 20% non-zeros: dense preferred, fits
    small = jnmf.prepare(S, k, seed=1, max_memory_bytes=sparse_need)
    assert isinstance(small.data, jnmf.HostSparseData)  # dense does not fit the budget, sparse (CPU kernel) does
    # Dense input too: a budget only the sparse layout meets gives the sparse layout, and the same model.
    a = jnmf.nmf(S.toarray(), k, seed=1, max_memory_bytes=sparse_need)
    b = jnmf.nmf(S.toarray(), k, seed=1)
    np.testing.assert_allclose(np.asarray(a.h), np.asarray(b.h), atol=1e-4)
    with pytest.raises(MemoryError, match=r"1000 x 1000.*fits in neither layout.*nmf_chunked"):
        jnmf.prepare(S, k, seed=1, max_memory_bytes=sparse_need - 1)
    with pytest.raises(MemoryError, match="layout='dense'"):
        jnmf.prepare(S, k, seed=1, layout="dense", max_memory_bytes=sparse_need)
    with pytest.raises(ValueError, match="max_memory_bytes"):
        jnmf.prepare(S, k, seed=1, max_memory_bytes=0)


# ---------------------------------------------------------------------------------------------------------------
# chunked (streamed from .npz column chunks) == in memory
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(solver="cd", L1=0.1), dict(norm="L2", L2=0.2, upper_bound=0.5)])
def test_chunked_fit_equals_in_memory(hawaiibirds, tmp_path, kw):
    A = hawaiibirds.A.tocsc()
    bounds = [0, 300, 600, 900, A.shape[1]]  # last chunk narrower
    paths = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        paths.append(tmp_path / f"chunk{i}.npz")
        sp.save_npz(paths[-1], A[:, lo:hi])
    with jax.enable_x64(True):
        ref = jnmf.nmf(A, 8, seed=42, **kw)
        out = jnmf.nmf_chunked(paths, 8, seed=42, **kw)
    assert int(out.iter) == int(ref.iter) and bool(out.converged) == bool(ref.converged)
    assert out.h.shape == ref.h.shape
    assert _max_rel(out, ref) <= 1e-10


def test_chunked_sparse_chunks_match_dense_in_memory(sparse_kernel):
    # Small chunks are densified by layout="auto"; a budget below a chunk's dense working set puts these very
    # sparse chunks in the sparse layout of each kernel. The in-memory reference is dense.
    import jnmf._data

    rng = np.random.default_rng(3)
    A = sp.random(400, 500, density=0.004, random_state=rng, format="csc")
    A = A + sp.random(400, 500, density=0.001, random_state=rng, format="csc")
    with jax.enable_x64(True):
        ref = jnmf.nmf(A, 5, seed=7, solver="cd", layout="dense")
        chunks = [A[:, :150], A[:, 150:300], A[:, 300:]]
        budget = estimate_memory(400, 150, 5, None, "dense", np.float64) - 1
        out = jnmf.nmf_chunked(chunks, 5, seed=7, solver="cd", max_memory_bytes=budget, sparse_kernel=sparse_kernel)
        layouts = {type(jnmf._data.prepare_data(c, np.float64, k=5, max_memory_bytes=budget, bucket=True,
                                                sparse_kernel=sparse_kernel)).__name__ for c in chunks}
    assert layouts == {"HostSparseData" if sparse_kernel == "host" else "SparseData"}
    assert int(out.iter) == int(ref.iter)
    assert _max_rel(out, ref) <= 1e-10


def test_chunked_validates_chunks(tmp_path):
    with pytest.raises(TypeError, match="chunks must be"):
        jnmf.nmf_chunked([], 2)
    with pytest.raises(ValueError, match=r"chunks\[1\] has 4 rows"):
        jnmf.nmf_chunked([np.ones((5, 3)), np.ones((4, 3))], 2)
    with pytest.raises(ValueError, match=r"chunks\[0\] contains negative"):
        jnmf.nmf_chunked([-np.ones((5, 3))], 2)
    with pytest.raises(ValueError, match="rank|k"):
        jnmf.nmf_chunked([np.ones((5, 3))], 9)
