"""jnmf: label-guided non-negative matrix factorization in JAX.

Public names are imported on first use (module ``__getattr__``, PEP 562): ``import jnmf`` loads neither JAX nor
scikit-learn, scanpy or matplotlib, so the command line and a notebook's first cell start quickly; ``jnmf.nmf``
imports the solver the first time it is looked up. ``jnmf.pl`` holds the plots, ``jnmf.tl`` the AnnData tools,
``jnmf.datasets`` the data sets and ``jnmf.graph`` the factor graphs.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._log import logger as _logger  # noqa: F401  (attaches the "jnmf" logger's NullHandler)

# public name -> private module that defines it ("" : the name is a submodule of jnmf)
_LAZY: dict[str, tuple[str, ...]] = {
    "": ("cli", "datasets", "graph", "pl", "tl"),
    "_assess": ("assess", "AssessResult"),
    "_chunked": ("nmf_chunked",),
    "_consensus": ("consensus", "ConsensusResult"),
    "_cv": ("cross_validate", "CVResult"),
    "_data": ("DataLayout", "DenseData", "estimate_memory", "HostSparseData", "ShardedSparseData", "SparseData"),
    "_guided": ("guided_nmf", "GuidedFit"),
    "_inmf": ("inmf", "INMFModel", "quantile_norm"),
    "_integration": ("integration_metrics", "scale_integration_scores"),
    "_io": ("load", "save"),
    "_log": ("ConvergenceWarning",),
    "_model": ("evaluate", "NMFModel"),
    "_nnls": ("cholesky_clip", "nnls_cd", "nnls_step"),
    "_penalties": ("apply_l1_l2", "between_groups", "gram", "group_scatter", "proj_adv_gram", "removal_project_rhs",
                   "scale_rows", "scatter_target", "target_augment", "target_gram"),
    "_project": ("project",),
    "_rrng": ("r_runif", "r_runif_matrix", "RRandom"),
    "_sklearn": ("GuidedNMF", "NMF"),
    "_solve": ("Config", "Hyper", "nmf", "prepare", "Problem", "solve"),
    "_sweep": ("class_separation", "prepare_differentiable", "sweep", "SweepChunkWarning", "SweepResult"),
    "_targets": ("class_target", "compute_target", "label_codes", "oas_zca_refine", "oas_zca_whitener", "refine"),
    "_tune": ("RemovalTuning", "tune_removal"),
    "graph": ("factor_add", "factor_concat", "factor_condition", "factor_config", "factor_input", "factor_net",
              "factor_shared", "FactorNetResult", "fit", "H", "LayerResult", "nmf_layer", "W"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = sorted(_WHERE, key=str.lower)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jnmf")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _WHERE:
        module = _WHERE[name]
        value = importlib.import_module(f".{name}" if not module else f".{module}", __name__)
        if module:
            value = getattr(value, name)
    else:
        raise AttributeError(f"module 'jnmf' has no attribute {name!r}")
    globals()[name] = value  # resolved once; later look-ups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
