"""The core engine against RcppML's fixtures, and its functional contracts (jit, vmap, no recompiles)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax import enable_x64

import jnmf
from jnmf._solve import _solve_jit

TOY_RUNS = {  # fixture prefix -> nmf options (seed = 1 gives the stored w_init); "rcppml": RcppML's NNLS rule
    "chol": {"solver": "rcppml"},
    "cd": {"solver": "cd"},
    "L1": {"L1": 0.1, "solver": "rcppml"},
}


def _assert_model_matches(model, ref, prefix, atol=1e-4):
    np.testing.assert_allclose(np.asarray(model.w), ref[f"{prefix}_w"], rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(model.h), ref[f"{prefix}_h"], rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(model.d), ref[f"{prefix}_d"], rtol=atol)


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("prefix", list(TOY_RUNS))
def test_toy_fits_match_rcppml(toy_ref, prefix, x64):
    with enable_x64(x64):
        model = jnmf.nmf(toy_ref["A"], 3, w_init=toy_ref["w_init"], **TOY_RUNS[prefix])
        assert model.w.dtype == (jnp.float64 if x64 else jnp.float32)
        assert int(model.iter) == int(toy_ref[f"{prefix}_iter"])
        assert bool(model.converged)
        _assert_model_matches(model, toy_ref, prefix, atol=1e-4)
        if x64:  # the float64 recipe tracks RcppML's float32 numbers to float32 accuracy
            _assert_model_matches(model, toy_ref, prefix, atol=5e-6)


def test_toy_seed_path_equals_w_init_path(toy_ref):
    a = jnmf.nmf(toy_ref["A"], 3, seed=1)
    b = jnmf.nmf(toy_ref["A"], 3, w_init=toy_ref["w_init"])
    np.testing.assert_array_equal(np.asarray(a.w_init), np.asarray(b.w_init))
    np.testing.assert_array_equal(np.asarray(a.h), np.asarray(b.h))


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_hawaiibirds_base_model_matches_rcppml(hawaiibirds, hawaii_ref, layout, x64):
    with enable_x64(x64):
        model = jnmf.nmf(hawaiibirds.A, 8, tol=1e-4, maxit=100, seed=42, layout=layout, solver="rcppml")
        np.testing.assert_allclose(np.asarray(model.w_init).ravel(order="F")[:10],
                                   hawaii_ref["base_w_init"].ravel(order="F")[:10], rtol=1e-7)
        assert int(model.iter) == int(hawaii_ref["base_iter"]) == 17
        assert bool(model.converged)
        _assert_model_matches(model, hawaii_ref, "base", atol=1e-4)
        # RcppML's loss history carries its float32 |A|^2 bias (~5e-5 relative); ours sums |A|^2 exactly.
        hist = np.asarray(model.loss_history)
        np.testing.assert_allclose(hist[:17], hawaii_ref["base_loss_history"], rtol=1e-4)
        assert np.all(np.isnan(hist[17:]))


def test_evaluate_is_mse_over_all_entries(hawaiibirds, hawaii_ref):
    model = jnmf.nmf(hawaiibirds.A, 8, seed=42, solver="rcppml")
    dense = hawaiibirds.A.toarray()
    direct = np.mean((dense - (np.asarray(model.w, np.float64) * np.asarray(model.d)) @ np.asarray(model.h)) ** 2)
    assert jnmf.evaluate(model, hawaiibirds.A) == pytest.approx(direct, rel=1e-9)
    assert jnmf.evaluate(model, dense) == pytest.approx(direct, rel=1e-9)
    assert jnmf.evaluate(model, hawaiibirds.A) == pytest.approx(0.0040455, rel=1e-4)  # RcppML's evaluate()
    with pytest.raises(ValueError, match="shape"):
        jnmf.evaluate(model, dense[:, :10])


def test_sparse_and_dense_layouts_agree_with_cd():
    rng = np.random.default_rng(0)
    S = sp.random(60, 40, density=0.2, random_state=rng, format="csc")
    a = jnmf.nmf(S, 4, seed=3, solver="cd", layout="sparse")
    b = jnmf.nmf(S.toarray(), 4, seed=3, solver="cd")
    assert int(a.iter) == int(b.iter)
    np.testing.assert_allclose(np.asarray(a.h), np.asarray(b.h), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.w), np.asarray(b.w), atol=1e-5)


def test_factors_are_normalised_sorted_and_nonnegative(toy_ref):
    model = jnmf.nmf(toy_ref["A"], 3, seed=7)
    w, d, h = (np.asarray(x) for x in (model.w, model.d, model.h))
    np.testing.assert_allclose(w.sum(0), 1, rtol=1e-5)
    np.testing.assert_allclose(h.sum(1), 1, rtol=1e-5)
    assert np.all(np.diff(d) <= 0)
    assert (w >= 0).all() and (h >= 0).all()
    l2 = jnmf.nmf(toy_ref["A"], 3, seed=7, norm="L2")
    np.testing.assert_allclose(np.linalg.norm(np.asarray(l2.h), axis=1), 1, rtol=1e-5)
    unsorted = jnmf.nmf(toy_ref["A"], 3, seed=7, sort=False)
    np.testing.assert_allclose(np.sort(np.asarray(unsorted.d))[::-1], d, rtol=1e-6)


def test_jax_key_seed_and_vmap_over_keys(toy_ref):
    key = jax.random.key(0)
    model = jnmf.nmf(toy_ref["A"], 3, seed=key, maxit=10)
    np.testing.assert_allclose(np.asarray(model.w_init), np.asarray(jax.random.uniform(key, (50, 3))))
    problem = jnmf.prepare(toy_ref["A"], 3, seed=1, maxit=10)
    keys = jax.random.split(key, 3)
    inits = jax.vmap(lambda k: jax.random.uniform(k, (50, 3)))(keys)
    batched = jax.vmap(lambda w0: jnmf.solve(problem, w_init=w0))(inits)
    for i in range(3):
        single = jnmf.nmf(toy_ref["A"], 3, w_init=np.asarray(inits[i]), maxit=10)
        np.testing.assert_allclose(np.asarray(batched.h[i]), np.asarray(single.h), atol=1e-6)


def test_vmap_over_l2_equals_separate_fits(toy_ref):
    l2s = jnp.asarray([0.0, 0.05, 0.3, 1.0])
    problem = jnmf.prepare(toy_ref["A"], 3, seed=1, solver="cd")
    batched = jax.vmap(lambda l2: jnmf.solve(problem, L2=l2))(l2s)
    for i, l2 in enumerate(np.asarray(l2s)):
        single = jnmf.nmf(toy_ref["A"], 3, seed=1, solver="cd", L2=float(l2))
        assert int(batched.iter[i]) == int(single.iter)
        np.testing.assert_allclose(np.asarray(batched.h[i]), np.asarray(single.h), atol=1e-6)
        np.testing.assert_allclose(np.asarray(batched.d[i]), np.asarray(single.d), rtol=1e-5)


def test_new_hyperparameter_values_do_not_recompile(toy_ref):
    jnmf.nmf(toy_ref["A"], 3, seed=1, L2=0.1, maxit=13)
    before = _solve_jit._cache_size()
    for value in (0.2, 0.3):
        jnmf.nmf(toy_ref["A"], 3, seed=2, L2=value, tol=1e-5, maxit=13)
    assert _solve_jit._cache_size() == before
    jnmf.nmf(toy_ref["A"], 3, seed=1, L2=0.1, maxit=14)  # maxit is structural: one new program
    assert _solve_jit._cache_size() == before + 1


def test_scan_loop_equals_while_loop_and_is_differentiable(toy_ref):
    a = jnmf.nmf(toy_ref["A"], 3, seed=1, loop="scan")
    b = jnmf.nmf(toy_ref["A"], 3, seed=1)
    assert int(a.iter) == int(b.iter)
    np.testing.assert_allclose(np.asarray(a.h), np.asarray(b.h), atol=1e-6)
    problem = jnmf.prepare(toy_ref["A"], 3, seed=1, solver="cd", loop="scan", maxit=5, tol=0.0)
    grad = jax.grad(lambda l2: jnmf.solve(problem, L2=l2).loss)(0.1)
    assert np.isfinite(float(grad)) and float(grad) > 0  # more ridge, worse fit


def test_maxit_reached_is_reported(toy_ref):
    model = jnmf.nmf(toy_ref["A"], 3, seed=1, maxit=4)
    assert int(model.iter) == 4 and not bool(model.converged)
    assert np.isfinite(np.asarray(model.loss_history)).sum() == 4


def test_non_negative_unconstrained_factors_allowed(toy_ref):
    model = jnmf.nmf(toy_ref["A"], 3, seed=1, nonneg=(False, True), solver="cd", maxit=20)
    assert np.all(np.asarray(model.h) >= 0)
    assert np.all(np.isfinite(np.asarray(model.w)))


def test_upper_bound_clamps_raw_factor(toy_ref):
    free = jnmf.nmf(toy_ref["A"], 3, seed=1, maxit=20)
    bounded = jnmf.nmf(toy_ref["A"], 3, seed=1, maxit=20, upper_bound=(0.0, 0.5))
    assert not np.allclose(np.asarray(free.h), np.asarray(bounded.h))


def test_model_is_an_immutable_pytree(toy_ref):
    model = jnmf.nmf(toy_ref["A"], 3, seed=1, solver="rcppml")
    leaves = jax.tree.leaves(model)
    assert len(leaves) == 9
    with pytest.raises(AttributeError):
        model.w = None
    twice = jax.tree.map(lambda x: x * 2, model)
    np.testing.assert_allclose(np.asarray(twice.d), 2 * np.asarray(model.d))
    assert "iter=32" in repr(model)
    np.testing.assert_allclose(np.asarray(model.embedding()), (np.asarray(model.d)[:, None] * np.asarray(model.h)).T)
