import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64
from scipy.optimize import nnls as scipy_nnls

import jnmf
from jnmf import apply_l1_l2, cholesky_clip, gram, nnls_cd, nnls_step, scale_rows


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


def test_auto_takes_exact_bpp_from_k_32_and_rcppml_keeps_its_rule():
    import jax

    rng = np.random.default_rng(3)
    A = np.abs(rng.normal(size=(80, 60)))
    assert jnmf.prepare(A, 8, seed=1).config.solver == "cholesky"  # RcppML's rule below k = 32
    assert jnmf.prepare(A, 8, seed=1, L1=0.1).config.solver == "cd"
    assert jnmf.prepare(A, 40, seed=1).config.solver == "bpp"
    assert jnmf.prepare(A, 40, seed=1, solver="rcppml").config.solver == "cd"
    assert jnmf.prepare(A, 8, seed=1, solver="rcppml").config.solver == "cholesky"
    assert jnmf.prepare(A, 40, seed=1, nonneg=(True, False)).config.solver == "cd"
    assert jnmf.prepare(A, 40, seed=1, loop="scan").config.solver == "cd"
    with pytest.raises(ValueError, match="solver='bpp' solves non-negative"):
        jnmf.prepare(A, 40, seed=1, solver="bpp", nonneg=False)
    with jax.enable_x64(True):
        bpp = jnmf.nmf(A, 40, seed=1, maxit=25, tol=0.0)
        cd = jnmf.nmf(A, 40, seed=1, maxit=25, tol=0.0, solver="cd", cd_maxit=500, cd_tol=1e-12)
    hist = np.asarray(bpp.loss_history)
    # exact NNLS half-steps: the squared error never increases, and matches converged CD
    assert np.all(np.diff(hist) <= 1e-10 * hist[:-1])
    np.testing.assert_allclose(hist, np.asarray(cd.loss_history), rtol=1e-6)
