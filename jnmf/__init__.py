"""jnmf: label-guided non-negative matrix factorization in JAX."""

from ._rrng import RRandom, r_runif, r_runif_matrix

# --- assess (issue 4) ---
# --- guidance (issue 3) ---

__all__ = ["RRandom", "r_runif", "r_runif_matrix"]
