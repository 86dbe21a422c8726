"""Saving and loading ``NMFModel``s as portable ``.npz`` files (no pickle).

The file holds one array per model field, saved with its exact dtype and shape, and ``__jnmf__``: a JSON string with
the format, the jnmf version, the shapes, each field's dtype and shape, and the fit settings the caller recorded.
Any numpy (or R via RcppCNPy / reticulate) can read it; ``load`` restores an identical model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._model import NMFModel

FORMAT = "jnmf.NMFModel"
FORMAT_VERSION = 1
_META_KEY = "__jnmf__"
_FIELDS = tuple(f.name for f in dataclasses.fields(NMFModel))


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
    arrays = {name: np.asarray(getattr(model, name)) for name in _FIELDS}
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
    with open(path, "wb") as f:
        np.savez(f, **arrays, **{_META_KEY: np.asarray(text)})
    return path


def load(path: str | os.PathLike, *, with_settings: bool = False) -> NMFModel | tuple[NMFModel, dict[str, Any]]:
    """Read a model written by ``save`` (or ``NMFModel.save``): the same arrays, dtypes and shapes.

    Returns the ``NMFModel``, or ``(model, meta)`` with ``with_settings=True``, where ``meta`` is the stored JSON
    (``meta["settings"]`` holds the recorded fit options). A float64 model needs jax x64 enabled to load
    exactly; without it this raises rather than silently rounding to float32.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        if _META_KEY not in z.files:
            raise ValueError(f"{path} is not a jnmf model file (no {_META_KEY} entry)")
        meta = json.loads(str(z[_META_KEY][()]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} holds format {meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{path} has format version {meta['format_version']}, newer than this jnmf reads "
                             f"({FORMAT_VERSION}); upgrade jnmf")
        missing = [name for name in _FIELDS if name not in z.files]
        if missing:
            raise ValueError(f"{path} lacks the model field(s) {', '.join(missing)}")
        arrays = {name: z[name] for name in _FIELDS}
    if not jax.config.jax_enable_x64:
        wide = [name for name, a in arrays.items() if a.dtype.itemsize == 8]
        if wide:
            raise ValueError(f"{path} holds 64-bit fields ({', '.join(wide)}); enable jax x64 "
                             "(jax.enable_x64(True)) to load them exactly")
    model = NMFModel(**{name: jnp.asarray(a) for name, a in arrays.items()})
    return (model, meta) if with_settings else model
