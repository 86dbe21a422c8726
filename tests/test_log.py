"""jnmf._log: the convergence warning (single while-loop fits only, never under a transformation), progress."""

import logging
import warnings

import jax
import numpy as np
import pytest

import jnmf
from jnmf import _log


def _A(seed=0):
    return np.random.default_rng(seed).random((20, 30))  # converges in ~16 iterations at tol 1e-3


def test_warns_when_maxit_is_reached_unconverged():
    model = jnmf.nmf(_A(), 3, maxit=4, tol=1e-12, seed=1)
    assert not bool(model.converged) and int(model.iter) == 4
    with pytest.warns(jnmf.ConvergenceWarning, match=r"nmf stopped at maxit=4 without converging"):
        assert _log.warn_if_not_converged(model)


def test_silent_when_converged_batched_scan_or_traced():
    A = _A()
    converged = jnmf.nmf(A, 3, maxit=500, tol=1e-3, seed=1)
    assert bool(converged.converged)
    unconverged = jnmf.nmf(A, 3, maxit=4, tol=1e-12, seed=1)
    batched = jax.tree_util.tree_map(lambda x: np.stack([x, x]), unconverged)  # a sweep's lanes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _log.warn_if_not_converged(converged)
        assert not _log.warn_if_not_converged(batched)
        assert not _log.warn_if_not_converged(unconverged, loop="scan")
        # under jit the fields are tracers: nothing is read, nothing is synced
        jax.jit(lambda m: (_log.warn_if_not_converged(m), m.loss)[1])(unconverged)


def test_progress_yields_everything_and_logs(caplog):
    with caplog.at_level(logging.INFO, logger="jnmf"):
        assert list(_log.progress(range(3), desc="steps", verbose=True)) == [0, 1, 2]
        assert list(_log.progress(iter("ab"), desc="quiet", verbose=False)) == ["a", "b"]
    messages = [r.getMessage() for r in caplog.records if r.name == "jnmf"]
    assert messages[0].startswith("steps: 3 steps in") and messages[1].startswith("quiet: 2 steps in")


def test_chunked_fits_log_each_iteration_and_warn_when_unconverged(caplog):
    A = np.random.default_rng(0).random((12, 10))
    with caplog.at_level(logging.INFO, logger="jnmf"), pytest.warns(jnmf.ConvergenceWarning, match="nmf_chunked"):
        jnmf.nmf_chunked([A[:, :5], A[:, 5:]], 2, seed=1, maxit=3)
    assert [r.getMessage().split(",")[0] for r in caplog.records if r.name == "jnmf"] == [
        f"nmf_chunked: iteration {i}" for i in (1, 2, 3)]
