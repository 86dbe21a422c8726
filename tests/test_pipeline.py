"""The main job (``jnmf run``) on a small problem: files, fields and figures."""

import json

import numpy as np
import pytest

from jnmf import cli

pytest.importorskip("matplotlib", reason="figures need matplotlib (pip install 'jnmf[figures]')")
pytest.importorskip("umap", reason="UMAP panels need umap-learn (pip install 'jnmf[figures]')")

CONFIG = """
experiment = "{experiment}"
title = "test run"

[data]
name = "digits"
labels = "digit"
subsample = 300

[nmf]
k = 5
tol = 1e-4
maxit = 30
seed = 7

[assess]
classifiers = ["knn", "lr"]

[figures]
umap = true

[[methods]]
key = "baseline"
label = "Baseline"
kind = "baseline"
published = {{ nmi = 0.5, ari = 0.4, accuracy_knn = 0.9, mse_ratio = 1.0 }}

[[methods]]
key = "refine"
label = "refine"
kind = "refine"
lambda = 0.5

[[methods]]
key = "target"
label = "target"
kind = "target"
lambda = 0.1

[[methods]]
key = "removal"
label = "removal"
kind = "target"
lambda = -0.3
removal = "project"

[tables]
enrichment = ["baseline", "refine", "target"]
removal = ["baseline", "removal"]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):

    root = tmp_path_factory.mktemp("pipeline")
    config = root / "small.toml"
    config.write_text(CONFIG.format(experiment="guided_nmf"))  # the job jnmf.jobs.guided_nmf, by name
    out = root / "out"
    assert cli.main(["run", str(config), "--out", str(out), "--quiet", "--no-cache"]) == 0
    return out


def test_results_json_has_one_record_per_method(run_dir):
    payload = json.loads((run_dir / "results.json").read_text())
    records = payload["records"]
    assert [r["method"] for r in records] == ["Baseline", "refine", "target", "removal"]
    for r in records:
        for field in ("method", "nmi", "ari", "accuracy_knn", "accuracy_lr", "mse_ratio", "iterations", "converged",
                      "seconds"):
            assert field in r
        assert 0 <= r["nmi"] <= 1 and -1 <= r["ari"] <= 1 and 0 <= r["accuracy_knn"] <= 1
        assert r["mse_ratio"] > 0 and r["seconds"] >= 0
    assert records[0]["mse_ratio"] == pytest.approx(1.0)
    assert records[1]["iterations"] is None and isinstance(records[2]["iterations"], int)
    # guidance moves the embedding the intended way on digits
    assert records[2]["nmi"] > records[0]["nmi"] > records[3]["nmi"]


def test_markdown_tables_and_log(run_dir):
    md = (run_dir / "results.md").read_text()
    assert "## Enrichment" in md and "## Removal" in md
    assert "| Baseline |" in md and "0.500 / 0.400 / 0.900 / 1.0" in md
    log = (run_dir / "run.log").read_text()
    assert "baseline nmf" in log and "wall time" in log


@pytest.mark.parametrize("name", ["umap.png", "factor_composition.png"])
def test_figures_are_non_empty_images_of_the_expected_size(run_dir, name):
    import matplotlib.image as mpimg

    img = mpimg.imread(run_dir / name)
    assert img.shape[:2] == (990, 900)  # a 2 x 2 grid of 4.5-inch panels and a 0.9-inch legend row, 100 dpi
    assert np.std(img[..., :3]) > 0.05  # not a blank canvas


def test_cli_reports_missing_config(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_vignette_config_reproduces_the_published_table(tmp_path):
    """jnmf/configs/guided_nmf.toml on hawaiibirds: baseline, refine and target rows equal the vignette's numbers."""
    import tomllib
    from pathlib import Path

    from tests.conftest import DATA

    if not (DATA / "hawaiibirds.mtx").is_file():
        pytest.skip(f"hawaiibirds data set not found in {DATA}")
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "jnmf" / "configs" / "guided_nmf.toml").read_text(encoding="utf-8"))
    methods = {m["key"]: m for m in config["methods"]}
    # Same config, figures skipped (UMAP is covered above); written as TOML by hand to avoid a writer dependency.
    text = (root / "jnmf" / "configs" / "guided_nmf.toml").read_text(encoding="utf-8")
    text = text.replace("umap = true", "umap = false")
    path = tmp_path / "guided_nmf.toml"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--no-cache",
                     "--data-dir", str(DATA)]) == 0
    records = {r["method"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["records"]}
    for key in ("baseline", "refine", "target"):
        row, published = records[methods[key]["label"]], methods[key]["published"]
        for field in ("nmi", "ari", "accuracy_knn"):
            assert round(row[field], 3) == published[field], (key, field, row[field])
        assert round(row["mse_ratio"], 1) == published["mse_ratio"], (key, row["mse_ratio"])
    assert records[methods["baseline"]["label"]]["iterations"] == 17
    assert records[methods["target"]["label"]]["iterations"] == 15
    assert (tmp_path / "out" / "factor_composition.png").is_file()


def _poisson_config(removal="scatter"):
    text = CONFIG.format(experiment="guided_nmf").replace("seed = 7\n", 'seed = 7\nloss = "poisson"\n')
    text = text.replace('removal = "project"', f'removal = "{removal}"').replace("umap = true", "umap = false")
    return text


def test_poisson_run_reports_the_loss_ratio(tmp_path):
    # The main job accepts non-Gaussian fits (issue 20): the poisson objective's ratio beside the MSE ratio.
    config = tmp_path / "poisson.toml"
    config.write_text(_poisson_config())
    out = tmp_path / "out"
    assert cli.main(["run", str(config), "--out", str(out), "--quiet", "--no-cache"]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert records[0]["loss_ratio"] == pytest.approx(1.0) and records[0]["mse_ratio"] == pytest.approx(1.0)
    assert all(r["loss_ratio"] > 0 for r in records)
    assert "poisson loss ratio" in (out / "results.md").read_text()


@pytest.mark.parametrize("removal", ["proj_adv", "project"])
def test_poisson_config_with_an_unsupported_removal_is_refused_up_front(tmp_path, capsys, removal):
    config = tmp_path / "poisson.toml"
    config.write_text(_poisson_config(removal))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert "methods[3].removal" in err and f"'{removal}' removal is not supported with nmf.loss = 'poisson'" in err
