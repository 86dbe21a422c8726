"""Integrative NMF (LIGER's iNMF): block updates against scipy's NNLS, descent, reductions, sparse/dense, vmap,
recovery of shared factors and batch mixing on simulated batches, quantile alignment, AnnData."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
from jax import enable_x64
from scipy.optimize import linear_sum_assignment

import jnmf
from jnmf import _inmf
from jnmf._assess import _approx_batch_knn_entropy


@pytest.fixture
def x64():
    with enable_x64(True):
        yield


def _small(seed=0, m=12, n=(9, 7)):
    rng = np.random.default_rng(seed)
    return [rng.random((m, n_i)) for n_i in n]


def simulate(seed=0, m=80, n=(160, 120), t=4, spec=0.25, scale2=2.0, noise=0.05):
    """Two batches ``A_i = s_i (W + V_i) H_i + noise``: t shared factors W (10 marker features each on a low
    background), batch-specific deviations V_i on disjoint sets of 20 features, one dominant factor per sample
    (its type), batch 2 at twice the depth. Returns (As, W, types)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(m)
    W = 0.2 * rng.random((m, t))
    for c in range(t):
        W[perm[40 + 10 * c: 50 + 10 * c], c] += 1.0 + rng.random(10)
    As, types = [], []
    for i, n_i in enumerate(n):
        Vt = np.zeros((m, t))
        genes = perm[20 * i: 20 * (i + 1)]
        Vt[genes] = spec * rng.gamma(1.0, 1.0, (20, t))
        ty = rng.integers(0, t, n_i)
        H = 0.1 * rng.random((t, n_i))
        H[ty, np.arange(n_i)] += 0.5 + rng.random(n_i)
        A = (W + Vt) @ H + noise * rng.random((m, n_i))
        As.append(A * (scale2 if i == 1 else 1.0))
        types.append(ty)
    return As, W, types


def matched_corr(W, W_true):
    C = np.corrcoef(W.T, W_true.T)[: W.shape[1], W.shape[1]:]
    r, c = linear_sum_assignment(-C)
    return C[r, c]


def _objective_np(As, W, Vs, Hs, lam):
    return sum(np.sum((A - (W + V) @ H) ** 2) + lam * np.sum((V @ H) ** 2) for A, V, H in zip(As, Vs, Hs, strict=True))


def _nnls_rows(F, Y):
    """scipy NNLS of every column of Y (p, q) on F (p, k): (k, q)."""
    return np.stack([scipy.optimize.nnls(F, y, maxiter=10_000)[0] for y in Y.T], axis=1)


# ------------------------------------------------------------------------------------------------------------
# the block updates and the objective
# ------------------------------------------------------------------------------------------------------------


def test_each_block_update_equals_scipy_nnls(x64):
    As = _small()
    lam = 2.5
    problem = _inmf.prepare_inmf(As, 3, seed=4, lambda_=lam, cd_maxit=5000, cd_tol=1e-15)
    config, data = problem.config, problem.data
    W, V, H = problem.w_init, problem.v_init, problem.h_init
    Wn, Vn = np.asarray(W), np.asarray(V)
    n = config.n
    H1 = _inmf.update_h(data, W, V, H, problem.lambda_, config, problem.cd_tol)
    V1 = _inmf.update_v(data, W, V, H1, problem.lambda_, config, problem.cd_tol)
    W1 = _inmf.update_w(data, W, V1, H1, config, problem.cd_tol)
    H1n, V1n = np.asarray(H1), np.asarray(V1)
    s = np.sqrt(lam)
    m = Wn.shape[0]
    for i, A in enumerate(As):
        # H_i: [W + V_i; sqrt(lam) V_i] h = [a; 0]
        ref = _nnls_rows(np.vstack([Wn + Vn[i], s * Vn[i]]), np.vstack([A, np.zeros_like(A)]))
        np.testing.assert_allclose(H1n[i, :, :n[i]], ref, atol=1e-9)
        assert np.all(H1n[i, :, n[i]:] == 0)  # padded columns stay exactly zero
        # V_i rows: [H_i'; sqrt(lam) H_i'] v = [a_r - H_i' w_r; 0]
        Hi = H1n[i, :, :n[i]]
        R = (A - Wn @ Hi).T
        ref = _nnls_rows(np.vstack([Hi.T, s * Hi.T]), np.vstack([R, np.zeros_like(R)]))
        np.testing.assert_allclose(V1n[i], ref.T, atol=1e-9)
    # W rows: [H_1'; H_2'] w = [a_1r - H_1' v_1r; a_2r - H_2' v_2r]
    Hs = [H1n[i, :, :n[i]] for i in range(len(As))]
    F = np.vstack([h.T for h in Hs])
    Y = np.vstack([(A - V1n[i] @ Hs[i]).T for i, A in enumerate(As)])
    np.testing.assert_allclose(np.asarray(W1), _nnls_rows(F, Y).T, atol=1e-9)
    assert W1.shape == (m, 3)
    # The Gram-identity objective equals the direct one.
    obj = _inmf.objective(data, problem.sq_norm, W1, V1, H1, problem.lambda_, config)
    np.testing.assert_allclose(float(obj), _objective_np(As, np.asarray(W1), V1n, Hs, lam), rtol=1e-10)


def _numpy_inmf(As, W, Vs, Hs, lam, iters):
    """An independent float64 reference of the same updates (LIGER's order, scipy NNLS on the stacked matrices)."""
    W, Vs, Hs = W.copy(), [v.copy() for v in Vs], [h.copy() for h in Hs]
    s = np.sqrt(lam)
    out = []
    for _ in range(iters):
        Hs = [_nnls_rows(np.vstack([W + V, s * V]), np.vstack([A, np.zeros_like(A)]))
              for A, V in zip(As, Vs, strict=True)]
        Vs = [_nnls_rows(np.vstack([H.T, s * H.T]), np.vstack([(A - W @ H).T, np.zeros((H.shape[1], A.shape[0]))])).T
              for A, H in zip(As, Hs, strict=True)]
        W = _nnls_rows(np.vstack([H.T for H in Hs]),
                       np.vstack([(A - V @ H).T for A, V, H in zip(As, Vs, Hs, strict=True)])).T
        out.append(_objective_np(As, W, Vs, Hs, lam))
    return np.array(out)


def test_objective_never_increases_and_matches_numpy_reference(x64):
    As = _small(1, m=15, n=(11, 8))
    model = jnmf.inmf(As, 3, seed=7, lambda_=5.0, maxit=15, tol=0.0, cd_maxit=5000, cd_tol=1e-15)
    hist = np.asarray(model.loss_history)
    assert int(model.iter) == 15 and np.all(np.isfinite(hist))
    rel_up = np.diff(hist) / hist[:-1]
    assert rel_up.max() <= 1e-12, rel_up.max()  # never increases (to rounding)
    W0, V0, H0 = _inmf.initial_factors(7, 15, (11, 8), 3)
    ref = _numpy_inmf(As, W0, list(V0), [H0[0, :, :11], H0[1, :, :8]], 5.0, 15)
    np.testing.assert_allclose(hist, ref, rtol=1e-7)
    # The recorded loss is the objective of the returned factors.
    np.testing.assert_allclose(float(model.loss), _objective_np(As, np.asarray(model.w), np.asarray(model.v),
                                                                model.h_list(), 5.0), rtol=1e-9)


def test_lambda_zero_one_batch_reduces_to_plain_nmf(x64):
    A = _small(2, m=14, n=(20,))[0]
    plain = jnmf.nmf(A, 3, seed=3, solver="cd", tol=1e-12, maxit=2000, cd_tol=1e-14, cd_maxit=1000, norm="none")
    Wp, Hp = np.asarray(plain.w) * np.asarray(plain.d), np.asarray(plain.h)
    # A plain-NMF stationary point is a fixed point of iNMF with lambda = 0 and V = 0 ...
    model = jnmf.inmf([A], 3, lambda_=0.0, w_init=Wp, v_init=[np.zeros_like(Wp)], h_init=[Hp], maxit=5, tol=0.0,
                      cd_tol=1e-14, cd_maxit=1000)
    np.testing.assert_allclose(float(model.loss), float(plain.loss), rtol=1e-8)
    # (to 1e-4: plain NMF stops in a flat valley, where both drift by ~1e-6 without changing the loss)
    np.testing.assert_allclose(np.asarray(model.w + model.v[0]) @ model.h_list()[0], Wp @ Hp, atol=1e-4)
    # ... and a converged iNMF (lambda = 0, one batch) is one of plain NMF (its objective, with W_eff = W + V).
    fit = jnmf.inmf([A], 3, seed=5, lambda_=0.0, maxit=2000, tol=1e-12, cd_tol=1e-14, cd_maxit=1000)
    W_eff = np.asarray(fit.w + fit.v[0])
    again = jnmf.nmf(A, 3, w_init=W_eff, solver="cd", tol=0.0, maxit=3, cd_tol=1e-14, cd_maxit=1000, norm="none")
    np.testing.assert_allclose(float(again.loss), float(fit.loss), rtol=1e-6)
    np.testing.assert_allclose(float(fit.loss), np.sum((A - W_eff @ fit.h_list()[0]) ** 2), rtol=1e-9)


def test_sparse_equals_dense_and_vmap_over_lambda(x64):
    rng = np.random.default_rng(3)
    As = [sp.random(20, n_i, density=0.3, random_state=rng, format="csr") for n_i in (15, 10)]
    dense = jnmf.inmf([a.toarray() for a in As], 3, seed=2, maxit=8, tol=0.0, layout="dense")
    sparse = jnmf.inmf(As, 3, seed=2, maxit=8, tol=0.0, layout="sparse")
    assert isinstance(_inmf.prepare_inmf(As, 3, seed=2, layout="sparse").data, _inmf.INMFSparse)
    np.testing.assert_allclose(np.asarray(sparse.loss_history), np.asarray(dense.loss_history), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(sparse.h), np.asarray(dense.h), atol=1e-9)
    np.testing.assert_allclose(np.asarray(sparse.w), np.asarray(dense.w), atol=1e-9)
    # A grid over lambda is one vmapped fit, equal to separate fits.
    lams = [0.5, 2.0, 5.0]
    grid = jnmf.inmf(As, 3, seed=2, maxit=8, tol=0.0, layout="sparse", lambda_=lams)
    assert grid.w.shape == (3, 20, 3) and "grid" in repr(grid)
    for j, lam in enumerate(lams):
        single = jnmf.inmf(As, 3, seed=2, maxit=8, tol=0.0, layout="sparse", lambda_=lam)
        np.testing.assert_allclose(np.asarray(grid.loss_history[j]), np.asarray(single.loss_history), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(grid.w[j]), np.asarray(single.w), atol=1e-10)
    with pytest.raises(ValueError, match="grid"):
        grid.embedding()


def test_masked_entries_leave_the_fit(x64):
    As = _small(4, m=10, n=(8, 6))
    masks = [np.zeros(a.shape, bool) for a in As]
    masks[0][2, 3] = masks[1][5, 1] = True
    corrupted = [a.copy() for a in As]
    corrupted[0][2, 3] = 1e3
    corrupted[1][5, 1] = np.nan  # NaN is masked as well, without a mask entry of its own
    masks[1][5, 1] = False
    a = jnmf.inmf(corrupted, 2, seed=1, maxit=6, tol=0.0, masks=masks)
    b = jnmf.inmf([x for x in As], 2, seed=1, maxit=6, tol=0.0, masks=[masks[0], np.isnan(corrupted[1])])
    np.testing.assert_allclose(np.asarray(a.loss_history), np.asarray(b.loss_history), rtol=1e-10)
    assert np.all(np.diff(np.asarray(a.loss_history)) <= 1e-10 * np.asarray(a.loss_history)[1:])
    # An all-False mask is the plain fit.
    c = jnmf.inmf(As, 2, seed=1, maxit=6, tol=0.0, masks=[np.zeros(x.shape, bool) for x in As])
    d = jnmf.inmf(As, 2, seed=1, maxit=6, tol=0.0)
    np.testing.assert_allclose(np.asarray(c.loss_history), np.asarray(d.loss_history), rtol=1e-10)


# ------------------------------------------------------------------------------------------------------------
# simulated batches: shared factors and mixing
# ------------------------------------------------------------------------------------------------------------


def test_recovers_shared_factors_and_mixes_batches(x64):
    As, W_true, types = simulate()
    batch = np.repeat([0, 1], [a.shape[1] for a in As])
    model = jnmf.inmf(As, 4, seed=1, lambda_=1.0, maxit=300, tol=1e-7)
    corr = matched_corr(np.asarray(model.w), W_true)
    assert corr.min() > 0.95, corr
    plain = jnmf.nmf(np.hstack(As), 4, seed=1, maxit=300)
    emb = model.embedding()
    assert emb.shape == (280, 4)
    ent_inmf = _approx_batch_knn_entropy(emb, batch, 2, 30, 42)
    ent_plain = _approx_batch_knn_entropy(np.asarray(plain.embedding(), np.float64), batch, 2, 30, 42)
    assert ent_inmf > ent_plain + 0.1, (ent_inmf, ent_plain)
    # assess reads the aligned embedding from the model
    res = jnmf.assess(model, np.concatenate(types), batch=batch, metrics=["batch_mixing"])
    np.testing.assert_allclose(res.metrics["batch_knn_entropy"],
                               _approx_batch_knn_entropy(emb, batch, 2, 50, 42), rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# quantile alignment
# ------------------------------------------------------------------------------------------------------------


def test_quantile_norm_matches_reference_distribution():
    rng = np.random.default_rng(0)
    k, n1, n2 = 3, 300, 200
    H1 = rng.gamma(1.0, 1.0, (k, n1))
    H2 = 4.0 * rng.gamma(1.0, 1.0, (k, n2)) + 0.5  # another scale and offset
    out = jnmf.quantile_norm([H2, H1], max_sample=None)  # reference = the largest, batch 1 here
    assert out.shape == (n1 + n2, k)
    np.testing.assert_array_equal(out[n2:], H1.T)  # the reference is unchanged
    c1 = np.argmax(H1.T / np.sqrt((H1 ** 2).sum(1) / (n1 - 1)), axis=1)
    c2 = np.argmax(H2.T / np.sqrt((H2 ** 2).sum(1) / (n2 - 1)), axis=1)
    for c in range(k):
        for f in range(k):
            a, b = out[:n2][c2 == c, f], H1.T[c1 == c, f]
            # per cluster and factor, the aligned quantiles are the reference's
            np.testing.assert_allclose(np.quantile(a, [0, 0.5, 1]), np.quantile(b, [0, 0.5, 1]),
                                       rtol=0.05, atol=0.02)
    # min_cells above every cluster size: nothing moves
    np.testing.assert_array_equal(jnmf.quantile_norm([H2, H1], min_cells=10_000)[:n2], H2.T)
    with pytest.raises(ValueError, match="ref_dataset"):
        jnmf.quantile_norm([H2, H1], ref_dataset=2)


# ------------------------------------------------------------------------------------------------------------
# validation, seeds, AnnData
# ------------------------------------------------------------------------------------------------------------


def test_validation_names_the_argument():
    As = _small()
    with pytest.raises(ValueError, match=r"As\[1\] has 11 rows, expected 12 \(the features of As\[0\]\)"):
        jnmf.inmf([As[0], np.ones((11, 5))], 2)
    with pytest.raises(ValueError, match=r"As\[1\] contains negative"):
        jnmf.inmf([As[0], -As[1]], 2)
    with pytest.raises(ValueError, match="lambda_ must be >= 0"):
        jnmf.inmf(As, 2, lambda_=-1.0)
    with pytest.raises(ValueError, match=r"lambda_\[1\] must be >= 0"):
        jnmf.inmf(As, 2, lambda_=[1.0, -1.0])
    with pytest.raises(ValueError, match="k must satisfy"):
        jnmf.inmf(As, 13)
    with pytest.raises(TypeError, match="As must be a list"):
        jnmf.inmf(As[0], 2)
    with pytest.raises(ValueError, match=r"v_init must hold 2"):
        jnmf.inmf(As, 2, v_init=[np.ones((12, 2))])
    with pytest.raises(ValueError, match=r"h_init\[1\] must have shape \(2, 7\)"):
        jnmf.inmf(As, 2, h_init=[np.ones((2, 9)), np.ones((2, 6))])
    with pytest.raises(ValueError, match="masks has 1 entries"):
        jnmf.inmf(As, 2, masks=[None])


def test_int_seed_is_rligers_draw_order():
    W, V, H = _inmf.initial_factors(11, 5, (3, 2), 2)
    u = 2 * jnmf.r_runif(11, 5 * 2 * 3 + 2 * 5)
    # R: W <- matrix(runif(g * k, 0, 2), k, g), then each V_i, then H_i <- matrix(runif(n_i * k, 0, 2), n_i, k)
    np.testing.assert_allclose(W, u[:10].reshape(2, 5, order="F").T)
    np.testing.assert_allclose(V[1], u[20:30].reshape(2, 5, order="F").T)
    np.testing.assert_allclose(H[1, :, :2], u[36:40].reshape(2, 2, order="F").T)
    assert np.all(H[1, :, 2:] == 0)


def test_tl_inmf_writes_obsm_in_cell_order():
    ad = pytest.importorskip("anndata", reason="anndata is an optional dependency (pip install jnmf[anndata])")
    pd = pytest.importorskip("pandas", reason="anndata needs pandas")
    As = _small(5, m=10, n=(12, 9))
    X = np.hstack(As).T  # cells x genes
    order = np.random.default_rng(0).permutation(21)
    batch = np.repeat(["a", "b"], [12, 9])[order]
    adata = ad.AnnData(X[order], obs=pd.DataFrame({"batch": batch}, index=[f"c{i}" for i in range(21)]))
    jnmf.tl.inmf(adata, 2, batch_key="batch", random_state=3, maxit=5, min_cells=3)
    # the same fit by hand: batches in order of their levels, cells in adata order within a batch
    idx = [np.flatnonzero(batch == b) for b in ("a", "b")]
    model = jnmf.inmf([X[order][i].T for i in idx], 2, seed=3, maxit=5)
    cat = np.concatenate(idx)
    expected, raw = np.empty((21, 2)), np.empty((21, 2))
    expected[cat], raw[cat] = model.embedding(min_cells=3), model.embedding(aligned=False)
    np.testing.assert_allclose(adata.obsm["X_inmf"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(adata.obsm["X_inmf_raw"], raw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(adata.varm["inmf_W"], np.asarray(model.w), rtol=1e-5, atol=1e-6)
    assert adata.varm["inmf_V_b"].shape == (10, 2)
    info = adata.uns["inmf"]
    assert info["batches"] == ["a", "b"] and info["iter"] == 5 and info["params"]["batch_key"] == "batch"
    with pytest.raises(KeyError, match="batch_key 'nope'"):
        jnmf.tl.inmf(adata, 2, batch_key="nope")
