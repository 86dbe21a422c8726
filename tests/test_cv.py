"""cross_validate: RcppML's speckled hold-out, the padded all-k grid, held-out entries never enter the fit."""

from pathlib import Path

import jax
import numpy as np
import pytest

import jnmf
from jnmf import _cv

REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
CV_FIX = REF / "hawaiibirds_cv_rcppml.npz"


def _low_rank(m=30, n=40, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(1.0, 1.0, (m, k)) @ rng.gamma(1.0, 1.0, (k, n)) + 0.1 * rng.random((m, n))


@pytest.fixture(scope="module")
def fixture():
    if not CV_FIX.exists():
        pytest.skip("RcppML CV fixture not found")
    return np.load(CV_FIX)


@pytest.fixture(scope="module")
def hawaii():
    try:
        return jnmf.datasets.load_hawaiibirds().A
    except FileNotFoundError:
        pytest.skip("hawaiibirds data not found")


def test_holdout_mask_is_rcppml_bit_for_bit(fixture):
    m, n = (int(x) for x in fixture["A_dims"])
    cases = [("tf005_s1", 0.05, 1), ("tf005_s2", 0.05, 2), ("tf005_s3", 0.05, 3), ("tf010_s1", 0.1, 1)]
    for key, tf, seed in cases:
        ref = np.zeros((m, n), bool)
        ref[fixture[f"holdout_{key}_rows0"], fixture[f"holdout_{key}_cols0"]] = True
        np.testing.assert_array_equal(_cv.holdout_mask((m, n), tf, seed), ref, err_msg=key)
    assert _cv.holdout_mask((m, n), 0.05, 1).sum() == 11486  # reference §1.3


def test_holdout_nonzeros_only(fixture, hawaii):
    m, n = hawaii.shape
    ref = np.zeros((m, n), bool)
    ref[fixture["holdout_maskzeros_tf005_s1_rows0"], fixture["holdout_maskzeros_tf005_s1_cols0"]] = True
    got = _cv.holdout_mask((m, n), 0.05, 1, hawaii, nonzeros=True)
    np.testing.assert_array_equal(got, ref)
    assert got.sum() == 1594


@pytest.mark.parametrize("solver,ks,seeds", [("cholesky", (2, 4), (1, 2)), ("cd", (2, 4), (3,))])
def test_padded_grid_equals_separate_fits(solver, ks, seeds):
    A = _low_rank()
    with jax.enable_x64(True):
        res = jnmf.cross_validate(A, ks, seeds=seeds, test_fraction=0.1, solver=solver, maxit=60, pad=True)
        assert res.padded and res.programs == 1
        for i, k in enumerate(ks):
            for r, s in enumerate(seeds):
                ref = jnmf.nmf(A, k, seed=s, mask=_cv.holdout_mask(A.shape, 0.1, s), solver=solver, maxit=60)
                got = res.model(k, r)
                assert int(got.iter) == int(ref.iter), (k, s)
                for name in ("w", "h"):
                    np.testing.assert_allclose(getattr(got, name), np.asarray(getattr(ref, name)), rtol=0,
                                               atol=1e-10, err_msg=f"{name} k={k} seed={s}")
                np.testing.assert_allclose(got.d, np.asarray(ref.d), rtol=1e-10)
                full = res.models.d[i, r]
                assert np.all(full[k:] == 1e-15) and np.all(res.models.w[i, r][:, k:] == 0)  # inactive: inert


def test_heldout_values_never_enter_the_fit_and_errors_are_direct():
    A = _low_rank(seed=1)
    seeds, tf = (5, 6), 0.1
    with jax.enable_x64(True):
        a = jnmf.cross_validate(A, (2, 3), seeds=seeds, test_fraction=tf, maxit=40)
        # New values at replicate 0's held-out entries (some are train entries of replicate 1, whose fits may
        # change): replicate 0's models must stay bitwise equal. Same grid shape, so the same program.
        T0 = _cv.holdout_mask(A.shape, tf, seeds[0])
        C = A.copy()
        C[T0] = 1e3 * np.random.default_rng(0).random(T0.sum())
        c = jnmf.cross_validate(C, (2, 3), seeds=seeds, test_fraction=tf, maxit=40)
    for name in ("w", "d", "h", "iter", "loss"):
        np.testing.assert_array_equal(getattr(c.models, name)[:, 0], getattr(a.models, name)[:, 0], err_msg=name)
    assert np.all(c.test_mse[:, 0] > 10 * a.test_mse[:, 0])  # the test error does see them
    for i, k in enumerate(a.ks):
        for r, s in enumerate(seeds):
            T = _cv.holdout_mask(A.shape, tf, s)
            mod = a.model(int(k), r)
            resid = A - (np.asarray(mod.w) * np.asarray(mod.d)) @ np.asarray(mod.h)
            np.testing.assert_allclose(a.test_mse[i, r], np.mean(resid[T] ** 2), rtol=1e-12)
            np.testing.assert_allclose(a.train_mse[i, r], np.mean(resid[~T] ** 2), rtol=1e-10)
            assert a.n_test[r] == T.sum()


def test_rcppml_stopping_reproduces_fixture_curves_and_k(fixture, hawaii):
    # Ranks 6..12 hold the minimum (RcppML's mean test MSE at 2..5 is >= 10% above it, reference §1.11), so the
    # argmin over 6..12 is the argmin over RcppML's 2..12; float32 as RcppML.
    ks = np.arange(6, 13)
    res = jnmf.cross_validate(hawaii, ks, seeds=(1, 2, 3), test_fraction=0.05, stop="rcppml", init="rcppml",
                              tol=1e-4, maxit=100, solver="rcppml")
    ref = fixture["fit_best_test"][:, ks - 2].T  # (K, 3)
    np.testing.assert_allclose(res.test_mse, ref, rtol=2e-3)
    assert np.max(np.abs(res.iter - fixture["fit_iter"][:, ks - 2].T)) <= 3
    assert res.k == int(fixture["cv_chosen_k"]) == 10
    assert res.test_history is not None and np.all(np.nanmin(res.test_history, axis=2) == res.test_mse)


def test_choose_k_rules():
    ks = [2, 3, 4, 5]
    T = np.array([[5.0, 5.2], [3.0, 3.4], [2.9, 3.3], [3.5, 3.0]])
    assert _cv.choose_k(ks, T, "min") == 4
    assert _cv.choose_k(ks, T, "1se") == 3  # 3.2 <= 3.1 + se(2.9, 3.3) = 3.3
    T[2] = np.nan  # a rank without finite errors is skipped: 3.2 (k = 3) beats 3.25 (k = 5)
    assert _cv.choose_k(ks, T, "min") == 3
    T[3] = [3.2, 3.2]  # tie with k = 3: the smaller rank
    assert _cv.choose_k(ks, T, "min") == 3


def test_pad_plan_falls_back_and_says_why():
    ks = np.array([8, 9, 10])
    assert _cv._pad_plan(ks, "auto", {}) == (True, None)  # 3 * 100 / 245 = 1.2
    assert _cv._pad_plan(np.array([2, 3, 4]), "auto", {})[0]  # 48 / 29 = 1.7
    assert not _cv._pad_plan(np.array([2, 3, 4, 16]), "auto", {})[0]  # 4 * 256 / 285 = 3.6
    ok, why = _cv._pad_plan(ks, "auto", {"target_H": {2: 0, 3: 0, 4: 0}})
    assert not ok and "target" in why
    ok, why = _cv._pad_plan(np.array([2, 40]), "auto", {"solver": "rcppml"})
    assert not ok and "solver" in why
    assert _cv._pad_plan(np.array([30, 40]), "auto", {})[0]  # HALS at every k
    ok, why = _cv._pad_plan(np.array([2, 3, 4, 5, 31]), "auto", {})  # 5 * 31^2 / sum k^2 = 4.7
    assert not ok and "cost" in why
    with pytest.raises(ValueError, match="pad=True"):
        _cv._pad_plan(ks, True, {"nonneg": False, "L1": 0.1})


@pytest.mark.parametrize("kwargs,match", [
    (dict(ks=[]), "ks is empty"),
    (dict(ks=[2, 2]), "duplicate"),
    (dict(ks=[0, 2]), "ks must lie"),
    (dict(ks=[2], seeds=[]), "seeds is empty"),
    (dict(ks=[2], seeds=[-1]), "seeds must be"),
    (dict(ks=[2], test_fraction=1.5), "test_fraction"),
    (dict(ks=[2], stop="best"), "stop must be"),
    (dict(ks=[2], rule="1se", seeds=[1]), "rule='1se'"),
    (dict(ks=[2], seed=3), "seeds="),
    (dict(ks=[2], L1=2.0), "L1"),
    (dict(ks=[2, 3], target_H=np.ones((2, 40))), "mapping"),
])
def test_validation_names_the_argument(kwargs, match):
    A = _low_rank()
    with pytest.raises((ValueError, TypeError), match=match):
        jnmf.cross_validate(A, **kwargs)


def test_nmf_k_auto_fits_the_cross_validated_rank():
    from jnmf._cv import auto_rank

    rng = np.random.default_rng(4)
    A = np.abs(rng.normal(size=(6, 3))) @ np.abs(rng.normal(size=(3, 40))) + 0.01 * rng.random((6, 40))
    with jax.enable_x64(True):
        k = auto_rank(A, seed=2, maxit=30)
        model = jnmf.nmf(A, "auto", seed=2, maxit=30)
    assert 2 <= k <= 5 and model.k == k
    with pytest.raises(TypeError, match="unexpected keyword argument 'maxiter'"):
        jnmf.nmf(A, "auto", maxiter=3)
