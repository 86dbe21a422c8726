"""scikit-learn estimators: check_estimator, equivalence with nmf() (samples in rows vs columns), guidance via y,
one compile per batch-size bucket."""

import warnings

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_methods_subset_invariance, parametrize_with_checks

import jnmf
from tests.helpers import count_compiles


@parametrize_with_checks([jnmf.NMF(random_state=0), jnmf.GuidedNMF(random_state=0)])
def test_sklearn_compatible_estimator(estimator, check):
    """Every check passes (no expected failures): GuidedNMF.fit_transform is fit().transform, and the sample
    axis is padded to at least 16 columns, so one sample and a batch run the same float32 kernels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("estimator", [jnmf.NMF(random_state=0), jnmf.GuidedNMF(random_state=0)],
                         ids=["NMF", "GuidedNMF"])
def test_subset_invariance_holds_in_float64(estimator):
    with jax.enable_x64(True):
        check_methods_subset_invariance(type(estimator).__name__, estimator)


def test_fit_transform_on_hawaiibirds_is_nmf_transposed(hawaiibirds):
    A = hawaiibirds.A  # species x cells, as RcppML; scikit-learn gets cells x species
    est = jnmf.NMF(8, random_state=42, solver="rcppml")
    W = est.fit_transform(A.T)
    model = jnmf.nmf(A, 8, seed=42, solver="rcppml")
    assert W.shape == (1183, 8) and W.dtype == np.float64
    np.testing.assert_array_equal(W, np.asarray(model.embedding()))
    np.testing.assert_array_equal(est.components_, np.asarray(model.w).T)
    np.testing.assert_allclose(est.components_.sum(1), 1.0, rtol=1e-5)
    assert est.n_iter_ == int(model.iter) == 17 and est.n_components_ == 8 and est.n_features_in_ == 183
    assert est.reconstruction_err_ == pytest.approx(np.sqrt(jnmf.evaluate(model, A) * A.shape[0] * A.shape[1]),
                                                    rel=1e-9)
    # X ≈ W H with W = fit_transform(X), H = components_
    dense = A.T.toarray()
    assert np.linalg.norm(dense - est.inverse_transform(W)) == pytest.approx(est.reconstruction_err_, rel=1e-5)


def test_guided_estimator_is_the_vignette_recipe(hawaiibirds, hawaii_ref):
    A, island = hawaiibirds.A, hawaiibirds.obs["island"]
    est = jnmf.GuidedNMF(8, target_lambda=0.1, random_state=42, solver="rcppml")
    W = est.fit_transform(A.T, island)
    base = jnmf.nmf(A, 8, seed=42, solver="rcppml")
    T = jnmf.compute_target(base.h, island)
    guided = jnmf.nmf(A, 8, seed=42, target_H=T, target_lambda=0.1, solver="rcppml")
    np.testing.assert_array_equal(est.embedding_, np.asarray(guided.embedding()))
    np.testing.assert_array_equal(est.components_, np.asarray(guided.w).T)
    # fit_transform is the label-free projection onto the guided W, exactly what transform gives at predict time
    np.testing.assert_array_equal(W, est.transform(A.T))
    assert est.reconstruction_err_ == pytest.approx(np.linalg.norm(A.T.toarray() - W @ est.components_), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(est.base_model_.h), np.asarray(base.h))
    # and so RcppML's vignette model (reference target010)
    np.testing.assert_allclose(np.asarray(est.model_.h), hawaii_ref["target010_h"], rtol=0, atol=1e-5)
    assert est.n_iter_ == int(hawaii_ref["target010_iter"]) == 15
    assert list(est.classes_) == sorted(set(island))


def test_guided_transform_with_labels_reproduces_the_guided_embedding(hawaiibirds):
    A, island = hawaiibirds.A, hawaiibirds.obs["island"]
    est = jnmf.GuidedNMF(8, target_lambda=0.1, random_state=42, solver="rcppml").fit(A.T, island)
    W = est.embedding_
    # measured 1.5e-3 against entries up to 11.8 (tol=1e-4), while the fit's own rescaling h_scale_ is 1.3-2.1
    np.testing.assert_allclose(est.transform(A.T, island), W, rtol=0, atol=5e-4 * np.abs(W).max())
    assert np.all(est.h_scale_ > 1.2)
    # unseen and missing labels get a zero target column, not an error
    labels = np.array(island, dtype=object)
    labels[:5] = "Atlantis"
    labels[5:10] = None
    out = est.transform(A.T[:20], labels[:20])
    assert out.shape == (20, 8) and np.all(np.isfinite(out))


def test_removal_guidance_is_nmf_with_negative_lambda(hawaiibirds):
    A, island = hawaiibirds.A, hawaiibirds.obs["island"]
    est = jnmf.GuidedNMF(8, guidance="remove", target_lambda=0.5, random_state=42, solver="rcppml")
    W = est.fit(A.T, island).embedding_
    base = jnmf.nmf(A, 8, seed=42, solver="rcppml")
    T = jnmf.compute_target(base.h, island)
    removed = jnmf.nmf(A, 8, seed=42, target_H=T, target_lambda=-0.5, solver="cd")  # removal="scatter"
    np.testing.assert_array_equal(W, np.asarray(removed.embedding()))


def test_exact_low_rank_data_round_trips_through_transform():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(40, 3)) @ rng.uniform(size=(3, 25))
    est = jnmf.NMF(3, tol=1e-8, max_iter=400, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = est.fit_transform(X)
    assert np.linalg.norm(est.inverse_transform(W) - X) < 1e-3 * np.linalg.norm(X)
    assert np.linalg.norm(est.inverse_transform(est.transform(X)) - X) < 1e-3 * np.linalg.norm(X)
    # float32 input stays float32, sparse input gives the same fit
    assert est.transform(X.astype(np.float32)).dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sparse = clone(est).fit(sp.csr_matrix(X))
    np.testing.assert_array_equal(sparse.components_, est.components_)


def test_nan_entries_are_missing_values():
    rng = np.random.default_rng(1)
    X = rng.uniform(size=(40, 3)) @ rng.uniform(size=(3, 25))
    missing = rng.uniform(size=X.shape) < 0.2
    est = jnmf.NMF(3, random_state=0, max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = est.fit_transform(np.where(missing, np.nan, X))
    filled = est.inverse_transform(W)
    assert np.sqrt(np.mean((filled - X)[missing] ** 2)) < 1e-2 * np.sqrt(np.mean(X**2))
    resid = (filled - X)[~missing]
    assert est.reconstruction_err_ == pytest.approx(np.sqrt(np.sum(resid**2)), rel=1e-4)
    assert np.all(np.isfinite(est.transform(np.where(missing, np.nan, X))))


def test_parameter_and_input_errors():
    X = np.abs(np.random.default_rng(2).normal(size=(10, 4)))
    with pytest.raises(ValueError, match=r"n_components=5 must be <= min\(n_samples, n_features\)=4"):
        jnmf.NMF(5).fit(X)
    with pytest.raises(ValueError, match=r"Negative values in data passed to NMF \(input X\)"):
        jnmf.NMF(2).fit(-X)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        jnmf.NMF(2).fit(np.where(X > 1, np.inf, X))
    with pytest.raises(InvalidParameterError, match="solver"):
        jnmf.NMF(2, solver="mu").fit(X)
    with pytest.raises(InvalidParameterError, match="guidance"):
        jnmf.GuidedNMF(2, guidance="boost").fit(X, np.arange(10) % 2)
    with pytest.raises(ValueError, match="requires y to be passed, but the target y is None"):
        jnmf.GuidedNMF(2).fit(X)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        jnmf.GuidedNMF(2).fit(X, np.arange(9) % 2)
    fitted = jnmf.NMF(2, random_state=0, max_iter=200).fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but NMF is expecting 4"):
        fitted.transform(X[:, :3])
    with pytest.raises(ValueError, match="X has 3 components"):
        fitted.inverse_transform(np.ones((2, 3)))
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations 200"):
        jnmf.NMF(2, tol=0.0, max_iter=200, random_state=0).fit(X)  # tol = 0 never converges


@pytest.mark.parametrize("cls", [jnmf.NMF, jnmf.GuidedNMF])
def test_transform_of_new_batch_sizes_compiles_at_most_once(cls):
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(120, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(3, random_state=0, max_iter=20).fit(X, np.arange(120) % 3)
    with count_compiles() as compiles:
        out = [est.transform(X[:n]) for n in (100, 101, 102)]
    assert len(compiles) <= 1, compiles
    # the padded projection is the same per sample whatever the batch: sizes 100..102 share one bucket
    np.testing.assert_array_equal(out[0], out[2][:100])
    np.testing.assert_array_equal(out[1], out[2][:101])


def test_guided_fit_transform_is_fit_then_transform_and_embedding_keeps_the_guidance():
    rng = np.random.default_rng(4)
    y = np.repeat(["a", "b", "c"], 20)
    X = rng.uniform(size=(60, 15)) + np.repeat(rng.uniform(size=(3, 15)), 20, axis=0)
    est = jnmf.GuidedNMF(3, target_lambda=0.5, random_state=0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = est.fit_transform(X, y)
        W2 = clone(est).fit(X, y).transform(X)
    np.testing.assert_array_equal(W, W2)
    np.testing.assert_array_equal(est.embedding_, np.asarray(est.model_.embedding()))
    # guidance pulled the training embedding toward the class targets: the label-free projection is not it
    assert np.max(np.abs(est.embedding_ - W)) > 1e-2 * np.max(np.abs(W))
    assert est.reconstruction_err_ == pytest.approx(np.linalg.norm(X - W @ est.components_), rel=1e-6)


@pytest.mark.parametrize("y", [np.zeros(30), np.full(30, None), np.full(30, np.nan)],
                         ids=["one class", "all missing", "all NaN"])
def test_guided_labels_that_cannot_guide_raise_before_any_compile(y):
    X = np.random.default_rng(5).uniform(size=(30, 8))
    with count_compiles() as compiles, pytest.raises(ValueError, match="y must have at least 2 classes"):
        jnmf.GuidedNMF(2, random_state=0).fit(X, y)
    assert compiles == []
