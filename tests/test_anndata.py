"""jnmf.tl.nmf: AnnData in scanpy's conventions (obsm / varm / uns), guidance from obs columns."""

import numpy as np
import pytest

import jnmf

ad = pytest.importorskip("anndata", reason="anndata is an optional dependency (pip install jnmf[anndata])")
pd = pytest.importorskip("pandas", reason="anndata needs pandas")


@pytest.fixture(scope="module")
def birds(hawaiibirds):
    obs = pd.DataFrame({"island": pd.Categorical(hawaiibirds.obs["island"])},
                       index=[f"cell{i}" for i in range(hawaiibirds.A.shape[1])])
    var = pd.DataFrame(index=[str(s) for s in hawaiibirds.var["species"]])
    return ad.AnnData(X=hawaiibirds.A.T.tocsr(), obs=obs, var=var), hawaiibirds


def test_writes_embedding_loadings_and_settings(birds, tmp_path):
    adata, ds = birds
    adata = adata.copy()
    assert jnmf.tl.nmf(adata, 8, seed=42) is None  # in place, as scanpy
    model = jnmf.nmf(ds.A, 8, seed=42)
    np.testing.assert_array_equal(adata.obsm["X_nmf"], np.asarray(model.embedding()))
    np.testing.assert_array_equal(adata.varm["nmf_W"], np.asarray(model.w))
    uns = adata.uns["nmf"]
    np.testing.assert_array_equal(uns["d"], np.asarray(model.d))
    assert uns["iter"] == 17 and uns["converged"] and uns["loss"] == pytest.approx(float(model.loss))
    assert uns["params"] == {"k": 8, "seed": 42}
    # h5ad stores everything written
    adata.write_h5ad(tmp_path / "birds.h5ad")
    back = ad.read_h5ad(tmp_path / "birds.h5ad")
    np.testing.assert_array_equal(back.obsm["X_nmf"], adata.obsm["X_nmf"])
    assert back.uns["nmf"]["params"]["seed"] == 42


def test_labels_key_enriches_and_batch_key_removes(birds):
    adata, ds = birds
    out = jnmf.tl.nmf(adata, 8, seed=42, labels_key="island", key_added="guided", copy=True)
    assert "guided" not in adata.uns and "X_guided" in out.obsm  # copy=True leaves adata untouched
    base = jnmf.nmf(ds.A, 8, seed=42)
    T = jnmf.compute_target(base.h, ds.obs["island"])
    guided = jnmf.nmf(ds.A, 8, seed=42, target_H=T, target_lambda=0.1)
    np.testing.assert_array_equal(out.obsm["X_guided"], np.asarray(guided.embedding()))
    assert out.uns["guided"]["params"]["labels_key"] == "island"

    jnmf.tl.nmf(out, 8, seed=42, batch_key="island", target_lambda=0.5, key_added="removed", removal="project")
    removed = jnmf.nmf(ds.A, 8, seed=42, target_H=T, target_lambda=-0.5, removal="project")
    np.testing.assert_array_equal(out.obsm["X_removed"], np.asarray(removed.embedding()))
    assert out.uns["removed"]["params"]["removal"] == "project"

    # the default removal: the scatter penalty of the batch, one fit, and it combines with labels_key
    jnmf.tl.nmf(out, 8, seed=42, batch_key="island", batch_lambda=0.3, key_added="scatter", maxit=30)
    scatter = jnmf.nmf(ds.A, 8, seed=42, remove=ds.obs["island"], remove_lambda=0.3, maxit=30)
    np.testing.assert_array_equal(out.obsm["X_scatter"], np.asarray(scatter.embedding()))
    assert out.uns["scatter"]["params"]["batch_lambda"] == 0.3


def test_layer_mask_and_errors():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(30, 12))
    adata = ad.AnnData(X=np.zeros_like(X), obs=pd.DataFrame({"g": list("ab") * 15}, index=[str(i) for i in range(30)]))
    adata.layers["counts"] = X
    jnmf.tl.nmf(adata, 3, layer="counts", seed=1, maxit=10)
    np.testing.assert_array_equal(adata.obsm["X_nmf"], np.asarray(jnmf.nmf(X.T, 3, seed=1, maxit=10).embedding()))
    mask = rng.uniform(size=X.shape) < 0.2  # cells x genes, like X
    jnmf.tl.nmf(adata, 3, layer="counts", seed=1, maxit=10, mask=mask, key_added="masked")
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
