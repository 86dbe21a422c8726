"""model.save / jnmf.load: a portable .npz (no pickle) that round-trips exactly, with the fit settings as JSON."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import jnmf
from jnmf._model import NMFModel

FIELDS = [f.name for f in dataclasses.fields(NMFModel)]


def _assert_identical(a, b):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
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
        assert sorted(z.files) == sorted(FIELDS + ["__jnmf__"])
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
