"""jnmf.project: NNLS projection of new samples onto a fitted W (the H half of an nmf iteration)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

import jnmf
from jnmf._project import _project_jit, sample_bucket
from tests.helpers import count_compiles


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
    model = jnmf.nmf(A, 8, seed=42, tol=1e-6, maxit=200, solver="rcppml")
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


def _unpadded_projection(model, A, *, T=None, lam=0.0, removal="scatter", solver="cd", mask=None, L1=0.0, L2=0.0):
    """The jitted projection on A's own n columns, without project()'s padding to a bucket."""
    from jnmf._data import prepare_data

    dtype = model.w.dtype
    data = prepare_data(np.where(mask, 0.0, A) if mask is not None else A, dtype, mask=mask)
    hyper = [jnp.asarray(x, dtype) for x in (L1, L2, lam, 1e-8)]
    h = _project_jit(model.w, model.d, data, None if T is None else jnp.asarray(T, dtype), *hyper, solver=solver,
                     nonneg=True, removal=removal, cd_maxit=100)
    return np.asarray(h)


@pytest.mark.parametrize("case", ["plain", "cholesky", "L1_L2", "mask", "enrich", "scatter", "project", "proj_adv",
                                  "sparse"])
def test_padding_to_a_bucket_gives_the_unpadded_result(toy_ref, case):
    A = toy_ref["A"][:, :21]  # 21 samples run as 32
    assert sample_bucket(21) == 32
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        model = jnmf.nmf(toy_ref["A"], 3, seed=1, solver="cd", maxit=30)
        # a class target with every 4th sample unlabelled (a zero column, like the padding)
        labels = np.array(np.arange(21) % 3, dtype=object)
        labels[::4] = None
        T = np.asarray(jnmf.compute_target(model.h[:, :21], labels))
        assert np.all(T[:, ::4] == 0) and np.all(np.any(T[:, 1::4] != 0, axis=0))
        kw = {"plain": {}, "cholesky": {"solver": "cholesky"}, "L1_L2": {"L1": 0.2, "L2": 0.5},
              "mask": {"mask": rng.uniform(size=A.shape) < 0.3}, "enrich": {"T": T, "lam": 0.4},
              "scatter": {"T": T, "lam": -0.4}, "project": {"T": T, "lam": -0.4, "removal": "project"},
              "proj_adv": {"T": T, "lam": -0.05, "removal": "proj_adv"}, "sparse": {}}[case]
        ref = _unpadded_projection(model, A, **kw)
        args = {"target_H": kw.pop("T"), "target_lambda": kw.pop("lam")} if "T" in kw else {}
        args["removal"] = kw.pop("removal", "scatter")
        args["solver"] = kw.pop("solver", "cd")
        data = sp.csr_matrix(A) if case == "sparse" else A
        h = np.asarray(jnmf.project(model, data, **args, **kw))
    assert h.dtype == np.float64 and h.shape == (3, 21)
    np.testing.assert_allclose(h, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_projecting_new_batch_sizes_compiles_once_per_bucket(toy_ref):
    model = jnmf.nmf(toy_ref["A"], 3, seed=1, maxit=5)
    rng = np.random.default_rng(2)
    A = rng.uniform(size=(50, 102))
    with count_compiles() as compiles:
        h = [np.asarray(jnmf.project(model, A[:, :n])) for n in (100, 101, 102)]
    assert len(compiles) <= 1, compiles
    assert [x.shape for x in h] == [(3, 100), (3, 101), (3, 102)]
    np.testing.assert_array_equal(h[0], h[2][:, :100])
    assert [sample_bucket(n) for n in (1, 16, 17, 100, 128, 129, 1000, 1025)] == [16, 16, 32, 112, 128, 160, 1024,
                                                                                  1280]
    n = np.arange(1, 5000)
    buckets = np.array([sample_bucket(i) for i in n])
    assert np.all(buckets >= n) and np.all(buckets[n > 128] <= 1.25 * n[n > 128])
