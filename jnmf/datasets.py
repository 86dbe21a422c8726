"""Data sets used by the vignette. The hawaiibirds files stay outside the package and the repository.

Where the files are looked for, in order: the folder given (``--data-dir`` of ``jnmf run``, which must exist;
``data_dir=`` in Python), ``$JNMF_DATA_DIR``, ``../shared/data`` relative to the current directory, and, when
jnmf is imported from a source checkout (not an installed copy in site-packages), ``../shared/data`` beside it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp

_HAWAIIBIRDS_FILES = ("hawaiibirds.mtx", "hawaiibirds_samples.csv", "hawaiibirds_species.csv")
_PACKAGE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data matrix with per-column (``obs``) and per-row (``var``) annotations.

    ``A`` is (features x samples); ``obs[name]`` has one entry per column, ``var[name]`` one per row.
    """

    A: sp.csc_matrix
    obs: dict[str, np.ndarray]
    var: dict[str, np.ndarray]


def _source_checkout() -> Path | None:
    """The repository root when jnmf is imported from a clone (a pyproject.toml beside the package), else None."""
    root = _PACKAGE.parent
    if (root / "pyproject.toml").is_file() and "site-packages" not in root.parts:
        return root
    return None


def _candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [] if data_dir is None else [Path(data_dir)]
    env = os.environ.get("JNMF_DATA_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd().parent / "shared" / "data")
    root = _source_checkout()
    if root is not None:
        dirs.append(root.parent / "shared" / "data")
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def find_data_dir(files: tuple[str, ...], data_dir: str | os.PathLike | None = None) -> Path:
    """The first folder holding ``files`` among ``data_dir``, ``$JNMF_DATA_DIR``, ``../shared/data`` relative to
    the current directory and ``../shared/data`` beside a source checkout.

    Raises
    ------
    FileNotFoundError
        Naming the files, every folder searched and how to point jnmf at the right one.
    """
    tried = _candidate_dirs(data_dir)
    for d in tried:
        if all((d / f).is_file() for f in files):
            return d
    where = "\n  ".join(str(d) for d in tried)
    origin = (" They are RcppML's hawaiibirds data set (the R package's `hawaiibirds`, exported as Matrix Market "
              "and CSV files).") if files == _HAWAIIBIRDS_FILES else ""
    raise FileNotFoundError(
        f"could not find {', '.join(files)} in any of:\n  {where}\n"
        "Give the folder holding them with `jnmf run ... --data-dir DIR` (data_dir=DIR in Python), or set the "
        f"JNMF_DATA_DIR environment variable.{origin}")


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

    Parameters
    ----------
    data_dir : path-like, optional
        The folder holding ``hawaiibirds.mtx``, ``hawaiibirds_samples.csv`` and ``hawaiibirds_species.csv``;
        looked for after it: ``$JNMF_DATA_DIR``, then ``../shared/data`` (see the module docstring).

    Returns
    -------
    Dataset
        ``A``: scipy CSC, 183 species x 1183 grid cells, float64 frequencies (30,815 non-zeros). ``obs``:
        ``grid``, ``island`` (8 islands), ``lat``, ``lng`` per cell. ``var``: ``species``, ``status``, ``type``.

    Raises
    ------
    FileNotFoundError
        The files are in none of the folders (the message names each, and ``--data-dir``).

    Examples
    --------
    >>> ds = jnmf.datasets.load_hawaiibirds("/path/to/shared/data")  # doctest: +SKIP
    >>> ds.A.shape, ds.obs["island"][:2]  # doctest: +SKIP
    ((183, 1183), array(['Hawaii', 'Hawaii'], dtype=object))
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

    Returns
    -------
    Dataset
        ``A``: scipy CSC, 64 pixels x 1797 images, grey levels 0..16. ``obs``: ``digit`` (the label, as a string
        "0".."9" so it reads as a category). ``var``: ``pixel`` ("r{row}c{col}").

    Examples
    --------
    >>> jnmf.datasets.load_digits().A.shape
    (64, 1797)
    """
    from sklearn.datasets import load_digits as _sk_digits

    digits = _sk_digits()
    A = sp.csc_matrix(np.asarray(digits.data, np.float64).T)
    obs = {"digit": np.asarray([str(t) for t in digits.target], dtype=object)}
    var = {"pixel": np.asarray([f"r{i // 8}c{i % 8}" for i in range(64)], dtype=object)}
    return Dataset(A=A, obs=obs, var=var)


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name: ``"hawaiibirds"`` (files outside the package) or ``"digits"`` (scikit-learn).

    Parameters
    ----------
    name : {"hawaiibirds", "digits"}
        The data set.
    data_dir : path-like, optional
        Where the hawaiibirds files are (``load_hawaiibirds``); unused for digits.

    Returns
    -------
    Dataset

    Examples
    --------
    >>> jnmf.datasets.load("digits").obs["digit"][:3]
    array(['0', '1', '2'], dtype=object)
    """
    loaders = {"hawaiibirds": lambda: load_hawaiibirds(data_dir), "digits": load_digits}
    if name not in loaders:
        raise ValueError(f"data set name must be one of {sorted(loaders)}, got {name!r}")
    return loaders[name]()
