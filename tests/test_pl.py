"""jnmf.pl: AnnData / model / array inputs, drawing into a given ax, returned axes, an unchanged backend."""

import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib", reason="figures need matplotlib (pip install 'jnmf[figures]')")

import jnmf  # noqa: E402


@pytest.fixture
def plt():
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _toy(n=60, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, k))
    labels = np.array(["a"] * 40 + ["b"] * 17 + ["c"] * 3, dtype=object)
    return x, labels


def test_factor_colors_are_distinct_for_any_k():
    for k in (1, 8, 9, 10, 12, 20, 21, 40):
        c = jnmf.pl.factor_colors(k)
        assert c.shape == (k, 4)
        assert len({tuple(np.round(row, 6)) for row in c}) == k, k  # F9 is not F1 (issue 19)
    assert np.array_equal(jnmf.pl.factor_colors(9), jnmf.pl.factor_colors(9))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        jnmf.pl.factor_colors(0)


def test_factor_composition_by_hand():
    x = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 0.0], [4.0, 0.0]])
    labels = np.array(["u", "u", "u", None], dtype=object)  # a zero row and a missing label are left out
    comp = jnmf.pl.factor_composition(x, labels)
    assert comp.levels == ["u"] and comp.n.tolist() == [2]
    np.testing.assert_allclose(comp.P[:, 0], [(0.25 + 0.5) / 2, (0.75 + 0.5) / 2])


def test_functions_keep_the_backend_draw_into_the_given_ax_and_return_it(plt):
    backend = mpl.get_backend()
    x, labels = _toy()
    fig, (a1, a2) = plt.subplots(1, 2)
    assert jnmf.pl.composition(x, labels, ax=a1, title="t") is a1
    assert jnmf.pl.embedding(x[:, :2], labels, ax=a2) is a2
    assert len(a1.patches) == 3 * 3 and len(a2.collections) == 3  # 3 factors x 3 classes; 3 classes
    assert a1.get_title() == "t" and [t.get_text() for t in a1.get_xticklabels()] == ["a (n=40)", "b (n=17)",
                                                                                      "c (n=3)"]
    # a tiny class is a narrow bar: width ~ sqrt(n / 20)
    widths = {round(p.get_x() + p.get_width() / 2): p.get_width() for p in a1.patches}
    assert widths[0] == pytest.approx(0.8) and widths[2] == pytest.approx(0.8 * np.sqrt(3 / 20))
    ax = jnmf.pl.composition(x, labels)  # no ax: a new figure
    assert ax is not a1 and ax.figure is not fig
    assert mpl.get_backend() == backend


def test_same_factor_same_colour_across_panels(plt):
    x, labels = _toy(k=12)
    fig = jnmf.pl.composition_grid([x, x[::-1]], labels, ["one", "two"])
    a, b = fig.axes[:2]
    colours = [[tuple(p.get_facecolor()) for p in ax.patches[::3]] for ax in (a, b)]  # first bar of each factor
    assert colours[0] == colours[1] and len(set(colours[0])) == 12


def test_anndata_and_model_inputs(plt):
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    x, labels = _toy()
    adata = anndata.AnnData(np.ones((60, 4)), obs=pd.DataFrame({"group": pd.Categorical(labels)},
                                                               index=[str(i) for i in range(60)]))
    adata.obsm["X_nmf"] = x
    adata.obsm["X_umap"] = x[:, :2]
    comp = jnmf.pl.factor_composition(adata, "group")
    np.testing.assert_allclose(comp.P, jnmf.pl.factor_composition(x, labels).P)
    ax = jnmf.pl.embedding(adata, "group")
    assert ax.get_legend().get_title().get_text() == "group"
    with pytest.raises(KeyError, match="adata.obs has no column 'nope'"):
        jnmf.pl.composition(adata, "nope")
    with pytest.raises(TypeError, match="names an obs column, which needs an AnnData"):
        jnmf.pl.composition(x, "group")
    with pytest.raises(ValueError, match=r"labels must have one entry per sample \(60\)"):
        jnmf.pl.composition(x, labels[:5])
    model = jnmf.NMFModel(w=np.ones((4, 3)) / 4, d=np.array([2.0, 1.0, 0.5]), h=x.T, iter=np.int32(1),
                          loss=np.float32(0), loss_history=np.zeros(1), converged=np.bool_(True), tol=np.float32(0),
                          w_init=np.ones((4, 3)))
    np.testing.assert_allclose(jnmf.pl.factor_composition(model, labels).P,
                               jnmf.pl.factor_composition(x * [2.0, 1.0, 0.5], labels).P)


def test_embedding_grid_puts_metrics_in_titles(plt):
    x, labels = _toy()
    backend = mpl.get_backend()
    fig = jnmf.pl.embedding_grid([x[:, :2]] * 5, labels, [f"m{i}" for i in range(5)],
                                 metrics=[{"NMI": 0.5, "kNN": 0.25}] * 5, label_name="g")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 5 and panels[0].get_title() == "m0\nNMI 0.500 · kNN 0.250"
    assert fig.get_size_inches().tolist() == [3 * 4.5, 2 * 4.5 + 0.9]  # a 3 x 2 grid, not one wide strip
    assert mpl.get_backend() == backend
    with pytest.raises(ValueError, match="one entry per panel"):
        jnmf.pl.embedding_grid([x[:, :2]], labels, ["a", "b"])


def test_umap_coordinates_equal_umap_learn_bitwise():
    # The precomputed-distance path (jnmf/_umap_fast.py) must give umap-learn's own layout, not a lookalike:
    # same float32 cosine values in the same order, so the same graph, initialisation and epochs.
    umap = pytest.importorskip("umap", reason="UMAP needs umap-learn (pip install 'jnmf[figures]')")
    rng = np.random.default_rng(3)
    x = rng.gamma(1.0, 1.0, (300, 6))
    x[7] = 0.0  # a zero row: umap-learn's cosine special case
    x[9] = 3.0 * x[8]  # parallel rows: a float32 cosine distance of about -1e-7, which umap-learn keeps
    ours = jnmf.pl.umap_coordinates(x, seed=5)
    ref = umap.UMAP(n_neighbors=15, min_dist=0.3, metric="cosine", random_state=5, n_jobs=1).fit_transform(x)
    np.testing.assert_array_equal(ours, ref)


def test_umap_coordinates_of_a_list_on_threads_equal_umap_learn_bitwise():
    # A list runs its layouts on threads with the epoch compiled nogil (jnmf/_umap_fast.py): each must still be
    # umap-learn's own layout, and umap-learn's functions must be its own again afterwards.
    pytest.importorskip("umap", reason="UMAP needs umap-learn (pip install 'jnmf[figures]')")
    import umap
    import umap.layouts

    rng = np.random.default_rng(4)
    xs = [rng.gamma(1.0, 1.0, (200, 5)) for _ in range(3)]
    epoch, distances = umap.layouts._nb_optimize_layout_euclidean_single_epoch, umap.umap_.pairwise_distances
    ours = jnmf.pl.umap_coordinates(xs, seed=2, n_jobs=2)
    assert umap.layouts._nb_optimize_layout_euclidean_single_epoch is epoch
    assert umap.umap_.pairwise_distances is distances
    assert isinstance(ours, list) and len(ours) == 3
    for x, xy in zip(xs, ours, strict=True):
        ref = umap.UMAP(n_neighbors=15, min_dist=0.3, metric="cosine", random_state=2, n_jobs=1).fit_transform(x)
        np.testing.assert_array_equal(xy, ref)
    with pytest.raises(ValueError, match="n_jobs must be a positive int"):
        jnmf.pl.umap_coordinates(xs, n_jobs=0)
