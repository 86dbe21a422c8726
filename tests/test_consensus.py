"""consensus: cNMF's consensus spectra recover known factors; RcppML's cophenetic coefficient reproduced exactly."""

from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import jnmf
from jnmf import _consensus

REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "hawaiibirds_consensus_rcppml.npz"


@pytest.fixture(scope="module")
def fixture():
    if not REF.exists():
        pytest.skip("RcppML consensus fixture not found")
    return np.load(REF)


@pytest.mark.parametrize("name", ["species", "cells"])
def test_cophenetic_from_rcppml_replicates_is_exact(fixture, name):
    labels = np.argmax(fixture[f"{name}_rep_w"], axis=2)  # which.max over the sorted w rows
    np.testing.assert_array_equal(labels + 1, fixture[f"{name}_rep_labels"])
    st = _consensus.cophenetic_coefficient(labels, 8)
    np.testing.assert_array_equal(np.round(st["consensus"] * 20).astype(np.uint8), fixture[f"{name}_counts"])
    np.testing.assert_array_equal(st["height"], fixture[f"{name}_hclust_height"])
    np.testing.assert_array_equal(st["clusters"], fixture[f"{name}_clusters"])
    assert abs(st["cophenetic"] - float(fixture[f"{name}_cophenetic"])) < 1e-12


def test_r_hclust_tie_order_differs_from_first_index_scan():
    # Three equidistant points: R merges (0, 1) first (first index with the smallest NN distance), then 2.
    D = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], float)
    pairs, height = _consensus.r_hclust_average(D)
    np.testing.assert_array_equal(pairs, [[0, 1], [0, 2]])
    np.testing.assert_array_equal(height, [1, 1])


def test_consensus_recovers_known_factors():
    rng = np.random.default_rng(0)
    m, n, k = 120, 160, 5
    W0, H0 = rng.gamma(0.5, 1.0, (m, k)), rng.gamma(0.5, 1.0, (k, n))
    X = W0 @ H0
    X = X + 0.05 * X.std() * rng.random((m, n))
    with jax.enable_x64(True):
        res = jnmf.consensus(X, k, reps=12, seed=0)
    C = np.corrcoef(np.asarray(res.model.w).T, W0.T)[:k, k:]
    rows, cols = linear_sum_assignment(-C)
    assert np.all(C[rows, cols] > 0.99), C[rows, cols]
    Ch = np.corrcoef(np.asarray(res.model.h), H0)[:k, k:]
    assert np.all(Ch[rows, cols] > 0.99)
    assert res.silhouette > 0.9 and res.cophenetic > 0.9
    assert res.kept.all()  # no outliers among replicates of an exactly low-rank matrix
    resid = X - (np.asarray(res.model.w) * np.asarray(res.model.d)) @ np.asarray(res.model.h)
    np.testing.assert_allclose(res.prediction_error, np.sum(resid ** 2), rtol=1e-9)
    assert res.error_spread["relative_range"] < 0.05


def test_hawaiibirds_matches_rcppml_consensus_nmf(fixture):
    try:
        A = jnmf.datasets.load_hawaiibirds().A
    except FileNotFoundError:
        pytest.skip("hawaiibirds data not found")
    # consensus_nmf(A, k = 8, reps = 20, seed = 42, tol = 1e-4, maxit = 100): replicates use seeds 43..62, and
    # jnmf's nmf(seed=s) is RcppML's fit from set.seed(s), so the replicates' labels agree (float32 both).
    res = jnmf.consensus(A, 8, reps=20, seed=42, tol=1e-4, maxit=100, solver="rcppml")
    agree = np.mean(np.argmax(res.spectra, axis=2) + 1 == fixture["species_rep_labels"])
    assert agree > 0.99
    assert abs(res.cophenetic - float(fixture["species_cophenetic"])) < 2e-3
    assert np.max(np.abs(res.replicate_iter - fixture["species_rep_iter"])) <= 2
    np.testing.assert_allclose(res.replicate_loss, fixture["species_rep_loss"], rtol=2e-4)
    assert 0 < res.silhouette <= 1


def test_replicates_equal_separate_fits_on_either_path():
    """Replicate i is nmf(A, k, seed=seed + 1 + i): bitwise on a CPU's per-replicate path, and the one-sweep path
    (taken when lanes= is given) gives the same consensus."""
    rng = np.random.default_rng(3)
    A = rng.random((40, 4)) @ rng.random((4, 60)) + 0.05 * rng.random((40, 60))
    res = jnmf.consensus(A, 4, reps=4, seed=7, tol=1e-5, maxit=200)
    for i in range(4):
        ref = jnmf.nmf(A, 4, seed=8 + i, tol=1e-5, maxit=200)
        assert np.array_equal(res.spectra[i], np.asarray(ref.w, np.float64))
        assert res.replicate_iter[i] == int(ref.iter)
    swept = jnmf.consensus(A, 4, reps=4, seed=7, tol=1e-5, maxit=200, lanes=2)
    np.testing.assert_allclose(swept.spectra, res.spectra, atol=1e-5)
    np.testing.assert_allclose(np.asarray(swept.model.w), np.asarray(res.model.w), atol=1e-5)


def test_density_filter_drops_outlier_spectra():
    rng = np.random.default_rng(3)
    S = np.abs(rng.normal(size=(4, 30))) + 0.01
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    pool = np.concatenate([S + 0.001 * rng.random(S.shape) for _ in range(10)] + [np.eye(30)[:1]])
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    density = _consensus._local_density(pool, 3)
    assert np.argmax(density) == pool.shape[0] - 1 and density[-1] > 0.5 > density[:-1].max()


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), "k must lie"),
    (dict(k="8"), "k must be an integer"),
    (dict(k=2, reps=1), "reps must be"),
    (dict(k=2, seeds=[1, 2]), "seeds"),
    (dict(k=2, density_threshold=0), "density_threshold"),
    (dict(k=2, cluster="samples"), "cluster must be"),
])
def test_validation_names_the_argument(kwargs, match):
    X = np.random.default_rng(0).random((10, 12))
    with pytest.raises((ValueError, TypeError), match=match):
        jnmf.consensus(X, **kwargs)
