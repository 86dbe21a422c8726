"""Bad input gets a clear error naming the argument, before any compute; never a silent NaN model."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import jnmf

A = np.abs(np.random.default_rng(0).standard_normal((20, 12)))


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        (-A, ValueError, "A contains negative"),
        (np.where(A > 1.5, -np.inf, A), ValueError, "A contains .* non-finite"),  # NaN is masked: test_mask.py
        (np.where(A > 1.5, np.inf, A), ValueError, "non-finite"),
        (np.zeros((0, 5)), ValueError, "A is empty"),
        (np.zeros((5, 0)), ValueError, "A is empty"),
        (A[0], ValueError, "2-D"),
        ("matrix", TypeError, "A must be"),
        (sp.csc_matrix(-A), ValueError, "negative"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "real numbers"),
    ],
)
def test_bad_data(data, exc, match):
    with pytest.raises(exc, match=match):
        jnmf.nmf(data, 2, seed=1)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"k": 0}, ValueError, "k must satisfy"),
        ({"k": 13}, ValueError, r"min\(m, n\) = 12"),
        ({"k": 2.0}, TypeError, "k must be an integer"),
        ({"L1": -0.1}, ValueError, "L1 must be >= 0"),
        ({"L1": 1.0}, ValueError, "L1 must be < 1"),
        ({"L2": -1}, ValueError, "L2 must be >= 0"),
        ({"L2": (0.1, -1)}, ValueError, r"L2\[1\] \(H\)"),
        ({"L2": (0.1, 0.2, 0.3)}, ValueError, "pair"),
        ({"solver": "lbfgs"}, ValueError, "solver must be one of"),
        ({"norm": "max"}, ValueError, "norm must be one of"),
        ({"tol": -1}, ValueError, "tol must be >= 0"),
        ({"tol": float("nan")}, ValueError, "tol must be finite"),
        ({"maxit": 0}, ValueError, "maxit must be >= 1"),
        ({"w_init": np.ones((12, 2))}, ValueError, r"shape \(20, 2\)"),
        ({"w_init": np.full((20, 2), np.nan)}, ValueError, "non-finite"),
        ({"w_init": -np.ones((20, 2))}, ValueError, "non-negative"),
        ({"seed": 1, "w_init": np.ones((20, 2))}, ValueError, "either seed or w_init"),
        ({"seed": True}, TypeError, "seed"),
        ({"solver": "cholesky", "L1": 0.1}, ValueError, "solver='cholesky' does not support L1"),
        ({"nonneg": "yes"}, TypeError, "nonneg"),
        ({"layout": "csr"}, ValueError, "layout"),
        ({"target_H": np.ones((3, 12)), "target_lambda": 0.1}, ValueError, r"target_H must have shape \(2, 12\)"),
        ({"target_H": np.full((2, 12), np.nan), "target_lambda": 0.1}, ValueError, "target_H contains non-finite"),
        ({"target_lambda": 0.1}, ValueError, "target_H and target_W are None"),
        ({"target_lambda": (0.1, 0.0), "target_H": np.ones((2, 12))}, ValueError, "target_W is None"),
        ({"target_H": np.ones((2, 12)), "target_lambda": np.inf}, ValueError, "target_lambda must be finite"),
        ({"target_W": np.ones((2, 20)), "target_lambda": 0.1}, ValueError, r"target_W must have shape \(20, 2\)"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    kwargs = {"k": 2, **kwargs}
    k = kwargs.pop("k")
    with pytest.raises(exc, match=match):
        jnmf.nmf(A, k, **kwargs)


def test_singular_gram_stays_finite():
    # Rank-1 data with k = 3 and no clipping: the Gram matrices are singular in float32. RcppML's LLT returns
    # undefined values here; jnmf falls back to the eigendecomposition and returns a finite model.
    rank1 = np.outer(np.arange(1, 9.0), np.arange(1, 7.0))
    model = jnmf.nmf(rank1, 3, seed=1, nonneg=False, solver="cholesky", maxit=10)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in (model.w, model.d, model.h, model.loss))


def test_non_finite_fit_raises_instead_of_returning_nan():
    from jnmf._solve import check_finite  # what nmf() runs on every model before returning it

    model = jnmf.solve(jnmf.prepare(A, 2, seed=1, maxit=3))
    check_finite(model)
    with pytest.raises(FloatingPointError, match="non-finite"):
        check_finite(model.replace(h=model.h.at[0, 0].set(np.nan)))


def test_integer_and_jax_input_accepted():
    import jax.numpy as jnp

    counts = np.random.default_rng(1).poisson(3, (15, 10))
    a = jnmf.nmf(counts, 2, seed=1, maxit=5)
    b = jnmf.nmf(jnp.asarray(counts, jnp.float32), 2, seed=1, maxit=5)
    np.testing.assert_allclose(np.asarray(a.h), np.asarray(b.h), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# one options table: the same checks (and messages) from every entry point, before any compute
# ---------------------------------------------------------------------------------------------------------------


def test_solve_overrides_validate_like_prepare():
    problem = jnmf.prepare(A, 2, seed=1, maxit=3, solver="rcppml")  # RcppML's rule: Cholesky (k < 32, no L1)
    with pytest.raises(ValueError, match="solver='cholesky' does not support L1") as from_solve:
        jnmf.solve(problem, L1=0.1)
    with pytest.raises(ValueError, match="solver='cholesky' does not support L1") as from_prepare:
        jnmf.prepare(A, 2, seed=1, solver="cholesky", L1=0.1)
    assert str(from_solve.value) == str(from_prepare.value)
    for bad, match in (({"L1": 1.5}, "L1 must be < 1"), ({"L2": -1.0}, "L2 must be >= 0"),
                       ({"tol": -1.0}, "tol must be >= 0"), ({"target_lambda": 0.3}, "target_H and target_W are None")):
        with pytest.raises(ValueError, match=match):
            jnmf.solve(problem, **bad)
        with pytest.raises(ValueError, match=match):
            jnmf.prepare(A, 2, seed=1, **bad)


def test_unknown_option_is_a_type_error_with_a_suggestion():
    with pytest.raises(TypeError, match=r"nmf\(\) got an unexpected keyword argument 'maxiter' \(did you mean "
                                        r"'maxit'\?\)|prepare\(\) got an unexpected keyword argument 'maxiter'"):
        jnmf.nmf(A, 2, maxiter=5)
    with pytest.raises(TypeError, match="nmf_chunked.. got an unexpected keyword argument 'tolerance'"):
        jnmf.nmf_chunked([A], 2, tolerance=1e-3)
    with pytest.raises(TypeError, match="does not take 'layout'"):
        jnmf.nmf_chunked([A], 2, layout="dense")


@pytest.mark.parametrize("seed", [2**31, 2**32 + 7, -1])
def test_seeds_outside_rs_range_are_refused(seed):
    # 2^32 + 7 used to wrap silently onto seed 7's stream
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^31 - 1\]"):
        jnmf.nmf(A, 2, seed=seed)
    with pytest.raises(ValueError, match=r"seeds must be an integer in \[0, 2\^31 - 1\]"):
        jnmf.sweep(A, 2, seeds=[1, seed])


def test_degenerate_data_is_refused_before_compute():
    with pytest.raises(ValueError, match="every entry is missing"):
        jnmf.nmf(np.full((6, 5), np.nan), 2, seed=1)
    with pytest.raises(ValueError, match="every entry is missing"):
        jnmf.nmf(A, 2, seed=1, mask=np.ones(A.shape, bool))
    with pytest.raises(ValueError, match="A is all zeros"):
        jnmf.nmf(np.zeros((6, 5)), 2, seed=1)
    with pytest.raises(ValueError, match=r"largest entry is 1e-30, outside .* rescale it"):
        jnmf.nmf(A / A.max() * 1e-30, 2, seed=1)
    with pytest.raises(ValueError, match="initial W is all zeros"):
        jnmf.nmf(A, 2, w_init=np.zeros((A.shape[0], 2)))
    with pytest.raises(ValueError, match="ragged"):
        jnmf.sweep(A, 2, seeds=1, L2=[[0.1, 0.2], [0.3]])


def test_guidance_labels_that_cannot_guide_are_refused_before_any_fit():
    from jnmf._solve import _solve_jit

    labels_one = np.zeros(A.shape[1])
    missing = np.full(A.shape[1], None)
    before = _solve_jit._cache_size()
    for y in (labels_one, missing):
        with pytest.raises(ValueError, match="at least 2 classes"):
            jnmf.GuidedNMF(2, random_state=0).fit(A.T, y)
        with pytest.raises(ValueError, match="at least 2 classes"):
            jnmf.guided_nmf(A, 2, y, seed=1)
    assert _solve_jit._cache_size() == before  # nothing was compiled (or run)


def test_auto_warns_where_solve_then_clip_nears_min_m_n():
    # "auto" takes solve-then-clip only for a guided fit below k = 32 (RcppML's rule)
    rng = np.random.default_rng(0)
    X = rng.random((30, 20))
    T = (np.arange(10)[:, None] == np.arange(20)[None, :] % 10).astype(float)
    with pytest.warns(UserWarning, match=r"target is RcppML's Cholesky-then-clip at k = 10 < 32.*min\(m, n\) = 20"):
        jnmf.nmf(X, 10, seed=1, maxit=3, target_H=T, target_lambda=0.1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="solver='auto'")
        jnmf.nmf(X, 5, seed=1, maxit=3, target_H=T[:5], target_lambda=0.1)  # k well below min(m, n)
        jnmf.nmf(X, 10, seed=1, maxit=3)  # HALS
        jnmf.nmf(X, 10, seed=1, maxit=3, solver="rcppml")  # RcppML's rule, asked for by name
