"""Non-Gaussian losses (``loss=``): stated objectives, monotone majorize-minimize updates, one rule for sparse and
dense input, masks, vmap over the loss's own parameter, gradients, and the validation of every argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import gammaln

import jnmf
from tests.conftest import _load_npz

# (loss, options) covering every loss and NB's dispersion modes; all fits share one shape (60 x 40), float64 and
# maxit (static), so each configuration compiles once per module.
MAXIT = 1000
CASES = [
    ("poisson", {}),
    ("kl", {}),
    ("nb", {}),
    ("nb", {"dispersion": "global"}),
    ("nb", {"dispersion": 4.0}),
    ("gamma", {}),
    ("tweedie", {"power": 1.5}),
    ("inverse_gaussian", {}),
    ("huber", {"delta": 0.5}),
    ("mae", {"delta": 1e-3}),
]


def _reference_objective(A, model, loss, opts, r=None):
    """The stated objective restated in float64 numpy, independently of jnmf._losses (every entry, zeros
    included; zeros dropped for power >= 2)."""
    Y = np.asarray(A.toarray() if sp.issparse(A) else A, np.float64)
    mu = np.maximum((np.asarray(model.w, np.float64) * np.asarray(model.d, np.float64)) @ np.asarray(model.h),
                    np.finfo(np.float64).tiny ** 0.25)
    with np.errstate(divide="ignore", invalid="ignore"):
        ylog = np.where(Y > 0, Y * np.log(Y / mu), 0.0)
        if loss in ("poisson", "kl"):
            return float(np.sum(ylog - Y + mu))
        if loss == "nb":
            r = np.broadcast_to(np.asarray(r, np.float64).reshape(-1, 1) if np.ndim(r) else r, Y.shape)
            nll = (gammaln(r) - gammaln(Y + r) + gammaln(Y + 1) - r * np.log(r / (r + mu))
                   - np.where(Y > 0, Y * np.log(mu / (r + mu)), 0.0))
            return float(np.sum(nll))
        if loss in ("gamma", "tweedie", "inverse_gaussian"):
            p = {"gamma": 2.0, "inverse_gaussian": 3.0}.get(loss, opts.get("power"))
            keep = (Y > 0) | (p < 2)
            if p == 2.0:
                e = Y / mu - np.log(Y / mu) - 1
            else:
                b = 2.0 - p
                e = Y ** b / (b * (b - 1)) - Y * mu ** (b - 1) / (b - 1) + mu ** b / b
            return float(np.sum(np.where(keep, e, 0.0)))
        z = np.abs(Y - mu)
        dl = opts["delta"]
        if loss == "huber":
            return float(np.sum(np.where(z <= dl, z * z, 2 * dl * z - dl * dl)))
        return float(np.sum(np.where(z <= dl, z * z / (2 * dl), z - dl / 2)))


@pytest.fixture(scope="module")
def matrices(hawaiibirds):
    ref = _load_npz("hawaiibirds_losses_rcppml.npz")
    A = hawaiibirds.A.tocsr()
    rows = np.argsort(-np.diff(A.indptr), kind="stable")[:60]
    sub = A[rows].tocsc()
    cols = np.argsort(-np.diff(sub.indptr), kind="stable")[:40]
    return {"toy_counts": ref["toy_counts"], "toy_pos": ref["toy_pos"],
            "hawaiibirds": sub[:, cols].toarray()}  # 60 x 40 of the densest rows/columns (about 75% non-zero)


@pytest.mark.parametrize("loss,opts", CASES, ids=[f"{c[0]}-{'-'.join(map(str, c[1].values()))}" for c in CASES])
def test_objective_never_increases_converges_and_is_the_stated_one(matrices, loss, opts):
    with jax.enable_x64(True):
        for name, A in matrices.items():
            model = jnmf.nmf(A, 3, seed=42, loss=loss, tol=1e-4, maxit=MAXIT, **opts)
            hist = np.asarray(model.loss_history)[: int(model.iter)]
            assert bool(model.converged), f"{name} {loss}: {int(model.iter)} iterations"
            assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1])), (name, np.max(np.diff(hist) / hist[:-1]))
            if loss == "nb" and opts.get("dispersion") in (None, "global"):
                # the estimated size is a leaf of the fit's state; evaluate's profile size can only lower the NLL
                assert jnmf.evaluate(model, A, loss=loss, **opts) <= float(model.loss) * (1 + 1e-12)
                continue
            ref = _reference_objective(A, model, loss, opts, opts.get("dispersion"))
            assert abs(float(model.loss) / ref - 1) < 1e-10, (name, float(model.loss), ref)
            assert abs(jnmf.evaluate(model, A, loss=loss, **opts) / ref - 1) < 1e-10
            assert abs(jnmf.evaluate(model, sp.csr_matrix(A), loss=loss, **opts) / ref - 1) < 1e-10


def test_poisson_sparse_layout_equals_dense(matrices):
    """One rule: the sparse (stored entries + column sums) and dense Poisson fits are the same fit."""
    A = matrices["hawaiibirds"]
    with jax.enable_x64(True):
        dense = jnmf.nmf(A, 3, seed=1, loss="poisson", layout="dense", maxit=MAXIT)
        sparse = jnmf.nmf(sp.csc_matrix(A), 3, seed=1, loss="poisson", layout="sparse", maxit=MAXIT)
        assert isinstance(jnmf.prepare(sp.csc_matrix(A), 3, loss="poisson", layout="sparse").data,
                          jnmf._losses.CooData)
        assert int(dense.iter) == int(sparse.iter)
        for a, b in ((dense.w, sparse.w), (dense.d, sparse.d), (dense.h, sparse.h), (dense.loss, sparse.loss)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-12)
        # sparse input of a dense-layout loss is densified: the same fit as dense input
        nb_d = jnmf.nmf(A, 3, seed=1, loss="nb", dispersion=4.0, maxit=MAXIT)
        nb_s = jnmf.nmf(sp.csr_matrix(A), 3, seed=1, loss="nb", dispersion=4.0, maxit=MAXIT)
        np.testing.assert_allclose(np.asarray(nb_s.h), np.asarray(nb_d.h), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss,opts", [("poisson", {}), ("gamma", {}), ("huber", {"delta": 0.5})])
def test_masked_entries_change_nothing(matrices, loss, opts):
    A = np.array(matrices["toy_counts"], np.float64)
    mask = (np.add.outer(np.arange(60) * 7, np.arange(40) * 13) % 9) == 0
    garbage = np.where(mask, 1e3, A)
    with jax.enable_x64(True):
        a = jnmf.nmf(A, 3, seed=42, loss=loss, mask=mask, maxit=MAXIT, **opts)
        b = jnmf.nmf(garbage, 3, seed=42, loss=loss, mask=mask, maxit=MAXIT, **opts)
        c = jnmf.nmf(np.where(mask, np.nan, A), 3, seed=42, loss=loss, maxit=MAXIT, **opts)
        np.testing.assert_array_equal(np.asarray(a.h), np.asarray(b.h))
        np.testing.assert_allclose(np.asarray(c.h), np.asarray(a.h), rtol=1e-12)
        # the masked objective covers the observed entries only, and the fit differs from the unmasked one
        ref = _reference_objective(np.where(mask, 0.0, A), a, loss, opts)
        full = jnmf.evaluate(a, A, loss=loss, **opts)
        assert abs(jnmf.evaluate(a, A, mask, loss=loss, **opts) - float(a.loss)) < 1e-9 * float(a.loss)
        assert full > float(a.loss)
        assert np.isfinite(ref)
        assert not np.allclose(np.asarray(jnmf.nmf(A, 3, seed=42, loss=loss, maxit=MAXIT, **opts).h), np.asarray(a.h))


@pytest.mark.parametrize("loss,name,values", [("tweedie", "power", [1.2, 1.7, 2.5]), ("huber", "delta", [0.2, 2.0])])
def test_vmap_over_the_loss_parameter_equals_separate_fits(matrices, loss, name, values):
    A = matrices["toy_pos"]
    with jax.enable_x64(True):
        problem = jnmf.prepare(A, 3, seed=42, loss=loss, maxit=MAXIT, **{name: values[0]})
        grid = jax.vmap(lambda v: jnmf.solve(problem, **{name: v}))(jnp.asarray(values))
        for i, v in enumerate(values):
            one = jnmf.nmf(A, 3, seed=42, loss=loss, maxit=MAXIT, **{name: v})
            assert int(grid.iter[i]) == int(one.iter)
            np.testing.assert_allclose(np.asarray(grid.h[i]), np.asarray(one.h), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(float(grid.loss[i]), float(one.loss), rtol=1e-12)


def test_gradient_through_a_poisson_fit_equals_finite_differences(matrices):
    A = matrices["toy_counts"]
    with jax.enable_x64(True):
        problem = jnmf.prepare(A, 3, seed=42, loss="poisson", loop="scan", maxit=8, tol=0.0, L2=0.1)
        weights = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 40)))

        def score(l2):
            model = jnmf.solve(problem, L2=l2)
            return jnp.sum(weights * model.h) + 1e-3 * model.loss

        g = float(jax.grad(score)(jnp.asarray(0.1)))
        eps = 1e-5
        fd = (float(score(jnp.asarray(0.1 + eps))) - float(score(jnp.asarray(0.1 - eps)))) / (2 * eps)
        assert abs(fd) > 1e-6
        assert abs(g - fd) < 1e-5 * abs(fd) + 1e-9, (g, fd)


def _between_scatter(model, groups):
    """``|between-group part of diag(d) h|_F^2``, restated in numpy: the scatter removal's penalty."""
    E = np.asarray(model.d)[:, None] * np.asarray(model.h)
    centred = np.zeros_like(E)
    for g in np.unique(groups):
        centred[:, groups == g] = E[:, groups == g].mean(1, keepdims=True)
    between = centred - E.mean(1, keepdims=True)
    return float(np.sum(between * between))


@pytest.mark.parametrize("loss", ["poisson", "huber"])
def test_scatter_removal_with_a_loss_is_monotone_and_stated(loss):
    rng = np.random.default_rng(3)
    groups = np.repeat([0, 1, 2], 20)
    A = rng.poisson(np.abs(rng.normal(size=(30, 3))) @ np.abs(rng.normal(size=(3, 60))) * 3
                    + np.abs(rng.normal(size=(30, 3)))[:, groups] * 2).astype(np.float64)
    with jax.enable_x64(True):
        model = jnmf.nmf(A, 3, seed=42, loss=loss, remove=groups, remove_lambda=0.5, maxit=MAXIT)
        hist = np.asarray(model.loss_history)[: int(model.iter)]
        assert bool(model.converged)
        assert np.all(np.diff(hist) <= 1e-12 * hist[:-1]), np.max(np.diff(hist) / hist[:-1])
        ref = _reference_objective(A, model, loss, {"delta": 1.345}) + 0.5 * _between_scatter(model, groups)
        assert abs(float(model.loss) / ref - 1) < 1e-10
        base = jnmf.nmf(A, 3, seed=42, loss=loss, maxit=MAXIT)
        assert float(jnmf.class_separation(model, groups)) < float(jnmf.class_separation(base, groups))


def test_rcppml_spellings_map_to_jnmf_losses(matrices):
    A = matrices["toy_counts"]
    with jax.enable_x64(True):
        a = jnmf.nmf(A, 3, seed=42, robust=True, maxit=MAXIT)
        b = jnmf.nmf(A, 3, seed=42, loss="huber", delta=1.345, maxit=MAXIT)
        np.testing.assert_array_equal(np.asarray(a.h), np.asarray(b.h))
        c = jnmf.nmf(A, 3, seed=42, loss="kl", maxit=MAXIT)
        d = jnmf.nmf(A, 3, seed=42, loss="poisson", maxit=MAXIT)
        np.testing.assert_array_equal(np.asarray(c.h), np.asarray(d.h))


def test_mse_problem_is_unchanged(matrices):
    """loss='mse' adds no leaves: the problem pytree and the fit are today's."""
    A = matrices["toy_counts"]
    p = jnmf.prepare(A, 3, seed=42)
    assert p.hyper.power is None and p.hyper.delta is None and p.hyper.dispersion is None
    np.testing.assert_array_equal(np.asarray(jnmf.nmf(A, 3, seed=42, loss="mse").h), np.asarray(jnmf.solve(p).h))


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss="poison"), "loss must be one of"),
    (dict(loss="gp"), "loss='poisson'"),
    (dict(loss="tweedie", power=0.5), "power must be in"),
    (dict(loss="tweedie", power=3.5), "power must be in"),
    (dict(loss="poisson", power=1.5), "power applies to loss='tweedie'"),
    (dict(loss="huber", delta=0.0), "delta must be > 0"),
    (dict(loss="mae", delta=-1.0), "delta must be > 0"),
    (dict(loss="poisson", delta=1.0), "delta applies"),
    (dict(loss="nb", dispersion=-2.0), "dispersion must be"),
    (dict(loss="nb", dispersion="per_col"), "dispersion must be one of"),
    (dict(loss="gamma", dispersion=2.0), "dispersion applies"),
    (dict(loss="poisson", solver="cholesky"), "solver='cholesky' does not apply"),
    (dict(loss="huber", solver="bpp"), "solver='bpp' does not apply"),
    (dict(loss="gamma", L2=0.1), "L2: loss='gamma' does not take L2"),
    (dict(loss="poisson", nonneg=False), "nonneg"),
    (dict(loss="huber", robust=True), "robust=True with loss='huber'"),
    (dict(robust="median"), "robust must be"),
    (dict(loss="nb", layout="sparse"), "layout='sparse' is not available for loss='nb'"),
    (dict(loss_mode="irls"), "loss_mode must be one of"),
])
def test_invalid_loss_arguments_name_the_argument(matrices, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jnmf.nmf(matrices["toy_counts"], 3, seed=1, **kwargs)


def test_invalid_combinations_and_entry_points(matrices):
    A = matrices["toy_counts"]
    with pytest.raises(ValueError, match="A contains negative values"):
        jnmf.nmf(A - 1.0, 3, loss="poisson")
    T = np.abs(np.random.default_rng(0).normal(size=(3, 40)))
    with pytest.raises(ValueError, match="removal='proj_adv' with a negative target_lambda"):
        jnmf.nmf(A, 3, loss="poisson", target_H=T, target_lambda=-0.1, removal="proj_adv")
    with pytest.raises(ValueError, match="target_H= does not apply to loss_mode='rcppml'"):
        jnmf.nmf(A, 3, loss="gp", loss_mode="rcppml", target_H=T, target_lambda=0.1)
    with pytest.raises(ValueError, match="loss_mode='rcppml'"):
        jnmf.prepare(A, 3, loss="gp", loss_mode="rcppml")
    with pytest.raises(ValueError, match="nmf_chunked does not take loss_mode='rcppml'"):
        jnmf.nmf_chunked([A[:, :20], A[:, 20:]], 3, loss="gp", loss_mode="rcppml")
    with pytest.raises(ValueError, match="layout='sparse' with devices: loss='poisson'"):
        jnmf.nmf(sp.csc_matrix(A), 3, loss="poisson", layout="sparse", devices=jax.devices()[:1])
    problem = jnmf.prepare(A, 3, seed=1, loss="tweedie")
    with pytest.raises(ValueError, match="power must be a scalar in"):
        jnmf.solve(problem, power=4.0)
    with pytest.raises(ValueError, match="delta override given but the problem's loss is 'tweedie'"):
        jnmf.solve(problem, delta=1.0)
    model = jnmf.nmf(A, 3, seed=1, maxit=5)
    with pytest.raises(ValueError, match="loss must be one of"):
        jnmf.evaluate(model, A, loss="hinge")
    # mse evaluate keeps its meaning: the mean squared error
    mse = jnmf.evaluate(model, A)
    assert abs(mse * A.size / float(model.loss) - 1) < 1e-4


def test_sweep_with_a_loss_equals_separate_fits(matrices):
    """sweep's fixed options carry the loss: a seed x L2 grid of Poisson fits equals the separate fits."""
    A = matrices["toy_counts"]
    with jax.enable_x64(True):
        res = jnmf.sweep(A, 3, seeds=[1, 2], L2=[0.0, 0.5], loss="poisson", maxit=MAXIT)
        for i, s in enumerate([1, 2]):
            for j, l2 in enumerate([0.0, 0.5]):
                one = jnmf.nmf(A, 3, seed=s, L2=l2, loss="poisson", maxit=MAXIT)
                assert int(np.asarray(res.model.iter)[i, j]) == int(one.iter)
                np.testing.assert_allclose(np.asarray(res.model.h)[i, j], np.asarray(one.h), rtol=1e-8, atol=1e-10)


def test_nb_model_carries_its_estimated_sizes(matrices, tmp_path):
    # The fitted r is part of the model: evaluate uses it (the fit's own NLL), and it survives save/load.
    A = matrices["toy_counts"]
    with jax.enable_x64(True):
        model = jnmf.nmf(A, 3, seed=42, loss="nb", tol=1e-4, maxit=MAXIT)
        r = np.asarray(model.dispersion)
        # clipped in log r, so the bounds hold to rounding
        assert r.shape == (A.shape[0],) and np.all((r >= 1e-3) & (r <= 1e8 * (1 + 1e-9))) and np.ptp(r) > 0
        assert abs(jnmf.evaluate(model, A, loss="nb") / float(model.loss) - 1) < 1e-10
        back = jnmf.load(model.save(tmp_path / "nb"))
        np.testing.assert_array_equal(np.asarray(back.dispersion), r)
        glob = jnmf.nmf(A, 3, seed=42, loss="nb", dispersion="global", tol=1e-4, maxit=MAXIT)
        assert np.ptp(np.asarray(glob.dispersion)) == 0
    plain = jnmf.nmf(A, 3, seed=42, maxit=5)
    assert plain.dispersion is None and jnmf.load(plain.save(tmp_path / "mse")).dispersion is None
    assert "dispersion" not in np.load(tmp_path / "mse.npz").files


@pytest.mark.parametrize("loss,opts", [("gamma", {}), ("tweedie", {"power": 1.5}), ("tweedie", {"power": 2.5})])
def test_gamma_and_tweedie_take_targets_and_the_scatter_removal(loss, opts):
    # The power-form MM root with quadratic penalties (_power_form_root): monotone, stated, and it moves the
    # embedding the way the penalty asks.
    rng = np.random.default_rng(4)
    groups = np.repeat([0, 1, 2], 20)
    A = (np.abs(rng.normal(size=(30, 3))) @ np.abs(rng.normal(size=(3, 60)))
         + np.abs(rng.normal(size=(30, 3)))[:, groups]) * rng.gamma(4.0, 0.25, size=(30, 60))
    with jax.enable_x64(True):
        base = jnmf.nmf(A, 3, seed=42, loss=loss, maxit=MAXIT, **opts)
        removed = jnmf.nmf(A, 3, seed=42, loss=loss, remove=groups, remove_lambda=0.5, maxit=MAXIT, **opts)
        guided = jnmf.guided_nmf(A, 3, labels=groups, target_lambda=0.5, base=base, seed=42, loss=loss,
                                 maxit=MAXIT, **opts).model
        # The removal's objective (data term + lam d^2 |between-group scatter|) never increases. Enrichment, as in
        # the MSE engine and RcppML, penalises each raw H update towards T and reports the data term only, which
        # may rise while the embedding moves to the target, so it is checked by where it ends.
        hist = np.asarray(removed.loss_history)[: int(removed.iter)]
        assert bool(removed.converged) and bool(guided.converged), (int(removed.iter), int(guided.iter))
        assert np.all(np.diff(hist) <= 1e-12 * hist[:-1]), np.max(np.diff(hist) / hist[:-1])
        ref = _reference_objective(A, removed, loss, opts) + 0.5 * _between_scatter(removed, groups)
        assert abs(float(removed.loss) / ref - 1) < 1e-10
    sep = [float(jnmf.class_separation(m, groups)) for m in (removed, base, guided)]
    assert sep[0] < sep[1] < sep[2], sep


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
def test_power_form_root_minimises_its_surrogate(p):
    # The Newton root of the gamma/Tweedie surrogate with a quadratic against a direct 1-D minimisation.
    from scipy.optimize import minimize_scalar

    from jnmf._losses import _power_form_root

    rng = np.random.default_rng(int(p * 10))
    shape = (4, 25)
    a, Q, X0 = rng.gamma(2.0, 1.0, shape), rng.gamma(2.0, 1.0, shape), rng.gamma(2.0, 1.0, shape)
    Q[0, :3] = 0.0  # no data term: the closed form max(-lin, 0) / 2c
    X0[1, :3] = 0.0
    c, ct = 0.7, rng.normal(size=shape) * 2.0
    with jax.enable_x64(True):
        x = np.asarray(_power_form_root(jnp.asarray(a), jnp.asarray(Q), jnp.asarray(X0), c, jnp.asarray(ct),
                                        jnp.asarray(p)))
    for i, j in np.ndindex(shape):
        lin = a[i, j] - 2 * ct[i, j]
        live = Q[i, j] > 0 and X0[i, j] > 0

        def S(v, i=i, j=j, lin=lin, live=live):
            if not live:
                return lin * v + c * v * v
            t = v / X0[i, j]
            jensen = -np.log(t) if p == 1.0 else (t ** (1 - p) - 1) / (p - 1)
            return lin * v + c * v * v + Q[i, j] * X0[i, j] * jensen

        best = minimize_scalar(S, bounds=(1e-12, 50.0), method="bounded", options={"xatol": 1e-12}).x
        if not live and lin >= 0:
            assert x[i, j] == 0.0
        else:
            assert abs(x[i, j] - best) <= 1e-6 * max(best, 1e-3), (i, j, x[i, j], best)
            assert S(x[i, j]) <= S(best) + 1e-12 * abs(S(best))
