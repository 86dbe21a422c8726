"""canonical_sparse: any scipy.sparse format in, a new canonical CSR/CSC out, the caller's matrix never touched."""

import copy
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from jnmf._input import canonical_sparse

M, N = 12, 9


def _dense(seed=0):
    """A non-negative 12 x 9 matrix, ~40% non-zero, with dyadic values (sums and casts are exact)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 64, size=(M, N)) / 8.0
    X[rng.random((M, N)) < 0.6] = 0.0
    return X


def _unsorted_csr(X, dtype=np.float64):
    """CSR of X with every row's entries reversed (valid, unsorted) and one explicit zero per row."""
    csr = sp.csr_matrix(X)
    data, ind, ptr = [], [], [0]
    for i in range(X.shape[0]):
        s, e = csr.indptr[i], csr.indptr[i + 1]
        zero_col = [j for j in range(X.shape[1]) if X[i, j] == 0][:1]
        ind += list(csr.indices[s:e][::-1]) + zero_col
        data += list(csr.data[s:e][::-1]) + [0.0] * len(zero_col)
        ptr.append(len(ind))
    return sp.csr_matrix((np.array(data, dtype), np.array(ind, np.int32), np.array(ptr, np.int32)), shape=X.shape)


def _dup_coo(X, cls=sp.coo_matrix):
    """COO of X with every entry split into two duplicates (halves), in shuffled order, plus explicit zeros."""
    r, c = np.nonzero(X)
    v = X[r, c]
    rows = np.concatenate([r, r, [0, 1]])
    cols = np.concatenate([c, c, [0, 0]])
    vals = np.concatenate([v / 2, v / 2, [0.0, 0.0]])
    perm = np.random.default_rng(1).permutation(rows.size)
    return cls((vals[perm], (rows[perm], cols[perm])), shape=X.shape)


def _dia_negative_padding():
    """12 x 9 DIA with offsets (-2, 0, 3); offset 3's first three slots (rows -3..-1) are padding holding -7, NaN
    and inf, which are not part of the matrix."""
    data = np.arange(1, 3 * N + 1, dtype=np.float64).reshape(3, N) / 4
    data[2, :3] = [-7.0, np.nan, np.inf]
    return sp.dia_matrix((data, [-2, 0, 3]), shape=(M, N))


def _formats():
    X = _dense()
    cases = {
        "csr": sp.csr_matrix(X), "csc": sp.csc_matrix(X), "coo_dup": _dup_coo(X), "lil": sp.lil_matrix(X),
        "dok": sp.dok_matrix(X), "bsr": sp.bsr_matrix(X, blocksize=(3, 3)),
        "csr_unsorted": _unsorted_csr(X), "csr_unsorted_f32": _unsorted_csr(X, np.float32),
        "csc_unsorted": _unsorted_csr(X.T).T,  # the transpose of an unsorted CSR: an unsorted CSC
        "dia_padding": _dia_negative_padding(), "csr_array": sp.csr_array(X), "csc_array": sp.csc_array(X),
        "coo_array_dup": _dup_coo(X, sp.coo_array), "dia_array": sp.dia_array(_dia_negative_padding()),
        "lil_array": sp.lil_array(X), "dok_array": sp.dok_array(X), "bsr_array": sp.bsr_array(X, blocksize=(2, 3)),
        "int": sp.csr_matrix((X * 8).astype(np.int64)), "bool": sp.csr_matrix(X > 0),
    }
    return cases


def _snapshot(A):
    """Everything a caller can see of A: its arrays (copied) and scipy's cached canonical flags."""
    snap = {"format": A.format, "dtype": A.dtype, "shape": A.shape}
    for attr in ("data", "indices", "indptr", "offsets", "row", "col", "rows", "blocksize"):
        if hasattr(A, attr):
            snap[attr] = copy.deepcopy(np.asarray(getattr(A, attr)) if attr != "rows" else A.rows.tolist())
    if A.format == "lil":
        snap["data"] = A.data.tolist()
    if A.format == "dok":
        snap["items"] = sorted((k, float(v)) for k, v in A.items())
    for flag in ("has_canonical_format", "has_sorted_indices"):
        if hasattr(A, flag):
            snap[flag] = bool(getattr(A, flag))
    return snap


def _assert_same_snapshot(before, after):
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, after[key], err_msg=key)  # NaN == NaN: padding may hold NaN
            assert value.dtype == after[key].dtype, key
        else:
            assert value == after[key], key


def _expected(A, dtype):
    """The canonical CSR from the dense matrix (what A means), cast to dtype."""
    return sp.csr_matrix(A.toarray().astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(_formats()))
def test_every_format_canonical_and_caller_unchanged(case, dtype):
    A = _formats()[case]
    before = _snapshot(A)
    out = canonical_sparse(A, dtype)
    _assert_same_snapshot(before, _snapshot(A))
    assert type(out) is sp.csr_matrix and out.dtype == dtype and out.shape == A.shape
    assert out.indices.dtype == np.int32 and out.indptr.dtype == np.int32
    ref = _expected(A, dtype)
    np.testing.assert_array_equal(out.indptr, ref.indptr)
    np.testing.assert_array_equal(out.indices, ref.indices)  # sorted within rows, no duplicates
    np.testing.assert_array_equal(out.data, ref.data)  # bitwise: summed, cast, no explicit zeros
    assert out.has_canonical_format and np.all(out.data != 0)
    # no memory shared with the caller: writing to the result cannot reach A
    for attr in ("data", "indices", "indptr", "row", "col", "offsets"):
        if hasattr(A, attr) and not isinstance(getattr(A, attr), list):
            for mine in (out.data, out.indices, out.indptr):
                assert not np.shares_memory(mine, np.asarray(getattr(A, attr))), attr


def test_unsorted_fixtures_really_are_unsorted_and_have_zeros():
    # Guards the test above: without these properties it would not test sorting or zero-dropping.
    cases = _formats()
    for key in ("csr_unsorted", "csr_unsorted_f32", "csc_unsorted"):
        A = cases[key].copy()
        assert not A.has_sorted_indices and np.any(A.data == 0), key
    coo = cases["coo_dup"]
    assert len(set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))) < coo.nnz  # duplicates present
    dia = cases["dia_padding"]
    assert np.any(dia.data < 0) and np.all(dia.toarray() >= 0)  # negatives only in the padding


def test_coo_duplicates_equal_the_summed_csr():
    X = _dense(3)
    A = _dup_coo(X)
    out = canonical_sparse(A, np.float64)
    ref = sp.csr_matrix(A)  # scipy sums duplicates converting COO -> CSR
    ref.sum_duplicates()
    ref.eliminate_zeros()
    np.testing.assert_array_equal(out.toarray(), X)
    np.testing.assert_array_equal(out.indptr, ref.indptr)
    np.testing.assert_array_equal(out.indices, ref.indices)
    np.testing.assert_array_equal(out.data, ref.data)


def test_unsorted_equals_sorted_bitwise():
    X = _dense(4)
    a = canonical_sparse(_unsorted_csr(X), np.float32)
    b = canonical_sparse(sp.csr_matrix(X), np.float32)
    for x, y in ((a.data, b.data), (a.indices, b.indices), (a.indptr, b.indptr)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def test_explicit_zeros_dropped_also_when_rounded_to_zero():
    A = sp.csr_matrix((np.array([0.0, 1e-60, 2.0]), np.array([0, 1, 2]), np.array([0, 3])), shape=(1, 3))
    out = canonical_sparse(A, np.float32)  # 1e-60 is 0 in float32
    assert out.nnz == 1 and out.indices.tolist() == [2] and out.data.tolist() == [2.0]
    assert canonical_sparse(A, np.float64).nnz == 2


def test_dia_negative_padding_is_not_data():
    A = _dia_negative_padding()
    out = canonical_sparse(A, np.float64)
    np.testing.assert_array_equal(out.toarray(), A.toarray())


def test_csc_variant():
    A = _dup_coo(_dense(5))
    out = canonical_sparse(A, np.float64, format="csc")
    assert type(out) is sp.csc_matrix and out.has_canonical_format
    np.testing.assert_array_equal(out.toarray(), A.toarray())
    ref = sp.csc_matrix(A.toarray())
    np.testing.assert_array_equal(out.indices, ref.indices)
    np.testing.assert_array_equal(out.indptr, ref.indptr)


def test_nan_kept_as_missing_or_refused():
    X = _dense(6)
    X[0, 0] = np.nan
    A = sp.csr_matrix(X)
    out = canonical_sparse(A, np.float32)
    assert np.isnan(out[0, 0]) and out.nnz == A.nnz  # kept as a stored entry: split_mask masks it
    with pytest.raises(ValueError, match=r"^B contains 1 NaN value"):
        canonical_sparse(A, np.float32, name="B", nan="raise")


@pytest.mark.parametrize("bad, pattern", [
    (lambda: sp.csr_matrix(np.array([[1.0, -2.0], [0.0, 3.0]])), r"^A_new contains 1 negative value\(s\) \(min -2"),
    (lambda: sp.coo_matrix(([1.0, -np.inf, np.inf], ([0, 0, 1], [0, 0, 1])), shape=(2, 2)),
     r"^A_new contains 2 infinite value\(s\)"),  # inf + -inf would sum to NaN (= missing): refused before
    (lambda: sp.csr_matrix(np.array([[1e300, 1.0]])), r"^A_new has values too large for float32"),
])
def test_value_errors_name_the_argument(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        canonical_sparse(bad(), np.float32, name="A_new")


def test_negative_duplicates_that_sum_non_negative_are_accepted():
    # The matrix is the sum of its duplicates: (-1) + 2 = 1 is a valid non-negative entry.
    A = sp.coo_matrix(([-1.0, 2.0], ([0, 0], [1, 1])), shape=(2, 2))
    assert canonical_sparse(A, np.float64).toarray().tolist() == [[0, 1], [0, 0]]


def test_check_false_leaves_values_to_the_caller():
    A = sp.csr_matrix(np.array([[1.0, -2.0]]))
    assert canonical_sparse(A, np.float64, check=False).data.tolist() == [1.0, -2.0]


def test_type_and_shape_errors():
    with pytest.raises(TypeError, match=r"^A must be a scipy.sparse"):
        canonical_sparse(np.ones((2, 2)), np.float32)
    with pytest.raises(TypeError, match=r"^A must hold real numbers, got dtype complex"):
        canonical_sparse(sp.csr_matrix(np.ones((2, 2), complex)), np.float32)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        canonical_sparse(sp.csr_matrix(np.ones((2, 2))), np.int32)
    with pytest.raises(ValueError, match=r"^X is empty"):
        canonical_sparse(sp.csr_matrix((0, 3)), np.float32, name="X")
    with pytest.raises(ValueError, match=r"^A must be a 2-D matrix"):
        canonical_sparse(sp.coo_array(([1.0], ([0],)), shape=(3,)), np.float32)


def test_integer_duplicates_do_not_overflow():
    A = sp.coo_matrix((np.array([100, 100], np.int8), ([0, 0], [0, 0])), shape=(1, 1))
    assert canonical_sparse(A, np.float32).data.tolist() == [200.0]


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("in_dtype", [np.float32, np.float64])
def test_canonical_csr_csc_input_stays_near_its_own_size(fmt, in_dtype):
    # The general path (int64 / float64 copies of every entry, sort temporaries) peaked at ~7x A: the 400M
    # non-zeros of experiments/bench_million.py (3 GiB) did not fit in 24 GiB. Canonical CSR/CSC input takes
    # scipy's conversion: one cast copy of the values and the result.
    A = sp.random(2000, 5000, density=0.1, format="csc", dtype=in_dtype, random_state=np.random.default_rng(0))
    A.data[::97] = 0.0  # explicit zeros (dropped) and a NaN (kept as missing) on this path too
    A.data[5] = np.nan
    size = A.data.nbytes + A.indices.nbytes + A.indptr.nbytes
    tracemalloc.start()
    try:
        out = canonical_sparse(A, np.float32, format=fmt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.0 * size, (peak, size)
    ref = canonical_sparse(A.tocoo(), np.float32, format=fmt)  # the general path
    assert type(out) is type(ref) and out.has_canonical_format
    for x, y in ((out.data, ref.data), (out.indices, ref.indices), (out.indptr, ref.indptr)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


# End to end: nmf must neither change the caller's matrix nor fit anything but the canonical matrix.

def _e2e_cases():
    X = _dense(7)
    X = np.vstack([X, X[::-1], X]) + 0.0  # 36 x 9: k=3 fits, still tiny
    Y = np.hstack([X, X[:, ::-1]])  # 36 x 18
    return {"csr_unsorted_f64": _unsorted_csr(Y), "coo_dup": _dup_coo(Y), "csc_unsorted_f32":
            _unsorted_csr(Y.T, np.float32).T}




# What fails today: csr_unsorted_f64: csr_matrix(A, float32) copies the data but shares the indices, which
# sort_indices() then sorts in place (the caller's matrix is left wrong); coo_dup: |A|^2 counts duplicates
# separately (another loss); csc_unsorted_f32: the explicit zeros reach the host kernel (results differ in the
# last bits from the canonical fit's).
@pytest.mark.parametrize("case", [
    "csr_unsorted_f64",
    "coo_dup",
    "csc_unsorted_f32",
])
def test_nmf_does_not_mutate_and_fits_the_canonical_matrix(case):
    A = _e2e_cases()[case]
    before = _snapshot(A)
    model = jnmf.nmf(A, 3, layout="sparse", seed=1, maxit=15)
    _assert_same_snapshot(before, _snapshot(A))
    ref = jnmf.nmf(canonical_sparse(A, np.float32), 3, layout="sparse", seed=1, maxit=15)
    for field in ("w", "d", "h", "loss", "iter"):
        np.testing.assert_array_equal(np.asarray(getattr(model, field)), np.asarray(getattr(ref, field)), field)


def test_nmf_loss_of_duplicated_coo_is_the_summed_matrix_loss():
    # |A|^2 from A.data counts duplicates separately: (a/2)^2 + (a/2)^2 != a^2, so the loss would be wrong.
    A = _e2e_cases()["coo_dup"]
    model = jnmf.nmf(A, 3, layout="sparse", seed=1, maxit=15)
    ref = jnmf.nmf(sp.csr_matrix(A.toarray()), 3, layout="sparse", seed=1, maxit=15)
    np.testing.assert_allclose(float(model.loss), float(ref.loss), rtol=1e-5)


def test_nmf_accepts_dia_with_negative_padding():
    # Today A.data's padding slots are read as data: the NaN there asks for a masked fit (refused with
    # layout="sparse"), and without it the -7 would be "negative values".
    A = sp.dia_matrix(_dia_negative_padding())
    before = _snapshot(A)
    model = jnmf.nmf(A, 2, layout="sparse", seed=1, maxit=5)
    _assert_same_snapshot(before, _snapshot(A))
    ref = jnmf.nmf(canonical_sparse(A, np.float32), 2, layout="sparse", seed=1, maxit=5)
    np.testing.assert_array_equal(np.asarray(model.w), np.asarray(ref.w))


@pytest.mark.parametrize("sparse_kernel", ["host", "ell"])
def test_dense_and_sparse_layouts_differ_only_by_float32_summation_order(sparse_kernel):
    # The battery's 1.1e-3 dense-vs-sparse gap: in float64 the layouts agree to rounding, so what float32 shows is
    # the order of summation in the products; the README states the float32 tolerance this test holds.
    import jax

    A = sp.random(120, 300, density=0.15, random_state=1, format="csr", dtype=np.float64)
    with jax.enable_x64(True):
        dense = jnmf.nmf(A, 6, seed=42, layout="dense", dtype=np.float64)
        sparse = jnmf.nmf(A, 6, seed=42, layout="sparse", sparse_kernel=sparse_kernel, dtype=np.float64)
    assert int(dense.iter) == int(sparse.iter)
    for f in ("w", "h"):
        np.testing.assert_allclose(np.asarray(getattr(sparse, f)), np.asarray(getattr(dense, f)), rtol=0, atol=1e-12)
    dense32 = jnmf.nmf(A, 6, seed=42, layout="dense")
    sparse32 = jnmf.nmf(A, 6, seed=42, layout="sparse", sparse_kernel=sparse_kernel)
    assert int(dense32.iter) == int(sparse32.iter)
    h32, h = np.asarray(sparse32.h), np.asarray(dense32.h)
    assert np.abs(h32 - h).max() <= 1e-4 * np.abs(h).max()


def test_a_row_or_column_with_no_observed_entry_gets_zero_factors_and_changes_nothing_else():
    # Documented rule (README, Input handling): its Gram matrix is 1e-15 I and its right-hand side 0, so its
    # factor is 0, and it adds nothing to the other updates: the rest is the fit without it.
    import jax

    rng = np.random.default_rng(3)
    X = rng.random((10, 8))
    X[2, :] = np.nan
    X[:, 5] = np.nan
    X[rng.random(X.shape) < 0.1] = np.nan
    w0 = rng.random((10, 3))
    with jax.enable_x64(True):
        model = jnmf.nmf(X, 3, w_init=w0, dtype=np.float64, maxit=30, tol=0.0, sort=False)
        keep_r, keep_c = np.delete(np.arange(10), 2), np.delete(np.arange(8), 5)
        ref = jnmf.nmf(X[np.ix_(keep_r, keep_c)], 3, w_init=w0[keep_r], dtype=np.float64, maxit=30, tol=0.0,
                       sort=False)
    w, h = np.asarray(model.w), np.asarray(model.h)
    assert np.all(w[2] == 0) and np.all(h[:, 5] == 0)
    np.testing.assert_allclose(w[keep_r], np.asarray(ref.w), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(h[:, keep_c], np.asarray(ref.h), rtol=1e-10, atol=1e-13)


def test_squared_norm_in_slices_equals_the_whole_float64_sum(monkeypatch):
    # Large inputs are summed in float64 slices (no whole float64 copy); dense and sparse alike.
    import jnmf._input as I

    rng = np.random.default_rng(2)
    dense = rng.random((300, 70)).astype(np.float32)
    exact = float(np.sum(dense.astype(np.float64) ** 2))
    monkeypatch.setattr(I, "_NORM_CHUNK", 1000)
    assert I.squared_norm(dense) == pytest.approx(exact, rel=1e-12)
    assert I.squared_norm(sp.csr_matrix(dense)) == pytest.approx(exact, rel=1e-12)
