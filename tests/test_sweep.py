"""sweep(): a grid equals a loop of nmf() fits (models and iteration counts), on one or four devices, chunked or
not; differentiable fits: jax.grad through the scan path against central finite differences in float64."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf._sweep import _CPU_LANES, _footprint, _plan

FIELDS = ("w", "d", "h", "loss")


def _assert_member_equals(member, single, atol=1e-10, rtol=1e-10):
    assert int(member.iter) == int(single.iter)
    assert bool(member.converged) == bool(single.converged)
    np.testing.assert_array_equal(np.asarray(member.w_init), np.asarray(single.w_init))
    for f in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(member, f)), np.asarray(getattr(single, f)), rtol=rtol,
                                   atol=atol, err_msg=f)
    n = int(single.iter)
    np.testing.assert_allclose(np.asarray(member.loss_history[:n]), np.asarray(single.loss_history[:n]), rtol=rtol)
    assert np.all(np.isnan(np.asarray(member.loss_history[n:])))


@pytest.fixture(scope="module")
def toy(toy_ref):
    return toy_ref["A"], toy_ref["target_T"]


# ---------------------------------------------------------------------------------------------------------------
# grid == loop of single fits
# ---------------------------------------------------------------------------------------------------------------


def test_toy_grid_equals_loop_of_nmf_fits(toy):
    """lambda x seed, positive and negative lambdas, 4 lanes for 15 members (so finished lanes are refilled)."""
    A, T = toy
    lams = np.array([-0.4, -0.1, 0.0, 0.2, 0.5])
    seeds = [1, 2, 3]
    with jax.enable_x64(True):
        result = jnmf.sweep(A, 3, target_lambda=lams, seeds=seeds, target_H=T, removal="project", lanes=4)
        assert result.shape == (5, 3) and list(result.axes) == ["target_lambda", "seed"]
        assert result.lanes == 4 and result.n_chunks == 1
        np.testing.assert_array_equal(result.axes["seed"], seeds)
        iters = set()
        for i, lam in enumerate(lams):
            for j, seed in enumerate(seeds):
                single = jnmf.nmf(A, 3, seed=seed, target_H=T, target_lambda=float(lam), removal="project")
                _assert_member_equals(result.member(i, j), single)
                iters.add(int(single.iter))
        assert len(iters) > 5  # members really stop at different iterations
        diag = result.diagnostics()
        assert diag["iter"].shape == (5, 3) and diag["finite"].all()
        np.testing.assert_allclose(diag["mse"], diag["loss"] / A.size)


def test_hawaiibirds_grid_equals_loop_of_nmf_fits(hawaiibirds, hawaii_ref):
    A, T = hawaiibirds.A, hawaii_ref["target_T"]
    lams = np.array([-0.2, -0.05, 0.0, 0.1, 0.25])
    seeds = [42, 7]
    with jax.enable_x64(True):
        result = jnmf.sweep(A, 8, target_lambda=lams, seeds=seeds, target_H=T, removal="project", lanes=4)
        for i, lam in enumerate(lams):
            for j, seed in enumerate(seeds):
                single = jnmf.nmf(A, 8, seed=seed, target_H=T, target_lambda=float(lam), removal="project")
                _assert_member_equals(result.member(i, j), single, atol=1e-9, rtol=1e-9)
        # seed 42, lambda 0.1 is the vignette's guided fit: RcppML's iteration count
        assert int(result.model.iter[3, 0]) == int(hawaii_ref["target010_iter"])


def test_float32_grid_differs_from_single_fits_only_at_tol_ties(hawaiibirds, hawaii_ref):
    """In float32, batched and single products round differently (~1 ulp); a member may then stop apart from nmf(),
    but only when a relative loss change near its stop came within rounding of tol. One such tie resets one run's
    patience counter (5 consecutive changes below tol) and not the other's, so the stops can differ by up to the
    patience: on this machine lambda = 0.013 stops at 75 (nmf) and 77 (sweep), with the old engine as with this one."""
    A, T = hawaiibirds.A, hawaii_ref["target_T"]
    lams = np.linspace(-0.3, 0.3, 24)
    result = jnmf.sweep(A, 8, target_lambda=lams, seeds=42, target_H=T, removal="project")
    assert result.model.w.dtype == jnp.float32 and result.shape == (24,)
    ties = 0
    for i, lam in enumerate(lams):
        single = jnmf.nmf(A, 8, seed=42, target_H=T, target_lambda=float(lam), removal="project")
        a, b = int(single.iter), int(result.model.iter[i])
        if a == b:
            np.testing.assert_allclose(np.asarray(result.model.h[i]), np.asarray(single.h), atol=2e-4)
            np.testing.assert_allclose(np.asarray(result.model.d[i]), np.asarray(single.d), rtol=2e-4)
            continue
        ties += 1
        assert abs(a - b) <= 5  # the patience
        history = np.asarray(single.loss_history[:a], np.float64)
        rel = np.abs(np.diff(history)) / np.abs(history[:-1])
        window = rel[max(min(a, b) - 1 - 5, 0):]  # the changes the patience counter looked at near both stops
        assert np.min(np.abs(window / 1e-4 - 1.0)) < 0.02
    assert ties <= len(lams) // 4


def test_grid_with_missing_entries_equals_loop(toy):
    A, T = toy
    A = A.copy()
    A[3, 4] = A[10, 2] = np.nan  # masked: each column solves with its own Gram matrix
    with jax.enable_x64(True):
        result = jnmf.sweep(A, 3, target_lambda=[0.0, 0.3], seeds=[1, 2], target_H=T, lanes=2)
        for i, lam in enumerate((0.0, 0.3)):
            for j, seed in enumerate((1, 2)):
                _assert_member_equals(result.member(i, j), jnmf.nmf(A, 3, seed=seed, target_H=T, target_lambda=lam))


def test_seed_forms(toy):
    A, _ = toy
    with jax.enable_x64(True):
        _check_seed_forms(A)


def _check_seed_forms(A):
    keys = jax.random.split(jax.random.key(3), 3)
    by_key = jnmf.sweep(A, 3, seeds=keys, maxit=20)
    assert by_key.shape == (3,) and list(by_key.axes) == ["seed"]
    for j in range(3):
        single = jnmf.nmf(A, 3, seed=keys[j], maxit=20)
        np.testing.assert_array_equal(np.asarray(by_key.model.w_init[j]), np.asarray(single.w_init))
        assert int(by_key.model.iter[j]) == int(single.iter)
        np.testing.assert_allclose(np.asarray(by_key.model.h[j]), np.asarray(single.h), atol=1e-12)
    stack = np.random.default_rng(0).uniform(size=(2, 50, 3))
    by_matrix = jnmf.sweep(A, 3, seeds=stack, L2=[0.0, 0.1], maxit=20)
    assert by_matrix.shape == (2, 2) and list(by_matrix.axes) == ["seed", "L2"]
    np.testing.assert_array_equal(by_matrix.axes["seed"], [0, 1])
    single = jnmf.nmf(A, 3, w_init=stack[1], L2=0.1, maxit=20)
    assert int(by_matrix.model.iter[1, 1]) == int(single.iter)
    np.testing.assert_allclose(np.asarray(by_matrix.model.h[1, 1]), np.asarray(single.h), atol=1e-12)
    fixed = jnmf.sweep(A, 3, seeds=5, L2=[0.0, 0.2], maxit=20)  # a fixed seed is no axis
    assert fixed.shape == (2,)
    np.testing.assert_array_equal(np.asarray(fixed.model.w_init[0]), np.asarray(fixed.model.w_init[1]))
    np.testing.assert_array_equal(np.asarray(fixed.model.w_init[0]), jnmf.r_runif_matrix(5, 50, 3))


def test_l1_l2_axes_and_pairs(toy):
    A, _ = toy
    with jax.enable_x64(True):
        result = jnmf.sweep(A, 3, seeds=1, L1=[0.0, 0.1], L2=np.array([[0.0, 0.0], [0.2, 0.05]]), maxit=40)
        assert result.shape == (2, 2) and list(result.axes) == ["L1", "L2"]
        for i, l1 in enumerate((0.0, 0.1)):
            for j, l2 in enumerate(((0.0, 0.0), (0.2, 0.05))):
                # solver="auto" is HALS for every member, with or without L1
                single = jnmf.nmf(A, 3, seed=1, L1=l1, L2=l2, solver="hals", maxit=40)
                _assert_member_equals(result.member(i, j), single)


def test_chunked_grid_warns_and_equals_unchunked(toy):
    A, T = toy
    lams = np.linspace(-0.3, 0.3, 7)
    with jax.enable_x64(True):
        whole = jnmf.sweep(A, 3, target_lambda=lams, seeds=[1, 2], target_H=T, removal="project")
        lane_bytes, member_bytes = whole.lane_bytes, whole.member_bytes
        budget = 3 * lane_bytes + 5 * member_bytes  # room for 3 lanes and 5 outputs (with a measured margin)
        with pytest.warns(jnmf.SweepChunkWarning, match=r"sweep: grid of 14 members split into \d+ chunks of \d+"):
            chunked = jnmf.sweep(A, 3, target_lambda=lams, seeds=[1, 2], target_H=T, removal="project",
                                 max_memory_bytes=budget)
    assert chunked.n_chunks > 1 and chunked.chunk_size * chunked.n_chunks >= 14
    assert chunked.lanes * lane_bytes + chunked.chunk_size * member_bytes <= budget
    assert isinstance(chunked.model.h, np.ndarray)  # gathered on the host chunk by chunk
    np.testing.assert_array_equal(chunked.diagnostics()["iter"], whole.diagnostics()["iter"])
    np.testing.assert_allclose(chunked.model.h, np.asarray(whole.model.h), atol=1e-12)
    with pytest.raises(MemoryError, match="max_memory_bytes"):
        jnmf.sweep(A, 3, seeds=1, L2=[0.0, 0.1], max_memory_bytes=lane_bytes // 2)


def test_memory_estimate_bounds_xla_allocation(hawaiibirds):
    """The plan's per-lane and per-member estimates cover what XLA allocates for the compiled grid program."""
    A = hawaiibirds.A
    result = jnmf.sweep(A, 8, seeds=[1, 2, 3, 4, 5, 6], L2=[0.0, 0.01], maxit=5, lanes=4)
    assert (result.lane_bytes, result.member_bytes) == _footprint(jnmf.prepare(A, 8, seed=1, maxit=5))
    assert result.xla_bytes is not None  # the CPU backend reports its memory analysis
    assert result.xla_bytes <= result.lanes * result.lane_bytes + result.chunk_size * result.member_bytes
    assert result.xla_bytes > result.chunk_size * result.member_bytes  # and the outputs are in it


def test_plan_chunks_only_when_needed():
    lanes, per_dev, chunks = _plan(100, 1, None, "cpu", lane_bytes=10, member_bytes=1, budget=10_000)
    assert (lanes, per_dev, chunks) == (_CPU_LANES, 100, 1)
    lanes, per_dev, chunks = _plan(100, 4, None, "gpu", lane_bytes=10, member_bytes=1, budget=10_000)
    assert (lanes, per_dev, chunks) == (25, 25, 1)
    lanes, per_dev, chunks = _plan(100, 1, 8, "cpu", lane_bytes=10, member_bytes=10, budget=300)
    assert lanes * 10 + per_dev * 10 <= 300 and chunks * per_dev >= 100 and chunks > 1


def test_sweep_validation(toy):
    A, T = toy
    with pytest.raises(ValueError, match="target_lambda has non-zero values but target_H and target_W are None"):
        jnmf.sweep(A, 3, target_lambda=[0.0, 0.1], seeds=1)
    with pytest.raises(ValueError, match=r"target_lambda for the W side has non-zero values but target_W is None"):
        jnmf.sweep(A, 3, target_lambda=[[0.1, 0.1]], seeds=1, target_H=T)
    with pytest.raises(ValueError, match=r"L1\[1\] must be < 1.0"):
        jnmf.sweep(A, 3, L1=[0.0, 1.0], seeds=1)
    with pytest.raises(ValueError, match=r"L2\[0\] must be >= 0.0"):
        jnmf.sweep(A, 3, L2=[-0.1], seeds=1)
    with pytest.raises(ValueError, match="target_lambda must be a scalar, a 1-D grid or an"):
        jnmf.sweep(A, 3, target_lambda=np.zeros((2, 3)), seeds=1, target_H=T)
    with pytest.raises(TypeError, match="use seeds="):
        jnmf.sweep(A, 3, seed=1)
    with pytest.raises(TypeError, match="prepare_differentiable"):
        jnmf.sweep(A, 3, seeds=1, loop="scan")
    with pytest.raises(ValueError, match="seeds: integer seeds must be a scalar or a 1-D sequence"):
        jnmf.sweep(A, 3, seeds=np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"seeds: initial W matrices must be \(m, k\) = \(50, 3\)"):
        jnmf.sweep(A, 3, seeds=np.ones((2, 49, 3)))
    with pytest.raises(ValueError, match=r"seeds\[1\] \(initial W\) must be non-negative"):
        jnmf.sweep(A, 3, seeds=np.stack([np.ones((50, 3)), -np.ones((50, 3))]))
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        jnmf.sweep(A, 3, seeds=[1, 2], lanes=0)
    with pytest.raises(ValueError, match="solver='cholesky' does not support L1"):
        jnmf.sweep(A, 3, seeds=1, L1=[0.0, 0.1], solver="cholesky")


def test_non_finite_members_are_reported_not_raised(toy):
    A, _ = toy
    start = np.random.default_rng(1).uniform(size=(50, 3))
    stack = np.stack([start, start * 1e25])  # W W' overflows float32 for the second member
    # RcppML's Cholesky-then-clip turns the overflowed G into NaN; HALS keeps its start, a zero model
    with pytest.raises(FloatingPointError):
        jnmf.nmf(A, 3, w_init=stack[1], maxit=5, solver="rcppml")
    with pytest.raises(FloatingPointError, match="every component of the fit is zero"):
        jnmf.nmf(A, 3, w_init=stack[1], maxit=5)
    with pytest.warns(RuntimeWarning, match="1 of 2 members produced non-finite values"):
        result = jnmf.sweep(A, 3, seeds=stack, maxit=5, solver="rcppml")
    assert result.diagnostics()["finite"].tolist() == [True, False]


# ---------------------------------------------------------------------------------------------------------------
# several devices
# ---------------------------------------------------------------------------------------------------------------

_SHARDED = textwrap.dedent("""
    import json, sys, warnings
    import jax, numpy as np
    import jnmf
    assert len(jax.devices()) == 4, jax.devices()
    A, T = np.load(sys.argv[1]), np.load(sys.argv[2])
    out = {}
    with jax.enable_x64(True):
        kw = dict(target_lambda=np.array([-0.4, -0.1, 0.0, 0.2, 0.5]), seeds=[1, 2, 3], target_H=T,
                  removal="project", lanes=2)
        four = jnmf.sweep(A, 3, **kw)
        one = jnmf.sweep(A, 3, devices=jax.devices()[:1], **kw)
        small = 2 * four.lane_bytes + 2 * four.member_bytes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chunked = jnmf.sweep(A, 3, max_memory_bytes=small, **kw)
        single = jnmf.nmf(A, 3, seed=3, target_H=T, target_lambda=0.2, removal="project")
    out["devices"] = [four.n_devices, one.n_devices, chunked.n_devices]
    out["chunks"] = chunked.n_chunks
    out["warned"] = [str(w.message) for w in caught if "split into" in str(w.message)]
    out["iter_equal"] = bool(np.array_equal(np.asarray(four.model.iter), np.asarray(one.model.iter))
                             and np.array_equal(np.asarray(chunked.model.iter), np.asarray(one.model.iter)))
    out["max_diff"] = max(float(np.max(np.abs(np.asarray(getattr(r.model, f)) - np.asarray(getattr(one.model, f)))))
                          for r in (four, chunked) for f in ("w", "d", "h", "loss"))
    out["vs_single"] = float(np.max(np.abs(np.asarray(four.model.h[3, 2]) - np.asarray(single.h))))
    out["iter_single"] = [int(four.model.iter[3, 2]), int(single.iter)]
    print(json.dumps(out))
""")


def test_sharded_grid_equals_single_device(toy, tmp_path):
    A, T = toy
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "T.npy", T)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "A.npy"), str(tmp_path / "T.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == [4, 1, 4]
    assert out["chunks"] > 1 and out["warned"]
    assert out["iter_equal"]
    assert out["max_diff"] <= 1e-12  # 15 members padded to 16 over 4 devices; lanes identical, so bitwise here
    assert out["vs_single"] <= 1e-10 and out["iter_single"][0] == out["iter_single"][1]


# ---------------------------------------------------------------------------------------------------------------
# differentiable fits
# ---------------------------------------------------------------------------------------------------------------


def _central(f, theta, i, h):
    e = np.zeros_like(theta)
    e[i] = h
    return (np.asarray(f(theta + e)) - np.asarray(f(theta - e))) / (2 * h)


@pytest.fixture(scope="module")
def classed():
    """60 x 90 data with three sample classes (each loads mostly on its own component) and its guided target."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    W = rng.uniform(size=(60, 3))
    H = 0.3 * rng.uniform(size=(3, 90))
    H[labels, np.arange(90)] += 1.0
    A = W @ H + 0.2 * rng.uniform(size=(60, 90))
    with jax.enable_x64(True):
        T = np.asarray(jnmf.compute_target(jnmf.nmf(A, 3, seed=1).h, labels))
    return A, T, labels


@pytest.mark.parametrize(
    "solver, removal, theta",
    [("cholesky", "proj_adv", (0.2, 0.05)), ("cd", "project", (-0.2, 0.01, 0.05))],
    ids=["cholesky-enrich", "cd-remove"],
)
def test_gradient_matches_central_differences(classed, solver, removal, theta):
    """d/d(target_lambda, L2[, L1]) of two objectives, the final loss and the class separation of the embedding,
    through a 15-iteration scan fit in float64, against central differences (h = 1e-5) and their Richardson
    extrapolation (h and h/2, error O(h^4)). The points lie in smooth neighbourhoods: no factor entry crosses the
    clip or the active set within h, and (removal with a ridge drives the components to coincide at larger L2)
    the components stay distinct, so every derivative is non-zero.
    """
    A, T, labels = classed
    theta = np.asarray(theta, np.float64)
    with jax.enable_x64(True):
        problem = jnmf.prepare_differentiable(A, 3, maxit=15, seed=1, target_H=T, removal=removal, solver=solver,
                                              cd_maxit=30)

        @jax.jit
        def objectives(theta):
            L1 = theta[2] if theta.shape[0] == 3 else None
            model = jnmf.solve(problem, target_lambda=theta[0], L2=theta[1], L1=L1)
            return jnp.stack([model.loss, jnmf.class_separation(model, labels)])

        jac = np.asarray(jax.jacrev(objectives)(jnp.asarray(theta)))
        for i in range(theta.shape[0]):
            fd = _central(objectives, theta, i, 1e-5)
            richardson = (4 * _central(objectives, theta, i, 5e-6) - fd) / 3
            assert np.all(np.abs(fd) > 1e-3), fd  # non-trivial derivatives
            assert np.all(np.abs(jac[:, i] - fd) < 1e-3 * np.abs(fd)), (i, jac[:, i], fd)
            assert np.all(np.abs(jac[:, i] - richardson) < 1e-7 * np.abs(richardson)), (i, jac[:, i], richardson)


def test_vmapped_gradients_equal_separate_ones(toy):
    """A gradient grid: ``vmap(grad)`` over L2 values equals the gradients taken one at a time."""
    A, _ = toy
    with jax.enable_x64(True):
        problem = jnmf.prepare_differentiable(A, 3, maxit=10, seed=2)
        grad = jax.jit(jax.grad(lambda l2: jnmf.solve(problem, L2=l2).loss))
        l2s = jnp.asarray([0.05, 0.2, 0.4])
        batched = jax.vmap(grad)(l2s)
        for i in range(3):
            assert float(batched[i]) > 0  # more ridge, worse fit
            np.testing.assert_allclose(float(batched[i]), float(grad(l2s[i])), rtol=1e-10)


def test_prepare_differentiable_fixes_the_iteration_count(toy):
    A, _ = toy
    problem = jnmf.prepare_differentiable(A, 3, maxit=7, seed=1)
    assert problem.config.loop == "scan" and float(problem.hyper.tol) == 0.0 and float(problem.hyper.cd_tol) == 0.0
    assert int(jnmf.solve(problem).iter) == 7
    with pytest.raises(TypeError, match="fixes tol"):
        jnmf.prepare_differentiable(A, 3, tol=1e-4)


def test_class_separation_values():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(40, 3))
    labels = np.array(["a", "b", None, "c"] * 10, dtype=object)
    keep = np.array([x is not None for x in labels])
    # NumPy restatement: between-class share of the scatter of the labelled rows
    X, y = E[keep], labels[keep]
    mu = X.mean(0)
    between = sum(np.sum(y == c) * np.sum((X[y == c].mean(0) - mu) ** 2) for c in ("a", "b", "c"))
    expected = between / np.sum((X - mu) ** 2)
    with jax.enable_x64(True):
        assert float(jnmf.class_separation(jnp.asarray(E), labels)) == pytest.approx(expected, rel=1e-12)
    collapsed = np.repeat(np.eye(3), [5, 5, 5], axis=0)
    assert float(jnmf.class_separation(collapsed, np.repeat([0, 1, 2], 5))) == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0.0 <= float(jnmf.class_separation(E, rng.integers(0, 2, 40))) < 0.2
