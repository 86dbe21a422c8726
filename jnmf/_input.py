"""Canonical sparse input: one new CSR (or CSC) matrix, whatever scipy.sparse format the caller passed.

Why a function of its own: the engine reads ``A.data``, ``A.indices`` and ``A.indptr`` directly (value checks,
``|A|^2``, the host CSR kernel, the ELL blocks), which is only right for a *canonical* matrix, and scipy's own
conversions are not enough:

* ``sp.csr_matrix(A, dtype)`` may share ``indices``/``indptr`` (and ``data`` when the dtype already matches) with
  the caller's matrix, so a later ``sort_indices()`` / ``sum_duplicates()`` rewrites the caller's arrays in place
  (with a new dtype, only the indices: the caller's matrix is then silently wrong);
* a COO matrix may hold duplicate entries (the matrix is their sum: ``|A.data|^2`` and a sign check of
  ``A.data`` are then wrong);
* a DIA matrix's ``data`` holds padding slots outside the matrix, with arbitrary values (even negative or NaN);
* explicit zeros cost work and memory in every kernel.

``canonical_sparse`` copies first and canonicalises the copy only, so the caller's matrix (values, index arrays
and scipy's cached ``has_canonical_format`` / ``has_sorted_indices`` flags) is never touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

_INT32_MAX = np.iinfo(np.int32).max


def canonical_sparse(A: Any, dtype: Any = np.float32, name: str = "A", *, format: str = "csr",
                     check: bool = True, nan: str = "keep") -> sp.csr_matrix | sp.csc_matrix:
    """A new canonical copy of a scipy sparse matrix or array, of float ``dtype``; the caller's A is never changed.

    Parameters
    ----------
    A : scipy.sparse matrix or array
        Any format: CSR, CSC, COO (duplicate entries allowed: they are summed), DIA (padding slots outside the
        matrix are ignored, whatever they hold), LIL, DOK, BSR, and the ``*_array`` classes. It must be 2-D
        and hold real numbers (float, integer or bool).
    dtype : float32 or float64
        The dtype of the result's values. Duplicates are summed in float64 before the cast (integers are
        never summed in their own, overflowing, type).
    name : str
        What error messages call A (``"A"``, ``"A_new"``, ``"chunks[3]"``).
    format : {"csr", "csc"}
        ``"csr"`` returns a ``scipy.sparse.csr_matrix``; ``"csc"`` a ``csc_matrix`` (for the column-major ELL
        blocks), canonical too. Both are always ``*_matrix`` classes, whatever A's class.
    check : bool
        Check the values of the result: any infinite value (also one reached by casting to ``dtype``, e.g.
        1e300 in float32) or negative value raises ``ValueError`` naming ``name``. Pass ``False`` when a mask
        is given, whose masked entries may hold anything (``split_mask`` zeroes them; ``check_data`` then checks
        the observed values).
    nan : {"keep", "raise"}
        NaN stored entries mean *missing* in jnmf, as for dense input. ``"keep"`` (default) leaves them in the
        result as stored entries (a duplicate summed with a NaN stays NaN) for ``split_mask`` to fold into the
        mask, exactly as the engine treats sparse NaN today; ``"raise"`` refuses them (for callers without
        missing-data support), naming ``name``.

    Returns
    -------
    scipy.sparse.csr_matrix or scipy.sparse.csc_matrix
        New arrays throughout (no memory shared with A): duplicates summed, indices sorted, explicit zeros (also
        values that round to 0 in ``dtype``) dropped, ``has_canonical_format`` True, int32 indices and indptr
        when nnz and both dimensions are below 2**31, else int64.

    Raises
    ------
    TypeError
        A is not a scipy sparse matrix/array, or holds complex or non-numeric values; ``dtype`` is not float32
        or float64.
    ValueError
        A is not 2-D or is empty; with ``check``: infinite or negative values; with ``nan="raise"``: NaN.
    """
    if not sp.issparse(A):
        raise TypeError(f"{name} must be a scipy.sparse matrix or array, got {type(A).__name__}")
    if format not in ("csr", "csc"):
        raise ValueError(f"format must be 'csr' or 'csc', got {format!r}")
    if nan not in ("keep", "raise"):
        raise ValueError(f"nan must be 'keep' or 'raise', got {nan!r}")
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {out_dtype}")
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (features x samples), got {A.ndim} dimension(s)")
    in_dtype = np.dtype(A.dtype)
    if not (np.issubdtype(in_dtype, np.floating) or np.issubdtype(in_dtype, np.integer) or in_dtype == np.bool_):
        raise TypeError(f"{name} must hold real numbers, got dtype {in_dtype}")
    m, n = (int(s) for s in A.shape)
    if m == 0 or n == 0:
        raise ValueError(f"{name} is empty (shape {(m, n)}); it needs at least one row and one column")

    if A.format in ("csr", "csc"):
        out = _canonical_compressed(A, out_dtype, name, format, check, nan)
        if out is not None:
            return out
    row, col, val = _entries(A)
    # inf before summing: inf + (-inf) in two duplicates would otherwise become a NaN, i.e. silently "missing".
    _check_stored(val, name, check, nan)

    # The (data, (row, col)) constructor sums duplicates and sorts, on our own arrays only.
    major, minor = (row, col) if format == "csr" else (col, row)
    n_major, n_minor = (m, n) if format == "csr" else (n, m)
    order = np.lexsort((minor, major)) if not _is_sorted(major, minor) else None
    if order is not None:
        major, minor, val = major[order], minor[order], val[order]
    if major.size > 1:
        first = np.empty(major.size, bool)
        first[0] = True
        np.logical_or(major[1:] != major[:-1], minor[1:] != minor[:-1], out=first[1:])
        if not first.all():  # duplicates: sum each run (float64, so integers cannot overflow)
            starts = np.flatnonzero(first)
            val = np.add.reduceat(val, starts)
            major, minor = major[starts], minor[starts]
    with np.errstate(over="ignore"):  # an overflow to inf is reported by the check below, naming A
        val = val.astype(out_dtype)
    keep = val != 0  # NaN != 0: NaN entries stay (missing), explicit and rounded-to-zero entries go
    if not keep.all():
        major, minor, val = major[keep], minor[keep], val[keep]
    if check:
        _check_cast(val, name, out_dtype)

    nnz = int(val.size)
    idx = np.int32 if max(nnz, m, n) <= _INT32_MAX else np.int64
    indptr = np.zeros(n_major + 1, idx)
    np.cumsum(np.bincount(major, minlength=n_major), out=indptr[1:])
    cls = sp.csr_matrix if format == "csr" else sp.csc_matrix
    # copy=False: every array here is this function's own; shape given, so scipy does not infer it.
    out = cls((val, minor.astype(idx), indptr), shape=(m, n), copy=False)
    # scipy's constructor may pick its own index dtype; keep the documented one.
    out.indices = out.indices.astype(idx, copy=False)
    out.indptr = out.indptr.astype(idx, copy=False)
    out.has_canonical_format = True  # sorted, summed: true by construction (sets has_sorted_indices too)
    return out


def _canonical_compressed(A: Any, out_dtype: np.dtype, name: str, format: str, check: bool,
                          nan: str) -> sp.csr_matrix | sp.csc_matrix | None:
    """``canonical_sparse`` of a CSR/CSC A whose rows (columns) are already sorted and free of duplicates, through
    scipy's compiled conversion; ``None`` when A is not canonical (the general path then sorts and sums).

    Why: the general path holds int64 row and column and float64 value copies of every entry plus sort temporaries,
    about 7x A's own arrays at peak (2.98 GiB of float32 CSR at 400M non-zeros would need ~21 GiB more), while
    this path holds A's arrays, one cast copy of the values and the result. No duplicates means no sums, so the
    result is the general path's, entry for entry.
    """
    nnz = int(A.indptr[-1])
    cls_in = sp.csr_matrix if A.format == "csr" else sp.csc_matrix
    # A wrapper sharing A's arrays, only read below: the canonical check caches its flag on the wrapper, not on A.
    view = cls_in((A.data[:nnz], A.indices[:nnz], A.indptr), shape=A.shape, copy=False)
    if not view.has_canonical_format:
        return None
    _check_stored(view.data, name, check, nan)
    val = view.data
    if not np.issubdtype(val.dtype, np.floating):
        val = val.astype(np.float64)  # as the general path: a large integer is rounded once, to float64, first
    with np.errstate(over="ignore"):  # an overflow to inf is reported by the check below, naming A
        val = val.astype(out_dtype)  # always a copy: the result shares nothing with A
    cls = sp.csr_matrix if format == "csr" else sp.csc_matrix
    if format == A.format:
        out = cls((val, view.indices.copy(), view.indptr.copy()), shape=A.shape, copy=False)
    else:  # the conversion writes new, sorted index arrays
        out = cls_in((val, view.indices, view.indptr), shape=A.shape, copy=False).asformat(format)
        del val
    out.has_canonical_format = True  # sorted, no duplicates: eliminate_zeros keeps both
    out.eliminate_zeros()  # NaN != 0: NaN entries stay (missing); explicit and rounded-to-zero entries go
    if check:
        _check_cast(out.data, name, out_dtype)
    m, n = (int(s) for s in A.shape)
    idx = np.int32 if max(out.nnz, m, n) <= _INT32_MAX else np.int64
    out.indices = out.indices.astype(idx, copy=False)
    out.indptr = out.indptr.astype(idx, copy=False)
    out.has_canonical_format = True
    return out


def _check_stored(val: np.ndarray, name: str, check: bool, nan: str) -> None:
    """The stored values as given: no inf (when ``check``), no NaN when ``nan == "raise"``."""
    if check and val.size and np.isinf(val).any():
        bad = int(np.count_nonzero(np.isinf(val)))
        raise ValueError(f"{name} contains {bad} infinite value(s); NMF needs finite data (NaN marks missing)")
    if nan == "raise" and val.size and np.isnan(val).any():
        bad = int(np.count_nonzero(np.isnan(val)))
        raise ValueError(f"{name} contains {bad} NaN value(s); missing entries are not supported here")


def _check_cast(val: np.ndarray, name: str, out_dtype: np.dtype) -> None:
    """The values after the cast to ``out_dtype``: nothing overflowed to inf, nothing negative (NaN = missing)."""
    if not val.size:
        return
    if np.isinf(val).any():
        raise ValueError(f"{name} has values too large for {out_dtype.name} (max {np.nanmax(val):.4g} after "
                         f"the cast); scale A or use dtype=float64")
    observed = val[~np.isnan(val)]
    if observed.size and observed.min() < 0:
        raise ValueError(f"{name} contains {int(np.count_nonzero(observed < 0))} negative value(s) (min "
                         f"{observed.min():.4g}); NMF needs non-negative data")


def _entries(A: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, value) of A's stored entries as new int64 / float64 arrays, padding excluded.

    Reads A's arrays without writing to them: scipy's ``tocoo`` builds new arrays for CSR/CSC/BSR/DIA/LIL/DOK
    (DIA through ``tocsr``, which drops padding slots); COO's own arrays are only read here, and every array
    returned is a fresh copy (``astype`` copies), so nothing the caller holds is shared.
    """
    if A.format in ("csr", "csc"):
        indptr = np.asarray(A.indptr)
        counts = np.diff(indptr).astype(np.int64)
        major = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        minor = np.asarray(A.indices)[: int(indptr[-1])].astype(np.int64)
        val = np.asarray(A.data)[: int(indptr[-1])].astype(np.float64)
        return (major, minor, val) if A.format == "csr" else (minor, major, val)
    coo = A if A.format == "coo" else A.tocoo(copy=True)
    return (np.asarray(coo.row).astype(np.int64), np.asarray(coo.col).astype(np.int64),
            np.asarray(coo.data).astype(np.float64))


def _is_sorted(major: np.ndarray, minor: np.ndarray) -> bool:
    """Whether (major, minor) pairs are in non-decreasing lexicographic order (duplicates allowed)."""
    if major.size < 2:
        return True
    dm = np.diff(major)
    return bool(np.all((dm > 0) | ((dm == 0) & (np.diff(minor) >= 0))))


# Masked fits use the dense layout; above this size a masked A is refused rather than densified.
_DENSE_BYTES_LIMIT = 4 * 2**30


def split_mask(A: Any, mask: Any, itemsize: int, layout: str = "auto",
               mask_name: str = "mask", name: str = "A") -> tuple[Any, np.ndarray | None]:
    """Fold NaN entries of A into ``mask`` (True = ignore) and zero the masked entries of A.

    Returns ``(A, None)`` unchanged when nothing is masked (no mask, or an all-False one, and no NaN). Otherwise
    returns a dense A with 0 at masked entries (whatever they held: NaN, inf, negative) and the dense boolean
    mask. ``mask`` may be a boolean (or 0/1) array or scipy.sparse matrix of A's shape (errors call it
    ``mask_name``). Masked fits use the dense
    layout: sparse A is densified if it fits in the dense memory limit (4 GiB), else this raises.
    """
    if isinstance(A, (str, bytes)) or A is None:
        return A, None  # check_data names the type error
    if sp.issparse(A):
        # One canonical copy (duplicates summed, indices sorted, explicit zeros and DIA padding dropped, any format):
        # the caller's matrix is never modified, and every later step sees the same matrix whatever its storage.
        A = canonical_sparse(A, {4: np.float32, 8: np.float64}[itemsize], name, check=False)
    values = np.asarray(A.data) if sp.issparse(A) else np.asarray(A)
    shape = tuple(A.shape) if sp.issparse(A) else values.shape
    if len(shape) != 2:
        if mask is None:
            return A, None  # check_data names the shape error
        raise ValueError(f"A must be a 2-D matrix (features x samples), got shape {shape}")
    if mask is None:
        if not (np.issubdtype(values.dtype, np.floating) and np.isnan(values).any()):
            return A, None
        M = None
    else:
        M = _check_mask(mask, shape, mask_name)
    if layout == "sparse":
        raise ValueError("masked fits (a mask, or NaN entries in A) use the dense layout; got layout='sparse'")
    m, n = shape
    if m * n * itemsize > _DENSE_BYTES_LIMIT:
        raise ValueError(f"masked fits (a mask, or NaN entries in A) use the dense layout, but A ({m} x {n}) needs "
                         f"{m * n * itemsize / 2**30:.1f} GiB, above the {_DENSE_BYTES_LIMIT / 2**30:.0f} GiB limit")
    dense = A.toarray() if sp.issparse(A) else np.asarray(A)
    if np.issubdtype(dense.dtype, np.floating):
        nan = np.isnan(dense)
        M = nan if M is None else (M | nan)
    if not M.any():
        return A, None
    if M.all():
        raise ValueError(f"{name}: every entry is missing (NaN or masked by {mask_name}); there is nothing to fit")
    return np.where(M, np.zeros((), dense.dtype), dense), M


# The largest |A| entries a fit handles without under- or overflow in its Gram matrices and squared errors: their
# squares times the matrix size must stay inside the dtype's range (float32: ~1e-38 to 3e38).
_SCALE_LIMITS = {4: (1e-15, 1e15), 8: (1e-140, 1e140)}


def check_scale(A: Any, itemsize: int, name: str = "A") -> None:
    """Refuse data whose scale the dtype cannot carry through a fit (an all-zero or denormal A would otherwise
    give a zero model reported as converged); NMF's scale is arbitrary, so the fix is to rescale."""
    values = A.data if sp.issparse(A) else np.asarray(A)
    top = float(np.max(np.abs(values))) if values.size else 0.0
    low, high = _SCALE_LIMITS[itemsize]
    if top == 0.0:
        raise ValueError(f"{name} is all zeros (no observed non-zero entry): there is nothing to factorize")
    if not low <= top <= high:
        raise ValueError(f"{name}'s largest entry is {top:.3g}, outside [{low:g}, {high:g}] where a "
                         f"{'float32' if itemsize == 4 else 'float64'} fit neither underflows nor overflows; "
                         f"rescale it (e.g. {name} / {top:.3g}: the factorization of s A is that of A with d scaled "
                         "by s) or use dtype=float64")


def _check_mask(mask: Any, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    M = mask.toarray() if sp.issparse(mask) else np.asarray(mask)
    if M.shape != shape:
        raise ValueError(f"{name} must have the shape of A, {shape}, got {M.shape}")
    if M.dtype != bool:
        if not (np.issubdtype(M.dtype, np.integer) or np.issubdtype(M.dtype, np.floating)) or not np.all(
                (M == 0) | (M == 1)):
            raise ValueError(f"{name} must be boolean (True = ignore the entry) or 0/1, got dtype {M.dtype}")
        M = M.astype(bool)
    return M


_NORM_CHUNK = 1 << 24


def squared_norm(A: Any) -> float:
    """``|A|_F^2`` in float64 on the host: exact and deterministic (RcppML's float32 running sum is biased)."""
    v = np.asarray(A.data if sp.issparse(A) else A).ravel()
    if v.size <= _NORM_CHUNK:
        v = v.astype(np.float64, copy=False)
        return float(np.dot(v, v))
    # Large inputs in float64 slices: a whole float64 copy was 3 GiB at 400M non-zeros (the fit's peak).
    total = 0.0
    for start in range(0, v.size, _NORM_CHUNK):
        c = v[start:start + _NORM_CHUNK].astype(np.float64)
        total += float(np.dot(c, c))
    return total
