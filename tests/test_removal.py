"""removal="scatter" and remove=: the between-group scatter penalty, its stated objective and monotone updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf


def _objective(A, model, groups, lam):
    """``|A - W diag(d) h|^2 + lam tr(E M E')``, E = diag(d) h, M the between-group projector, in float64 numpy."""
    A = A.toarray() if hasattr(A, "toarray") else np.asarray(A)
    W, d, h = (np.asarray(x, np.float64) for x in (model.w, model.d, model.h))
    E = d[:, None] * h
    codes = np.asarray(groups)
    centred = np.zeros_like(E)
    for g in np.unique(codes):
        centred[:, codes == g] = E[:, codes == g].mean(1, keepdims=True)
    between = centred - E.mean(1, keepdims=True)
    return float(np.sum((A - W @ E) ** 2) + lam * np.sum(between * between))


def _datasets(hawaiibirds):
    from sklearn.datasets import load_digits

    digits = load_digits()
    A_d = digits.data.T / 16.0  # 64 pixels x 1797 images
    toy_rng = np.random.default_rng(0)
    groups_t = np.repeat([0, 1, 2], 40)
    shift = np.abs(toy_rng.normal(size=(60, 3)))[:, groups_t]
    A_t = np.abs(toy_rng.normal(size=(60, 5))) @ np.abs(toy_rng.normal(size=(5, 120))) + shift
    codes_h, _ = jnmf.label_codes(hawaiibirds.obs["island"])
    return {
        "hawaiibirds": (hawaiibirds.A, codes_h, 8),
        "digits": (A_d, digits.target % 3, 6),
        "batches": (A_t, groups_t, 4),
    }


@pytest.fixture(scope="module")
def data(hawaiibirds):
    return _datasets(hawaiibirds)


@pytest.mark.parametrize("name", ["hawaiibirds", "digits", "batches"])
@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_objective_never_increases_and_converges(data, name, lam):
    A, groups, k = data[name]
    with jax.enable_x64(True):
        model = jnmf.nmf(A, k, seed=42, tol=1e-4, maxit=500, remove=groups, remove_lambda=lam)
        hist = np.asarray(model.loss_history)[: int(model.iter)]
        assert bool(model.converged), f"{name} lam={lam}: {int(model.iter)} iterations"
        # the reported loss is the stated objective of the final model
        assert abs(float(model.loss) / _objective(A, model, groups, lam) - 1) < 1e-10
        # it never increases, iteration by iteration (to rounding)
        assert np.all(np.diff(hist) <= 1e-12 * hist[:-1]), np.max(np.diff(hist) / hist[:-1])


def test_removal_lowers_group_information_and_beats_proj_adv(data, hawaii_ref):
    A, codes, k = data["hawaiibirds"]
    with jax.enable_x64(True):
        base = jnmf.nmf(A, k, seed=42)
        scat = jnmf.nmf(A, k, seed=42, maxit=500, target_H=hawaii_ref["target_T"], target_lambda=-0.1)
        adv = jnmf.nmf(A, k, seed=42, target_H=hawaii_ref["target_T"], target_lambda=-0.1, removal="proj_adv")
        share = {n: float(jnmf.class_separation(m, codes)) for n, m in (("base", base), ("scatter", scat),
                                                                       ("proj_adv", adv))}
        mse = {n: jnmf.evaluate(m, A) for n, m in (("base", base), ("scatter", scat), ("proj_adv", adv))}
    assert bool(scat.converged)
    assert share["scatter"] < 0.5 * share["base"]
    assert share["scatter"] < share["proj_adv"] and mse["scatter"] < mse["proj_adv"]


def test_negative_target_lambda_equals_remove_groups(data):
    """removal='scatter' with lambda < 0 and a compute_target of the groups is remove=groups, remove_lambda=|lambda|."""
    A, groups, k = data["batches"]
    with jax.enable_x64(True):
        T = jnmf.compute_target(jnmf.nmf(A, k, seed=1).h, groups)
        a = jnmf.nmf(A, k, seed=1, target_H=T, target_lambda=-0.3)
        b = jnmf.nmf(A, k, seed=1, remove=groups, remove_lambda=0.3)
    assert int(a.iter) == int(b.iter)
    np.testing.assert_allclose(np.asarray(a.h), np.asarray(b.h), rtol=1e-9, atol=1e-12)


def test_vmapped_lambdas_equal_separate_fits(data):
    A, groups, k = data["batches"]
    lams = jnp.asarray([0.05, 0.3, 1.0])
    with jax.enable_x64(True):
        problem = jnmf.prepare(A, k, seed=3, maxit=200, remove=groups, remove_lambda=0.0)
        batched = jax.vmap(lambda lam: jnmf.solve(problem, remove_lambda=lam))(lams)
        for i, lam in enumerate(np.asarray(lams)):
            single = jnmf.nmf(A, k, seed=3, maxit=200, remove=groups, remove_lambda=float(lam))
            assert int(batched.iter[i]) == int(single.iter)
            np.testing.assert_allclose(np.asarray(batched.h[i]), np.asarray(single.h), rtol=1e-9, atol=1e-12)
        # signed grids of target_lambda through sweep: the same as nmf() per member
        T = jnmf.compute_target(jnmf.nmf(A, k, seed=3).h, groups)
        res = jnmf.sweep(A, k, target_lambda=[-0.5, -0.1, 0.1], seeds=3, target_H=T, maxit=200, solver="cd")
        for i, lam in enumerate((-0.5, -0.1, 0.1)):
            single = jnmf.nmf(A, k, seed=3, target_H=T, target_lambda=lam, maxit=200, solver="cd")
            assert int(res.model.iter[i]) == int(single.iter)
            np.testing.assert_allclose(np.asarray(res.model.h[i]), np.asarray(single.h), rtol=1e-8, atol=1e-11)


def test_gradient_equals_finite_differences(data):
    A, groups, k = data["batches"]
    with jax.enable_x64(True):
        problem = jnmf.prepare_differentiable(A, k, seed=2, maxit=8, remove=groups, remove_lambda=0.0, cd_maxit=20)

        def f(lam):
            return jnmf.class_separation(jnmf.solve(problem, remove_lambda=lam), groups)

        lam0, eps = 0.4, 1e-5
        g = float(jax.grad(f)(lam0))
        fd = (float(f(lam0 + eps)) - float(f(lam0 - eps))) / (2 * eps)
    assert g < 0  # more removal, less group structure
    assert abs(g - fd) <= 1e-5 * max(abs(fd), 1e-8)


def test_remove_one_grouping_keep_another():
    """remove=batch with an enrichment target of the cell types: batch structure falls, type structure stays."""
    rng = np.random.default_rng(5)
    n, m = 240, 80
    cell = np.tile([0, 1, 2, 3], n // 4)
    batch = np.repeat([0, 1, 2], n // 3)
    programs = np.abs(rng.normal(size=(m, 4))) ** 2
    A = programs[:, cell] * 3 + np.abs(rng.normal(size=(m, 3)))[:, batch] * 2 + 0.1 * rng.random((m, n))
    with jax.enable_x64(True):
        base = jnmf.nmf(A, 6, seed=0)
        removed = jnmf.nmf(A, 6, seed=0, maxit=500, remove=batch, remove_lambda=1.0)
        T = jnmf.compute_target(base.h, cell)
        both = jnmf.nmf(A, 6, seed=0, maxit=500, remove=batch, remove_lambda=1.0, target_H=T, target_lambda=0.1)
        sep = {name: (float(jnmf.class_separation(mdl, batch)), float(jnmf.class_separation(mdl, cell)))
               for name, mdl in (("base", base), ("removed", removed), ("both", both))}
        hist = np.asarray(both.loss_history)[: int(both.iter)]
    assert sep["removed"][0] < 0.2 * sep["base"][0] and sep["both"][0] < 0.2 * sep["base"][0]
    assert sep["both"][1] >= sep["base"][1] - 0.02
    assert np.all(np.diff(hist) <= 1e-12 * hist[:-1])


@pytest.mark.parametrize("solver,norm", [("cd", "L1"), ("hals", "L1"), ("cd", "L2"), ("hals", "L2")])
def test_remove_with_kept_target_descends_its_joint_objective(solver, norm):
    """remove= beside an enrichment target: the reported loss is ``|A - W E|^2 + lam_T |E - T|^2 + lam tr(E M E')``
    of the final model, and it never increases (the W half accounts for the target's dependence on the scale)."""
    rng = np.random.default_rng(7)
    n, m = 120, 50
    cell, batch = np.tile([0, 1, 2], n // 3), np.repeat([0, 1], n // 2)
    A = np.abs(rng.normal(size=(m, 3)))[:, cell] * 2 + np.abs(rng.normal(size=(m, 2)))[:, batch] + 0.1 * rng.random(
        (m, n))
    with jax.enable_x64(True):
        base = jnmf.nmf(A, 5, seed=0, norm=norm)
        T = np.asarray(jnmf.compute_target(base.h, cell)) * np.asarray(base.d)[:, None]
        # sort=False: the rows of E stay those of T
        model = jnmf.nmf(A, 5, seed=0, maxit=300, tol=1e-9, solver=solver, norm=norm, remove=batch, sort=False,
                         remove_lambda=0.5, target_H=T, target_lambda=0.3)
        hist = np.asarray(model.loss_history)[: int(model.iter)]
    E = np.asarray(model.d)[:, None] * np.asarray(model.h)
    joint = _objective(A, model, batch, 0.5) + 0.3 * np.sum((E - T) ** 2)
    assert abs(float(model.loss) / joint - 1) < 1e-10
    assert np.all(np.diff(hist) <= 1e-12 * hist[:-1]), np.max(np.diff(hist) / hist[:-1])


def test_masked_and_sparse_fits_descend(data):
    import scipy.sparse as sp

    A, groups, k = data["batches"]
    rng = np.random.default_rng(1)
    mask = rng.random(A.shape) < 0.05
    with jax.enable_x64(True):
        masked = jnmf.nmf(A, k, seed=4, maxit=300, remove=groups, remove_lambda=0.5, mask=mask)
        hist = np.asarray(masked.loss_history)[: int(masked.iter)]
        assert np.all(np.diff(hist) <= 1e-12 * hist[:-1])
        dense = jnmf.nmf(A, k, seed=4, maxit=50, remove=groups, remove_lambda=0.5)
        sparse = jnmf.nmf(sp.csc_matrix(A), k, seed=4, maxit=50, remove=groups, remove_lambda=0.5, layout="sparse")
    np.testing.assert_allclose(np.asarray(sparse.h), np.asarray(dense.h), rtol=1e-8, atol=1e-10)


def test_l2_norm_objective_descends(data):
    A, groups, k = data["batches"]
    with jax.enable_x64(True):
        model = jnmf.nmf(A, k, seed=4, maxit=300, remove=groups, remove_lambda=0.5, norm="L2")
    hist = np.asarray(model.loss_history)[: int(model.iter)]
    assert np.all(np.diff(hist) <= 1e-12 * hist[:-1]) and bool(model.converged)


def test_projection_with_scatter_removal_descends(data):
    A, groups, k = data["batches"]
    with jax.enable_x64(True):
        model = jnmf.nmf(A, k, seed=1)
        T = jnmf.compute_target(model.h, groups)
        plain = np.asarray(jnmf.project(model, A))
        removed = np.asarray(jnmf.project(model, A, target_H=T, target_lambda=-1.0))
    assert np.min(removed) >= 0
    E_plain, E_rem = (np.asarray(model.d)[:, None] * x for x in (plain, removed))
    assert float(jnmf.class_separation(E_rem.T, groups)) < float(jnmf.class_separation(E_plain.T, groups))


def test_validation(data):
    A, groups, k = data["batches"]
    with pytest.raises(ValueError, match="norm='none'"):
        jnmf.nmf(A, k, remove=groups, norm="none")
    with pytest.raises(ValueError, match="solver='cholesky'"):
        jnmf.nmf(A, k, remove=groups, solver="cholesky")
    with pytest.raises(ValueError, match="remove must have at least 2 groups"):
        jnmf.nmf(A, k, remove=np.zeros(A.shape[1]))
    with pytest.raises(ValueError, match="length of remove"):
        jnmf.nmf(A, k, remove=groups[:-1])
    with pytest.raises(ValueError, match="remove_lambda"):
        jnmf.nmf(A, k, remove=groups, remove_lambda=-1.0)
    with pytest.raises(ValueError, match="W side"):
        jnmf.nmf(A, k, target_W=np.ones((A.shape[0], k)), target_lambda=-0.1)
    problem = jnmf.prepare(A, k, seed=1)
    with pytest.raises(ValueError, match="no remove= grouping"):
        jnmf.solve(problem, remove_lambda=0.5)


def test_tune_removal_meets_the_bio_constraint_and_refines_the_grid():
    rng = np.random.default_rng(5)
    n, m = 120, 40
    cell = np.tile([0, 1, 2, 3], n // 4)
    batch = np.repeat([0, 1, 2], n // 3)
    A = (np.abs(rng.normal(size=(m, 4))) ** 2)[:, cell] * 3 + np.abs(rng.normal(size=(m, 3)))[:, batch] * 2
    A = A + 0.1 * rng.random((m, n))
    with jax.enable_x64(True):
        res = jnmf.tune_removal(A, 5, batch, cell, bio_tolerance=0.05, maxit=30, cd_maxit=10,
                                grid=(0.01, 0.1, 1.0, 10.0))
    assert res.bio >= res.bio0 - 0.05 - 1e-9  # the constraint holds at the chosen lambda
    assert res.lam >= res.grid_lam  # Newton lands on the boundary the grid brackets
    assert res.batch < res.batch0  # and the batch structure went down
    grid_bio = dict((lam, bio) for lam, _, bio in res.grid)
    larger = [lam for lam in grid_bio if lam > res.lam]
    assert all(grid_bio[lam] < res.bio0 - 0.05 for lam in larger)  # nothing larger on the grid is feasible
