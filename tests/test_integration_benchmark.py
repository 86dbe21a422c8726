"""jnmf/jobs/integration_benchmark.py end to end on a tiny config through the CLI (``jnmf run``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scanpy", reason='scanpy is not installed: pip install "jnmf[integration]"')
pytest.importorskip("scib_metrics", reason='scib-metrics is not installed: pip install "jnmf[integration]"')
pytest.importorskip("harmonypy", reason='harmonypy is not installed: pip install "jnmf[integration]"')

from jnmf import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY = """
experiment = "{experiment}"
title = "tiny integration benchmark"

[metrics]
names = ["ilisi", "graph_connectivity", "pcr_comparison", "silhouette_label", "clisi"]

[figures]
umap = false
scores = true

[[datasets]]
key = "sim"
kind = "pbmc68k_simulated"
labels = "bulk_labels"
n_batches = 3
gene_sigma = 0.8
lib_sigma = 0.5
cell_sigma = 0.1
sim_seed = 3
subsample = 300
k = 6
tol = 1e-3
maxit = 30
seed = 1

[[methods]]
key = "nmf"
label = "NMF"
kind = "nmf"

[[methods]]
key = "project"
label = "project"
kind = "target"
removal = "project"
lambda = -1.0

[[methods]]
key = "harmony_pca"
label = "Harmony on PCA"
kind = "harmony_pca"
"""


def test_benchmark_runs_end_to_end(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(experiment="integration_benchmark"), encoding="utf-8")
    out = tmp_path / "out"
    payload = cli.run(config, out, quiet=True, cache=False)
    for name in ("results.json", "results.md", "scores.png", "run.log"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["key"] for r in saved["records"]] == ["nmf", "project", "harmony_pca"]
    assert [r["key"] for r in payload["records"]] == ["nmf", "project", "harmony_pca"]
    for r in saved["records"]:
        assert not r.get("error"), r
        assert set(r["scores"]) == {"ilisi", "graph_connectivity", "pcr_comparison", "silhouette_label", "clisi",
                                    "batch_score", "bio_score", "total"}
        for name, value in r["scores"].items():
            assert value is not None and 0.0 <= value <= 1.0, (r["key"], name, value)
        assert r["scores"]["total"] == pytest.approx(0.4 * r["scores"]["batch_score"]
                                                     + 0.6 * r["scores"]["bio_score"])
    nmf, project, harmony = saved["records"]
    assert nmf["mse_ratio"] == pytest.approx(1.0) and harmony["mse_ratio"] is None
    assert project["mse_ratio"] > 1.0 and isinstance(project["iterations"], int)
    # removal mixes the synthetic batches better than the unintegrated NMF
    assert project["scores"]["ilisi"] > nmf["scores"]["ilisi"]
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## sim" in md and "| project λ=-1 |" in md and "Harmony on PCA" in md


def test_simulated_batches_are_seeded_and_non_negative():
    import scipy.sparse as sp

    spec = {"kind": "pbmc68k_simulated", "n_batches": 3, "gene_sigma": 0.5, "lib_sigma": 0.3, "cell_sigma": 0.1,
            "sim_seed": 11}
    module = cli._load_experiment(REPO / "jnmf" / "configs" / "integration.toml", "integration_benchmark")
    a, b = module.load_dataset(spec, None), module.load_dataset(spec, None)
    assert sp.issparse(a["A"]) and a["A"].shape == (765, 700)
    assert (a["A"] != b["A"]).nnz == 0 and np.array_equal(a["batch"], b["batch"])
    assert a["A"].min() >= 0.0
    counts = np.unique(a["batch"].astype(str), return_counts=True)[1]
    assert counts.tolist() == [234, 233, 233]
    raw = module.load_dataset({"kind": "pbmc68k_reduced"}, None)
    assert (raw["A"] != 0).nnz == (a["A"] != 0).nnz  # zeros stay zeros
    assert np.abs(raw["A"] - a["A"]).max() > 0.1  # and there is a batch effect
