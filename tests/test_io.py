"""model.save / jnmf.load: a portable .npz (no pickle) that round-trips exactly, with the fit settings as JSON."""

import dataclasses
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from jnmf._io import ModelFileError
from jnmf._model import NMFModel

FIELDS = [f.name for f in dataclasses.fields(NMFModel)]


def _assert_identical(a, b):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:  # an optional field (dispersion) stays absent
            assert y is None, name
            continue
        assert isinstance(y, jax.Array), name
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)  # NaN == NaN here


def test_round_trip_is_exact_with_settings(toy_ref, tmp_path):
    model = jnmf.nmf(toy_ref["A"], 3, seed=1, maxit=40)
    assert np.isnan(np.asarray(model.loss_history)[-1])  # the unused tail of the history survives too
    settings = {"k": 3, "seed": 1, "maxit": 40, "L1": (0.0, 0.0), "solver": "auto", "lam": np.float32(0.5)}
    path = model.save(tmp_path / "toy", settings=settings)
    assert path == tmp_path / "toy.npz" and path.is_file()
    loaded, meta = jnmf.load(path, with_settings=True)
    _assert_identical(model, loaded)
    _assert_identical(model, jnmf.load(path))
    assert meta["format"] == "jnmf.NMFModel" and meta["jnmf_version"]
    assert meta["shapes"] == {"m": 50, "n": 30, "k": 3, "maxit": 40, "batch": []}
    assert meta["settings"] == {"k": 3, "seed": 1, "maxit": 40, "L1": [0.0, 0.0], "solver": "auto", "lam": 0.5}
    # portable: plain arrays and a JSON string, readable without pickle
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted([f for f in FIELDS if f != "dispersion"] + ["__jnmf__"])  # None: not written
        assert json.loads(str(z["__jnmf__"]))["fields"]["iter"]["dtype"] == "<i4"


def test_float64_and_batched_models_round_trip(toy_ref, tmp_path):
    with jax.enable_x64(True):
        model = jnmf.nmf(toy_ref["A"], 3, seed=1, maxit=10)
        assert model.w.dtype == np.float64
        jnmf.save(model, tmp_path / "m64.npz")
        _assert_identical(model, jnmf.load(tmp_path / "m64.npz"))
    with pytest.raises(ValueError, match="enable jax x64"):  # never rounded silently to float32
        jnmf.load(tmp_path / "m64.npz")
    problem = jnmf.prepare(toy_ref["A"], 3, seed=1, maxit=10)
    batch = jax.vmap(lambda l2: jnmf.solve(problem, L2=l2))(np.array([0.0, 0.5], np.float32))
    jnmf.save(batch, tmp_path / "batch.npz")
    _assert_identical(batch, jnmf.load(tmp_path / "batch.npz"))


def test_load_and_save_errors(toy_ref, tmp_path):
    model = jnmf.nmf(toy_ref["A"], 3, seed=1, maxit=5)
    np.savez(tmp_path / "other.npz", w=np.ones(3))
    with pytest.raises(ValueError, match="not a jnmf model file"):
        jnmf.load(tmp_path / "other.npz")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        model.save(tmp_path / "bad.npz", settings={"f": object()})
    with pytest.raises(TypeError, match="model must be an NMFModel"):
        jnmf.save({"w": 1}, tmp_path / "x.npz")
    model.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(str(arrays["__jnmf__"]))
    meta["format_version"] = 99
    arrays["__jnmf__"] = np.asarray(json.dumps(meta))
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ValueError, match="newer than this jnmf reads"):
        jnmf.load(tmp_path / "future.npz")


# Integrity (issue 18): atomic saves, one error type naming the file for every broken file, no unpickling.


def _model(m=6, n=5, k=2, maxit=4, seed=0):
    """An NMFModel built directly (no fit: these tests are about files)."""
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.random(s), jnp.float32)  # noqa: E731
    return NMFModel(w=f(m, k), d=f(k), h=f(k, n), iter=jnp.asarray(3, jnp.int32), loss=f(),
                    loss_history=f(maxit), converged=jnp.asarray(True), tol=f(), w_init=f(m, k))


def _arrays(path):
    with np.load(path) as z:
        return {name: z[name] for name in z.files}


def test_save_appends_npz_and_load_finds_it(tmp_path):
    model = _model()
    assert model.save(tmp_path / "foo") == tmp_path / "foo.npz"
    assert not (tmp_path / "foo").exists()
    _assert_identical(model, jnmf.load(tmp_path / "foo"))  # load("foo") reads foo.npz, as save("foo") wrote
    _assert_identical(model, jnmf.load(str(tmp_path / "foo.npz")))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope")) + r": no such model file"):
        jnmf.load(tmp_path / "nope")
    assert [p.name for p in tmp_path.iterdir()] == ["foo.npz"]  # no temporary file left behind


class _Marker:
    """Unpickling this would create a file: the proof that load never unpickles."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _broken_files(tmp_path):
    good = tmp_path / "good.npz"
    _model().save(good)
    raw = good.read_bytes()
    arrays = _arrays(good)
    cases = {}

    def npz(name, **changes):
        a = {**arrays, **changes}
        for key in [k for k, v in changes.items() if v is None]:
            del a[key]
        np.savez(tmp_path / name, **a)
        return tmp_path / name

    shapes = dict(w=np.ones((30, 5), np.float32), d=np.ones(3, np.float32), h=np.ones((2, 7), np.float32))
    cases["shapes"] = (npz("shapes.npz", **shapes), r"inconsistent shapes: w 30 x 5, d 3, h 2 x 7")
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (tmp_path / "truncated.npz", r"not a readable \.npz file \(truncated or corrupt\?\)")
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF  # inside a member's data: the zip directory is intact, the CRC is not
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    cases["crc"] = (tmp_path / "crc.npz", r"truncated or corrupt|cannot be read")
    (tmp_path / "empty.npz").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.npz", r"the file is empty \(0 bytes\)")
    cases["json"] = (npz("json.npz", __jnmf__=np.asarray('{"format": "jnmf.NMF')), r"metadata is not valid JSON")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    cases["foreign"] = (tmp_path / "other.npz", r"not a jnmf model file \(no __jnmf__ entry; it holds a\)")
    cases["missing"] = (npz("missing.npz", h=None), r"lacks the model field\(s\) h")
    obj = np.empty(1, object)
    obj[0] = _Marker(tmp_path / "UNPICKLED")
    cases["pickled"] = (npz("pickled.npz", w=obj), r"field cannot be read \(Object arrays cannot be loaded")
    cases["kind"] = (npz("kind.npz", converged=np.asarray(1.0, np.float32)),
                     r"field converged has dtype float32, expected a boolean dtype")
    np.save(tmp_path / "single.npy", np.ones(3))
    cases["npy"] = (tmp_path / "single.npy", r"holds a single array, not a jnmf model file")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(_Marker(tmp_path / "UNPICKLED")))
    cases["pickle"] = (tmp_path / "model.pkl", r"not a jnmf model file \(\.npz\)")
    return cases


@pytest.mark.parametrize("case", ["shapes", "truncated", "crc", "empty", "json", "foreign", "missing", "pickled",
                                  "kind", "npy", "pickle"])
def test_broken_files_raise_model_file_error_naming_the_file(tmp_path, case):
    path, pattern = _broken_files(tmp_path)[case]
    with pytest.raises(ModelFileError, match="^" + re.escape(str(path)) + ": .*(" + pattern + ")") as info:
        jnmf.load(path)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    assert not (tmp_path / "UNPICKLED").exists()  # nothing was unpickled


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    good = _model(seed=1)
    path = good.save(tmp_path / "m.npz")

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _model(seed=2).save(path)
    monkeypatch.undo()
    _assert_identical(good, jnmf.load(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # the temporary file was removed


_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import jax.numpy as jnp
    from jnmf._model import NMFModel

    real_savez = np.savez

    class Stall:
        # Passes writes through to the file; after the first MiB it tells the parent and hangs mid-write.
        def __init__(self, f):
            self._f, self._n = f, 0
        def write(self, b):
            n = self._f.write(b)
            self._n += len(b)
            if self._n > 2**20:
                self._f.flush()
                print("WRITING", flush=True)
                time.sleep(600)
            return n
        def __getattr__(self, name):
            return getattr(self._f, name)

    np.savez = lambda f, **a: real_savez(Stall(f), **a)
    big = jnp.ones((2000, 200), jnp.float32)  # 1.6 MB per factor: the stall comes mid-write
    model = NMFModel(w=big, d=jnp.ones(200), h=jnp.ones((200, 300)), iter=jnp.asarray(1, jnp.int32),
                     loss=jnp.asarray(0.0), loss_history=jnp.zeros(3), converged=jnp.asarray(False),
                     tol=jnp.asarray(0.0), w_init=big)
    model.save(sys.argv[1])
""")


def test_interrupted_save_leaves_the_previous_file_loadable(tmp_path):
    good = _model(seed=3)
    path = good.save(tmp_path / "model.npz")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(jnmf.__file__).parents[1], env=env)
    try:
        line = child.stdout.readline()  # blocks until the child is mid-write (or exits)
        assert line.strip() == "WRITING", f"child did not reach the write (rc {child.poll()})"
        tmp = [p for p in tmp_path.iterdir() if p.name != "model.npz"]
        assert len(tmp) == 1 and tmp[0].name.startswith(".model.npz.") and tmp[0].stat().st_size > 2**20
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    _assert_identical(good, jnmf.load(path))  # the previous model, intact


def test_evaluate_leaves_out_missing_entries_as_the_fit_does():
    rng = np.random.default_rng(0)
    A = rng.random((20, 15)).astype(np.float32)
    A[rng.random(A.shape) < 0.1] = np.nan
    model = jnmf.nmf(A, 2, seed=1, maxit=5)  # NaN = missing: nmf accepts it
    WH = np.asarray(model.w, np.float64) * np.asarray(model.d, np.float64) @ np.asarray(model.h, np.float64)
    obs = ~np.isnan(A)
    expected = np.mean((A[obs] - WH[obs]) ** 2)
    assert np.isclose(jnmf.evaluate(model, A), expected, rtol=1e-12)
    # an explicit mask (True = ignore) means the same as NaN there, and combines with NaN
    A0 = np.where(obs, A, 0.0)
    assert np.isclose(jnmf.evaluate(model, A0, mask=~obs), expected, rtol=1e-12)
    extra = np.zeros(A.shape, bool)
    extra[0] = True
    both = obs & ~extra
    assert np.isclose(jnmf.evaluate(model, A, mask=extra), np.mean((A[both] - WH[both]) ** 2), rtol=1e-12)
    assert np.isclose(jnmf.evaluate(model, sp.csr_matrix(A), mask=sp.csr_matrix(extra)),
                      np.mean((A[both] - WH[both]) ** 2), rtol=1e-12)  # sparse NaN and a sparse mask too
    assert np.isnan(jnmf.evaluate(model, A, mask=np.ones(A.shape, bool)))  # nothing observed
    with pytest.raises(ValueError, match=r"^mask must have the shape of A"):
        jnmf.evaluate(model, A, mask=np.zeros((2, 2), bool))
    # without missing entries: the unmasked mean over all m*n entries, as before
    full = np.nan_to_num(A)
    assert np.isclose(jnmf.evaluate(model, full), np.mean((full - WH) ** 2), rtol=1e-9)


def test_evaluate_sums_coo_duplicates():
    model = _model(m=4, n=3)
    dense = np.array([[1.0, 0, 2], [0, 0, 0], [3, 0, 0], [0, 4, 0]])
    r, c = np.nonzero(dense)
    dup = sp.coo_matrix((np.r_[dense[r, c] / 2, dense[r, c] / 2], (np.r_[r, r], np.r_[c, c])), shape=(4, 3))
    assert np.isclose(jnmf.evaluate(model, dup), jnmf.evaluate(model, dense), rtol=1e-12)
