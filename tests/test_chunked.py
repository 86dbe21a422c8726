"""nmf_chunked with targets and missing data: the same model as the in-memory nmf() (float64, same iterations),
reading the chunks as often as the module docstring says, and arguments checked before the data are read."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf

FIELDS = ("w", "d", "h", "loss")
# Uneven widths: three chunks of 100, 250 and 250 columns (hawaiibirds) or 7, 11 and 12 (toy).
BIRD_BOUNDS = (0, 100, 350, 600)
TOY_BOUNDS = (0, 7, 18, 30)


def _split(X, bounds):
    return [X[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def _assert_same_fit(out, ref, rel=1e-10):
    """Same iterations and convergence, every field within ``rel`` of the field's largest magnitude, and the
    same loss history (NaN after the last iteration)."""
    assert int(out.iter) == int(ref.iter) and bool(out.converged) == bool(ref.converged)
    assert out.h.shape == ref.h.shape
    for f in FIELDS:
        x, y = np.asarray(getattr(out, f)), np.asarray(getattr(ref, f))
        assert np.max(np.abs(x - y)) <= rel * np.max(np.abs(y)), (f, float(np.max(np.abs(x - y))))
    x, y = np.asarray(out.loss_history), np.asarray(ref.loss_history)
    np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
    np.testing.assert_allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=rel)


@pytest.fixture(scope="module")
def birds(hawaiibirds):
    """600 hawaiibirds cells saved as three .npz chunks, with the class target of a baseline fit."""
    A = hawaiibirds.A.tocsc()[:, : BIRD_BOUNDS[-1]]
    island = np.asarray(hawaiibirds.obs["island"])[: BIRD_BOUNDS[-1]]
    with jax.enable_x64(True):
        T = np.asarray(jnmf.compute_target(jnmf.nmf(A, 8, seed=42).h, island))
    return A, T


@pytest.fixture
def bird_paths(birds, tmp_path):
    paths = []
    for i, part in enumerate(_split(birds[0], BIRD_BOUNDS)):
        paths.append(tmp_path / f"chunk{i}.npz")
        sp.save_npz(paths[-1], part)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(target_lambda=0.1),  # enrichment, per column
    dict(target_lambda=-0.1, removal="proj_adv", maxit=12),  # PROJ_ADV never converges: a short, exact run
    dict(target_lambda=-0.3, removal="project"),  # class means of all of W A: two reads per iteration
], ids=["enrich", "proj_adv", "project"])
def test_chunked_target_H_equals_in_memory(birds, bird_paths, kw):
    A, T = birds
    with jax.enable_x64(True):
        ref = jnmf.nmf(A, 8, seed=42, target_H=T, **kw)
        out = jnmf.nmf_chunked(bird_paths, 8, seed=42, target_H=T, **kw)
    _assert_same_fit(out, ref)


def test_chunked_sparse_chunks_with_removal_equal_in_memory():
    # A budget below the dense working set of a chunk puts every chunk in the sparse layout (the host CSR kernel
    # on CPU), read twice per iteration by removal="project".
    from jnmf._data import prepare_data

    rng = np.random.default_rng(3)
    A = sp.random(400, 500, density=0.01, random_state=rng, format="csc")
    T = rng.random((5, 500))
    with jax.enable_x64(True):
        budget = jnmf.estimate_memory(400, 250, 5, A.nnz, "dense", np.float64) - 1
        kinds = {type(prepare_data(c, np.float64, k=5, max_memory_bytes=budget, bucket=True))
                 for c in (A[:, :250], A[:, 250:])}
        kw = dict(target_H=T, target_lambda=-0.5, removal="project", maxit=10)
        ref = jnmf.nmf(A, 5, seed=7, layout="dense", **kw)
        out = jnmf.nmf_chunked([A[:, :250], A[:, 250:]], 5, seed=7, max_memory_bytes=budget, **kw)
    assert kinds and not kinds & {jnmf.DenseData}, kinds
    _assert_same_fit(out, ref)


def test_chunked_target_W_equals_in_memory(birds, bird_paths):
    A, _ = birds
    with jax.enable_x64(True):
        TW = np.asarray(jnmf.nmf(A, 8, seed=1, maxit=5).w)
        ref = jnmf.nmf(A, 8, seed=42, target_W=TW, target_lambda=(0.2, 0.0))
        out = jnmf.nmf_chunked(bird_paths, 8, seed=42, target_W=TW, target_lambda=(0.2, 0.0))
    _assert_same_fit(out, ref)


# ---------------------------------------------------------------------------------------------------------------
# missing data
# ---------------------------------------------------------------------------------------------------------------

def _toy_mask(toy_ref, frac=0.15, seed=0):
    A = np.asarray(toy_ref["A"], np.float64)
    return A, np.random.default_rng(seed).random(A.shape) < frac


@pytest.mark.parametrize("kw", [dict(), dict(solver="cd", L1=0.05, L2=0.1, norm="L2", maxit=6)],
                         ids=["chol-converged", "cd-L1-L2-norm-L2-maxit"])
def test_chunked_masks_as_arrays_equal_in_memory(toy_ref, kw):
    A, M = _toy_mask(toy_ref)
    filled = np.where(M, 1e3, A)  # masked values are never read
    with jax.enable_x64(True):
        ref = jnmf.nmf(A, 3, seed=1, mask=M, **kw)
        out = jnmf.nmf_chunked(_split(filled, TOY_BOUNDS), 3, seed=1, masks=_split(M, TOY_BOUNDS), **kw)
    _assert_same_fit(out, ref)
    assert bool(ref.converged) == ("maxit" not in kw)  # both ways of stopping are covered


def test_chunked_masks_as_npz_and_nan_entries_equal_in_memory(toy_ref, tmp_path):
    # chunk 0: NaN entries, no mask; chunk 1: a mask saved as a boolean sparse .npz; chunk 2: nothing masked
    A, M = _toy_mask(toy_ref)
    M[:, TOY_BOUNDS[2]:] = False
    parts, masks = _split(A.copy(), TOY_BOUNDS), [None, tmp_path / "mask1.npz", None]
    parts[0][_split(M, TOY_BOUNDS)[0]] = np.nan
    sp.save_npz(masks[1], sp.csr_matrix(_split(M, TOY_BOUNDS)[1]))
    chunks = [parts[0], tmp_path / "c1.npz", tmp_path / "c2.npz"]  # chunk 0 dense, in memory
    sp.save_npz(chunks[1], sp.csc_matrix(parts[1]))
    sp.save_npz(chunks[2], sp.csc_matrix(parts[2]))
    with jax.enable_x64(True):
        ref = jnmf.nmf(np.where(M, np.nan, A), 3, seed=1)
        out = jnmf.nmf_chunked(chunks, 3, seed=1, masks=masks)
        fitted = np.asarray(out.reconstruct())
    _assert_same_fit(out, ref)
    assert float(out.loss) == pytest.approx(np.sum((A - fitted)[~M] ** 2), rel=1e-10)  # SSE over observed entries


@pytest.mark.parametrize("kw", [dict(target_lambda=0.5), dict(target_lambda=-0.5, removal="project"),
                                dict(target_lambda=-0.05, removal="proj_adv", maxit=8)],
                         ids=["enrich", "project", "proj_adv"])
def test_chunked_masked_target_equals_in_memory(toy_ref, kw):
    A, M = _toy_mask(toy_ref)
    T = toy_ref["target_T"]
    with jax.enable_x64(True):
        ref = jnmf.nmf(A, 3, seed=1, mask=M, target_H=T, **kw)
        out = jnmf.nmf_chunked(_split(A, TOY_BOUNDS), 3, seed=1, masks=_split(M, TOY_BOUNDS), target_H=T, **kw)
    _assert_same_fit(out, ref)


def test_chunked_reads_each_chunk_as_documented(toy_ref, tmp_path, monkeypatch):
    A, M = _toy_mask(toy_ref)
    paths = []
    for i, part in enumerate(_split(A, TOY_BOUNDS)):
        paths.append(str(tmp_path / f"c{i}.npz"))
        sp.save_npz(paths[-1], sp.csc_matrix(part))
    reads = []
    load = sp.load_npz
    monkeypatch.setattr(sp, "load_npz", lambda path: reads.append(str(path)) or load(path))

    def count(**kw):
        reads.clear()
        with jax.enable_x64(True):
            model = jnmf.nmf_chunked(paths, 3, seed=1, **kw)
        return reads.count(paths[0]), int(model.iter)

    # one read to check the values, then: plain, one per iteration; masked, one per iteration and one for the
    # last loss; removal="project", two per iteration
    assert count(maxit=4, tol=0) == (1 + 4, 4)
    assert count(maxit=4, tol=0, masks=_split(M, TOY_BOUNDS)) == (1 + 4 + 1, 4)
    assert count(maxit=4, tol=0, target_H=toy_ref["target_T"], target_lambda=-0.5, removal="project") == (
        1 + 2 * 4, 4)


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------

def test_chunked_validates_targets_and_masks(toy_ref, tmp_path):
    A, M = _toy_mask(toy_ref)
    parts, masks = _split(A, TOY_BOUNDS), _split(M, TOY_BOUNDS)
    T = toy_ref["target_T"]
    with pytest.raises(ValueError, match=r"target_H must have shape \(3, 30\), got \(3, 29\)"):
        jnmf.nmf_chunked(parts, 3, seed=1, target_H=T[:, :-1], target_lambda=0.1)
    with pytest.raises(ValueError, match=r"target_W must have shape \(50, 3\)"):
        jnmf.nmf_chunked(parts, 3, seed=1, target_W=T, target_lambda=0.1)
    with pytest.raises(ValueError, match="target_H and target_W are None"):
        jnmf.nmf_chunked(parts, 3, seed=1, target_lambda=0.1)
    with pytest.raises(ValueError, match="removal must be one of"):
        jnmf.nmf_chunked(parts, 3, seed=1, target_H=T, target_lambda=-0.1, removal="drop")
    with pytest.raises(TypeError, match="masks must be None or a sequence"):
        jnmf.nmf_chunked(parts, 3, seed=1, masks=M)
    with pytest.raises(ValueError, match="masks has 2 entries but chunks has 3"):
        jnmf.nmf_chunked(parts, 3, seed=1, masks=masks[:2])
    with pytest.raises(ValueError, match=r"masks\[1\] must have the shape of chunks\[1\], \(50, 11\), got \(50, 12\)"):
        jnmf.nmf_chunked(parts, 3, seed=1, masks=[None, masks[2], None])
    sp.save_npz(tmp_path / "m.npz", sp.csr_matrix(masks[0]))
    with pytest.raises(ValueError, match=r"masks\[2\] must have the shape of chunks\[2\]"):
        jnmf.nmf_chunked(parts, 3, seed=1, masks=[None, None, tmp_path / "m.npz"])
    with pytest.raises(ValueError, match=r"masks\[0\] must be boolean"):
        jnmf.nmf_chunked(parts, 3, seed=1, masks=[np.where(masks[0], 2.0, 0.0), None, None])
    with pytest.raises(ValueError, match=r"chunks\[2\] contains 1 non-finite"):  # inf is masked only where masked
        bad = parts[2].copy()
        bad[0, 0] = np.inf
        jnmf.nmf_chunked([parts[0], parts[1], bad], 3, seed=1, masks=masks)
    with pytest.raises(ValueError, match=r"chunks\[1\] is empty"):
        jnmf.nmf_chunked([parts[0], parts[1][:, :0], parts[2]], 3, seed=1)


def test_chunked_checks_arguments_before_reading_values(toy_ref, tmp_path):
    # A chunk with negative values and a target of the wrong width: the target is named, from the shapes that
    # the .npz files store apart, before any chunk's values are read.
    parts = _split(np.asarray(toy_ref["A"]), TOY_BOUNDS)
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"c{i}.npz")
        sp.save_npz(paths[-1], sp.csc_matrix(-part if i == 1 else part))
    with pytest.raises(ValueError, match="target_H must have shape"):
        jnmf.nmf_chunked(paths, 3, seed=1, target_H=np.ones((3, 31)), target_lambda=0.1)
    with pytest.raises(ValueError, match=r"chunks\[1\] contains negative"):
        jnmf.nmf_chunked(paths, 3, seed=1)
