import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64
from scipy.optimize import nnls as scipy_nnls

import jnmf
from jnmf import apply_l1_l2, cholesky_clip, gram, nnls_cd, nnls_step, scale_rows
from jnmf._nnls import nnls_hals
from tests.test_bpp import _objective
from tests.test_bpp import _problem as _nnls_problem  # the same random NNLS problems as BPP's tests


def _problem(rng, m=30, k=6):
    X = rng.standard_normal((m, k))
    y = rng.standard_normal(m) + X @ np.abs(rng.standard_normal(k))
    return X, y


@pytest.mark.parametrize("seed", range(5))
def test_cd_matches_scipy_nnls(seed):
    rng = np.random.default_rng(seed)
    X, y = _problem(rng)
    with enable_x64(True):
        x = nnls_step(jnp.asarray(X.T @ X), jnp.asarray(X.T @ y), cd_maxit=10_000, cd_tol=1e-14)
        x = np.asarray(x)
    ref, _ = scipy_nnls(X, y)
    np.testing.assert_allclose(x, ref, atol=1e-8)
    assert np.all(x >= 0)


def test_cd_warm_start_reaches_the_same_solution():
    rng = np.random.default_rng(11)
    X, y = _problem(rng)
    with enable_x64(True):
        G, b = jnp.asarray(X.T @ X), jnp.asarray(X.T @ y)
        cold = nnls_step(G, b, cd_maxit=10_000, cd_tol=1e-14)
        warm = nnls_step(G, b, jnp.abs(jnp.asarray(rng.standard_normal(6))), cd_maxit=10_000, cd_tol=1e-14)
        np.testing.assert_allclose(np.asarray(warm), np.asarray(cold), atol=1e-8)


def test_cd_without_nonneg_is_least_squares():
    rng = np.random.default_rng(2)
    X, y = _problem(rng)
    with enable_x64(True):
        x = nnls_step(jnp.asarray(X.T @ X), jnp.asarray(X.T @ y), nonneg=False, cd_maxit=10_000, cd_tol=1e-14)
        np.testing.assert_allclose(np.asarray(x), np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-8)


def test_cd_skips_dead_coordinates():
    G = jnp.diag(jnp.array([0.0, 2.0]))
    x = nnls_step(G, jnp.array([1.0, 4.0]))
    assert np.isfinite(np.asarray(x)).all()
    np.testing.assert_allclose(np.asarray(x), [0.0, 2.0])


def test_vmap_and_jit_equal_python_loop():
    rng = np.random.default_rng(5)
    X = rng.random((40, 5))
    G = jnp.asarray(X.T @ X, jnp.float32)
    B = jnp.asarray(X.T @ rng.random((40, 12)), jnp.float32)
    batched = nnls_cd(G, B)
    vmapped = jax.vmap(lambda b: nnls_step(G, b), in_axes=1, out_axes=1)(B)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(batched), rtol=1e-6, atol=1e-7)
    jitted = jax.jit(nnls_cd)(G, B)
    looped = np.stack([np.asarray(nnls_step(G, B[:, j])) for j in range(B.shape[1])], axis=1)
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jitted), looped, rtol=1e-6, atol=1e-7)


def test_cholesky_clip_is_solve_then_clip():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((30, 4))
    G, B = X.T @ X, X.T @ rng.standard_normal((30, 7))
    with enable_x64(True):
        out = np.asarray(cholesky_clip(jnp.asarray(G), jnp.asarray(B)))
        free = np.asarray(cholesky_clip(jnp.asarray(G), jnp.asarray(B), nonneg=False))
    np.testing.assert_allclose(free, np.linalg.solve(G, B), rtol=1e-10)
    np.testing.assert_allclose(out, np.maximum(np.linalg.solve(G, B), 0), rtol=1e-10)


def test_cholesky_clip_columns_equals_cholesky_clip_per_column():
    # Masked data's per-column solve: one batched factorisation, the jittered one only for columns that need it,
    # a NaN column where neither factors; each column as cholesky_clip solves it alone.
    from jnmf._nnls import cholesky_clip_columns

    rng = np.random.default_rng(9)
    k, p = 6, 40
    F = rng.random((k, 25))
    O = rng.random((25, p)) > 0.3
    G = np.einsum("ki,li,ij->jkl", F, F, O) + 1e-15 * np.eye(k)
    G[3] = 1e-15 * np.eye(k)  # an entirely masked column: zero solution
    G[5] = np.outer(F[:, 0], F[:, 0])  # rank one: only G + k eps tr(G) I factors
    B = rng.standard_normal((k, p))
    B[:, 3] = 0.0  # its right-hand side F (o_j a_j) is 0 as well
    with enable_x64(True):
        for nonneg in (True, False):
            ours = np.asarray(cholesky_clip_columns(jnp.asarray(G), jnp.asarray(B), nonneg=nonneg))
            ref = np.stack([np.asarray(cholesky_clip(jnp.asarray(G[j]), jnp.asarray(B[:, j]), nonneg=nonneg))
                            for j in range(p)], axis=1)
            np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
        assert np.all(ours[:, 3] == 0) and np.all(np.isfinite(ours[:, 5]))
        G[7] = np.full((k, k), np.inf)
        bad = np.asarray(cholesky_clip_columns(jnp.asarray(G), jnp.asarray(B)))
    assert np.all(np.isnan(bad[:, 7])) and np.all(np.isfinite(np.delete(bad, 7, axis=1)))


def test_gram_penalties_and_scaling():
    F = jnp.asarray(np.arange(6.0).reshape(2, 3))
    G = gram(F)
    np.testing.assert_allclose(np.asarray(G), np.asarray(F @ F.T) + 1e-15 * np.eye(2), rtol=1e-6)
    G2, B2 = apply_l1_l2(G, jnp.ones((2, 3)), L1=0.25, L2=2.0)
    np.testing.assert_allclose(np.asarray(G2 - G), 2 * np.eye(2), atol=1e-6)
    np.testing.assert_allclose(np.asarray(B2), 0.75)
    X = jnp.asarray([[1.0, -3.0], [0.0, 0.0]])
    d, Xs = scale_rows(X, "L1")
    np.testing.assert_allclose(np.asarray(d), [4.0, 1e-15], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(Xs[0]), [0.25, -0.75], rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(Xs)))
    d2, _ = scale_rows(X, "L2")
    np.testing.assert_allclose(float(d2[0]), np.sqrt(10.0), rtol=1e-6)
    d3, X3 = scale_rows(X, "none")
    np.testing.assert_array_equal(np.asarray(d3), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(X3), np.asarray(X))
    with pytest.raises(ValueError, match="norm"):
        scale_rows(X, "max")


def test_auto_takes_hals_and_rcppml_keeps_its_rule():
    import jax

    rng = np.random.default_rng(3)
    A = np.abs(rng.normal(size=(80, 60)))
    T = np.abs(rng.normal(size=(8, 60)))
    assert jnmf.prepare(A, 8, seed=1).config.solver == "hals"
    assert jnmf.prepare(A, 8, seed=1, L1=0.1).config.solver == "hals"
    assert jnmf.prepare(A, 40, seed=1).config.solver == "hals"
    # a guided fit below k = 32 keeps RcppML's rule (it converges there, HALS does not within maxit)
    assert jnmf.prepare(A, 8, seed=1, target_H=T, target_lambda=0.1).config.solver == "cholesky"
    assert jnmf.prepare(A, 8, seed=1, target_H=T, target_lambda=0.1, L1=0.1).config.solver == "cd"
    # ... and the scatter removal, which needs descending updates, exact CD below k = 32, HALS from 32
    assert jnmf.prepare(A, 8, seed=1, target_H=T, target_lambda=-0.1).config.solver == "cd"
    assert jnmf.prepare(A, 8, seed=1, remove=np.arange(60) % 2).config.solver == "cd"
    assert jnmf.prepare(A, 40, seed=1, remove=np.arange(60) % 2).config.solver == "hals"
    # a target decides, not its lambda: a lambda grid (0 included) is one solver, the one of each member alone
    assert jnmf.prepare(A, 8, seed=1, target_H=T, target_lambda=0.0).config.solver == "cholesky"
    assert jnmf.prepare(A, 8, seed=1, target_H=T, target_lambda=-0.1, removal="proj_adv").config.solver == "cholesky"
    assert jnmf.prepare(A, 40, seed=1, solver="rcppml").config.solver == "cd"
    assert jnmf.prepare(A, 8, seed=1, solver="rcppml").config.solver == "cholesky"
    assert jnmf.prepare(A, 8, seed=1, solver="rcppml", L1=0.1).config.solver == "cd"
    assert jnmf.prepare(A, 8, seed=1, solver="rcppml", remove=np.arange(60) % 2).config.solver == "cd"
    assert jnmf.prepare(A, 40, seed=1, nonneg=(True, False)).config.solver == "hals"
    assert jnmf.prepare(A, 40, seed=1, loop="scan").config.solver == "hals"
    assert jnmf.prepare(A, 40, seed=1, solver="bpp").config.solver == "bpp"
    with pytest.raises(ValueError, match="solver='bpp' solves non-negative"):
        jnmf.prepare(A, 40, seed=1, solver="bpp", nonneg=False)
    with jax.enable_x64(True):
        bpp = jnmf.nmf(A, 40, seed=1, maxit=25, tol=0.0, solver="bpp")
        cd = jnmf.nmf(A, 40, seed=1, maxit=25, tol=0.0, solver="cd", cd_maxit=500, cd_tol=1e-12)
        hals = jnmf.nmf(A, 40, seed=1, maxit=25, tol=0.0)
    hist = np.asarray(bpp.loss_history)
    # exact NNLS half-steps: the squared error never increases, and matches converged CD
    assert np.all(np.diff(hist) <= 1e-10 * hist[:-1])
    np.testing.assert_allclose(hist, np.asarray(cd.loss_history), rtol=1e-6)
    # HALS half-steps descend from the current iterate: the loss never increases either
    hh = np.asarray(hals.loss_history)
    assert np.all(np.isfinite(hh)) and np.all(np.diff(hh) <= 1e-12 * hh[:-1])


_hals = jax.jit(nnls_hals, static_argnames=("nonneg", "sweeps", "differentiable"))


@pytest.mark.parametrize(("k", "cond", "sweeps"), [(6, None, 2000), (50, None, 2000), (200, None, 3000),
                                                    (20, 1e4, 60_000)])
def test_hals_run_to_convergence_equals_scipy_nnls(k, cond, sweeps):
    a, y, G, B = _nnls_problem(k, 3, cond, seed=k)
    with enable_x64(True):
        X = np.asarray(_hals(jnp.asarray(G), jnp.asarray(B), None, sweeps=sweeps, first=0.0))
    ref = np.stack([scipy_nnls(a, y[:, j], maxiter=50 * k)[0] for j in range(y.shape[1])], axis=1)
    assert np.all(X >= 0)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(X, ref, atol=1e-6 * scale)
    np.testing.assert_allclose(_objective(G, B, X), _objective(G, B, ref), rtol=1e-10)


def test_hals_float32_reaches_scipy_objective_to_float32_resolution():
    a, y, G, B = _nnls_problem(30, 4, None, seed=4)
    X = np.asarray(_hals(jnp.asarray(G, jnp.float32), jnp.asarray(B, jnp.float32), None, sweeps=2000, first=0.0),
                   np.float64)
    assert X.dtype == np.float64 and np.all(X >= 0)
    ref = np.stack([scipy_nnls(a, y[:, j])[0] for j in range(y.shape[1])], axis=1)
    f, f_ref = _objective(G, B, X), _objective(G, B, ref)
    assert np.all(f - f_ref <= 1e-5 * np.abs(f_ref))


def test_hals_jit_vmap_and_scan_agree():
    a, y, G, B = _nnls_problem(12, 9, None, seed=2)
    G32, B32 = jnp.asarray(G, jnp.float32), jnp.asarray(B, jnp.float32)
    X0 = jnp.abs(jnp.asarray(np.random.default_rng(0).normal(size=B.shape), jnp.float32))
    eager = nnls_hals(G32, B32, X0, sweeps=4, first=0.0)
    np.testing.assert_allclose(np.asarray(_hals(G32, B32, X0, sweeps=4, first=0.0)), np.asarray(eager),
                               rtol=1e-5, atol=1e-6)
    scan = nnls_hals(G32, B32, X0, sweeps=4, first=0.0, differentiable=True)
    np.testing.assert_allclose(np.asarray(scan), np.asarray(eager), rtol=1e-5, atol=1e-6)
    # a batch of problems under vmap equals each problem alone (the sweeps stop on each member's own rule)
    Gs = jnp.stack([G32, 2 * G32, G32 + jnp.eye(12)])
    Bs = jnp.stack([B32, B32, -B32])
    vm = jax.vmap(lambda G, B: nnls_hals(G, B, sweeps=50))(Gs, Bs)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(vm[i]), np.asarray(nnls_hals(Gs[i], Bs[i], sweeps=50)),
                                   rtol=1e-5, atol=1e-6)


def test_hals_columns_stop_on_their_own():
    # Each column's stopping sweep depends on that column alone, so a column solved in any subset of columns (a
    # chunk, a shard) gets the same result as solved with all of them.
    rng = np.random.default_rng(7)
    a, y, G, B = _nnls_problem(20, 40, 1e3, seed=7)
    B = B * np.exp(rng.normal(size=(1, B.shape[1])) * 2)  # columns at very different scales and progress rates
    X0 = np.abs(rng.normal(size=B.shape))
    with enable_x64(True):
        full = np.asarray(nnls_hals(jnp.asarray(G), jnp.asarray(B), jnp.asarray(X0)))
        for cols in (slice(0, 7), slice(7, 40), [3, 30, 11]):
            part = np.asarray(nnls_hals(jnp.asarray(G), jnp.asarray(B[:, cols]), jnp.asarray(X0[:, cols])))
            np.testing.assert_allclose(part, full[:, cols], rtol=1e-12, atol=1e-14)
        # and the columns did stop at different sweeps: a fixed count of sweeps gives other results
        fixed = [np.asarray(nnls_hals(jnp.asarray(G), jnp.asarray(B), jnp.asarray(X0), sweeps=s_, first=0.0))
                 for s_ in range(1, 11)]
    matches = [int(np.argmin([np.abs(f[:, j] - full[:, j]).max() for f in fixed])) for j in range(B.shape[1])]
    assert len(set(matches)) > 1


@pytest.mark.parametrize("sweeps", [1, 2, 10])
def test_hals_inexact_update_never_increases_the_objective_from_its_start(sweeps):
    rng = np.random.default_rng(sweeps)
    for cond in (None, 1e5):
        a, y, G, B = _nnls_problem(40, 25, cond, seed=sweeps)
        X0 = np.abs(rng.normal(size=B.shape)) * (rng.random(B.shape) < 0.6)
        with enable_x64(True):
            X = np.asarray(nnls_hals(jnp.asarray(G), jnp.asarray(B), jnp.asarray(X0), sweeps=sweeps))
        f0, f = _objective(G, B, X0), _objective(G, B, X)
        assert np.all(X >= 0)
        assert np.all(f <= f0 + 1e-12 * np.abs(f0))  # per column: each row update minimises exactly
        assert np.any(f < f0)


def test_hals_without_nonneg_and_dead_rows():
    a, y, G, B = _nnls_problem(8, 3, None, seed=5)
    with enable_x64(True):
        X = np.asarray(nnls_hals(jnp.asarray(G), jnp.asarray(B), jnp.zeros(B.shape), nonneg=False, sweeps=5000,
                                 first=0.0))
    np.testing.assert_allclose(X, np.linalg.solve(G, B), rtol=1e-8, atol=1e-10)
    G0 = np.diag([0.0, 2.0])
    X = np.asarray(nnls_hals(jnp.asarray(G0), jnp.array([[1.0], [4.0]]), jnp.array([[3.0], [0.0]]), sweeps=3))
    np.testing.assert_allclose(X, [[3.0], [2.0]])  # the row with G_ii = 0 keeps its start


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hals_fit_with_scatter_removal_descends_its_objective(norm):
    import jax

    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], 30)
    shift = np.abs(rng.normal(size=(50, 3)))[:, groups]
    A = np.abs(rng.normal(size=(50, 5))) @ np.abs(rng.normal(size=(5, 90))) + shift
    with jax.enable_x64(True):
        model = jnmf.nmf(A, 4, seed=3, tol=0.0, maxit=60, remove=groups, remove_lambda=1.0, solver="hals", norm=norm)
    W, d, h = (np.asarray(x, np.float64) for x in (model.w, model.d, model.h))
    E = d[:, None] * h
    means = np.stack([E[:, groups == g].mean(1) for g in range(3)], 1)[:, groups]
    between = means - E.mean(1, keepdims=True)
    objective = np.sum((A - W @ E) ** 2) + np.sum(between * between)
    hist = np.asarray(model.loss_history)
    assert abs(float(model.loss) / objective - 1) < 1e-10  # the loss is the stated objective
    # each HALS update descends its majorizer from the current iterate, so the objective never increases
    assert np.all(np.diff(hist) <= 1e-12 * hist[:-1]), np.max(np.diff(hist) / hist[:-1])


def test_hals_masked_and_semi_nonnegative_fits_descend():
    import jax

    rng = np.random.default_rng(0)
    A = np.abs(rng.normal(size=(40, 30)))
    A[rng.random(A.shape) < 0.1] = np.nan  # missing entries: one Gram matrix per column
    with jax.enable_x64(True):
        masked = jnmf.nmf(A, 5, seed=1, tol=0.0, maxit=30, solver="hals")
        semi = jnmf.nmf(np.nan_to_num(A), 5, seed=1, tol=0.0, maxit=30, solver="hals", nonneg=(True, False))
    for model in (masked, semi):
        hist = np.asarray(model.loss_history)
        assert np.all(np.isfinite(hist)) and np.all(np.diff(hist) <= 1e-12 * hist[:-1])
    assert np.any(np.asarray(semi.h) < 0)  # H unconstrained


# The numba HALS kernel (nnls_hals(host=True), jnmf/_hals_kernel.py): the same sweeps and per-column stopping as
# the XLA ones, so results agree to rounding; its 32-column blocks must not couple columns.
def _host_cases():
    rng = np.random.default_rng(11)
    for k, n, cond in ((1, 5, None), (3, 40, None), (7, 33, 1e3), (13, 64, None), (50, 97, 1e4)):
        a, y, G, B = _nnls_problem(k, n, cond, seed=k)
        B = B * np.exp(rng.normal(size=(1, n)))  # columns at different scales: they stop at different sweeps
        yield G, B, np.abs(rng.normal(size=B.shape)) * (rng.random(B.shape) < 0.6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("sweeps", [1, 3, 10])
def test_hals_host_kernel_equals_the_xla_sweeps(monkeypatch, dtype, nonneg, sweeps):
    import jnmf._nnls as nn

    monkeypatch.setattr(nn, "_HOST_MIN_WORK", 0)  # every size through the kernel
    tol = dict(float32=2e-5, float64=1e-12)[dtype]
    with enable_x64(dtype == "float64"):
        for G, B, X0 in _host_cases():
            G, B, X0 = (jnp.asarray(x, dtype) for x in (G, B, X0))
            ref = _hals(G, B, X0, nonneg=nonneg, sweeps=sweeps)
            run = jax.jit(lambda G, B, X0: nnls_hals(G, B, X0, nonneg=nonneg, sweeps=sweeps, host=True))
            X = run(G, B, X0)
            assert X.dtype == jnp.dtype(dtype)
            scale = float(jnp.max(jnp.abs(ref))) + 1e-30
            np.testing.assert_allclose(np.asarray(X), np.asarray(ref), rtol=0, atol=tol * scale)
            if nonneg:
                assert bool(jnp.all(X >= 0))
            f0, f = (_objective(np.asarray(G, np.float64), np.asarray(B, np.float64), np.asarray(x, np.float64))
                     for x in (X0, X))
            assert np.all(f <= f0 + tol * np.abs(f0))  # each column descends from its start
            # columns in other blocks, or alone, get the same result (the stopping rule is per column)
            cols = [0, B.shape[1] - 1, B.shape[1] // 2]
            part = run(G, B[:, cols], X0[:, cols])
            np.testing.assert_allclose(np.asarray(part), np.asarray(X[:, cols]), rtol=0, atol=tol * scale)


def test_hals_host_kernel_under_vmap_and_dead_rows(monkeypatch):
    import jnmf._nnls as nn

    monkeypatch.setattr(nn, "_HOST_MIN_WORK", 0)
    a, y, G, B = _nnls_problem(12, 40, None, seed=2)
    with enable_x64(True):
        Gs = jnp.stack([jnp.asarray(G), 2 * jnp.asarray(G), jnp.asarray(G) + jnp.eye(12)])
        Bs = jnp.stack([jnp.asarray(B), jnp.asarray(B), -jnp.asarray(B)])
        vm = jax.vmap(lambda G, B: nnls_hals(G, B, sweeps=50, host=True))(Gs, Bs)
        for i in range(3):
            np.testing.assert_allclose(np.asarray(vm[i]), np.asarray(nnls_hals(Gs[i], Bs[i], sweeps=50)),
                                       rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(vm[i]))))
        G0 = jnp.diag(jnp.array([0.0, 2.0]))
        X = nnls_hals(G0, jnp.array([[1.0], [4.0]]), jnp.array([[3.0], [0.0]]), sweeps=3, host=True)
    np.testing.assert_allclose(np.asarray(X), [[3.0], [2.0]])  # the row with G_ii = 0 keeps its start


@pytest.mark.parametrize("masked", [False, True])
def test_default_cpu_fit_takes_the_host_kernel_and_equals_the_xla_sweeps(masked):
    import dataclasses

    rng = np.random.default_rng(5)
    # sparse rank-k factors, a well-determined fit: the two summation orders then agree to ~1e-12 after 40 iterations
    m, n, k = (300, 400, 30) if masked else (700, 2000, 40)
    W, H = (rng.random(s) * (rng.random(s) < 0.3) for s in ((m, k), (k, n)))
    A = W @ H + 0.01 * rng.random((m, n))
    mask = rng.random(A.shape) < 0.1 if masked else None
    with enable_x64(True):
        problem = jnmf.prepare(A, k, seed=1, tol=1e-6, maxit=40, mask=mask)
        assert problem.config.solver == "hals" and problem.config.hals_host and problem.config.masked == masked
        # both halves take the kernel
        assert k * k * m >= (jnmf._nnls._HOST_MIN_WORK_COLUMNS if masked else jnmf._nnls._HOST_MIN_WORK)
        xla = problem.replace(config=dataclasses.replace(problem.config, hals_host=False))
        a, b = jnmf.solve(problem), jnmf.solve(xla)
    assert int(a.iter) == int(b.iter)
    for x, y in ((a.w, b.w), (a.d, b.d), (a.h, b.h)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-12)
    hist = np.asarray(a.loss_history)[: int(a.iter)]
    assert np.all(np.diff(hist) <= 1e-12 * hist[:-1])  # monotone, as the XLA sweeps
    assert not jnmf.prepare(A, k, seed=1, loop="scan").config.hals_host  # gradients keep the XLA sweeps


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hals_host_kernel_with_one_gram_per_column_equals_the_xla_sweeps(monkeypatch, dtype):
    # Masked data: G (n, k, k), each column solved alone; the kernel copies each block's G_j as (k, k, 32).
    import jnmf._nnls as nn

    monkeypatch.setattr(nn, "_HOST_MIN_WORK_COLUMNS", 0)
    rng = np.random.default_rng(3)
    tol = dict(float32=2e-5, float64=1e-12)[dtype]
    with enable_x64(dtype == "float64"):
        for k, n in ((1, 4), (6, 45), (11, 70)):
            F = rng.random((n, 3 * k, k)) * (rng.random((n, 3 * k, 1)) < 0.8)  # rows dropped per column, as a mask
            G = np.einsum("jqa,jqb->jab", F, F)
            G[0, 0, :] = G[0, :, 0] = 0.0  # a dead row in one column: kept at its start there only
            B = np.einsum("jqa,qj->aj", F, rng.random((3 * k, n))) * np.exp(rng.normal(size=(1, n)))
            X0 = np.abs(rng.normal(size=(k, n)))
            G, B, X0 = (jnp.asarray(x, dtype) for x in (G, B, X0))
            for nonneg in (True, False):
                ref = nnls_hals(G, B, X0, nonneg=nonneg)
                X = jax.jit(functools.partial(nnls_hals, nonneg=nonneg, host=True))(G, B, X0)
                scale = float(jnp.max(jnp.abs(ref)))
                np.testing.assert_allclose(np.asarray(X), np.asarray(ref), rtol=0, atol=tol * scale)
                assert float(X[0, 0]) == float(X0[0, 0])
                for j in range(n):  # each column descends from its start on its own G_j
                    Gj, bj = np.asarray(G[j], np.float64), np.asarray(B[:, j], np.float64)
                    x0, x1 = np.asarray(X0[:, j], np.float64), np.asarray(X[:, j], np.float64)
                    f0, f1 = 0.5 * x0 @ Gj @ x0 - bj @ x0, 0.5 * x1 @ Gj @ x1 - bj @ x1
                    assert f1 <= f0 + tol * abs(f0)
