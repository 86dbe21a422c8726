"""Shared test helpers: where the reference fixtures live, and how to skip clearly without them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests and CI run on the CPU; a lent GPU is used only by explicit device checks.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED = Path(os.environ.get("JNMF_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def _load_npz(name: str):
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference fixture {path} is absent (expected ../shared beside the repository)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. A whole-suite session otherwise keeps thousands of
    executables alive (each with its own code mappings) and the process eventually crashed inside an XLA compile
    (segfault at ~75% of the suite, reproducibly, never when a subset ran)."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(scope="session")
def toy_ref():
    return _load_npz("toy_dense_rcppml.npz")


@pytest.fixture(scope="session")
def hawaii_ref():
    return _load_npz("hawaiibirds_rcppml.npz")


@pytest.fixture(scope="session")
def hawaiibirds():
    import jnmf

    try:
        return jnmf.datasets.load_hawaiibirds()
    except FileNotFoundError as e:
        pytest.skip(f"hawaiibirds data set not available: {e}")
