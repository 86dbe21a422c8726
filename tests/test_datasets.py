import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from tests.conftest import DATA


def test_hawaiibirds_shapes_and_annotations(hawaiibirds):
    A = hawaiibirds.A
    assert sp.issparse(A) and A.format == "csc"
    assert A.shape == (183, 1183) and A.nnz == 30815
    assert A.dtype == np.float64
    assert set(hawaiibirds.obs) == {"grid", "island", "lat", "lng"}
    assert set(hawaiibirds.var) == {"species", "status", "type"}
    islands, counts = np.unique(hawaiibirds.obs["island"], return_counts=True)
    assert dict(zip(islands.tolist(), counts.tolist(), strict=True)) == {
        "Hawaii": 593, "Kahoolawe": 4, "Kauai": 183, "Lanai": 5, "Maui": 148, "Molokai": 19, "Oahu": 229,
        "Puuwai": 2}
    assert hawaiibirds.obs["lat"].dtype == np.float64


def test_data_dir_argument_and_environment(tmp_path, monkeypatch, hawaiibirds):
    explicit = jnmf.datasets.load_hawaiibirds(DATA)
    assert explicit.A.shape == (183, 1183)
    monkeypatch.setenv("JNMF_DATA_DIR", str(DATA))
    assert jnmf.datasets.find_data_dir(("hawaiibirds.mtx",), tmp_path) == DATA


def test_missing_files_name_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("JNMF_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as err:
        jnmf.datasets.find_data_dir(("nope.mtx",), tmp_path / "arg")
    message = str(err.value)
    assert str(tmp_path / "arg") in message and str(tmp_path / "env") in message
    assert "shared" in message and "JNMF_DATA_DIR" in message


def test_default_places_never_point_into_site_packages(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "work").mkdir()
    monkeypatch.delenv("JNMF_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path / "work")
    # an installed copy: only ../shared/data relative to the current folder
    monkeypatch.setattr(jnmf.datasets, "_PACKAGE", tmp_path / "lib" / "python3.11" / "site-packages" / "jnmf")
    assert jnmf.datasets._candidate_dirs(None) == [tmp_path / "shared" / "data"]
    # run from a clone: ../shared/data beside the checkout too
    monkeypatch.setattr(jnmf.datasets, "_PACKAGE", root / "jnmf")
    assert jnmf.datasets._candidate_dirs(None) == [tmp_path / "shared" / "data", root.parent / "shared" / "data"]


def test_missing_hawaiibirds_message_speaks_cli_and_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("JNMF_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(jnmf.datasets, "_PACKAGE", tmp_path / "site-packages" / "jnmf")
    with pytest.raises(FileNotFoundError) as err:
        jnmf.datasets.load_hawaiibirds()
    message = str(err.value)
    assert "--data-dir DIR" in message and "RcppML's hawaiibirds" in message and "hawaiibirds.mtx" in message
