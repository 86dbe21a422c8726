"""jnmf.assess(): parity with RcppML's assess() on the hawaiibirds fixtures, and the hand-written pieces against
independent references."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score

import jnmf
from jnmf import _assess as A
from jnmf._kmeans import hartigan_wong, r_kmeans
from jnmf._rrng import RRandom

SHARED = Path(os.environ.get("JNMF_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
CLF_FIELDS = ("accuracy", "f1", "precision", "recall", "auroc")
# RcppML's JSON holds 15 significant digits; everything but the random forest is reproduced to that.
EXACT = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def islands() -> list[str]:
    path = SHARED / "data" / "hawaiibirds_samples.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent (expected ../shared beside the repository)")
    with path.open(newline="") as f:
        return [row["island"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def assess_ref() -> dict:
    path = SHARED / "reference" / "hawaiibirds_assess_rcppml.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (expected ../shared beside the repository)")
    return json.loads(path.read_text())


@dataclasses.dataclass
class _Model:
    d: np.ndarray
    h: np.ndarray


@pytest.fixture(scope="module")
def ref_models(hawaii_ref) -> dict[str, _Model]:
    z = hawaii_ref
    return {
        "base": _Model(z["base_d"], z["base_h"]),
        "refine05": _Model(z["base_d"], z["refine05_h"]),  # refine() keeps the original d
        "target010": _Model(z["target010_d"], z["target010_h"]),
    }


def _quiet_assess(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return jnmf.assess(*args, **kwargs)


@pytest.fixture(scope="module")
def knn_lr_results(ref_models, islands):
    """kNN + LR assessments of the three reference models (RF, the slow one, is checked once, on base)."""
    return {name: _quiet_assess(m, islands, classifiers=("knn", "lr")) for name, m in ref_models.items()}


# ---------------------------------------------------------------------------------------------------------------
# parity with RcppML
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", "refine05", "target010"])
def test_headline_metrics_match_rcppml(knn_lr_results, assess_ref, name):
    got = knn_lr_results[name].metrics
    want = assess_ref[name]["metrics"]
    for key in ("nmi", "ari", "accuracy_knn", "accuracy_lr", "silhouette"):
        assert abs(got[key] - want[key]) < 0.002, (key, got[key], want[key])


@pytest.mark.parametrize("name", ["base", "refine05", "target010"])
def test_every_knn_lr_field_and_fold_is_exact(knn_lr_results, assess_ref, name):
    res = knn_lr_results[name]
    want = assess_ref[name]
    for key in ("ari", "nmi", "silhouette"):
        assert res.metrics[key] == pytest.approx(want["metrics"][key], abs=EXACT, rel=0), key
    for clf in ("knn", "lr"):
        for fld in CLF_FIELDS:
            key = f"{fld}_{clf}"
            assert res.metrics[key] == pytest.approx(want["metrics"][key], abs=EXACT, rel=0), key
    ref_rows = [r for r in want["folds"] if r["classifier"] in ("knn", "lr")]
    assert [(r["classifier"], r["fold"]) for r in res.classification] == [
        (r["classifier"], r["fold"]) for r in ref_rows
    ]
    for got, exp in zip(res.classification, ref_rows, strict=True):
        for fld in CLF_FIELDS:
            assert got[fld] == pytest.approx(exp[fld], abs=EXACT, rel=0), (got["classifier"], got["fold"], fld)


def test_random_forest_and_pooled_means_on_base(ref_models, islands, assess_ref):
    res = _quiet_assess(ref_models["base"], islands)
    want = assess_ref["base"]["metrics"]
    assert list(res.metrics) == list(want)  # RcppML's keys, in RcppML's order
    assert abs(res.metrics["accuracy_rf"] - want["accuracy_rf"]) < 0.02
    assert abs(res.metrics["auroc_rf"] - want["auroc_rf"]) < 0.02
    # *_mean pools all (classifier, fold) rows
    for fld in CLF_FIELDS:
        assert res.metrics[f"{fld}_mean"] == pytest.approx(np.mean([r[fld] for r in res.classification]), abs=1e-15)
    assert [r["classifier"] for r in res.classification[:3]] == ["knn", "lr", "rf"]


def test_fold_sizes_and_class_filter(islands):
    codes, levels = A._as_factor(islands, len(islands), "labels")
    counts = np.bincount(codes)
    keep_levels = [lv for lv, c in zip(levels, counts, strict=True) if c >= 10]
    assert keep_levels == ["Hawaii", "Kauai", "Maui", "Molokai", "Oahu"]
    kept = np.array([lv in keep_levels for lv in islands])
    y = np.array([keep_levels.index(lv) for lv in np.asarray(islands)[kept]])
    fold = A._stratified_folds(y, 5, 5, RRandom(42))
    assert np.bincount(fold)[1:].tolist() == [235, 233, 233, 235, 236]


def test_dropped_classes_are_reported(ref_models, islands):
    with pytest.warns(
        UserWarning, match=r"11 samples from 3 small classes.*Kahoolawe \(4\).*Lanai \(5\).*Puuwai \(2\)"
    ):
        res = jnmf.assess(ref_models["base"], islands, metrics=["ari"])
    assert res.params["n_samples"] == 1172 and res.params["n_classes"] == 5
    assert res.params["classes"] == ("Hawaii", "Kauai", "Maui", "Molokai", "Oahu")


# ---------------------------------------------------------------------------------------------------------------
# R's RNG as used by assess
# ---------------------------------------------------------------------------------------------------------------


def test_folds_draw_successive_r_samples():
    path = SHARED / "reference" / "r_rng_vectors.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    want = json.loads(path.read_text())["set.seed(42); 8 successive calls of sample(5)"]
    # 8 classes of 5 samples each: class c's samples get the c-th sample(5) permutation, in sample order.
    codes = np.repeat(np.arange(8), 5)
    fold = A._stratified_folds(codes, 8, 5, RRandom(42))
    assert fold.reshape(8, 5).tolist() == want


# ---------------------------------------------------------------------------------------------------------------
# hand-written pieces against independent references
# ---------------------------------------------------------------------------------------------------------------


def test_ari_nmi_match_sklearn_on_random_partitions():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(20, 300))
        a = rng.integers(0, rng.integers(2, 8), n)
        b = np.where(rng.random(n) < 0.5, a, rng.integers(0, 6, n))
        assert A.adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
        assert A.normalized_mutual_info(a, b) == pytest.approx(
            normalized_mutual_info_score(a, b, average_method="geometric"), abs=1e-12
        )
    # RcppML's degenerate rule: 0 where the denominator vanishes (sklearn says 1.0)
    singletons = np.arange(6)
    assert A.adjusted_rand_index(singletons, singletons) == 0.0
    assert A.normalized_mutual_info(np.zeros(5), np.zeros(5)) == 0.0


def _lloyd(x, centers, iter_max=100):
    """Plain Lloyd iterations: (clusters, centres, total within-SS)."""
    c = centers.copy()
    cl = None
    for _ in range(iter_max):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if cl is not None and np.array_equal(new, cl):
            break
        cl = new
        for j in range(c.shape[0]):
            if np.any(cl == j):
                c[j] = x[cl == j].mean(0)
    return cl, c, float(((x - c[cl]) ** 2).sum())


def test_hartigan_wong_is_a_single_transfer_optimum():
    # HW and Lloyd are different local searches, so from the same start either may end lower. What HW guarantees:
    # no single-point move lowers the objective (n1/(n1-1) d(i,c1) <= nL/(nL+1) d(i,cL)), hence its partition is also
    # a Lloyd fixed point, and polishing Lloyd's optimum with HW can only lower Lloyd's objective.
    rng = np.random.default_rng(1)
    for trial in range(10):
        x = rng.gamma(2.0, size=(150, 4)) * rng.uniform(0.5, 3, size=4)
        k = 3 + trial % 3
        starts = x[rng.choice(150, k, replace=False)]
        hw = hartigan_wong(x, starts)
        assert hw.ifault == 0
        cl, n, cen = hw.cluster, hw.size, hw.centers
        assert n.tolist() == np.bincount(cl, minlength=k).tolist()
        np.testing.assert_allclose(cen, [x[cl == j].mean(0) for j in range(k)], rtol=1e-12)
        assert hw.tot_withinss == pytest.approx(((x - cen[cl]) ** 2).sum(), rel=1e-12)
        d = ((x[:, None] - cen[None]) ** 2).sum(-1)
        rows = np.arange(x.shape[0])
        remove = np.where(n[cl] > 1, n[cl] / (n[cl] - 1) * d[rows, cl], np.inf)
        add = n / (n + 1) * d
        add[rows, cl] = np.inf
        assert np.all(add.min(1) >= remove - 1e-9)
        lloyd_cl, _, _ = _lloyd(x, cen)
        np.testing.assert_array_equal(lloyd_cl, cl)
        _, lloyd_centres, lloyd_ss = _lloyd(x, starts)
        assert hartigan_wong(x, lloyd_centres).tot_withinss <= lloyd_ss + 1e-9


def test_hartigan_wong_recovers_separated_blobs():
    rng = np.random.default_rng(2)
    truth = np.repeat(np.arange(4), 40)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=float)
    x = centres[truth] + rng.normal(scale=0.5, size=(160, 3))
    km = r_kmeans(x, 4, rng=RRandom(42), nstart=10)
    assert adjusted_rand_score(truth, km.cluster) == 1.0


def test_knn_matches_brute_force():
    rng = np.random.default_rng(3)
    x_tr = rng.normal(size=(120, 5))
    y_tr = rng.integers(0, 4, 120)
    x_te = rng.normal(size=(40, 5))
    pred, prob = A._knn_predict(x_tr, y_tr, x_te, 15, 4)
    for i in range(40):
        d = ((x_tr - x_te[i]) ** 2).sum(1)
        nn = sorted(range(120), key=lambda j: (d[j], j))[:15]
        votes = np.bincount(y_tr[nn], minlength=4)
        assert pred[i] == int(np.flatnonzero(votes == votes.max())[0])
        np.testing.assert_array_equal(prob[i], votes / 15)


def test_auroc_tie_rule_and_sklearn_without_ties():
    assert A._compute_auc(np.array([1, 0, 1, 0]), np.zeros(4)) == 0.75
    assert A._compute_auc(np.array([0, 1, 0, 1]), np.zeros(4)) == 0.25
    assert A._compute_auc(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.3 * y
    assert A._compute_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-15)


def test_glm_irls_matches_unpenalised_logistic_likelihood_optimum():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 3))
    y = (x @ [1.0, -2.0, 0.5] + rng.logistic(size=300) > 0).astype(float)
    coef, used = A.glm_logit_fit(np.column_stack([np.ones(300), x]), y)
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x, y)  # C=inf: unpenalised
    np.testing.assert_allclose(coef, np.r_[sk.intercept_, sk.coef_.ravel()], atol=1e-5)
    assert used.tolist() == [0, 1, 2, 3]


def test_dqrdc2_pivots_out_an_aliased_column():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(50, 3))
    x = np.column_stack([x[:, 0], x[:, 0] * 2.0, x[:, 1:]])  # column 1 duplicates column 0
    y = x @ [1.0, 0.0, 2.0, -1.0] + 0.01 * rng.normal(size=50)
    b, pivot, rank = A._dqrls(x, y, 1e-7)
    assert rank == 3 and pivot.tolist() == [0, 2, 3, 1] and b[3] == 0.0
    lstsq = np.linalg.lstsq(x[:, [0, 2, 3]], y, rcond=None)[0]
    np.testing.assert_allclose(b[:3], lstsq, rtol=1e-10)


def test_silhouette_equals_exact_formula_when_every_point_is_a_reference():
    rng = np.random.default_rng(7)
    codes = np.repeat(np.arange(3), [30, 20, 25])
    x = rng.normal(size=(75, 4)) + codes[:, None] * 1.5
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    # RcppML's variant: mean over *all* members of the own class, self (distance 0) included
    mean_d = np.stack([d[:, codes == c].mean(1) for c in range(3)], 1)
    a = mean_d[np.arange(75), codes]
    b = np.where(np.eye(3, dtype=bool)[codes], np.inf, mean_d).min(1)
    want = np.mean((b - a) / np.maximum(a, b))
    assert A._approx_silhouette(x, codes, 200, 42) == pytest.approx(want, abs=1e-13)


def test_batch_metrics_against_brute_force():
    rng = np.random.default_rng(8)
    n = 200
    labels = np.repeat(["a", "b"], n // 2)
    batch = rng.choice(["p", "q", "r"], n)
    x = rng.normal(size=(n, 4))
    res = jnmf.assess(x, labels, batch=batch, metrics=["batch_mixing"], batch_knn_k=10)
    bcodes = np.unique(batch, return_inverse=True)[1]
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    ent = []
    for i in range(n):
        p = np.bincount(bcodes[np.argsort(d2[i])[:10]], minlength=3) / 10
        p = p[p > 0]
        ent.append(-(p * np.log(p)).sum() / np.log(3))
    assert res.metrics["batch_knn_entropy"] == pytest.approx(np.mean(ent), abs=1e-12)
    assert res.metrics["batch_silhouette"] == pytest.approx(A._approx_silhouette(x, bcodes, 200, 43), abs=0)
    assert list(res.metrics) == ["batch_silhouette", "batch_knn_entropy"]


# ---------------------------------------------------------------------------------------------------------------
# inputs, result object
# ---------------------------------------------------------------------------------------------------------------


def _toy(n_per=25, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["x", "y", "z"], n_per)
    emb = np.abs(rng.normal(size=(3 * n_per, k))) + (np.arange(3).repeat(n_per)[:, None] == np.arange(k)) * 2.0
    return emb, labels


def test_label_types_give_the_same_result():
    emb, labels = _toy()
    kw = {"metrics": ["ari", "nmi", "silhouette", "classification"], "classifiers": ["knn", "lr"]}
    base = jnmf.assess(emb, labels, **kw).metrics

    class Categorical:  # pandas-like: categories + codes
        categories = np.array(["x", "y", "z"], dtype=object)
        codes = np.repeat([0, 1, 2], 25)

    as_ints = np.repeat([3, 7, 11], 25)
    assert dict(jnmf.assess(emb, Categorical(), **kw).metrics) == dict(base)
    assert dict(jnmf.assess(emb, as_ints, **kw).metrics) == dict(base)
    assert dict(jnmf.assess(emb, list(labels), **kw).metrics) == dict(base)

    with_missing = np.concatenate([labels, [None, float("nan")]]).astype(object)
    emb2 = np.vstack([emb, emb[:2] + 0.1])
    with pytest.warns(UserWarning, match="2 samples with missing labels"):
        res = jnmf.assess(emb2, with_missing, **kw)
    assert dict(res.metrics) == dict(base)


def test_model_duck_typing_and_embedding_hook(ref_models, islands):
    m = ref_models["target010"]
    emb = (m.d[:, None] * m.h).T

    class Graph:
        def embedding(self):
            return emb

    kw = {"metrics": ["ari", "silhouette"]}
    a = _quiet_assess(m, islands, **kw)
    assert dict(_quiet_assess(emb, islands, **kw).metrics) == dict(a.metrics)
    assert dict(_quiet_assess(Graph(), islands, **kw).metrics) == dict(a.metrics)


def test_result_is_immutable_and_readable():
    emb, labels = _toy()
    res = jnmf.assess(emb, labels, classifiers="knn")
    assert isinstance(res, jnmf.AssessResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.metrics = {}
    with pytest.raises(TypeError):
        res.metrics["nmi"] = 1.0
    with pytest.raises(TypeError):
        res.classification[0]["accuracy"] = 1.0
    text = repr(res)
    assert text == res.summary()
    assert "75 samples, 4 features, 3 classes" in text and "NMI:" in text and "knn   Acc=" in text
    plain = res.to_dict()
    json.dumps(plain)
    assert plain["params"]["classifiers"] == ["knn"] and len(plain["classification"]) == 5


def _must_not_run(*args, **kwargs):
    raise AssertionError("computation started before the inputs were validated")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": np.repeat(["x", "y", "z"], 24)}, "labels: length 72"),
        ({"labels": np.array(["x"] * 70 + ["y"] * 5)}, "labels: fewer than 2 classes"),
        ({"metrics": ["nmi", "purity"]}, "metrics: unknown"),
        ({"classifiers": ("knn", "svm")}, "classifiers: unknown"),
        ({"batch": np.zeros(10)}, "batch: length 10"),
        ({"n_folds": 1}, "n_folds"),
        ({"x": "not an embedding"}, "x:"),
    ],
)
def test_bad_input_is_rejected_before_compute(monkeypatch, kwargs, match):
    for name in ("r_kmeans", "_approx_silhouette", "_cv_classify", "_approx_batch_knn_entropy"):
        monkeypatch.setattr(A, name, _must_not_run)
    emb, labels = _toy()
    args = {"x": emb, "labels": labels, **kwargs}
    with pytest.raises(ValueError, match=match):
        jnmf.assess(args.pop("x"), args.pop("labels"), **args)


def test_non_finite_embedding_is_rejected(monkeypatch):
    monkeypatch.setattr(A, "r_kmeans", _must_not_run)
    emb, labels = _toy()
    emb[3, 1] = np.nan
    with pytest.raises(ValueError, match="x: the embedding has 1 non-finite"):
        jnmf.assess(emb, labels)


# ---------------------------------------------------------------------------------------------------------------
# compiled fast paths against the NumPy / pure-Python ports they replace (kept in the modules as oracles)
# ---------------------------------------------------------------------------------------------------------------


def _clustered(n, k, n_classes, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.gamma(1.0, size=(n_classes, k))
    return np.abs(centres[y] + rng.normal(scale=0.7, size=(n, k))), y


def test_compiled_hartigan_wong_is_bitwise_the_python_port():
    from jnmf._kmeans import _hartigan_wong_python, r_unique_rows

    for seed, (n, k, c) in enumerate([(300, 6, 7), (240, 4, 2), (200, 12, 25)]):
        x, _ = _clustered(n, k, c, seed)
        x[:5] = x[5:10]  # duplicated rows
        cn = x[r_unique_rows(x)]
        rng = RRandom(seed)
        for _ in range(3):
            start = cn[rng.sample_int(cn.shape[0], c) - 1]
            fast, ref = hartigan_wong(x, start), _hartigan_wong_python(x, start)
            assert (fast.iter, fast.ifault) == (ref.iter, ref.ifault)
            for f in ("cluster", "centers", "withinss", "size"):
                np.testing.assert_array_equal(getattr(fast, f), getattr(ref, f), err_msg=f)
    # iter_max = 1 stops early: the non-convergence warning and ifault survive the port
    x, _ = _clustered(400, 5, 8, 9)
    with pytest.warns(RuntimeWarning, match="did not converge in 1 iterations"):
        assert hartigan_wong(x, x[:8], iter_max=1).ifault == 2
    with pytest.raises(RuntimeError, match="empty cluster"):
        hartigan_wong(x, np.vstack([x[:2], x[:1] + 1e6]))


def test_batched_glm_is_bitwise_the_per_class_fit():
    # 12 classes on 150 samples: many one-vs-rest fits separate (coefficients run off, glm stops on its own rule);
    # an aliased and a constant column make dqrdc2 pivot.
    x, y = _clustered(150, 5, 12, 3)
    x = np.column_stack([x, 2.0 * x[:, 0], np.zeros(150)])
    xs = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    xm = np.column_stack([np.ones(150), xs])
    onehot = (y[None, :] == np.arange(12)[:, None]).astype(np.float64)
    coefs, pivots, ranks = A.glm_logit_fit_many(xm, onehot)
    assert set(ranks.tolist()) == {6} and all(set(p[:6]) == {0, 1, 2, 3, 4, 5} for p in pivots)
    for c in range(12):
        coef, used = A.glm_logit_fit(xm, onehot[c])
        np.testing.assert_array_equal(coefs[c], coef)
        np.testing.assert_array_equal(pivots[c, : ranks[c]], used)
    tr = np.arange(150) % 4 != 0
    fast = A._lr_predict(xs[tr], y[tr], xs[~tr], 12)
    ref = A._lr_predict_reference(xs[tr], y[tr], xs[~tr], 12)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])


def test_compiled_mean_distances_are_bitwise_the_long_double_ones():
    # Includes integer-valued rows (exact sums, ties), zeros, and enough entries that the certified-rounding
    # fallback to NumPy long double is taken (~1-3 % of sums).
    x, _ = _clustered(400, 9, 4, 4)
    ints = np.random.default_rng(5).integers(0, 3, size=(60, 9)).astype(float)
    x = np.vstack([x, ints, np.zeros((3, 9))])
    for r in (x[::3], ints, x[:1]):
        np.testing.assert_array_equal(A._mean_dists(x, r), A._mean_dists_reference(x, r))


def test_knn_top_k_selection_keeps_the_stable_order_ties():
    # integer features: many exact distance ties at the k-th neighbour, resolved to the lowest training index
    rng = np.random.default_rng(10)
    x_tr = rng.integers(0, 3, size=(90, 2)).astype(float)
    y_tr = rng.integers(0, 3, 90)
    x_te = rng.integers(0, 3, size=(30, 2)).astype(float)
    pred, prob = A._knn_predict(x_tr, y_tr, x_te, 7, 3)
    for i in range(30):
        d = ((x_tr - x_te[i]) ** 2).sum(1)
        nn = sorted(range(90), key=lambda j: (d[j], j))[:7]
        votes = np.bincount(y_tr[nn], minlength=3)
        np.testing.assert_array_equal(prob[i], votes / 7)
        assert pred[i] == int(np.argmax(votes))


def test_unique_rows_prefilter_agrees_with_formatting_every_row():
    from jnmf._kmeans import r_unique_rows

    x, _ = _clustered(200, 4, 3, 11)
    x = np.vstack([x, x[:20] * (1 + 1e-16), x[20:30] + 1e-9, -np.zeros((2, 4)), np.zeros((2, 4))])
    x[-5, 0] = x[0, 0]  # same first value, different row
    x = x[np.random.default_rng(12).permutation(x.shape[0])]
    seen, want = set(), []
    for i, row in enumerate(x):
        key = tuple(format(v + 0.0, ".15g") for v in row)
        if key not in seen:
            seen.add(key)
            want.append(i)
    assert r_unique_rows(x).tolist() == want
