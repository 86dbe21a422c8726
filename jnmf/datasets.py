"""Data sets used by the vignette. The files stay outside the repository (``../shared/data`` by default)."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp

_HAWAIIBIRDS_FILES = ("hawaiibirds.mtx", "hawaiibirds_samples.csv", "hawaiibirds_species.csv")
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data matrix with per-column (``obs``) and per-row (``var``) annotations.

    ``A`` is (features x samples); ``obs[name]`` has one entry per column, ``var[name]`` one per row.
    """

    A: sp.csc_matrix
    obs: dict[str, np.ndarray]
    var: dict[str, np.ndarray]


def _candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get("JNMF_DATA_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(_REPO_ROOT.parent / "shared" / "data")
    return dirs


def find_data_dir(files: tuple[str, ...], data_dir: str | os.PathLike | None = None) -> Path:
    """The first of ``data_dir``, ``$JNMF_DATA_DIR``, ``../shared/data`` (beside the repository) holding ``files``."""
    tried = _candidate_dirs(data_dir)
    for d in tried:
        if all((d / f).is_file() for f in files):
            return d
    where = "\n  ".join(str(d) for d in tried)
    raise FileNotFoundError(
        f"could not find {', '.join(files)} in any of:\n  {where}\n"
        "Pass data_dir=..., or set the JNMF_DATA_DIR environment variable to the folder holding them.")


def _read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    columns = {}
    for j, name in enumerate(header):
        values = [r[j] for r in body]
        try:
            columns[name] = np.asarray([float(v) for v in values])
        except ValueError:
            columns[name] = np.asarray(values, dtype=object)
    return columns


def load_hawaiibirds(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Bird species frequencies on the Hawaiian islands (RcppML's ``hawaiibirds``).

    ``A``: scipy CSC, 183 species x 1183 grid cells, float64 frequencies (30,815 non-zeros).
    ``obs``: ``grid``, ``island`` (8 islands), ``lat``, ``lng`` per cell. ``var``: ``species``, ``status``, ``type``.
    Looks in ``data_dir``, then ``$JNMF_DATA_DIR``, then ``../shared/data`` beside the repository.
    """
    d = find_data_dir(_HAWAIIBIRDS_FILES, data_dir)
    A = sp.csc_matrix(scipy.io.mmread(d / "hawaiibirds.mtx"), dtype=np.float64)
    obs = _read_csv_columns(d / "hawaiibirds_samples.csv")
    var = _read_csv_columns(d / "hawaiibirds_species.csv")
    m, n = A.shape
    for name, col in obs.items():
        if len(col) != n:
            raise ValueError(f"hawaiibirds_samples.csv column {name!r} has {len(col)} rows, expected {n}")
    for name, col in var.items():
        if len(col) != m:
            raise ValueError(f"hawaiibirds_species.csv column {name!r} has {len(col)} rows, expected {m}")
    return Dataset(A=A, obs=obs, var=var)


def load_digits() -> Dataset:
    """scikit-learn's handwritten digits as a (features x samples) data set that needs no download.

    ``A``: scipy CSC, 64 pixels x 1797 images, grey levels 0..16. ``obs``: ``digit`` (the label, as a string
    "0".."9" so it reads as a category). ``var``: ``pixel`` ("r{row}c{col}").
    """
    from sklearn.datasets import load_digits as _sk_digits

    digits = _sk_digits()
    A = sp.csc_matrix(np.asarray(digits.data, np.float64).T)
    obs = {"digit": np.asarray([str(t) for t in digits.target], dtype=object)}
    var = {"pixel": np.asarray([f"r{i // 8}c{i % 8}" for i in range(64)], dtype=object)}
    return Dataset(A=A, obs=obs, var=var)


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name: ``"hawaiibirds"`` (files outside the repository) or ``"digits"`` (scikit-learn)."""
    loaders = {"hawaiibirds": lambda: load_hawaiibirds(data_dir), "digits": load_digits}
    if name not in loaders:
        raise ValueError(f"data set name must be one of {sorted(loaders)}, got {name!r}")
    return loaders[name]()
