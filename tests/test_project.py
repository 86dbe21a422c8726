"""jnmf.project: NNLS projection of new samples onto a fitted W (the H half of an nmf iteration)."""

import jax
import numpy as np
import pytest
import scipy.optimize

import jnmf
from jnmf._project import _project_jit


def test_projecting_the_training_data_reproduces_h(hawaiibirds):
    A = hawaiibirds.A
    model = jnmf.nmf(A, 8, seed=42, solver="cd")
    h = np.asarray(jnmf.project(model, A, solver="cd"))
    assert h.shape == (8, A.shape[1])
    # measured 3.1e-5 (entries of h reach 0.012): the rest is W's change in the fit's last iteration
    np.testing.assert_allclose(h, np.asarray(model.h), rtol=0, atol=1e-4)
    # w diag(d) h_new reconstructs A as well as the model does
    assert jnmf.evaluate(model.replace(h=h), A) == pytest.approx(jnmf.evaluate(model, A), rel=1e-3)


def test_cholesky_projection_reproduces_h_up_to_the_h_update_scale(hawaiibirds):
    # Cholesky-then-clip is not an exact NNLS, so the fit's h rows carry the H update's own L1 scale d_H, a few %
    # off the W update's d; normalising the projected rows recovers h.
    A = hawaiibirds.A
    model = jnmf.nmf(A, 8, seed=42, tol=1e-6, maxit=200)
    h = np.asarray(jnmf.project(model, A))
    row_sums = h.sum(1)
    assert np.all(np.abs(row_sums - 1) < 0.1)
    np.testing.assert_allclose(h / row_sums[:, None], np.asarray(model.h), rtol=0, atol=1e-6)  # measured 2e-8


def test_projection_matches_scipy_nnls_with_penalties_and_target(toy_ref):
    A = toy_ref["A"]
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        model = jnmf.nmf(A, 3, seed=1, solver="cd", maxit=50)
        w, d = np.asarray(model.w), np.asarray(model.d)
        T = rng.uniform(0, 10, size=(3, 12))
        new = A[:, :12] * rng.uniform(0.5, 1.5, size=(50, 12))
        cases = (({}, 0.0, False), ({"L2": 0.3}, 0.3, False), ({"target_H": T, "target_lambda": 0.7}, 0.7, True))
        for kw, lam, toward_target in cases:
            h = np.asarray(jnmf.project(model, new, solver="cd", cd_tol=1e-14, cd_maxit=10000, **kw))
            for j in range(12):
                # min |a - w x|^2 + lam |x - t|^2 over x >= 0 (t = 0 for the ridge), as augmented least squares
                t = T[:, j] if toward_target else np.zeros(3)
                x = scipy.optimize.nnls(np.vstack([w, np.sqrt(lam) * np.eye(3)]),
                                        np.concatenate([new[:, j], np.sqrt(lam) * t]))[0]
                np.testing.assert_allclose(h[:, j] * d, x, atol=1e-9)


def test_columns_are_independent_and_recompiles_are_avoided(toy_ref):
    A = toy_ref["A"]
    model = jnmf.nmf(A, 3, seed=1)
    full = np.asarray(jnmf.project(model, A))
    idx = np.array([3, 0, 17, 29, 5])
    np.testing.assert_allclose(np.asarray(jnmf.project(model, A[:, idx])), full[:, idx], rtol=1e-6, atol=1e-7)
    size = _project_jit._cache_size()
    jnmf.project(model, A * 2.0)  # same shapes, new values: the compiled program is reused
    assert _project_jit._cache_size() == size
    # guided projection: enrichment toward a target moves h, removal keeps it non-negative
    T = np.asarray(jnmf.compute_target(model.h, np.arange(30) % 3))
    enriched = np.asarray(jnmf.project(model, A, target_H=T, target_lambda=0.5))
    removed = np.asarray(jnmf.project(model, A, target_H=T, target_lambda=-0.5))
    assert np.max(np.abs(enriched - full)) > 1e-3 and np.min(removed) >= 0


def test_project_validation(toy_ref):
    A = toy_ref["A"]
    model = jnmf.nmf(A, 3, seed=1, maxit=5)
    with pytest.raises(ValueError, match="model's 50 features"):
        jnmf.project(model, A[:40])
    with pytest.raises(ValueError, match="A_new contains negative"):
        jnmf.project(model, -A)
    with pytest.raises(ValueError, match=r"target_H must have shape \(3, 30\)"):
        jnmf.project(model, A, target_H=np.ones((3, 29)), target_lambda=0.1)
    with pytest.raises(ValueError, match="target_H is None"):
        jnmf.project(model, A, target_lambda=0.1)
    with pytest.raises(ValueError, match="solver must be one of"):
        jnmf.project(model, A, solver="lbfgs")
    with pytest.raises(TypeError, match="model must be an NMFModel"):
        jnmf.project(np.ones((50, 3)), A)
    batch = jax.tree.map(lambda x: np.stack([x, x]), model)
    with pytest.raises(ValueError, match="batch of models"):
        jnmf.project(batch, A)
