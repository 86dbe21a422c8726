"""Time to error: every input error of ``nmf`` is raised before anything is compiled (issue 18).

A listener on JAX's backend-compile events counts compilations during the failing call; validation runs in
NumPy outside jit, so a bad argument must cost no compile at all (a compile is what makes a late error slow:
seconds per program on a CPU).
"""

import jax
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf

_COMPILES: list[str] = []


def _listener(name, duration, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(name)


jax.monitoring.register_event_duration_secs_listener(_listener)

rng = np.random.default_rng(0)
A = rng.random((12, 9))
labels = np.repeat([0, 1, 2], 3)

# (description, callable, exception type, regex the message must match: it names the argument)
CASES = [
    ("negative", lambda: jnmf.nmf(-A, 2, seed=1), ValueError, r"\bA\b.*negative"),
    ("inf", lambda: jnmf.nmf(np.where(A > 0.9, np.inf, A), 2, seed=1), ValueError, r"\bA\b.*(infinite|inf)"),
    ("all_nan", lambda: jnmf.nmf(np.full(A.shape, np.nan), 2, seed=1), ValueError, r"every entry is missing"),
    ("all_zero", lambda: jnmf.nmf(np.zeros(A.shape), 2, seed=1), ValueError, r"A is all zeros"),
    ("tiny_scale", lambda: jnmf.nmf(A * 1e-30, 2, seed=1), ValueError, r"rescale"),
    ("k_zero", lambda: jnmf.nmf(A, 0, seed=1), ValueError, r"\bk\b"),
    ("k_float", lambda: jnmf.nmf(A, 2.5, seed=1), (TypeError, ValueError), r"\bk\b"),
    ("k_too_large", lambda: jnmf.nmf(A, 50, seed=1), ValueError, r"\bk\b"),
    ("unknown_option", lambda: jnmf.nmf(A, 2, seed=1, tolerance=1e-3), TypeError, r"tolerance.*did you mean 'tol'"),
    ("seed_wraps", lambda: jnmf.nmf(A, 2, seed=2**32 + 7), ValueError, r"seed must be an integer in"),
    ("w_init_shape", lambda: jnmf.nmf(A, 2, w_init=np.ones((5, 2))), ValueError, r"w_init|initial W"),
    ("w_init_zero", lambda: jnmf.nmf(A, 2, w_init=np.zeros((12, 2))), ValueError, r"initial W is all zeros"),
    ("mask_shape", lambda: jnmf.nmf(A, 2, seed=1, mask=np.zeros((3, 3), bool)), ValueError, r"\bmask\b"),
    ("solver", lambda: jnmf.nmf(A, 2, seed=1, solver="newton"), ValueError, r"\bsolver\b"),
    ("norm", lambda: jnmf.nmf(A, 2, seed=1, norm="L3"), ValueError, r"\bnorm\b"),
    ("tol", lambda: jnmf.nmf(A, 2, seed=1, tol=-1.0), ValueError, r"\btol\b"),
    ("maxit", lambda: jnmf.nmf(A, 2, seed=1, maxit=0), ValueError, r"\bmaxit\b"),
    ("L1", lambda: jnmf.nmf(A, 2, seed=1, L1=2.0), ValueError, r"\bL1\b"),
    ("dtype", lambda: jnmf.nmf(A, 2, seed=1, dtype=np.float16), ValueError, r"\bdtype\b"),
    ("remove_length", lambda: jnmf.nmf(A, 2, seed=1, remove=labels[:5], remove_lambda=0.5), ValueError,
     r"\bremove\b"),
    ("remove_one_class", lambda: jnmf.nmf(A, 2, seed=1, remove=np.zeros(9), remove_lambda=0.5), ValueError,
     r"\bremove\b.*2 (classes|groups)"),
    ("remove_lambda", lambda: jnmf.nmf(A, 2, seed=1, remove=labels, remove_lambda=-1.0), ValueError,
     r"\bremove_lambda\b"),
    ("remove_target_loss", lambda: jnmf.nmf(A, 2, seed=1, loss="poisson", remove=labels, remove_lambda=0.5,
                                             target_H=np.ones((2, 9)), target_lambda=0.1), ValueError,
     r"target_H.*remove=.*loss='mse'"),
    ("target_shape", lambda: jnmf.nmf(A, 2, seed=1, target_H=np.ones((2, 4)), target_lambda=0.1), ValueError,
     r"\btarget_H\b"),
    ("sparse_negative", lambda: jnmf.nmf(sp.csr_matrix(-A), 2, seed=1), ValueError, r"\bA\b.*negative"),
    ("guided_one_class", lambda: jnmf.guided_nmf(A, 2, np.zeros(9), seed=1), ValueError, r"at least 2 classes"),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_input_errors_are_raised_before_any_compile(call, exc, pattern):
    jnmf.nmf(A, 2, seed=1, maxit=2)  # warm up whatever a valid call compiles, so only new compiles count
    _COMPILES.clear()
    with pytest.raises(exc, match=pattern):
        call()
    assert _COMPILES == [], f"{len(_COMPILES)} programs were compiled before the error"
