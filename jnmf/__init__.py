"""jnmf: label-guided non-negative matrix factorization in JAX."""

from . import datasets, graph, tl
from ._assess import AssessResult, assess
from ._chunked import nmf_chunked
from ._consensus import ConsensusResult, consensus
from ._cv import CVResult, cross_validate
from ._data import DataLayout, DenseData, HostSparseData, ShardedSparseData, SparseData, estimate_memory
from ._guided import GuidedFit, guided_nmf
from ._inmf import INMFModel, inmf, quantile_norm
from ._integration import integration_metrics, scale_integration_scores
from ._io import load, save
from ._model import NMFModel, evaluate
from ._nnls import cholesky_clip, nnls_cd, nnls_step
from ._penalties import (
    apply_l1_l2,
    between_groups,
    gram,
    group_scatter,
    proj_adv_gram,
    removal_project_rhs,
    scale_rows,
    scatter_target,
    target_augment,
    target_gram,
)
from ._project import project
from ._rrng import RRandom, r_runif, r_runif_matrix
from ._sklearn import NMF, GuidedNMF
from ._solve import Config, Hyper, Problem, nmf, prepare, solve
from ._sweep import SweepChunkWarning, SweepResult, class_separation, prepare_differentiable, sweep
from ._targets import class_target, compute_target, label_codes, oas_zca_refine, oas_zca_whitener, refine
from ._tune import RemovalTuning, tune_removal
from .graph import (
    FactorNetResult,
    H,
    LayerResult,
    W,
    factor_add,
    factor_concat,
    factor_condition,
    factor_config,
    factor_input,
    factor_net,
    factor_shared,
    fit,
    nmf_layer,
)

__all__ = [
    "AssessResult",
    "CVResult",
    "ConsensusResult",
    "consensus",
    "cross_validate",
    "assess",
    "Config",
    "DataLayout",
    "DenseData",
    "ShardedSparseData",
    "Hyper",
    "NMFModel",
    "Problem",
    "RRandom",
    "HostSparseData",
    "INMFModel",
    "SparseData",
    "apply_l1_l2",
    "between_groups",
    "group_scatter",
    "scatter_target",
    "cholesky_clip",
    "datasets",
    "evaluate",
    "integration_metrics",
    "scale_integration_scores",
    "gram",
    "inmf",
    "nmf",
    "nmf_chunked",
    "estimate_memory",
    "nnls_cd",
    "nnls_step",
    "prepare",
    "proj_adv_gram",
    "r_runif",
    "r_runif_matrix",
    "removal_project_rhs",
    "scale_rows",
    "solve",
    "target_augment",
    "target_gram",
    "class_target",
    "compute_target",
    "label_codes",
    "oas_zca_refine",
    "oas_zca_whitener",
    "refine",
    "SweepChunkWarning",
    "SweepResult",
    "class_separation",
    "prepare_differentiable",
    "sweep",
    "RemovalTuning",
    "tune_removal",
    "graph",
    "FactorNetResult",
    "H",
    "LayerResult",
    "W",
    "factor_add",
    "factor_concat",
    "factor_condition",
    "factor_config",
    "factor_input",
    "factor_net",
    "factor_shared",
    "fit",
    "nmf_layer",
    "GuidedFit",
    "GuidedNMF",
    "guided_nmf",
    "NMF",
    "load",
    "project",
    "quantile_norm",
    "save",
    "tl",
]
