"""Target-guided nmf(): RcppML parity for enrichment (lambda > 0) and PROJ_ADV, the convergent removal mode,
transform equivalence (vmap over lambda) and target validation (reference §12, §16, §18 item 1)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf


def _rel(a, b):
    return np.max(np.abs(np.asarray(a, np.float64) / np.asarray(b, np.float64) - 1.0))


def _assert_matches(model, ref, prefix, atol=1e-5, d_rtol=1e-5):
    assert int(model.iter) == int(ref[f"{prefix}_iter"])
    np.testing.assert_allclose(model.w, ref[f"{prefix}_w"], rtol=0, atol=atol)
    np.testing.assert_allclose(model.h, ref[f"{prefix}_h"], rtol=0, atol=atol)
    assert _rel(model.d, ref[f"{prefix}_d"]) < d_rtol


@pytest.fixture(scope="module")
def toy(toy_ref):
    return toy_ref


@pytest.fixture(scope="module")
def birds(hawaii_ref, hawaiibirds):
    return hawaii_ref, hawaiibirds.A


# ---------------------------------------------------------------------------------------------------------------
# parity with RcppML
# ---------------------------------------------------------------------------------------------------------------


def test_hawaiibirds_target_enrichment_matches_rcppml(birds):
    ref, A = birds
    with jax.enable_x64(True):
        model = jnmf.nmf(A, 8, tol=1e-4, maxit=100, seed=42, target_H=ref["target_T"], target_lambda=0.10)
        assert model.w.dtype == jnp.float64
        _assert_matches(model, ref, "target010")
        n_iter = int(model.iter)
        history = np.asarray(model.loss_history[:n_iter])
    # RcppML's float32 loss is biased by ~1e-5..1e-4 relative (reference §8); the iterates themselves match closely
    assert _rel(history, ref["target010_loss_history"]) < 1e-3
    f32 = jnmf.nmf(A, 8, tol=1e-4, maxit=100, seed=42, target_H=ref["target_T"], target_lambda=0.10)
    assert f32.w.dtype == jnp.float32
    assert int(f32.iter) == n_iter
    _assert_matches(f32, ref, "target010", atol=1e-5, d_rtol=1e-5)


def test_toy_target_enrichment_matches_rcppml(toy):
    with jax.enable_x64(True):
        by_seed = jnmf.nmf(toy["A"], 3, seed=1, target_H=toy["target_T"], target_lambda=0.5, maxit=20, tol=1e-8)
        by_matrix = jnmf.nmf(toy["A"], 3, seed=toy["w_init"], target_H=toy["target_T"], target_lambda=0.5,
                             maxit=20, tol=1e-8)
        _assert_matches(by_seed, toy, "target05")
        _assert_matches(by_matrix, toy, "target05")
        assert not bool(by_seed.converged)  # runs all 20 iterations, as RcppML does
    f32 = jnmf.nmf(toy["A"], 3, seed=1, target_H=toy["target_T"], target_lambda=0.5, maxit=20, tol=1e-8)
    _assert_matches(f32, toy, "target05")


def test_proj_adv_first_iterations_match_rcppml(birds):
    ref, A = birds
    expected = ref["removal010_loss_history"][:5]
    with jax.enable_x64(True):
        model = jnmf.nmf(A, 8, tol=1e-4, maxit=100, seed=42, target_H=ref["target_T"], target_lambda=-0.10,
                         removal="proj_adv")
        assert _rel(model.loss_history[:5], expected) < 1e-3
        # PROJ_ADV does not converge on hawaiibirds (reference §12.4), here as in RcppML
        assert int(model.iter) == int(ref["removal010_iter"]) == 100 and not bool(model.converged)
        assert float(jnp.min(model.w)) >= 0.0 and float(jnp.min(model.h)) >= 0.0
    # float32: the chaotic tail can overflow, so run the prepared problem without nmf()'s finiteness check
    problem = jnmf.prepare(A, 8, tol=1e-4, maxit=5, seed=42, target_H=ref["target_T"], target_lambda=-0.10,
                           removal="proj_adv")
    assert _rel(jnmf.solve(problem).loss_history, expected) < 1e-3


# ---------------------------------------------------------------------------------------------------------------
# behaviour (RcppML's test_target_regularization.R, and the convergent removal mode)
# ---------------------------------------------------------------------------------------------------------------


def test_lambda_zero_equals_no_target(toy):
    # same solver on both sides: "auto" takes RcppML's rule for a fit with a target below k = 32, HALS without
    solver = "rcppml"
    plain = jnmf.nmf(toy["A"], 3, seed=1, tol=1e-8, maxit=30, solver=solver)
    zero = jnmf.nmf(toy["A"], 3, seed=1, tol=1e-8, maxit=30, target_H=toy["target_T"], target_lambda=0.0,
                    solver=solver)
    for removal in ("proj_adv", "project", "scatter"):
        zero_r = jnmf.nmf(toy["A"], 3, seed=1, tol=1e-8, maxit=30, target_H=toy["target_T"], target_lambda=0.0,
                          removal=removal, solver=solver)
        np.testing.assert_array_equal(zero_r.h, zero.h)
    assert int(zero.iter) == int(plain.iter)
    np.testing.assert_array_equal(zero.w, plain.w)
    np.testing.assert_array_equal(zero.h, plain.h)
    np.testing.assert_array_equal(zero.loss, plain.loss)


@pytest.mark.parametrize(
    "removal, x64",
    [("proj_adv", True), ("proj_adv", False), ("project", True), ("project", False), ("scatter", True),
     ("scatter", False)],
)
def test_signs_differ_and_factors_stay_nonnegative(toy, removal, x64):
    kw = dict(seed=1, maxit=20, tol=1e-8, target_H=toy["target_T"], removal=removal)
    with jax.enable_x64(x64):
        plus = jnmf.nmf(toy["A"], 3, target_lambda=0.5, **kw)
        minus = jnmf.nmf(toy["A"], 3, target_lambda=-0.5, **kw)
    assert plus.h.shape == minus.h.shape == (3, 30)
    assert np.max(np.abs(np.asarray(plus.h) - np.asarray(minus.h))) > 1e-3
    for model in (plus, minus):
        assert all(np.min(np.asarray(x)) >= 0.0 for x in (model.w, model.h, model.d))


def test_sparse_input_with_targets(toy):
    import scipy.sparse as sp

    A = sp.csc_matrix(np.where(toy["A"] > 0.8, toy["A"], 0.0))
    for lam in (0.5, -0.5):
        model = jnmf.nmf(A, 3, seed=1, maxit=20, target_H=toy["target_T"], target_lambda=lam, removal="project")
        assert float(jnp.min(model.h)) >= 0.0 and model.h.shape == (3, 30)


def _between_class_share(model, codes):
    """Between-class share of the embedding's variance: 0 when every class has the same mean."""
    X = np.asarray(model.embedding(), np.float64)
    mu = X.mean(0)
    between = sum((codes == c).sum() * np.sum((X[codes == c].mean(0) - mu) ** 2) for c in np.unique(codes))
    return between / np.sum((X - mu) ** 2)


def test_project_removal_converges_and_lowers_island_information(birds, hawaiibirds):
    ref, A = birds
    island = hawaiibirds.obs["island"]
    codes, _ = jnmf.label_codes(island)
    base = jnmf.nmf(A, 8, tol=1e-4, maxit=100, seed=42)
    removed = jnmf.nmf(A, 8, tol=1e-4, maxit=100, seed=42, target_H=ref["target_T"], target_lambda=-0.5,
                       removal="project")
    assert bool(removed.converged)
    assert float(jnp.min(removed.w)) >= 0.0 and float(jnp.min(removed.h)) >= 0.0
    # no PROJ_ADV-style blow-up (reference §12.4: spikes to 2.9e8)
    history = np.asarray(removed.loss_history[: int(removed.iter)])
    assert np.all(np.isfinite(history)) and history.max() < 2.0 * history[-1]
    assert jnmf.evaluate(removed, A) < 1.5 * jnmf.evaluate(base, A)
    assert _between_class_share(removed, codes) < 0.5 * _between_class_share(base, codes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # assess drops the three islands with < 10 cells, with a warning
        nmi = [jnmf.assess(x, island, metrics=("nmi",)).metrics["nmi"] for x in (base, removed)]
    assert nmi[1] < 0.5 * nmi[0]


def _class_data(seed=0, n_per=(7, 12, 5), n_na=4, k=4):
    rng = np.random.default_rng(seed)
    codes = np.concatenate([np.repeat(np.arange(len(n_per)), n_per), -np.ones(n_na, int)])
    rng.shuffle(codes)
    labels = np.array([None if c < 0 else f"c{c}" for c in codes], dtype=object)
    H = rng.uniform(size=(k, codes.size)) + 0.5 * np.eye(k)[np.maximum(codes, 0)].T * (codes >= 0)
    B = rng.normal(size=(k, codes.size)) + H
    return codes, labels, H, B


def _class_means(B, codes):
    return np.stack([B[:, codes == c].mean(1) for c in np.unique(codes[codes >= 0])], axis=1)


@pytest.mark.parametrize("lam", [-1.0, -0.3, -4.0])
def test_removal_kernel_removes_a_fraction_of_class_mean_differences(lam):
    codes, labels, H, B = _class_data()
    with jax.enable_x64(True):
        T = jnmf.compute_target(H, labels)
        G = jnp.eye(4) * 2.0
        G_out, B_out = jnmf.removal_project_rhs(G, B, T, jnmf.target_gram(T), lam)
        G_out, B_out = np.asarray(G_out), np.asarray(B_out)
    np.testing.assert_array_equal(G_out, G)
    lab = codes >= 0
    np.testing.assert_array_equal(B_out[:, ~lab], B[:, ~lab])  # unlabelled columns untouched
    np.testing.assert_allclose(B_out[:, lab].mean(1), B[:, lab].mean(1), atol=1e-12)  # labelled mean kept
    r = min(abs(lam), 1.0)
    offsets = _class_means(B, codes) - B[:, lab].mean(1, keepdims=True)
    offsets_out = _class_means(B_out, codes) - B_out[:, lab].mean(1, keepdims=True)
    np.testing.assert_allclose(offsets_out, (1.0 - r) * offsets, atol=1e-12)
    # within-class deviations are not touched
    for c in range(3):
        dev = B[:, codes == c] - B[:, codes == c].mean(1, keepdims=True)
        dev_out = B_out[:, codes == c] - B_out[:, codes == c].mean(1, keepdims=True)
        np.testing.assert_allclose(dev_out, dev, atol=1e-12)


def test_removal_kernel_depends_only_on_the_class_partition():
    codes, labels, H, B = _class_data(seed=1)
    with jax.enable_x64(True):
        outs = []
        for kw in (dict(), dict(whiten=False), dict(weighted=True)):
            T = jnmf.compute_target(H, labels, **kw)
            for scale in (1.0, 1e3):
                outs.append(np.asarray(jnmf.removal_project_rhs(jnp.eye(4), B, scale * T, jnp.eye(4), -0.7)[1]))
        zero = jnmf.removal_project_rhs(jnp.eye(4), B, jnp.zeros_like(T), jnp.zeros((4, 4)), -0.7)[1]
        np.testing.assert_array_equal(zero, B)
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=1e-10)


def test_vmapped_lambdas_equal_separate_fits(toy):
    lams = np.linspace(-0.6, 0.6, 8)
    with jax.enable_x64(True):
        problem = jnmf.prepare(toy["A"], 3, seed=1, maxit=30, target_H=toy["target_T"], target_lambda=0.1,
                               removal="project")
        batched = jax.vmap(lambda lam: jnmf.solve(problem, target_lambda=lam))(jnp.asarray(lams))
        for i, lam in enumerate(lams):
            single = jnmf.nmf(toy["A"], 3, seed=1, maxit=30, target_H=toy["target_T"], target_lambda=float(lam),
                              removal="project")
            assert int(batched.iter[i]) == int(single.iter)
            np.testing.assert_allclose(batched.w[i], single.w, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(batched.d[i], single.d, rtol=1e-9)
            np.testing.assert_allclose(batched.h[i], single.h, rtol=1e-9, atol=1e-12)
    # the grid spans both signs, so it exercises enrichment, removal and lambda = 0 in one compiled program
    assert len({round(float(np.max(np.abs(batched.h[i] - batched.h[0]))), 6) for i in range(8)}) > 1


# ---------------------------------------------------------------------------------------------------------------
# validation (RcppML checks none of this: reference §18 item 1)
# ---------------------------------------------------------------------------------------------------------------


def test_target_validation_errors(toy):
    A, T = toy["A"], toy["target_T"]
    with pytest.raises(ValueError, match=r"target_H must have shape \(3, 30\)"):
        jnmf.nmf(A, 3, seed=1, target_H=T[:2], target_lambda=0.5)
    with pytest.raises(ValueError, match=r"target_H must have shape \(3, 30\)"):
        jnmf.nmf(A, 3, seed=1, target_H=T.T, target_lambda=0.5)
    bad = T.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="target_H contains non-finite"):
        jnmf.nmf(A, 3, seed=1, target_H=bad, target_lambda=0.5)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="target_H contains non-finite"):
        jnmf.nmf(A, 3, seed=1, target_H=bad, target_lambda=0.5)
    for lam in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="target_lambda must be finite"):
            jnmf.nmf(A, 3, seed=1, target_H=T, target_lambda=lam)
    with pytest.raises(ValueError, match="target_lambda must be a scalar or a"):
        jnmf.nmf(A, 3, seed=1, target_H=T, target_lambda=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="target_lambda.*None"):
        jnmf.nmf(A, 3, seed=1, target_lambda=0.5)
    with pytest.raises(ValueError, match="removal must be one of"):
        jnmf.nmf(A, 3, seed=1, target_H=T, target_lambda=-0.5, removal="subtract")


def test_one_guided_recipe_for_estimator_tl_and_main_job():
    """GuidedNMF, tl.nmf and the main job all run guided_nmf, RcppML's recipe: T from the sorted base fit."""
    rng = np.random.default_rng(11)
    A = np.abs(rng.normal(size=(40, 60))) + np.repeat(np.abs(rng.normal(size=(40, 3))), 20, axis=1)
    y = np.repeat(["a", "b", "c"], 20)
    fit = jnmf.guided_nmf(A, 4, y, target_lambda=0.2, seed=3, solver="cd")
    base = jnmf.nmf(A, 4, seed=3, solver="cd")
    recipe = jnmf.nmf(A, 4, seed=3, solver="cd", target_H=jnmf.compute_target(base.h, y), target_lambda=0.2)
    assert not np.array_equal(fit.order, np.arange(4))  # the sort permutes: the alignment rule matters here
    np.testing.assert_array_equal(np.asarray(fit.model.h), np.asarray(recipe.h))
    est = jnmf.GuidedNMF(4, target_lambda=0.2, random_state=3, solver="cd").fit(A.T, y)
    np.testing.assert_array_equal(np.asarray(est.model_.h), np.asarray(recipe.h))
    np.testing.assert_array_equal(est.target_, fit.target[fit.order])
    ad = pytest.importorskip("anndata", reason="anndata is not installed (pip install jnmf[anndata])")
    adata = ad.AnnData(A.T.copy())
    adata.obs["y"] = y
    jnmf.tl.nmf(adata, 4, labels_key="y", target_lambda=0.2, random_state=3, solver="cd")
    np.testing.assert_array_equal(adata.obsm["X_nmf"], np.asarray(recipe.embedding()))
