"""compute_target, refine and their kernels: RcppML fixtures, a float64 NumPy restatement of reference §13, and
the behaviours RcppML's test_compute_target.R / test_refine.R rely on (reference §16)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from jnmf import NMFModel, evaluate

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def reference_target(H, codes, n_levels, whiten=True):
    """Reference §13 in float64 NumPy, loop by loop; codes -1 = NA, levels 0..n_levels-1 (empty ones allowed)."""
    H = np.asarray(H, np.float64)
    k, n = H.shape
    mu = np.zeros((k, n_levels))
    cnt = np.zeros(n_levels)
    for c in range(n_levels):
        cols = codes == c
        cnt[c] = cols.sum()
        if cnt[c] > 0:
            mu[:, c] = H[:, cols].mean(axis=1)
    mu_bar = mu[:, cnt > 0].mean(axis=1)
    if whiten and n_levels > 1:
        X = np.stack([(mu[:, c] - mu_bar) * np.sqrt(max(cnt[c], 1)) for c in range(n_levels)], axis=1)
        N = cnt.sum()
        S = X @ X.T / N
        tr, tr2 = np.trace(S), np.sum(S * S)
        num = (1 - 2 / k) * tr2 + tr**2
        den = (N + 1 - 2 / k) * (tr2 - tr**2 / k)
        rho = 1.0 if abs(den) < 1e-12 else min(max(num / den, 0.0), 1.0)
        v, V = np.linalg.eigh((1 - rho) * S + rho * tr / k * np.eye(k))
        Z = V @ np.diag(np.maximum(v, 1e-10) ** -0.5) @ V.T
        mu, mu_bar = Z @ mu, Z @ mu_bar
    T = np.zeros((k, n))
    if n_levels > 1:
        for j in range(n):
            if codes[j] >= 0:
                T[:, j] = mu[:, codes[j]] - mu_bar
    return T


def random_h(k, n, seed=0):
    return np.random.default_rng(seed).uniform(size=(k, n))


def blocks(n_per, n_blocks):
    return np.repeat(np.arange(n_blocks), n_per)


def toy_model(m=50, n=30, k=3, seed=1):
    """A model with unit-sum W columns and H rows, and data it reconstructs up to non-negative noise."""
    rng = np.random.default_rng(seed)
    W = rng.uniform(size=(m, k))
    H = rng.uniform(size=(k, n))
    d = np.sort(rng.uniform(50, 100, size=k))[::-1]
    W /= W.sum(0)
    H /= H.sum(1, keepdims=True)
    A = (W * d) @ H + rng.uniform(0, 0.05, size=(m, n))
    f32 = np.float32
    model = NMFModel(
        w=jnp.asarray(W, f32), d=jnp.asarray(d, f32), h=jnp.asarray(H, f32), iter=jnp.asarray(10),
        loss=jnp.asarray(0.0, f32), loss_history=jnp.full((10,), jnp.nan, f32), converged=jnp.asarray(True),
        tol=jnp.asarray(0.0, f32), w_init=jnp.asarray(W, f32),
    )
    return model, A


def batch_spread(h, codes):
    """Between-batch over total variance of the columns of h (k, n): 0 = no batch information in the centroids."""
    X = np.asarray(h, np.float64).T
    mu = X.mean(0)
    between = sum((codes == c).sum() * np.sum((X[codes == c].mean(0) - mu) ** 2) for c in np.unique(codes))
    return between / np.sum((X - mu) ** 2)


@pytest.fixture(scope="module")
def hawaii(hawaii_ref, hawaiibirds):
    """(RcppML fixture arrays, island labels); skips via conftest when ../shared is absent."""
    return hawaii_ref, hawaiibirds.obs["island"]


# ---------------------------------------------------------------------------------------------------------------
# RcppML fixtures (hawaiibirds)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("whiten, key", [(True, "target_T"), (False, "target_T_nowhiten")])
def test_compute_target_matches_rcppml_float64(hawaii, whiten, key):
    ref, island = hawaii
    with jax.enable_x64(True):
        T = jnmf.compute_target(ref["base_h"], island, whiten=whiten)
        assert T.dtype == jnp.float64
        err = np.max(np.abs(np.asarray(T) - ref[key])) / np.max(np.abs(ref[key]))
    assert err < 1e-10


def test_compute_target_float32_default(hawaii):
    ref, island = hawaii
    T = jnmf.compute_target(ref["base_h"], island)
    assert T.dtype == jnp.float32
    # float32 whitening of a covariance with eigenvalues spread over several decades loses ~1e-5 relative
    err = np.max(np.abs(np.asarray(T, np.float64) - ref["target_T"])) / np.max(np.abs(ref["target_T"]))
    assert err < 1e-4


def test_refine_stage1_matches_rcppml(hawaii):
    ref, island = hawaii
    with jax.enable_x64(True):
        H_c = jnmf.refine(jnp.asarray(ref["base_h"]), island, lambda_=0.5)
        err = np.max(np.abs(np.asarray(H_c) - ref["refine05_h"])) / np.max(np.abs(ref["refine05_h"]))
    assert err < 1e-10


def test_refine_stage1_model_keeps_w_and_d(hawaii):
    ref, island = hawaii
    with jax.enable_x64(True):
        k = ref["base_d"].shape[0]
        model = NMFModel(
            w=jnp.asarray(ref["base_w"]), d=jnp.asarray(ref["base_d"]), h=jnp.asarray(ref["base_h"]),
            iter=jnp.asarray(17), loss=jnp.asarray(875.767), loss_history=jnp.asarray(ref["base_loss_history"]),
            converged=jnp.asarray(True), tol=jnp.asarray(0.0), w_init=jnp.asarray(ref["base_w_init"]),
        )
        out = jnmf.refine(model, island, lambda_=0.5)
        assert isinstance(out, NMFModel) and out.k == k
        np.testing.assert_array_equal(out.w, ref["base_w"])
        np.testing.assert_array_equal(out.d, ref["base_d"])
        np.testing.assert_allclose(out.h, ref["refine05_h"], rtol=0, atol=1e-12)


def test_unweighted_centring_quirk_and_weighted_fix(hawaii):
    ref, island = hawaii
    with jax.enable_x64(True):
        codes, _ = jnmf.label_codes(island)
        T = np.asarray(jnmf.compute_target(ref["base_h"], island, whiten=False))
        Tw = np.asarray(jnmf.compute_target(ref["base_h"], island, whiten=False, weighted=True))
    # unbalanced islands: RcppML's unweighted centre leaves the rows of T off zero (reference §13 step 2)
    assert np.max(np.abs(T.mean(axis=1))) > 1e-3
    assert np.max(np.abs(Tw.mean(axis=1))) < 1e-15
    # the weighted target differs from the unweighted one by one constant vector on every labelled column
    shift = (Tw - T)[:, 0]
    np.testing.assert_allclose(Tw - T, np.broadcast_to(shift[:, None], T.shape), atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# compute_target against the NumPy restatement
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("k, n_levels", [(5, 4), (2, 3), (1, 2), (6, 9)])
def test_compute_target_matches_numpy_reference(k, n_levels, whiten):
    rng = np.random.default_rng(k * 10 + n_levels)
    n = 60
    H = rng.uniform(size=(k, n))
    codes = rng.integers(-1, n_levels, size=n)
    codes[:n_levels] = np.arange(n_levels)  # every level present
    labels = np.where(codes < 0, None, np.array([f"g{c}" for c in codes], dtype=object))
    with jax.enable_x64(True):
        T = jnmf.compute_target(H, labels, whiten=whiten)
        np.testing.assert_allclose(T, reference_target(H, codes, n_levels, whiten), rtol=1e-10, atol=1e-12)


def test_shapes_and_dtypes():
    H = random_h(5, 40)
    T = jnmf.compute_target(H, blocks(10, 4))
    assert T.shape == (5, 40)
    assert bool(jnp.all(jnp.isfinite(T)))


def test_balanced_unwhitened_rows_are_centred():
    with jax.enable_x64(True):
        T = jnmf.compute_target(random_h(3, 20, seed=3), blocks(10, 2), whiten=False)
        np.testing.assert_allclose(np.asarray(T).mean(axis=1), 0.0, atol=1e-10)


def test_k2_whitened_is_finite():
    T = jnmf.compute_target(random_h(2, 30, seed=4), blocks(10, 3))
    assert T.shape == (2, 30)
    assert bool(jnp.all(jnp.isfinite(T))) and float(jnp.max(jnp.abs(T))) > 0


def test_class_and_batch_targets_differ():
    H = random_h(3, 30, seed=5)
    cls = jnmf.compute_target(H, blocks(10, 3))
    batch = jnmf.compute_target(H, np.tile([0, 1], 15))
    assert float(jnp.max(jnp.abs(cls - batch))) > 1e-3


@pytest.mark.parametrize("whiten", [True, False])
def test_single_class_gives_zero(whiten):
    T = jnmf.compute_target(random_h(4, 25), ["only"] * 25, whiten=whiten)
    assert np.all(np.asarray(T) == 0.0)


def test_single_populated_level_of_a_categorical_gives_zero():
    class Categorical:  # pandas.Categorical's interface: categories in order, codes with -1 for NA
        categories = ["a", "b"]
        codes = np.array([0] * 20 + [-1] * 5)

    T = jnmf.compute_target(random_h(3, 25), Categorical())
    assert np.all(np.asarray(T) == 0.0)


def test_int_and_str_labels_agree():
    H = random_h(4, 30, seed=6)
    ints = np.tile([3, 1, 2], 10)
    strs = np.array(["a", "b", "c"])[ints - 1]
    np.testing.assert_array_equal(jnmf.compute_target(H, ints), jnmf.compute_target(H, strs))
    np.testing.assert_array_equal(jnmf.compute_target(H, ints), jnmf.compute_target(H, list(ints)))


@pytest.mark.parametrize(
    "labels",
    [
        ["a"] * 10 + [None] * 5 + ["b"] * 10 + [float("nan")] * 5,
        np.array([1.0] * 10 + [np.nan] * 5 + [2.0] * 10 + [np.nan] * 5),
        np.ma.array([1] * 10 + [0] * 5 + [2] * 10 + [0] * 5, mask=[0] * 10 + [1] * 5 + [0] * 10 + [1] * 5),
    ],
    ids=["object", "float-nan", "masked"],
)
def test_missing_labels_give_exactly_zero_columns(labels):
    H = random_h(3, 30, seed=7)
    T = np.asarray(jnmf.compute_target(H, labels))
    missing = np.r_[np.zeros(10, bool), np.ones(5, bool), np.zeros(10, bool), np.ones(5, bool)]
    assert np.all(T[:, missing] == 0.0)
    assert np.all(np.any(T[:, ~missing] != 0.0, axis=0))
    codes = np.where(missing, -1, np.r_[np.zeros(10), np.zeros(5), np.ones(10), np.zeros(5)]).astype(int)
    with jax.enable_x64(True):
        np.testing.assert_allclose(jnmf.compute_target(H, labels), reference_target(H, codes, 2), rtol=1e-10)


def test_categorical_keeps_category_order_and_empty_levels():
    H = random_h(4, 30, seed=8)

    class Categorical:
        categories = ["z", "y", "unused", "x"]
        codes = np.repeat([0, 1, 3], 10)

    codes, levels = jnmf.label_codes(Categorical())
    assert levels == ("z", "y", "unused", "x")
    with jax.enable_x64(True):
        T = jnmf.compute_target(H, Categorical())
        # an unused level counts in the whitening, as in R (reference §13 step 3)
        np.testing.assert_allclose(T, reference_target(H, codes, 4), rtol=1e-10)
        plain = jnmf.compute_target(H, np.repeat(["z", "y", "x"], 10))
        assert float(jnp.max(jnp.abs(T - plain))) > 1e-6
        np.testing.assert_allclose(
            jnmf.compute_target(H, Categorical(), whiten=False),
            jnmf.compute_target(H, np.repeat(["z", "y", "x"], 10), whiten=False), rtol=1e-12,
        )


def test_label_codes_sorted_like_as_factor():
    codes, levels = jnmf.label_codes(["b", "a", None, "c", "a"])
    assert levels == ("a", "b", "c")
    np.testing.assert_array_equal(codes, [1, 0, -1, 2, 0])
    codes, levels = jnmf.label_codes(np.array([10, 2, 33]))
    assert levels == (2, 10, 33)  # numeric, not lexicographic
    np.testing.assert_array_equal(codes, [1, 0, 2])


def test_label_length_mismatch_errors():
    with pytest.raises(ValueError, match=r"length of labels \(5\).*30"):
        jnmf.compute_target(random_h(3, 30), ["a"] * 5)


def test_label_errors():
    with pytest.raises(ValueError, match="labels must be one-dimensional"):
        jnmf.compute_target(random_h(3, 4), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="labels mix types"):
        jnmf.compute_target(random_h(3, 4), ["a", 1, "b", 2])
    with pytest.raises(ValueError, match="H must be a k x n matrix"):
        jnmf.compute_target(np.ones(4), ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="H contains non-finite"):
        jnmf.compute_target(np.array([[1.0, np.nan, 0.0, 1.0]]), ["a", "b", "a", "b"])


# ---------------------------------------------------------------------------------------------------------------
# kernels: jit, vmap, whitening property
# ---------------------------------------------------------------------------------------------------------------


def test_whitener_whitens_the_shrunk_scatter():
    rng = np.random.default_rng(9)
    with jax.enable_x64(True):
        X = rng.normal(size=(4, 7))
        n = 50.0
        Z = np.asarray(jnmf.oas_zca_whitener(X, n))
        S = X @ X.T / n
        tr, tr2 = np.trace(S), np.sum(S * S)
        rho = np.clip(((1 - 0.5) * tr2 + tr**2) / ((n + 0.5) * (tr2 - tr**2 / 4)), 0, 1)
        S_star = (1 - rho) * S + rho * tr / 4 * np.eye(4)
        np.testing.assert_allclose(Z, Z.T, atol=1e-12)
        np.testing.assert_allclose(Z @ S_star @ Z, np.eye(4), atol=1e-10)


def test_kernels_jit_and_vmap_match_loops():
    # float64, so that a batched eigh and a single one agree to rounding rather than to float32 whitening noise
    with jax.enable_x64(True):
        H = jnp.asarray(random_h(3, 30, seed=10))
        onehot = jax.nn.one_hot(jnp.asarray(blocks(10, 3)), 3, dtype=H.dtype)
        lams = jnp.linspace(0.0, 1.0, 5)
        batched = jax.jit(jax.vmap(jnmf.oas_zca_refine, in_axes=(None, None, 0)))(H, onehot, lams)
        for i, lam in enumerate(lams):
            np.testing.assert_allclose(batched[i], jnmf.oas_zca_refine(H, onehot, lam), rtol=1e-10, atol=1e-12)
        stack = jnp.stack([H, 2.0 * H])
        targets = jax.vmap(jnmf.class_target, in_axes=(0, None))(stack, onehot)
        np.testing.assert_allclose(targets[1], jnmf.class_target(2.0 * H, onehot), rtol=1e-10, atol=1e-12)


def test_refine_kernel_agrees_with_public_refine():
    with jax.enable_x64(True):
        H = random_h(3, 30, seed=11)
        labels = blocks(10, 3)
        onehot = jax.nn.one_hot(jnp.asarray(labels), 3, dtype=jnp.float64)
        np.testing.assert_allclose(jnmf.oas_zca_refine(H, onehot, 0.3), jnmf.refine(H, labels, 0.3), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# refine: stage 1
# ---------------------------------------------------------------------------------------------------------------


def test_refine_model_and_matrix_inputs():
    model, _ = toy_model()
    labels = blocks(10, 3)
    out = jnmf.refine(model, labels, lambda_=0.5)
    assert isinstance(out, NMFModel)
    assert out.w.shape == model.w.shape and out.d.shape == model.d.shape and out.h.shape == model.h.shape
    H = random_h(5, 30, seed=12)
    out = jnmf.refine(H, labels, lambda_=0.5)
    assert isinstance(out, jax.Array) and out.shape == (5, 30)


def test_refine_lambda_zero_is_identity():
    model, _ = toy_model()
    out = jnmf.refine(model, blocks(10, 3), lambda_=0.0)
    np.testing.assert_allclose(out.h, model.h, rtol=0, atol=1e-10)


def test_refine_frobenius_scaling():
    H = random_h(4, 30, seed=13)
    labels = blocks(10, 3)
    with jax.enable_x64(True):
        T = np.asarray(jnmf.compute_target(H, labels))
        out = np.asarray(jnmf.refine(H, labels, lambda_=0.25, nonneg=False))
    correction = out - H
    np.testing.assert_allclose(np.linalg.norm(correction), 0.25 * np.linalg.norm(H), rtol=1e-10)
    np.testing.assert_allclose(correction, 0.25 * np.linalg.norm(H) / np.linalg.norm(T) * T, rtol=1e-10)


def test_refine_nonneg_clips_and_nonneg_false_does_not():
    H = random_h(3, 30, seed=14) - 0.5
    labels = blocks(10, 3)
    assert float(jnp.min(jnmf.refine(H, labels, lambda_=0.5))) >= 0.0
    free = jnmf.refine(H, labels, lambda_=0.5, nonneg=False)
    assert isinstance(free, jax.Array) and free.shape == (3, 30) and float(jnp.min(free)) < 0.0


@pytest.mark.parametrize("lam", [-0.5, 2.0, float("nan")])
def test_refine_lambda_out_of_range(lam):
    with pytest.raises(ValueError, match="lambda_ must be in"):
        jnmf.refine(random_h(3, 30), blocks(10, 3), lambda_=lam)


def test_refine_input_errors():
    model, A = toy_model()
    with pytest.raises(ValueError, match=r"length of labels \(20\).*30"):
        jnmf.refine(model, blocks(10, 2), lambda_=0.5)
    with pytest.raises(ValueError, match=r"length of batch \(10\).*30"):
        jnmf.refine(model, blocks(10, 3), lambda_=0.5, data=A, cycles=1, batch=np.zeros(10))
    with pytest.raises(ValueError, match="data is required"):
        jnmf.refine(model, blocks(10, 3), lambda_=0.5, cycles=1)
    with pytest.raises(ValueError, match="needs an NMFModel"):
        jnmf.refine(random_h(3, 30), blocks(10, 3), lambda_=0.5, data=A, cycles=1)
    with pytest.raises(TypeError, match="must be an NMFModel or a k x n matrix"):
        jnmf.refine("not a model", blocks(10, 3))
    with pytest.raises(TypeError, match="must be an NMFModel or a k x n matrix"):
        jnmf.refine(np.ones(30), blocks(10, 3))
    with pytest.raises(ValueError, match="cycles must be a non-negative integer"):
        jnmf.refine(model, blocks(10, 3), data=A, cycles=-1)
    with pytest.raises(ValueError, match="data contains negative values"):
        jnmf.refine(model, blocks(10, 3), data=-A, cycles=1)
    with pytest.raises(ValueError, match="data must be m x n"):
        jnmf.refine(model, blocks(10, 3), data=A[:, :20], cycles=1)


def test_refine_batch_without_cycles_warns_and_keeps_dims():
    model, _ = toy_model()
    with pytest.warns(UserWarning, match="batch is ignored when cycles = 0"):
        out = jnmf.refine(model, blocks(10, 3), lambda_=0.5, batch=np.tile([0, 1], 15))
    assert out.h.shape == model.h.shape
    np.testing.assert_array_equal(out.h, jnmf.refine(model, blocks(10, 3), lambda_=0.5).h)


# ---------------------------------------------------------------------------------------------------------------
# refine: stage 2
# ---------------------------------------------------------------------------------------------------------------


def _check_consistent(out, A, model):
    assert float(jnp.min(out.w)) >= 0.0 and float(jnp.min(out.h)) >= 0.0 and float(jnp.min(out.d)) > 0.0
    np.testing.assert_allclose(jnp.sum(out.w, axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(out.h, axis=1), 1.0, rtol=1e-5)
    # d is counted once: the reconstruction has the data's scale and explains much of its variance
    recon = np.asarray(out.reconstruct(), np.float64)
    assert 0.8 < np.vdot(A, recon) / np.vdot(recon, recon) < 1.25
    assert evaluate(out, A) < 0.5 * np.var(A)
    assert float(jnp.max(jnp.abs(out.w - model.w))) > 1e-4


def test_refine_cycles_give_a_consistent_model():
    model, A = toy_model()
    out = jnmf.refine(model, blocks(10, 3), lambda_=0.5, data=A, cycles=2)
    assert out.w.shape == model.w.shape and out.h.shape == model.h.shape
    _check_consistent(out, A, model)


def test_refine_cycles_do_not_double_count_d():
    model, A = toy_model()
    out = jnmf.refine(model, blocks(10, 3), lambda_=0.5, data=A, cycles=2)
    # RcppML keeps d after folding it into W, which scales the reconstruction by d (reference §18 item 6)
    doubled = np.asarray(out.w) * np.asarray(out.d) ** 2 @ np.asarray(out.h)
    assert evaluate(out, A) < 0.01 * np.mean((A - doubled) ** 2)


def test_refine_cycles_sparse_data():
    model, A = toy_model()
    out = jnmf.refine(model, blocks(10, 3), lambda_=0.5, data=sp.csc_matrix(A), cycles=1)
    dense = jnmf.refine(model, blocks(10, 3), lambda_=0.5, data=A, cycles=1)
    assert float(jnp.min(out.h)) >= 0.0
    np.testing.assert_allclose(out.h, dense.h, rtol=1e-4, atol=1e-6)


def test_refine_batch_removal_lowers_batch_information():
    rng = np.random.default_rng(0)
    labels = blocks(10, 3)
    batch = np.tile([0, 1], 15)
    # three label-specific components, the third also carrying a batch effect the labels do not explain
    H = rng.uniform(size=(3, 30)) + np.eye(3)[labels].T
    H[2] += 2.0 * batch
    A = rng.uniform(size=(50, 3)) @ H + rng.uniform(0, 0.05, size=(50, 30))
    model = jnmf.nmf(A, 3, seed=1)
    plain = jnmf.refine(model, labels, lambda_=0.5, data=A, cycles=3)
    removed = jnmf.refine(model, labels, lambda_=0.5, data=A, cycles=3, batch=batch)
    assert removed.h.shape == model.h.shape
    _check_consistent(removed, A, model)
    spread = {name: batch_spread(x.d[:, None] * x.h, batch) for name, x in (("plain", plain), ("removed", removed))}
    assert spread["removed"] < 0.5 * spread["plain"]
    # the class signal that refine enriches survives the batch removal
    assert batch_spread(removed.d[:, None] * removed.h, labels) > batch_spread(model.d[:, None] * model.h, labels)
