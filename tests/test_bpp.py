"""nnls_bpp (block principal pivoting): the exact NNLS optimum, against scipy's Lawson-Hanson and the KKT
conditions, in float64 and float32, under jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import nnls

from jnmf._bpp import nnls_bpp
from jnmf._nnls import cholesky_clip

# One compiled function per shape: an eager call would compile the while loop anew each time.
_bpp = jax.jit(nnls_bpp, static_argnames=("max_iter", "block", "return_info"))


def _problem(k, p, cond, seed):
    """A (n, k) with cond(A'A) = ``cond`` (None: Gaussian 2k x k), Yb (n, p); G = A'A, B = A'Yb."""
    rng = np.random.default_rng(seed)
    if cond is None:
        a = rng.normal(size=(2 * k, k))
    else:
        u = np.linalg.qr(rng.normal(size=(k, k)))[0]
        v = np.linalg.qr(rng.normal(size=(k, k)))[0]
        a = (u * np.logspace(0, -np.log10(cond) / 2, k)) @ v
    yb = rng.normal(size=(a.shape[0], p))
    return a, yb, a.T @ a, a.T @ yb


def _objective(g, b, x):
    return 0.5 * np.einsum("ip,ij,jp->p", x, g, x) - np.einsum("ip,ip->p", b, x)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize(
    ("k", "cond"), [(2, None), (2, 1e6), (5, 1e6), (20, None), (20, 1e6), (64, 1e6), (200, None)]
)
def test_equals_scipy_nnls_float64(k, cond):
    p = 40 if k < 200 else 8
    a, yb, g, b = _problem(k, p, cond, seed=k)
    x, steps = _bpp(jnp.asarray(g), jnp.asarray(b), block=16, return_info=True)  # several blocks, buckets
    x = np.asarray(x)
    assert x.dtype == np.float64 and x.shape == (k, p) and int(steps) < max(100, 3 * k)
    ref = np.stack([nnls(a, yb[:, j], maxiter=50 * k)[0] for j in range(p)], axis=1)
    # objective to 1e-10 relative of its scale; x itself to 1e-8 relative (cond 1e6 amplifies rounding in x)
    scale = np.abs(_objective(g, b, ref)) + 1e-300
    assert np.all(np.abs(_objective(g, b, x) - _objective(g, b, ref)) <= 1e-10 * scale)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    # KKT: x >= 0, gradient y = Gx - b >= 0 up to rounding, complementarity
    y = g @ x - b
    ytol = 1e-9 * (np.abs(g) @ np.abs(x) + np.abs(b))
    assert np.all(x >= 0)
    assert np.all(y >= -ytol)
    assert np.all(np.abs(y[x > 0]) <= ytol[x > 0])


def test_warm_start_and_default_start_agree_and_warm_is_not_slower():
    _, _, g, b = _problem(12, 60, None, seed=1)
    g, b = jnp.asarray(g), jnp.asarray(b)
    cold, n_cold = _bpp(g, b, return_info=True)
    warm, n_warm = _bpp(g, b, cold + 0.0, return_info=True)  # the optimal support: one solve, one check
    np.testing.assert_allclose(np.asarray(warm), np.asarray(cold), rtol=1e-12, atol=1e-14)
    assert int(n_warm) == 1 and int(n_warm) <= int(n_cold)
    zero, _ = _bpp(g, b, jnp.zeros_like(b), return_info=True)  # Kim & Park's start: empty passive sets
    np.testing.assert_allclose(np.asarray(zero), np.asarray(cold), rtol=1e-10, atol=1e-12)


def test_jit_and_vmap_match_the_plain_call():
    gs, bs = [], []
    for s in range(3):
        _, _, g, b = _problem(16, 20, None if s else 1e4, seed=10 + s)  # k >= 16: size buckets (lax.switch)
        gs.append(g)
        bs.append(b)
    gs, bs = jnp.asarray(np.stack(gs)), jnp.asarray(np.stack(bs))
    plain = np.stack([np.asarray(_bpp(gs[i], bs[i])) for i in range(3)])
    jitted = np.asarray(jax.jit(lambda g, b: nnls_bpp(g, b, block=7))(gs[0], bs[0]))  # other blocking, same x
    vmapped = np.asarray(jax.jit(jax.vmap(nnls_bpp))(gs, bs))
    np.testing.assert_allclose(jitted, plain[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(vmapped, plain, rtol=1e-12, atol=1e-13)
    # vmap over columns (one right-hand side per call) gives the batched result too
    cols = np.asarray(jax.vmap(lambda b: nnls_bpp(gs[1], b[:, None])[:, 0], in_axes=1, out_axes=1)(bs[1]))
    np.testing.assert_allclose(cols, plain[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cond", [None, 1e3])
def test_float32_objective_within_float32_resolution_of_scipy(cond):
    a, yb, g, b = _problem(50, 80, cond, seed=3)
    x = _bpp(jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32))
    assert x.dtype == jnp.float32
    x = np.asarray(x, dtype=np.float64)
    ref = np.stack([nnls(a, yb[:, j], maxiter=5000)[0] for j in range(80)], axis=1)
    f_ref = _objective(g, b, ref)
    gap = _objective(g, b, x) - f_ref  # >= 0 up to float64 rounding: ref is optimal
    eps32 = float(np.finfo(np.float32).eps)
    scale = np.abs(f_ref) + 0.5 * np.einsum("ip,ij,jp->p", ref, np.abs(g), ref)
    assert np.all(gap >= -1e-12 * scale)
    assert np.all(gap <= 50 * (cond or 1.0) * eps32 * scale)
    # and better than the clip heuristic wherever the clip is not already optimal
    clip = np.asarray(cholesky_clip(jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32)), dtype=np.float64)
    assert np.all(_objective(g, b, x) <= _objective(g, b, clip) + 50 * eps32 * scale)
    assert np.mean(_objective(g, b, x) < _objective(g, b, clip) - 1e-6 * scale) > 0.5


def test_small_k_single_size_and_block_of_one():
    a, yb, g, b = _problem(7, 9, None, seed=8)
    ref = np.stack([nnls(a, yb[:, j])[0] for j in range(9)], axis=1)
    for block in (1, 4, None):
        x = np.asarray(_bpp(jnp.asarray(g), jnp.asarray(b), block=block))
        np.testing.assert_allclose(x, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_degenerate_inputs():
    # b <= 0 everywhere: x = 0; one column exactly at the unconstrained optimum; a zero right-hand side.
    _, _, g, _ = _problem(6, 1, None, seed=4)
    x_star = np.abs(np.random.default_rng(4).normal(size=6)) + 0.1
    b = np.stack([-np.abs(np.ones(6)), g @ x_star, np.zeros(6)], axis=1)
    x = np.asarray(_bpp(jnp.asarray(g), jnp.asarray(b)))
    np.testing.assert_array_equal(x[:, 0], 0.0)
    np.testing.assert_allclose(x[:, 1], x_star, rtol=1e-12)
    np.testing.assert_array_equal(x[:, 2], 0.0)
    # singular G (duplicated column of A): still a KKT point with the optimal objective
    rng = np.random.default_rng(5)
    a = rng.normal(size=(20, 5))
    a = np.column_stack([a, a[:, 0]])
    yb = rng.normal(size=(20, 10))
    g, b = a.T @ a, a.T @ yb
    x = np.asarray(_bpp(jnp.asarray(g), jnp.asarray(b)))
    ref = np.stack([nnls(a, yb[:, j])[0] for j in range(10)], axis=1)
    assert np.all(x >= 0) and np.all(np.isfinite(x))
    np.testing.assert_allclose(_objective(g, b, x), _objective(g, b, ref), rtol=1e-9, atol=1e-12)
