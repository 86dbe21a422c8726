"""jnmf.tl.nmf / tl.inmf: AnnData in scanpy's conventions (n_comps, random_state, mask_var, obsm / varm / uns),
guidance from obs columns, errors that name the AnnData matrix."""

import warnings

import numpy as np
import pytest

import jnmf
from tests.helpers import count_compiles

ad = pytest.importorskip("anndata", reason="anndata is an optional dependency (pip install jnmf[anndata])")
pd = pytest.importorskip("pandas", reason="anndata needs pandas")


@pytest.fixture(scope="module")
def birds(hawaiibirds):
    obs = pd.DataFrame({"island": pd.Categorical(hawaiibirds.obs["island"])},
                       index=[f"cell{i}" for i in range(hawaiibirds.A.shape[1])])
    var = pd.DataFrame(index=[str(s) for s in hawaiibirds.var["species"]])
    return ad.AnnData(X=hawaiibirds.A.T.tocsr(), obs=obs, var=var), hawaiibirds


def _small(n_obs=40, n_vars=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n_obs, 3)) @ rng.uniform(size=(3, n_vars)) + 0.05 * rng.uniform(size=(n_obs, n_vars))
    obs = pd.DataFrame({"g": np.repeat(["a", "b"], n_obs // 2)}, index=[f"c{i}" for i in range(n_obs)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_vars)])
    return ad.AnnData(X=X, obs=obs, var=var)


def test_writes_embedding_loadings_and_settings(birds, tmp_path):
    adata, ds = birds
    adata = adata.copy()
    assert jnmf.tl.nmf(adata, 8, random_state=42) is None  # in place, as scanpy
    model = jnmf.nmf(ds.A, 8, seed=42)
    np.testing.assert_array_equal(adata.obsm["X_nmf"], np.asarray(model.embedding()))
    np.testing.assert_array_equal(adata.varm["nmf_W"], np.asarray(model.w))
    uns = adata.uns["nmf"]
    np.testing.assert_array_equal(uns["d"], np.asarray(model.d))
    assert uns["iter"] == int(model.iter) and uns["converged"] and uns["loss"] == pytest.approx(float(model.loss))
    assert uns["params"] == {"n_comps": 8, "random_state": 42, "mask_var": None, "layer": None, "labels_key": None,
                             "batch_key": None, "target_lambda": 0.1, "removal": "scatter", "batch_lambda": 1.0,
                             "whiten": True}
    # h5ad stores everything written
    adata.write_h5ad(tmp_path / "birds.h5ad")
    back = ad.read_h5ad(tmp_path / "birds.h5ad")
    np.testing.assert_array_equal(back.obsm["X_nmf"], adata.obsm["X_nmf"])
    assert back.uns["nmf"]["params"] == uns["params"]


def test_default_calls_are_reproducible_and_random_state_is_recorded():
    adata = _small()
    a, b = (jnmf.tl.nmf(adata, 3, maxit=10, copy=True) for _ in range(2))
    np.testing.assert_array_equal(a.obsm["X_nmf"], b.obsm["X_nmf"])
    assert a.uns["nmf"]["params"]["random_state"] == 0  # scanpy's default
    np.testing.assert_array_equal(a.obsm["X_nmf"], np.asarray(jnmf.nmf(adata.X.T, 3, seed=0, maxit=10).embedding()))
    # None draws a seed and records it: a rerun with the recorded seed is the same fit
    c = jnmf.tl.nmf(adata, 3, maxit=10, random_state=None, copy=True)
    seed = c.uns["nmf"]["params"]["random_state"]
    assert isinstance(seed, int)
    d = jnmf.tl.nmf(adata, 3, maxit=10, random_state=seed, copy=True)
    np.testing.assert_array_equal(c.obsm["X_nmf"], d.obsm["X_nmf"])
    # a numpy RandomState / Generator draws the int seed from its stream, as scanpy accepts them
    e = jnmf.tl.nmf(adata, 3, maxit=10, random_state=np.random.RandomState(1), copy=True)
    f = jnmf.tl.nmf(adata, 3, maxit=10, random_state=np.random.RandomState(1), copy=True)
    np.testing.assert_array_equal(e.obsm["X_nmf"], f.obsm["X_nmf"])
    # the deprecated names still work, with a FutureWarning
    with pytest.warns(FutureWarning, match="k is deprecated, use n_comps"):
        g = jnmf.tl.nmf(adata, k=3, maxit=10, copy=True)
    with pytest.warns(FutureWarning, match="seed= is deprecated, use random_state="):
        h = jnmf.tl.nmf(adata, 3, maxit=10, seed=0, copy=True)
    np.testing.assert_array_equal(g.obsm["X_nmf"], a.obsm["X_nmf"])
    np.testing.assert_array_equal(h.obsm["X_nmf"], a.obsm["X_nmf"])


def test_mask_var_fits_only_those_variables_and_writes_their_loadings():
    adata = _small(n_vars=12)
    hvg = np.zeros(12, bool)
    hvg[[0, 2, 3, 7, 8, 11]] = True
    adata.var["highly_variable"] = hvg
    jnmf.tl.nmf(adata, 3, maxit=10, mask_var="highly_variable")
    model = jnmf.nmf(adata.X[:, hvg].T, 3, seed=0, maxit=10)
    np.testing.assert_array_equal(adata.obsm["X_nmf"], np.asarray(model.embedding()))
    W = adata.varm["nmf_W"]
    assert W.shape == (12, 3)
    np.testing.assert_array_equal(W[hvg], np.asarray(model.w))
    assert np.all(W[~hvg] == 0) and np.all(W[hvg].sum(0) > 0)
    assert adata.uns["nmf"]["params"]["mask_var"] == "highly_variable"
    # the default picks var["highly_variable"] up when it exists (scanpy >= 1.10's pca), None/False fit all genes
    default = jnmf.tl.nmf(adata, 3, maxit=10, copy=True)
    np.testing.assert_array_equal(default.varm["nmf_W"], W)
    for everything in (None, False):
        out = jnmf.tl.nmf(adata, 3, maxit=10, mask_var=everything, copy=True)
        np.testing.assert_array_equal(out.obsm["X_nmf"], np.asarray(jnmf.nmf(adata.X.T, 3, seed=0,
                                                                             maxit=10).embedding()))
        assert out.uns["nmf"]["params"]["mask_var"] is None
    # a boolean array works too, and the entry mask (cells x genes) is cut to the same genes
    entries = np.random.default_rng(1).uniform(size=adata.shape) < 0.1
    arr = jnmf.tl.nmf(adata, 3, maxit=10, mask_var=hvg, mask=entries, copy=True)
    masked = jnmf.nmf(adata.X[:, hvg].T, 3, seed=0, maxit=10, mask=entries[:, hvg].T)
    np.testing.assert_array_equal(arr.varm["nmf_W"][hvg], np.asarray(masked.w))
    np.testing.assert_array_equal(arr.uns["nmf"]["params"]["mask_var"], hvg)
    adata.var["score"] = np.arange(12.0)
    with pytest.raises(KeyError, match="mask_var 'hvg' is not a column of adata.var"):
        jnmf.tl.nmf(adata, 3, mask_var="hvg")
    with pytest.raises(TypeError, match=r"adata.var\['score'\] must be a boolean column"):
        jnmf.tl.nmf(adata, 3, mask_var="score")
    with pytest.raises(TypeError, match="boolean array of length n_vars = 12"):
        jnmf.tl.nmf(adata, 3, mask_var=hvg[:5])
    with pytest.raises(ValueError, match="mask_var selects no gene"):
        jnmf.tl.nmf(adata, 3, mask_var=np.zeros(12, bool))
    with pytest.raises(ValueError, match=r"n_comps must be <= min\(n_cells, n_fitted_genes\) = min\(40, 6\)"):
        jnmf.tl.nmf(adata, 7)


def test_labels_key_enriches_and_batch_key_removes(birds):
    adata, ds = birds
    out = jnmf.tl.nmf(adata, 8, random_state=42, labels_key="island", key_added="guided", copy=True)
    assert "guided" not in adata.uns and "X_guided" in out.obsm  # copy=True leaves adata untouched
    base = jnmf.nmf(ds.A, 8, seed=42)
    T = jnmf.compute_target(base.h, ds.obs["island"])
    guided = jnmf.nmf(ds.A, 8, seed=42, target_H=T, target_lambda=0.1)
    np.testing.assert_array_equal(out.obsm["X_guided"], np.asarray(guided.embedding()))
    assert out.uns["guided"]["params"]["labels_key"] == "island"

    jnmf.tl.nmf(out, 8, random_state=42, batch_key="island", target_lambda=0.5, key_added="removed",
                removal="project")
    removed = jnmf.nmf(ds.A, 8, seed=42, target_H=T, target_lambda=-0.5, removal="project")
    np.testing.assert_array_equal(out.obsm["X_removed"], np.asarray(removed.embedding()))
    assert out.uns["removed"]["params"]["removal"] == "project"

    # the default removal: the scatter penalty of the batch, one fit, and it combines with labels_key
    jnmf.tl.nmf(out, 8, random_state=42, batch_key="island", batch_lambda=0.3, key_added="scatter", maxit=30)
    scatter = jnmf.nmf(ds.A, 8, seed=42, remove=ds.obs["island"], remove_lambda=0.3, maxit=30)
    np.testing.assert_array_equal(out.obsm["X_scatter"], np.asarray(scatter.embedding()))
    assert out.uns["scatter"]["params"]["batch_lambda"] == 0.3 and out.uns["scatter"]["params"]["maxit"] == 30


def test_layer_mask_and_errors():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(30, 12))
    adata = ad.AnnData(X=np.zeros_like(X), obs=pd.DataFrame({"g": list("ab") * 15}, index=[str(i) for i in range(30)]))
    adata.layers["counts"] = X
    jnmf.tl.nmf(adata, 3, layer="counts", random_state=1, maxit=10)
    np.testing.assert_array_equal(adata.obsm["X_nmf"], np.asarray(jnmf.nmf(X.T, 3, seed=1, maxit=10).embedding()))
    mask = rng.uniform(size=X.shape) < 0.2  # cells x genes, like X
    jnmf.tl.nmf(adata, 3, layer="counts", random_state=1, maxit=10, mask=mask, key_added="masked")
    masked = jnmf.nmf(X.T, 3, seed=1, maxit=10, mask=mask.T)
    np.testing.assert_array_equal(adata.varm["masked_W"], np.asarray(masked.w))
    with pytest.raises(ValueError, match="need removal='scatter'"):
        jnmf.tl.nmf(adata, 3, layer="counts", labels_key="g", batch_key="g", removal="project")
    with pytest.raises(KeyError, match="labels_key 'cell_type' is not a column"):
        jnmf.tl.nmf(adata, 3, layer="counts", labels_key="cell_type")
    with pytest.raises(KeyError, match="layer 'raw'"):
        jnmf.tl.nmf(adata, 3, layer="raw")
    with pytest.raises(TypeError, match="AnnData"):
        jnmf.tl.nmf(X, 3)
    with pytest.raises(TypeError, match="n_comps .* is required"):
        jnmf.tl.nmf(adata, layer="counts")
    with pytest.raises(TypeError, match="random_state must be an int, None or a numpy RandomState"):
        jnmf.tl.nmf(adata, 3, layer="counts", random_state="zero")
    with pytest.raises(ValueError, match=r"random_state must be an integer in \[0, 2\^31 - 1\]"):
        jnmf.tl.nmf(adata, 3, layer="counts", random_state=2**32)


def test_errors_name_the_anndata_matrix_not_A():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(20, 6))
    adata = ad.AnnData(X=-X, obs=pd.DataFrame(index=[str(i) for i in range(20)]))
    adata.layers["counts"] = np.zeros_like(X)
    with count_compiles() as compiles:
        with pytest.raises(ValueError, match=r"^adata\.X contains negative values"):
            jnmf.tl.nmf(adata, 2)
        with pytest.raises(ValueError, match=r"^adata\.layers\['counts'\] is all zeros"):
            jnmf.tl.nmf(adata, 2, layer="counts")
        adata.var["highly_variable"] = np.arange(6) < 3
        with pytest.raises(ValueError, match=r"^adata\.X\[:, mask_var\] contains negative values"):
            jnmf.tl.nmf(adata, 2)
    assert compiles == []  # refused before any fit


@pytest.mark.parametrize("labels", [np.zeros(30), np.full(30, np.nan), np.full(30, None)],
                         ids=["one class", "all NaN", "all missing"])
@pytest.mark.parametrize("key", ["labels_key", "batch_key"])
def test_labels_that_cannot_guide_raise_before_any_compile(labels, key):
    adata = _small(n_obs=30)
    adata.obs["y"] = labels
    with count_compiles() as compiles, pytest.raises(ValueError, match=r"adata.obs\['y'\] must have at least 2"):
        jnmf.tl.nmf(adata, 2, removal="project", **{key: "y"})
    assert compiles == []


def test_tl_inmf_follows_the_same_conventions():
    adata = _small(n_obs=40, n_vars=10)
    adata.obs["batch"] = np.tile(["x", "y"], 20)
    hvg = np.arange(10) % 3 != 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated name used on the default path
        jnmf.tl.inmf(adata, 2, batch_key="batch", maxit=5, min_cells=3, mask_var=hvg)
    idx = [np.flatnonzero(adata.obs["batch"].to_numpy() == b) for b in ("x", "y")]
    model = jnmf.inmf([adata.X[i][:, hvg].T for i in idx], 2, seed=0, maxit=5)
    np.testing.assert_array_equal(adata.varm["inmf_W"][hvg], np.asarray(model.w))
    assert np.all(adata.varm["inmf_W"][~hvg] == 0) and np.all(adata.varm["inmf_V_y"][~hvg] == 0)
    params = adata.uns["inmf"]["params"]
    assert params["n_comps"] == 2 and params["random_state"] == 0 and params["ref_dataset"] is None
    np.testing.assert_array_equal(params["mask_var"], hvg)
    bad = adata.copy()
    bad.X[0, 1] = -1.0  # a cell of batch "x", a fitted gene
    with pytest.raises(ValueError, match=r"adata.X\[:, mask_var\] \(cells of batch 'x'\) contains negative"):
        jnmf.tl.inmf(bad, 2, batch_key="batch", mask_var=hvg)
