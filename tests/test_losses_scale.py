"""Non-Gaussian losses in sharded (``devices=``) and chunked (``nmf_chunked``) fits: the same fit as ``nmf()`` on one
device in memory (float64, same iterations), every loss, on one small matrix whose 42 columns are not a multiple
of the 4 devices (so the mesh pads) and are split into chunks of unequal width."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from tests.test_chunked import _assert_same_fit

MAXIT = 30
TOL = 3e-3  # nb, tweedie and mae stop by it before MAXIT, the others at MAXIT: both stops are compared
CASES = [
    ("poisson", {}),
    ("nb", {}),  # per-row dispersion, estimated
    ("gamma", {}),
    ("tweedie", {"power": 1.5}),
    ("huber", {"delta": 1.0}),
    ("mae", {"delta": 0.1}),
]
BOUNDS = (0, 9, 25, 42)


def _counts() -> np.ndarray:
    """30 x 42 overdispersed counts (gamma-Poisson, size about 2), so that NB's per-row sizes are well determined."""
    rng = np.random.default_rng(0)
    mu = rng.gamma(1.0, 1.0, (30, 4)) @ rng.gamma(1.0, 1.0, (4, 42))
    return rng.poisson(mu * rng.gamma(2.0, 0.5, mu.shape)).astype(np.float64)


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    return _counts()


@pytest.fixture(scope="module")
def references(counts):
    """The in-memory single-device fit of every case, compiled once for the chunked and the sharded tests."""
    with jax.enable_x64(True):
        return {loss: jnmf.nmf(counts, 3, seed=1, loss=loss, tol=TOL, maxit=MAXIT, **opts) for loss, opts in CASES}


def _chunks(A, tmp_path):
    """An in-memory dense chunk, a sparse .npz file and an in-memory sparse chunk (9, 16 and 17 columns)."""
    path = tmp_path / "middle.npz"
    sp.save_npz(path, sp.csc_matrix(A[:, BOUNDS[1]:BOUNDS[2]]))
    return [A[:, : BOUNDS[1]], path, sp.csr_matrix(A[:, BOUNDS[2]:])]


# ---------------------------------------------------------------------------------------------------------------
# chunked
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss,opts", CASES, ids=[c[0] for c in CASES])
def test_chunked_loss_equals_in_memory(counts, references, tmp_path, loss, opts):
    with jax.enable_x64(True):
        out = jnmf.nmf_chunked(_chunks(counts, tmp_path), 3, seed=1, loss=loss, tol=TOL, maxit=MAXIT, **opts)
    _assert_same_fit(out, references[loss])
    hist = np.asarray(out.loss_history)[: int(out.iter)]
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1])), np.max(np.diff(hist) / hist[:-1])


def test_chunked_loss_with_masks_and_target_equals_in_memory(counts, tmp_path):
    """Masked entries (one chunk's mask, NaN in another) and an H target with a positive lambda, per chunk: the
    multiplicative (poisson) update's quadratic penalty."""
    M = (np.add.outer(np.arange(30) * 7, np.arange(42) * 13) % 9) == 0
    M[:, : BOUNDS[1]] = False  # the first chunk has no masked entry: it runs with an all-False mask
    A = counts.copy()
    A[:, BOUNDS[2]:][M[:, BOUNDS[2]:]] = np.nan
    T = np.random.default_rng(1).gamma(1.0, 1.0, (3, 42))
    kw = dict(seed=1, tol=TOL, maxit=MAXIT, target_H=T, target_lambda=0.05)
    chunks = _chunks(np.where(np.isnan(A), 0.0, A), tmp_path)
    chunks[2] = A[:, BOUNDS[2]:]  # NaN entries are masked
    with jax.enable_x64(True):
        ref = jnmf.nmf(counts, 3, loss="poisson", mask=M, **kw)
        out = jnmf.nmf_chunked(chunks, 3, masks=[None, M[:, BOUNDS[1]:BOUNDS[2]], None], loss="poisson", **kw)
    _assert_same_fit(out, ref)


# ---------------------------------------------------------------------------------------------------------------
# sharded: 4 host-platform devices, in a subprocess (the device count is fixed at start-up)
# ---------------------------------------------------------------------------------------------------------------

_SHARDED = textwrap.dedent("""
    import json, sys, warnings
    import jax, numpy as np, scipy.sparse as sp
    import jnmf
    from tests.test_losses_scale import CASES, FIELDS, MAXIT, TOL, _counts
    warnings.simplefilter("ignore")  # convergence warnings of the fits that reach MAXIT
    assert len(jax.devices()) == 4, jax.devices()
    A = _counts()
    out = {}
    with jax.enable_x64(True):
        for loss, kw in CASES:
            model = jnmf.nmf(A, 3, seed=1, loss=loss, tol=TOL, maxit=MAXIT, devices=jax.devices(), **kw)
            out.update({f"{loss}.{f}": np.asarray(getattr(model, f)) for f in FIELDS})
        problem = jnmf.prepare(A, 3, seed=1, loss="nb", devices=jax.devices())
        info = {"spec": [str(s) for s in problem.data.A.sharding.spec],
                "padded": [problem.data.shape[1], problem.data.n_valid]}
        try:
            jnmf.prepare(sp.csc_matrix(A), 3, loss="poisson", layout="sparse", devices=jax.devices())
        except ValueError as e:
            info["error"] = str(e)
    np.savez(sys.argv[1], **out)
    print(json.dumps(info))
""")
FIELDS = ("w", "d", "h", "loss", "iter", "converged", "loss_history")


def test_sharded_loss_equals_single_device(references, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "sharded.npz")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(tmp_path / "sharded.npz") as z:
        for loss, _ in CASES:
            _assert_same_fit(SimpleNamespace(**{f: z[f"{loss}.{f}"] for f in FIELDS}), references[loss])
    assert info["spec"] == ["None", "cols"]
    assert info["padded"] == [44, 42]  # 42 samples padded to 44 over 4 devices: the padding is not observed
    assert "layout='sparse' with devices" in info["error"]
