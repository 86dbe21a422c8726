"""Emulation of R's default random number generator (Mersenne-Twister, Inversion, Rejection).

Needed for parity only: RcppML draws its initial W with ``set.seed(s); runif(m * k)`` and ``assess()`` draws
k-means starts and CV folds with ``sample``. numpy's MT19937 is the same generator; only R's seeding scramble,
its ``unif_rand`` fix-up and its rejection sampler for ``sample`` must be written by hand, because no library
exposes them.
"""

from __future__ import annotations

import math

import numpy as np

_U32 = 2.3283064365386963e-10  # 1 / 2^32, R's MT_genrand scale
_I2_32M1 = 1.1641532185403987e-10  # R's fixup for values at 0 or 1


class RRandom:
    """A stream equivalent to R after ``set.seed(seed)`` (R >= 3.6 defaults).

    >>> RRandom(42).runif(2)  # doctest: +SKIP
    array([0.91480604, 0.93707541])
    """

    def __init__(self, seed: int):
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        s = int(seed) % 2**32
        for _ in range(50):
            s = (69069 * s + 1) % 2**32
        key = np.empty(625, dtype=np.uint32)
        for j in range(625):
            s = (69069 * s + 1) % 2**32
            key[j] = s
        # R's first seed word is the MT position (mti); the remaining 624 are the MT state.
        self._bg = np.random.MT19937()
        self._bg.state = {"bit_generator": "MT19937", "state": {"key": key[1:], "pos": 624}}

    def runif(self, n: int) -> np.ndarray:
        """``runif(n)``: float64 array of n uniforms in (0, 1)."""
        u = self._bg.random_raw(int(n)).astype(np.float64) * _U32
        u[u <= 0.0] = _I2_32M1
        u[u >= 1.0] = 1.0 - _I2_32M1
        return u

    def unif_index(self, dn: int) -> int:
        """R_unif_index: an integer uniform in [0, dn) by rejection sampling on ceil(log2(dn)) bits."""
        if dn <= 0:
            return 0
        bits = int(math.ceil(math.log2(dn)))
        while True:
            v = 0
            n = 0
            while n <= bits:
                v = 65536 * v + int(math.floor(self.runif(1)[0] * 65536))
                n += 16
            v &= (1 << bits) - 1
            if v < dn:
                return v

    def sample_int(self, n: int, size: int | None = None) -> np.ndarray:
        """``sample.int(n, size)`` without replacement; 1-based like R."""
        size = n if size is None else int(size)
        if size > n:
            raise ValueError(f"size ({size}) cannot exceed n ({n}) without replacement")
        x = list(range(n))
        out = np.empty(size, dtype=np.int64)
        left = n
        for i in range(size):
            j = self.unif_index(left)
            out[i] = x[j] + 1
            x[j] = x[left - 1]
            left -= 1
        return out

    def sample(self, n: int) -> np.ndarray:
        """``sample(n)`` for a single number n: a permutation of 1..n."""
        return self.sample_int(n)


def r_runif(seed: int, n: int) -> np.ndarray:
    """``set.seed(seed); runif(n)``."""
    return RRandom(seed).runif(n)


def r_runif_matrix(seed: int, m: int, k: int) -> np.ndarray:
    """``set.seed(seed); matrix(runif(m * k), m, k)``: column-major fill, float64 (m, k)."""
    return r_runif(seed, m * k).reshape(k, m).T.copy()
