"""Input checks run before any compute, outside jit, with messages that name the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp


def check_data(A: Any, name: str = "A") -> Any:
    """Return A as a numpy array or a scipy sparse matrix, or raise if it cannot be factorized."""
    if sp.issparse(A):
        if A.ndim != 2:
            raise ValueError(f"{name} must be a 2-D matrix, got {A.ndim} dimensions")
        values = np.asarray(A.data)
        out = A
    else:
        if isinstance(A, (str, bytes)) or A is None:
            raise TypeError(
                f"{name} must be a numpy array, a jax array or a scipy.sparse matrix, got {type(A).__name__}")
        try:
            out = np.asarray(A)
        except Exception as e:  # pragma: no cover - exotic objects
            raise TypeError(f"{name} could not be converted to an array: {e}") from None
        if out.ndim != 2:
            raise ValueError(f"{name} must be a 2-D matrix (features x samples), got shape {out.shape}")
        values = out
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
            or values.dtype == bool):
        raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
    m, n = out.shape
    if m == 0 or n == 0:
        raise ValueError(f"{name} is empty (shape {out.shape}); it needs at least one row and one column")
    if values.size and not np.all(np.isfinite(values)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); NMF needs finite data")
    if values.size and np.min(values) < 0:
        raise ValueError(f"{name} contains negative values (min {np.min(values):.4g}); NMF needs non-negative data")
    return out


def check_rank(k: Any, m: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= min(m, n):
        raise ValueError(f"k must satisfy 1 <= k <= min(m, n) = {min(m, n)}, got {k}")
    return k


def check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if int(value) < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_real(value: Any, name: str, low: float | None = None, high: float | None = None,
               high_open: bool = False) -> float:
    if isinstance(value, jax.core.Tracer):
        return value  # traced hyperparameters are checked by the caller that made them concrete
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if low is not None and x < low:
        raise ValueError(f"{name} must be >= {low}, got {x}")
    if high is not None and (x >= high if high_open else x > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {x}")
    return x


def check_pair(value: Any, name: str, **bounds: Any) -> tuple[float, float]:
    """A scalar or a (W, H) pair, as RcppML's per-factor options; returns (w_value, h_value)."""
    if np.ndim(value) == 0:
        x = check_real(value, name, **bounds)
        return (x, x)
    items = list(np.asarray(value).ravel())
    if len(items) != 2:
        raise ValueError(f"{name} must be a scalar or a (W, H) pair, got {len(items)} values")
    return (check_real(items[0], f"{name}[0] (W)", **bounds), check_real(items[1], f"{name}[1] (H)", **bounds))


def check_bool_pair(value: Any, name: str) -> tuple[bool, bool]:
    if isinstance(value, (bool, np.bool_)):
        return (bool(value), bool(value))
    items = list(value) if isinstance(value, (tuple, list)) else None
    if items is None or len(items) != 2 or not all(isinstance(v, (bool, np.bool_)) for v in items):
        raise TypeError(f"{name} must be a bool or a (W, H) pair of bools, got {value!r}")
    return (bool(items[0]), bool(items[1]))


def check_choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value


def check_matrix(value: Any, name: str, shape: tuple[int, int], nonneg: bool = False) -> np.ndarray:
    """A finite dense matrix of an exact shape (targets, initial factors)."""
    if sp.issparse(value):
        value = value.toarray()
    arr = np.asarray(value)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be a real {shape[0]} x {shape[1]} matrix, got shape {arr.shape}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if nonneg and np.min(arr) < 0:
        raise ValueError(f"{name} must be non-negative, min is {np.min(arr):.4g}")
    return arr
