"""Saving and loading ``NMFModel``s as portable ``.npz`` files (no pickle).

The file holds one array per model field, saved with its exact dtype and shape, and ``__jnmf__``: a JSON string with
the format, the jnmf version, the shapes, each field's dtype and shape, and the fit settings the caller recorded.
Any numpy (or R via RcppCNPy / reticulate) can read it; ``load`` restores an identical model.

Integrity: ``save`` writes atomically (a temporary file in the same folder, fsync, ``os.replace``; ``_atomic``), so
an interrupted save leaves the previous file intact. ``load`` never unpickles (``allow_pickle=False``) and checks
the file before building a model: anything wrong (truncated or empty file, not a zip, broken or missing metadata,
missing fields, object arrays, dtypes or shapes that do not form one model) raises ``ModelFileError`` (a
``ValueError``) whose message starts with the file's path.

Paths: ``save("foo")`` writes ``foo.npz`` (the suffix is appended when missing); ``load("foo")`` reads ``foo`` if
that file exists, else ``foo.npz``, so the same name works for both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._atomic import atomic_open
from ._model import NMFModel

FORMAT = "jnmf.NMFModel"
FORMAT_VERSION = 1
_META_KEY = "__jnmf__"
_FIELDS = tuple(f.name for f in dataclasses.fields(NMFModel))
# Fields with a default (None) are written only when set, and may be absent from a file.
_REQUIRED = tuple(f.name for f in dataclasses.fields(NMFModel) if f.default is dataclasses.MISSING)
# Each field's trailing shape in terms of the model's sizes (after the batch axes, d's leading axes), and its kind.
_LAYOUT = {"w": (("m", "k"), "f"), "d": (("k",), "f"), "h": (("k", "n"), "f"), "iter": ((), "i"),
           "loss": ((), "f"), "loss_history": (("maxit",), "f"), "converged": ((), "b"), "tol": ((), "f"),
           "w_init": (("m", "k"), "f"), "dispersion": (("m",), "f")}


class ModelFileError(ValueError):
    """A file that ``jnmf.load`` cannot read as a model; the message starts with the file's path."""


def _version() -> str:
    try:
        return metadata.version("jnmf")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"settings must be JSON-serialisable; got a {type(value).__name__}: {value!r}")


def save(model: NMFModel, path: str | os.PathLike, settings: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` (``.npz`` is appended if missing) and return the path written.

    ``settings``: the fit options to record (e.g. ``{"k": 8, "seed": 42, "tol": 1e-4}``); numbers, strings,
    booleans, None, lists/tuples/arrays and nested dicts. Read them back with ``load(path, with_settings=True)``.
    """
    if not isinstance(model, NMFModel):
        raise TypeError(f"model must be an NMFModel, got {type(model).__name__}")
    if settings is not None and not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict or None, got {type(settings).__name__}")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {name: np.asarray(getattr(model, name)) for name in _FIELDS if getattr(model, name) is not None}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jnmf_version": _version(),
        "shapes": {"m": int(arrays["w"].shape[-2]), "n": int(arrays["h"].shape[-1]), "k": int(arrays["d"].shape[-1]),
                   "maxit": int(arrays["loss_history"].shape[-1]), "batch": list(arrays["d"].shape[:-1])},
        "fields": {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in arrays.items()},
        "settings": {} if settings is None else settings,
    }
    text = json.dumps(meta, default=_json_default, allow_nan=True)
    # Atomic: a kill or a full disk mid-write leaves the previous file at path, never a truncated one.
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays, **{_META_KEY: np.asarray(text)})
    return path


def _resolve(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else ``path + ".npz"`` when that does (as ``save`` names its files)."""
    path = Path(path)
    if path.is_file():
        return path
    alt = path.with_name(path.name + ".npz")
    if path.suffix != ".npz" and alt.is_file():
        return alt
    tried = "" if path.suffix == ".npz" else f" (nor {alt})"
    raise FileNotFoundError(f"{path}: no such model file{tried}")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and the field arrays of a model file, or ``ModelFileError`` saying what is wrong."""
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty (0 bytes); an interrupted write?")
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as e:  # a .npy holding pickled objects, or a pickle
        raise ModelFileError(f"{path}: not a jnmf model file (.npz): {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ModelFileError(f"{path}: holds a single array, not a jnmf model file (.npz)")
    with z:
        if _META_KEY not in z.files:
            raise ModelFileError(f"{path}: not a jnmf model file (no {_META_KEY} entry; it holds "
                                 f"{', '.join(z.files[:8]) or 'nothing'})")
        try:
            raw = z[_META_KEY]
            text = str(raw[()]) if raw.ndim == 0 and raw.dtype.kind in "US" else None
            if text is None:
                raise ModelFileError(f"{path}: the {_META_KEY} entry is not a JSON string (dtype {raw.dtype}, "
                                     f"shape {raw.shape})")
            try:
                meta = json.loads(text)
            except json.JSONDecodeError as e:
                raise ModelFileError(f"{path}: the {_META_KEY} metadata is not valid JSON ({e})") from None
            if not isinstance(meta, dict):
                raise ModelFileError(f"{path}: the {_META_KEY} metadata is not a JSON object")
            if meta.get("format") != FORMAT:
                raise ModelFileError(f"{path}: holds format {meta.get('format')!r}, expected {FORMAT!r}")
            version = meta.get("format_version", 0)
            if not isinstance(version, int):
                raise ModelFileError(f"{path}: format_version must be an integer, got {version!r}")
            if version > FORMAT_VERSION:
                raise ModelFileError(f"{path}: has format version {version}, newer than this jnmf reads "
                                     f"({FORMAT_VERSION}); upgrade jnmf")
            missing = [name for name in _REQUIRED if name not in z.files]
            if missing:
                raise ModelFileError(f"{path}: lacks the model field(s) {', '.join(missing)}")
            arrays = {name: z[name] for name in _FIELDS if name in z.files}
        except ValueError as e:
            if isinstance(e, ModelFileError):
                raise
            # numpy refuses object arrays without allow_pickle (never unpickle a file's contents), and bad headers
            raise ModelFileError(f"{path}: a field cannot be read ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a member's data is cut or corrupt
            raise ModelFileError(f"{path}: truncated or corrupt .npz member ({type(e).__name__}: {e})") from None
    _check_consistent(path, meta, arrays)
    return meta, arrays


def _check_consistent(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """The fields must form one model: kinds, one float dtype, shapes agreeing on (batch, m, n, k, maxit)."""
    for name, a in arrays.items():
        kind = _LAYOUT[name][1]
        ok = {"f": a.dtype.kind == "f", "i": a.dtype.kind in "iu", "b": a.dtype == bool}[kind]
        if not ok:
            want = {"f": "floating", "i": "integer", "b": "boolean"}[kind]
            raise ModelFileError(f"{path}: field {name} has dtype {a.dtype}, expected a {want} dtype")
    floats = {a.dtype for name, a in arrays.items() if _LAYOUT[name][1] == "f"}
    if len(floats) > 1:
        raise ModelFileError(f"{path}: the float fields mix dtypes ({', '.join(sorted(str(d) for d in floats))})")
    d = arrays["d"]
    if d.ndim < 1:
        raise ModelFileError(f"{path}: field d must have at least one axis (k components), got shape {d.shape}")
    batch = d.shape[:-1]
    nb = len(batch)
    w, h = arrays["w"], arrays["h"]
    sizes = {"k": d.shape[-1], "m": w.shape[-2] if w.ndim >= 2 else None, "n": h.shape[-1] if h.ndim >= 1 else None,
             "maxit": arrays["loss_history"].shape[-1] if arrays["loss_history"].ndim >= 1 else None}
    for name, a in arrays.items():
        want = batch + tuple(sizes[s] for s in _LAYOUT[name][0])
        if a.shape != want:
            def fmt(x):
                return " x ".join(str(s) for s in x) or "scalar"
            raise ModelFileError(
                f"{path}: inconsistent shapes: w {fmt(w.shape)}, d {fmt(d.shape)}, h {fmt(h.shape)}; field {name} "
                f"is {fmt(a.shape)}, expected {fmt(want)} (w m x k, d k, h k x n, batch {fmt(batch)}, {nb} axes)")
    fields = meta.get("fields")
    if isinstance(fields, dict):
        for name, a in arrays.items():
            rec = fields.get(name)
            if isinstance(rec, dict) and (rec.get("shape") != list(a.shape) or rec.get("dtype") != a.dtype.str):
                raise ModelFileError(f"{path}: field {name} is {a.dtype.str} {list(a.shape)} but the metadata "
                                     f"records {rec.get('dtype')} {rec.get('shape')}")


def load(path: str | os.PathLike, *, with_settings: bool = False) -> NMFModel | tuple[NMFModel, dict[str, Any]]:
    """Read a model written by ``save`` (or ``NMFModel.save``): the same arrays, dtypes and shapes.

    Parameters
    ----------
    path : str or path-like
        The file; ``"foo"`` reads ``foo`` if it exists, else ``foo.npz`` (what ``save("foo")`` wrote).
    with_settings : bool
        Also return the stored metadata.

    Returns
    -------
    NMFModel or (NMFModel, dict)
        The model, or ``(model, meta)`` with ``with_settings=True``, where ``meta`` is the stored JSON
        (``meta["settings"]`` holds the recorded fit options).

    Raises
    ------
    FileNotFoundError
        Neither ``path`` nor ``path + ".npz"`` exists.
    ModelFileError
        (a ``ValueError``) the file is not a valid jnmf model: empty, truncated or corrupt, not an ``.npz``, no
        or broken metadata, missing fields, object (pickled) arrays, or fields that do not form one model. The
        message starts with the path. A float64 model also raises this without jax x64 enabled, rather than
        silently rounding to float32.
    """
    path = _resolve(path)
    meta, arrays = _read(path)
    if not jax.config.jax_enable_x64:
        wide = [name for name, a in arrays.items() if a.dtype.itemsize == 8]
        if wide:
            raise ModelFileError(f"{path}: holds 64-bit fields ({', '.join(wide)}); enable jax x64 "
                                 "(jax.enable_x64(True)) to load them exactly")
    model = NMFModel(**{name: jnp.asarray(a) for name, a in arrays.items()})
    return (model, meta) if with_settings else model
