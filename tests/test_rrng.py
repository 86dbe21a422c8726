import json

import numpy as np
import pytest

from jnmf import RRandom, r_runif, r_runif_matrix
from tests.conftest import REFERENCE


@pytest.fixture(scope="module")
def vectors():
    path = REFERENCE / "r_rng_vectors.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return json.loads(path.read_text())


# The fixtures were written with 15 significant digits, so "equal" means equal to that precision.
DIGITS = 1e-15


def test_runif_matches_r(vectors):
    np.testing.assert_allclose(r_runif(42, 20), vectors["set.seed(42); runif(20)"], rtol=0, atol=DIGITS)
    np.testing.assert_allclose(r_runif(1, 20), vectors["set.seed(1); runif(20)"], rtol=0, atol=DIGITS)


def test_successive_sample_calls_match_r(vectors):
    rng = RRandom(42)
    for expected in vectors["set.seed(42); 8 successive calls of sample(5)"]:
        assert rng.sample(5).tolist() == expected


def test_sample_int_matches_r(vectors):
    assert RRandom(7).sample_int(1000, 10).tolist() == vectors["set.seed(7); sample.int(1000, 10)"]


def test_initial_w_matrices_match_rcppml(hawaii_ref, toy_ref):
    np.testing.assert_allclose(r_runif_matrix(42, 183, 8), hawaii_ref["base_w_init"], rtol=0, atol=DIGITS)
    np.testing.assert_allclose(r_runif_matrix(1, 50, 3), toy_ref["w_init"], rtol=0, atol=DIGITS)


def test_uniforms_in_open_unit_interval_and_negative_seeds():
    u = r_runif(-5, 10_000)
    assert np.all((u > 0) & (u < 1))
    assert not np.array_equal(r_runif(-5, 5), r_runif(5, 5))


def test_sample_without_replacement_is_a_permutation():
    p = RRandom(3).sample(100)
    assert sorted(p.tolist()) == list(range(1, 101))
    with pytest.raises(ValueError, match="size"):
        RRandom(1).sample_int(3, 4)
    with pytest.raises(TypeError, match="seed"):
        RRandom(1.5)
