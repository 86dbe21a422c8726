"""jnmf.integration_metrics: the scib-metrics adapter gives scib-metrics' own numbers, and checks its inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import jnmf
from jnmf._integration import BATCH_METRICS, BIO_METRICS

N_CELLS, N_BATCHES, N_LABELS, DIM = 300, 3, 4, 8


def _toy(batch_shift: float, seed: int = 0):
    """300 cells, 4 well-separated cell types, 3 batches shifting every cell of a batch by ``batch_shift``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(["T", "B", "NK", "Mono"]), N_CELLS // N_LABELS)
    batch = np.tile(np.array(["b0", "b1", "b2"]), N_CELLS // N_BATCHES)
    centres = rng.normal(scale=4.0, size=(N_LABELS, DIM))
    shifts = rng.normal(scale=batch_shift, size=(N_BATCHES, DIM))
    lab_idx = np.searchsorted(np.unique(labels), labels)
    bat_idx = np.searchsorted(np.unique(batch), batch)
    emb = centres[lab_idx] + shifts[bat_idx] + rng.normal(size=(N_CELLS, DIM))
    pre = centres[lab_idx] + 3.0 * rng.normal(scale=max(batch_shift, 1.0), size=(N_BATCHES, DIM))[bat_idx] \
        + rng.normal(size=(N_CELLS, DIM))
    return emb, pre, labels, batch


def test_missing_scib_metrics_names_the_extra(monkeypatch):
    emb, _, labels, batch = _toy(1.0)
    monkeypatch.setitem(sys.modules, "scib_metrics", None)  # import scib_metrics -> ImportError
    with pytest.raises(ImportError, match=r'pip install "jnmf\[integration\]"'):
        jnmf.integration_metrics(emb, labels, batch)


def test_import_jnmf_does_not_import_scib_metrics():
    code = "import sys, jnmf; assert callable(jnmf.integration_metrics); print('scib_metrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scale_integration_scores_min_max_per_metric():
    res = {"a": {"ilisi": 0.2, "clisi": 0.9}, "b": {"ilisi": 0.6, "clisi": 0.5}, "c": {"ilisi": 0.4, "clisi": 0.7}}
    scaled = jnmf.scale_integration_scores(res)
    assert scaled["a"]["ilisi"] == 0.0 and scaled["b"]["ilisi"] == 1.0 and scaled["c"]["ilisi"] == pytest.approx(0.5)
    assert scaled["a"]["clisi"] == 1.0 and scaled["b"]["clisi"] == 0.0
    assert scaled["c"]["total"] == pytest.approx(0.4 * 0.5 + 0.6 * 0.5)
    assert scaled["a"]["batch_score"] == 0.0 and scaled["a"]["bio_score"] == 1.0


@pytest.fixture(scope="module")
def sm():
    return pytest.importorskip("scib_metrics", reason='scib-metrics is not installed: pip install "jnmf[integration]"')


def _sklearn_exact(X, n_neighbors, **_):
    """An exact kNN independent of the adapter's (scikit-learn brute force), for kBET's diffusion-map search."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(X).kneighbors(X)
    return NeighborsResults(indices=idx, distances=dist.astype(np.float32))


@pytest.fixture(scope="module")
def toy(sm):
    emb, pre, labels, batch = _toy(batch_shift=1.5)
    return emb, pre, labels, batch


@pytest.fixture(scope="module")
def adapter_result(toy):
    emb, pre, labels, batch = toy
    return jnmf.integration_metrics(emb, labels, batch, x_pre=pre)


def test_matches_scib_metrics_called_directly(sm, toy, adapter_result, monkeypatch):
    emb, pre, labels, batch = toy
    X = emb.astype(np.float32)
    nn = _sklearn_exact(X, 90)
    direct = {
        "bras": sm.bras(X, labels, batch),
        "ilisi": sm.ilisi_knn(nn, batch),
        "graph_connectivity": sm.graph_connectivity(nn.subset_neighbors(15), labels),
        "pcr_comparison": sm.pcr_comparison(pre.astype(np.float32), X, batch, categorical=True),
        "isolated_labels": sm.isolated_labels(X, labels, batch),
        "silhouette_label": sm.silhouette_label(X, labels),
        "clisi": sm.clisi_knn(nn, labels),
    }
    km = sm.nmi_ari_cluster_labels_kmeans(X, labels)
    direct["nmi_kmeans"], direct["ari_kmeans"] = km["nmi"], km["ari"]
    monkeypatch.setattr(sm.nearest_neighbors, "pynndescent", _sklearn_exact)
    direct["kbet"] = sm.kbet_per_label(nn.subset_neighbors(50), batch, labels)

    res = adapter_result
    assert set(res) == set(BATCH_METRICS) | set(BIO_METRICS) | {"batch_score", "bio_score", "total"}
    for name, value in direct.items():
        assert res[name] == pytest.approx(float(value), rel=1e-5, abs=1e-6), name
    # the toy has a visible batch effect: neither perfect mixing nor none
    assert 0.0 < res["ilisi"] < 0.9 and 0.0 <= res["kbet"] < 1.0
    batch_mean = np.mean([direct[m] for m in BATCH_METRICS])
    bio_mean = np.mean([direct[m] for m in BIO_METRICS])
    assert res["batch_score"] == pytest.approx(batch_mean, rel=1e-6)
    assert res["bio_score"] == pytest.approx(bio_mean, rel=1e-6)
    assert res["total"] == pytest.approx(0.4 * batch_mean + 0.6 * bio_mean, rel=1e-6)
    assert all(0.0 <= v <= 1.0 for v in res.values())


def test_model_input_and_precomputed_neighbors_give_the_same_numbers(sm, toy, adapter_result):
    emb, pre, labels, batch = toy
    # an NMF-model-like object: the embedding is (d[:, None] * h).T, as jnmf.assess reads it
    d = np.full(DIM, 2.0)

    class Model:
        pass

    model = Model()
    model.d, model.h = d, (emb / 2.0).T
    nn = _sklearn_exact(emb.astype(np.float32), 90)
    res = jnmf.integration_metrics(model, labels, batch, x_pre=pre, neighbors=nn,
                                   metrics=("ilisi", "clisi", "graph_connectivity", "silhouette_label"))
    assert set(res) == {"ilisi", "clisi", "graph_connectivity", "silhouette_label", "batch_score", "bio_score",
                        "total"}
    for name in ("ilisi", "clisi", "graph_connectivity", "silhouette_label"):
        assert res[name] == pytest.approx(adapter_result[name], rel=1e-5), name


def test_batch_only_mode(sm):
    emb, pre, _, batch = _toy(batch_shift=1.5)
    X = emb.astype(np.float32)
    res = jnmf.integration_metrics(emb, None, batch, metrics=("bras", "ilisi"))
    assert set(res) == {"bras", "ilisi", "batch_score"}  # no bio metrics, no total
    one = np.zeros(len(batch), int)  # all cells one label
    assert res["bras"] == pytest.approx(float(sm.bras(X, one, batch)), rel=1e-5)
    assert res["ilisi"] == pytest.approx(float(sm.ilisi_knn(_sklearn_exact(X, 90), batch)), rel=1e-5)
    assert res["batch_score"] == pytest.approx((res["bras"] + res["ilisi"]) / 2)
    # default set without labels: graph connectivity (per label) and bio metrics are left out
    mixed = jnmf.integration_metrics(_toy(batch_shift=0.0)[0], None, batch, x_pre=pre,
                                     metrics=("ilisi", "pcr_comparison"))
    assert mixed["ilisi"] > res["ilisi"] + 0.2  # no batch shift mixes the batches better
    assert mixed["pcr_comparison"] > 0.5  # pre carries a strong batch effect, the unshifted embedding none
    with pytest.raises(ValueError, match="labels"):
        jnmf.integration_metrics(emb, None, batch, metrics=("clisi",))


@pytest.mark.parametrize("case, match", [
    ("batch_length", r"batch: length 299"),
    ("batch_single", r"batch: only one batch level"),
    ("batch_missing", r"batch: 1 missing"),
    ("batch_none", r"batch: required"),
    ("nan_embedding", r"x: the embedding has 1 non-finite"),
    ("labels_length", r"labels: length 301"),
    ("labels_missing", r"labels: 2 missing"),
    ("labels_single", r"labels: only one label level"),
    ("x_pre_rows", r"x_pre: 200 cells"),
    ("metric_name", r"metrics: unknown metric 'lisi'"),
    ("pcr_without_pre", r"metrics: 'pcr_comparison' needs x_pre"),
    ("knn", r"knn: expected one of"),
])
def test_bad_input_names_the_argument(case, match, sm):
    emb, pre, labels, batch = _toy(batch_shift=1.0)
    labels, batch = labels.astype(object), batch.astype(object)
    kwargs = {"x": emb, "labels": labels, "batch": batch}
    if case == "batch_length":
        kwargs["batch"] = batch[:-1]
    elif case == "batch_single":
        kwargs["batch"] = np.full(len(batch), "b0")
    elif case == "batch_missing":
        kwargs["batch"] = np.where(np.arange(len(batch)) == 3, None, batch)
    elif case == "batch_none":
        kwargs["batch"] = None
    elif case == "nan_embedding":
        emb = emb.copy()
        emb[5, 2] = np.nan
        kwargs["x"] = emb
    elif case == "labels_length":
        kwargs["labels"] = np.append(labels, "T")
    elif case == "labels_missing":
        kwargs["labels"] = np.where(np.arange(len(labels)) < 2, None, labels)
    elif case == "labels_single":
        kwargs["labels"] = np.full(len(labels), "T")
    elif case == "x_pre_rows":
        kwargs["x_pre"] = pre[:200]
    elif case == "metric_name":
        kwargs["metrics"] = ("ilisi", "lisi")
    elif case == "pcr_without_pre":
        kwargs["metrics"] = ("pcr_comparison",)
    elif case == "knn":
        kwargs["knn"] = "annoy"
    with pytest.raises(ValueError, match=match):
        jnmf.integration_metrics(**kwargs)


def test_assess_adds_the_scib_metrics_next_to_rcppmls(sm, toy):
    emb, _, labels, batch = toy
    res = jnmf.assess(emb, labels, batch=batch, metrics=["nmi", "batch_mixing", "scib"], classifiers=("knn",))
    direct = jnmf.integration_metrics(emb, labels, batch=batch, seed=42)
    scib = {name[5:]: value for name, value in res.metrics.items() if name.startswith("scib_")}
    assert scib.keys() == direct.keys()
    np.testing.assert_allclose([scib[key] for key in direct], list(direct.values()), rtol=1e-12, equal_nan=True)
    # RcppML's own metrics are unchanged by the scib group
    alone = jnmf.assess(emb, labels, batch=batch, metrics=["nmi", "batch_mixing"], classifiers=("knn",))
    for key in ("nmi", "batch_silhouette", "batch_knn_entropy"):
        assert res.metrics[key] == alone.metrics[key]
    with pytest.raises(ValueError, match="'scib' needs batch="):
        jnmf.assess(emb, labels, metrics=["scib"])
