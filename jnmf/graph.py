"""Factor graphs: compose NMF layers (multi-modal, deep, concatenated, added, conditioned) as RcppML's FactorNet.

A graph is an immutable description; ``fit`` runs one ``jnmf.nmf`` per layer (the same validated, jit-compiled
driver, no second engine) and returns an immutable ``FactorNetResult``::

    T = jnmf.compute_target(base.h, island)                                   # (k, n)
    res = (factor_input(A, name="birds")                                      # A (m, n): features x samples
           .nmf_layer(8, H=H(target=T, target_lambda=0.10), name="guided")    # R: |> nmf_layer(k = 8, H = H(...))
           .factor_net(config=factor_config(seed=42))                          # R: |> factor_net()
           .fit())
    res["guided"].W, res["guided"].d, res["guided"].H                         # (m, 8), (8,), (8, n)

Function form, as in R: ``fit(factor_net(inp, nmf_layer(inp, 8, H=H(...)), factor_config(seed=42)))``.

What a layer factorizes, ``X ≈ W diag(d) H`` with the options of ``nmf()`` (samples are the columns of every input):

- **Data** (``factor_input``, ``factor_shared``, ``factor_condition`` of these): X is the row-stack of the inputs,
  ``[A1; A2; ...; Z]`` ((m1 + m2 + ... + p) x n). W has one row block per input (and per Z) in the order given;
  H (k x n) is the shared sample embedding.
- **Layers** (RcppML's deep nets): X is the *transpose* of the row-stack Y of the upstream factors: ``Y = H_a``
  (a layer), ``[H_a; H_b]`` (``factor_concat``), ``H_a + H_b`` (``factor_add``), ``[Y; Z]`` (``factor_condition``).
  A layer on a first layer with H1 (k1 x n) factorizes ``X = H1'`` (n x k1): its W (n x k2) is the per-sample
  embedding and its H (k2 x k1) maps fine to coarse components. A third chained layer factorizes ``H2'``
  (k1 x k2), which has no sample axis any more (RcppML's meaning, kept). H blocks name the upstream layers.

Layers run in the order they were built (a topological order, since a node can only refer to nodes built before
it); each one is a complete ``nmf()`` fit on its input, with its own convergence. Option precedence for a layer:
``factor_config`` (maxit, tol, seed, solver, norm, ...) < the layer's ``L1, L2, upper_bound, nonneg`` < the
non-``None`` fields of its ``W(...)`` / ``H(...)``. Layer i (0-based, build order) starts from
``nmf(seed=seed + i)`` unless it has its own ``seed``, so a one-layer graph equals ``nmf(seed=seed)``.

Deviations from RcppML 1.0.0 (reference part B): ``W()``/``H()`` targets are applied (RcppML drops them); sparse
multi-modal inputs are stacked (RcppML fits only the first); W blocks and layers keep input and build order
(RcppML sorts them by name); every option is applied or rejected (RcppML drops mask, robust, L21, config dots, ...);
every layer reads its own input (RcppML feeds the first input to every input-reading layer); a layer feeding two
branches is fitted once; deep layers are fitted one after the other to convergence instead of RcppML's joint
Gauss-Seidel sweeps (there is no feedback from later layers, so both reach the same kind of fixed point; each
layer here keeps ``nmf()``'s 5-iteration patience rule and sort by d); ``seed=None`` draws a fresh seed (recorded
in ``FactorNetResult.seed``), where RcppML is silently deterministic; conditioning matrices are p x n (samples as
columns, like every other jnmf matrix) and must be non-negative; ``svd_layer`` and streaming inputs do not exist.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from . import _validate as V
from ._model import NMFModel
from ._options import LOOPS, NORMS, REMOVALS, SOLVERS, check_seed
from ._solve import nmf

__all__ = [
    "Add",
    "Concat",
    "Condition",
    "FactorConfig",
    "FactorNet",
    "FactorNetResult",
    "GraphConfig",
    "H",
    "Input",
    "Layer",
    "LayerResult",
    "Node",
    "Shared",
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
]

# Build order: every node takes the next number when it is created. A node can only refer to nodes created before
# it, so sorting by this number is both "the order the user built them" and a topological order.
_SERIAL = itertools.count()

# RcppML options that jnmf's engine does not implement; naming them gives a pointed error instead of a silent drop.
_RCPPML_ONLY = frozenset({
    "L21", "angular", "graph", "graph_lambda", "mask", "zi", "projective", "symmetric", "robust", "center", "scale",
    "method", "loss", "verbose", "threads", "resource", "test_fraction", "cv_seed", "mask_zeros", "patience",
})

_NODE_HELP = "factor_input, nmf_layer, factor_shared, factor_concat, factor_add or factor_condition"


def _reject_options(where: str, options: Mapping[str, Any]) -> None:
    if not options:
        return
    names = sorted(options)
    rcppml = [n for n in names if n in _RCPPML_ONLY]
    msg = f"{where}: unsupported option(s) {names}"
    if rcppml:
        msg += (f"; {rcppml} exist in RcppML, which silently drops them in factor graphs; jnmf does not support "
                "them in graphs and refuses rather than ignore them")
    raise TypeError(msg)


def _check_name(name: Any, where: str) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise TypeError(f"{where}: name must be a non-empty string or None, got {name!r}")
    return name


def _check_node(node: Any, where: str, what: str = "input") -> Node:
    if isinstance(node, Node):
        return node
    hint = " (wrap data in factor_input(A) first)" if isinstance(node, np.ndarray | jax.Array) or sp.issparse(node) \
        else ""
    raise TypeError(f"{where}: {what} must be a graph node ({_NODE_HELP}), got {type(node).__name__}{hint}")


def _frozen_matrix(value: Any, name: str) -> np.ndarray:
    """A finite dense float copy that cannot be written to (graph descriptions are immutable)."""
    if sp.issparse(value):
        value = value.toarray()
    try:
        arr = np.array(value, dtype=np.float64)  # a copy, so later changes to the caller's array cannot leak in
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real matrix, got {type(value).__name__}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    arr.setflags(write=False)
    return arr


# ---------------------------------------------------------------------------------------------------------------
# per-factor and graph configurations
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FactorConfig:
    """Per-factor settings of a layer, made by ``W(...)`` or ``H(...)``; ``None`` inherits the layer's value.

    ``target`` is (k, c) for H (c = columns of the layer's input) and (r, k) for W (r = its rows), as
    ``nmf(target_H=, target_W=)``; ``target_lambda`` as in ``nmf`` (> 0 pulls towards the target, < 0 removes it).
    """

    side: str
    L1: float | None = None
    L2: float | None = None
    nonneg: bool | None = None
    upper_bound: float | None = None
    target: np.ndarray | None = dataclasses.field(default=None, repr=False)
    target_lambda: float | None = None


def _factor_config(side: str, L1, L2, nonneg, upper_bound, target, target_lambda, unsupported) -> FactorConfig:
    where = f"{side}()"
    _reject_options(where, unsupported)
    if L1 is not None:
        L1 = V.check_real(L1, f"{where} L1", low=0.0, high=1.0, high_open=True)
    if L2 is not None:
        L2 = V.check_real(L2, f"{where} L2", low=0.0)
    if upper_bound is not None:
        upper_bound = V.check_real(upper_bound, f"{where} upper_bound", low=0.0)
    if nonneg is not None and not isinstance(nonneg, bool | np.bool_):
        raise TypeError(f"{where} nonneg must be a bool or None, got {nonneg!r}")
    if target_lambda is not None:
        target_lambda = V.check_real(target_lambda, f"{where} target_lambda")
    if target is not None:
        target = _frozen_matrix(target, f"{where} target")
        if target_lambda is None:
            raise ValueError(f"{where}: target is given but target_lambda is not; give target_lambda (> 0 pulls "
                             "towards the target, < 0 removes it)")
    elif target_lambda not in (None, 0.0):
        raise ValueError(f"{where}: target_lambda is {target_lambda} but no target is given (RcppML would silently "
                         "ignore it); give target= as well")
    return FactorConfig(side, L1, L2, None if nonneg is None else bool(nonneg), upper_bound, target, target_lambda)


def W(*, L1: float | None = None, L2: float | None = None, nonneg: bool | None = None,
      upper_bound: float | None = None, target: Any = None, target_lambda: float | None = None,
      **unsupported: Any) -> FactorConfig:
    """Settings for a layer's W (r x k): ``nmf_layer(..., W=W(L1=0.1, target=T_W, target_lambda=0.1))``.

    ``target`` is (r, k) like ``nmf(target_W=)`` (RcppML's ``W(target=)`` is k x r: transpose it).
    """
    return _factor_config("W", L1, L2, nonneg, upper_bound, target, target_lambda, unsupported)


def H(*, L1: float | None = None, L2: float | None = None, nonneg: bool | None = None,
      upper_bound: float | None = None, target: Any = None, target_lambda: float | None = None,
      **unsupported: Any) -> FactorConfig:
    """Settings for a layer's H (k x c): ``nmf_layer(..., H=H(target=T, target_lambda=0.10))``, T (k, c).

    The target maths are ``nmf(target_H=T, target_lambda=...)``'s: ``G + lam I``, ``B + lam T`` for lam > 0,
    ``removal`` (``factor_config``) for lam < 0.
    """
    return _factor_config("H", L1, L2, nonneg, upper_bound, target, target_lambda, unsupported)


@dataclasses.dataclass(frozen=True, eq=False)
class GraphConfig:
    """Graph-wide settings made by ``factor_config``; the meaning of each field is ``nmf()``'s."""

    maxit: int = 100
    tol: float = 1e-4
    seed: Any = None
    solver: str = "auto"
    norm: str = "L1"
    sort: bool = True
    removal: str = "scatter"
    cd_maxit: int = 100
    cd_tol: float = 1e-8
    layout: str = "auto"
    loop: str = "while"
    dtype: Any = None


def _check_seed(seed: Any, where: str, initial_w_shape: tuple[int, int] | None = None) -> Any:
    """None, an int, a jax.random key, or (per layer only) an initial W matrix of ``initial_w_shape``."""
    kind, value = check_seed(seed, f"{where} seed", initial_w_shape)
    return None if kind == "none" else value


def factor_config(maxit: int = 100, tol: float = 1e-4, seed: Any = None, *, solver: str = "auto", norm: str = "L1",
                  sort: bool = True, removal: str = "scatter", cd_maxit: int = 100, cd_tol: float = 1e-8,
                  layout: str = "auto", loop: str = "while", dtype: Any = None, **unsupported: Any) -> GraphConfig:
    """Graph-wide fit settings (RcppML's ``factor_config``); each has ``nmf()``'s meaning and default.

    ``seed``: an int (layer i starts from R's ``set.seed(seed + i); runif``), a ``jax.random`` key (layer i uses
    ``fold_in(key, i)``) or None (a fresh int seed, recorded in the result). RcppML's CV, loss, resource and
    logging options are rejected, not ignored.
    """
    _reject_options("factor_config", unsupported)
    maxit = V.check_int(maxit, "factor_config maxit", 1)
    tol = V.check_real(tol, "factor_config tol", low=0.0)
    cd_maxit = V.check_int(cd_maxit, "factor_config cd_maxit", 1)
    cd_tol = V.check_real(cd_tol, "factor_config cd_tol", low=0.0)
    V.check_choice(solver, "factor_config solver", SOLVERS)
    V.check_choice(norm, "factor_config norm", NORMS)
    V.check_choice(removal, "factor_config removal", REMOVALS)
    V.check_choice(loop, "factor_config loop", LOOPS)
    V.check_choice(layout, "factor_config layout", ("auto", "dense", "sparse"))
    if not isinstance(sort, bool | np.bool_):
        raise TypeError(f"factor_config sort must be a bool, got {sort!r}")
    if dtype is not None and jnp.dtype(dtype) not in (jnp.float32, jnp.float64):
        raise ValueError(f"factor_config dtype must be None, float32 or float64, got {dtype}")
    return GraphConfig(maxit=maxit, tol=tol, seed=_check_seed(seed, "factor_config"), solver=solver, norm=norm,
                       sort=bool(sort), removal=removal, cd_maxit=cd_maxit, cd_tol=cd_tol, layout=layout, loop=loop,
                       dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------------------------------------------


class Node:
    """Base of the graph nodes. Every node knows, at construction, the shape of the matrix Y it hands downstream.

    ``_shape``: (rows, cols) of Y in samples-as-columns orientation (A for inputs, H for layers).
    ``_kind``: ``"data"`` (inputs and their stacks) or ``"factors"`` (layers and their combinations).
    ``_blocks``: ((node, rows), ...), the named row blocks of Y. ``_samples``: whether Y's columns are samples.
    """

    _serial: int
    _shape: tuple[int, int]
    _kind: str
    _blocks: tuple[tuple[Node, int], ...]
    _samples: bool

    def _set(self, **fields: Any) -> None:
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    def _children(self) -> tuple[Node, ...]:
        return ()

    # chaining, so that Python reads like the R pipeline (``x |> nmf_layer(k = 8) |> factor_net()``)
    def nmf_layer(self, k: int, *, W: FactorConfig | None = None, H: FactorConfig | None = None,
                  name: str | None = None, **options: Any) -> Layer:
        """``nmf_layer(self, k, ...)``."""
        return nmf_layer(self, k, W=W, H=H, name=name, **options)

    def condition(self, Z: Any, *, name: str | None = None) -> Condition:
        """``factor_condition(self, Z)``."""
        return factor_condition(self, Z, name=name)

    def factor_net(self, inputs: Input | Sequence[Input] | None = None,
                   config: GraphConfig | None = None) -> FactorNet:
        """``factor_net(inputs, self, config)``: this node is the output; ``.factor_net(config)`` also works."""
        if isinstance(inputs, GraphConfig) and config is None:
            inputs, config = None, inputs
        return factor_net(inputs, self, config)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Input(Node):
    """A data matrix A (m x n, features x samples): dense (numpy/jax) or scipy.sparse, validated like ``nmf``'s."""

    data: Any
    name: str | None = None

    def __post_init__(self):
        m, n = self.data.shape
        self._set(_serial=next(_SERIAL), _shape=(m, n), _kind="data", _blocks=((self, m),), _samples=True)

    def __repr__(self) -> str:
        kind = "sparse" if sp.issparse(self.data) else "dense"
        return f"Input({self.name!r}, {self._shape[0]}x{self._shape[1]} {kind})"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Shared(Node):
    """Inputs with the same samples, stacked by rows: one layer on it fits ``[A1; A2; ...] ≈ [W1; W2; ...] d H``."""

    inputs: tuple[Input, ...]

    def __post_init__(self):
        blocks = tuple(b for inp in self.inputs for b in inp._blocks)
        rows = sum(inp._shape[0] for inp in self.inputs)
        self._set(_serial=next(_SERIAL), _shape=(rows, self.inputs[0]._shape[1]), _kind="data", _blocks=blocks,
                  _samples=True)

    def _children(self) -> tuple[Node, ...]:
        return self.inputs

    def __repr__(self) -> str:
        return f"Shared({', '.join(repr(i) for i in self.inputs)})"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Condition(Node):
    """``node`` with per-column metadata Z (p x c) appended as rows: Y = [Y_node; Z]."""

    input: Node
    Z: np.ndarray
    name: str | None = None

    def __post_init__(self):
        rows, cols = self.input._shape
        p = self.Z.shape[0]
        self._set(_serial=next(_SERIAL), _shape=(rows + p, cols), _kind=self.input._kind,
                  _blocks=self.input._blocks + ((self, p),), _samples=self.input._samples)

    def _children(self) -> tuple[Node, ...]:
        return (self.input,)

    def __repr__(self) -> str:
        return f"Condition({self.input!r}, Z {self.Z.shape[0]}x{self.Z.shape[1]}, name={self.name!r})"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Concat(Node):
    """Branches' factors stacked by rows, Y = [H_a; H_b; ...] (sum of k x c); the next layer factorizes Y'."""

    branches: tuple[Node, ...]

    def __post_init__(self):
        blocks = tuple(b for br in self.branches for b in br._blocks)
        rows = sum(br._shape[0] for br in self.branches)
        self._set(_serial=next(_SERIAL), _shape=(rows, self.branches[0]._shape[1]), _kind="factors",
                  _blocks=blocks, _samples=all(br._samples for br in self.branches))

    def _children(self) -> tuple[Node, ...]:
        return self.branches

    def __repr__(self) -> str:
        return f"Concat({', '.join(repr(b) for b in self.branches)})"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Add(Node):
    """Branches' factors summed, Y = H_a + H_b + ... (k x c, equal shapes); the next layer factorizes Y'."""

    branches: tuple[Node, ...]

    def __post_init__(self):
        self._set(_serial=next(_SERIAL), _shape=self.branches[0]._shape, _kind="factors",
                  _blocks=((self, self.branches[0]._shape[0]),), _samples=all(br._samples for br in self.branches))

    def _children(self) -> tuple[Node, ...]:
        return self.branches

    def __repr__(self) -> str:
        return f"Add({', '.join(repr(b) for b in self.branches)})"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Layer(Node):
    """One NMF ``X ≈ W diag(d) H`` of rank k on the matrix its input provides (see the module docstring).

    Per-factor settings are resolved at construction and stored as (W, H) pairs, ready for ``nmf()``.
    """

    input: Node
    k: int
    name: str | None
    L1: tuple[float, float]
    L2: tuple[float, float]
    nonneg: tuple[bool, bool]
    upper_bound: tuple[float, float]
    target_W: np.ndarray | None
    target_H: np.ndarray | None
    target_lambda: tuple[float, float]
    seed: Any = None

    def __post_init__(self):
        rows, cols = self._x_shape
        self._set(_serial=next(_SERIAL), _shape=(self.k, cols), _kind="factors", _blocks=((self, self.k),),
                  _samples=self.input._kind == "data" and self.input._samples)

    @property
    def _x_shape(self) -> tuple[int, int]:
        """Shape of the matrix X this layer factorizes: Y of a data input, Y' of a factor input."""
        rows, cols = self.input._shape
        return (rows, cols) if self.input._kind == "data" else (cols, rows)

    @property
    def _sample_axis(self) -> str | None:
        """Where this layer's per-sample embedding lives: columns of H, rows of W, or nowhere."""
        if self.input._kind == "data":
            return "H" if self.input._samples else None
        return "W" if self.input._samples else None

    def _children(self) -> tuple[Node, ...]:
        return (self.input,)

    def __repr__(self) -> str:
        r, c = self._x_shape
        return f"Layer({self.name!r}, k={self.k}, X {r}x{c})"


def factor_input(A: Any, name: str | None = None) -> Input:
    """A data matrix A (m x n, features x samples): numpy, jax or scipy.sparse, finite and non-negative.

    ``name`` labels its W block in multi-modal layers (default ``"input<i>"`` by position in the net).
    The graph refers to A; it does not copy it.
    """
    if isinstance(A, Node):
        raise TypeError(f"factor_input: A must be a data matrix, got a graph node {A!r}")
    return Input(V.check_data(A, "factor_input A"), _check_name(name, "factor_input"))


def factor_shared(*inputs: Input) -> Shared:
    """Multi-modal input: two or more ``factor_input`` nodes with the same n samples share H; each gets its W block.

    A layer on it fits ``[A1; A2; ...] ≈ [W1; W2; ...] diag(d) H`` (sparse inputs stay sparse); its ``W_blocks``
    come back in this argument order.
    """
    if len(inputs) == 1 and isinstance(inputs[0], list | tuple):
        inputs = tuple(inputs[0])
    if len(inputs) < 2:
        raise ValueError(f"factor_shared: needs at least two inputs, got {len(inputs)}")
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Input):
            kind = type(inp).__name__
            raise TypeError(f"factor_shared: input {i + 1} must be a factor_input node, got {kind}"
                            + (" (layers are combined with factor_concat or factor_add)" if isinstance(inp, Node)
                               else ""))
    if len({id(i) for i in inputs}) != len(inputs):
        raise ValueError("factor_shared: the same input appears more than once")
    n = {inp._shape[1] for inp in inputs}
    if len(n) != 1:
        cols = [inp._shape[1] for inp in inputs]
        raise ValueError(f"factor_shared: inputs must have the same number of samples (columns), got {cols}")
    return Shared(tuple(inputs))


def _branches(where: str, branches: tuple[Any, ...]) -> tuple[Node, ...]:
    if len(branches) == 1 and isinstance(branches[0], list | tuple):
        branches = tuple(branches[0])
    if len(branches) < 2:
        raise ValueError(f"{where}: needs at least two branches, got {len(branches)}")
    for i, br in enumerate(branches):
        _check_node(br, where, f"branch {i + 1}")
        if br._kind != "factors":
            raise TypeError(f"{where}: branch {i + 1} must be a layer (or a combination of layers), got {br!r}; "
                            "inputs are combined with factor_shared")
    if len({id(b) for b in branches}) != len(branches):
        raise ValueError(f"{where}: the same branch appears more than once")
    cols = [br._shape[1] for br in branches]
    if len(set(cols)) != 1:
        raise ValueError(f"{where}: branches must have the same number of columns (samples), got {cols}")
    return tuple(branches)


def factor_concat(*layers: Node) -> Concat:
    """Stack two or more layers' H by rows, ``Y = [H_a; H_b; ...]`` ((k_a + k_b + ...) x n).

    A layer on it factorizes Y' (n x (k_a + k_b + ...)): W (n x k) embeds the samples, H (k x sum k) has one column
    block per branch (``H_blocks``).
    """
    return Concat(_branches("factor_concat", layers))


def factor_add(*layers: Node) -> Add:
    """Sum two or more layers' H, ``Y = H_a + H_b + ...`` (all k x n, equal k); a layer on it factorizes Y'."""
    branches = _branches("factor_add", layers)
    ks = [br._shape[0] for br in branches]
    if len(set(ks)) != 1:
        raise ValueError(f"factor_add: branches must have equal k (rows of H), got {ks}")
    return Add(branches)


def factor_condition(node: Node, Z: Any, *, name: str | None = None) -> Condition:
    """Append per-sample metadata Z (p x c, non-negative) to ``node``'s matrix as rows: ``[A; Z]`` or ``[H; Z]``.

    c is the node's number of columns (n for inputs and first layers). A layer on a conditioned input fits W
    ((m + p) x k) whose last p rows load Z; a layer on a conditioned layer factorizes ``[H; Z]'`` (n x (k + p)).
    RcppML takes Z as n x p; jnmf keeps samples as columns everywhere, so pass ``Z.T``. ``name`` labels Z's block
    (default ``"Z<i>"``).
    """
    _check_node(node, "factor_condition", "node")
    rows, cols = node._shape
    Zm = _frozen_matrix(Z, "factor_condition Z")
    if Zm.shape[1] != cols:
        hint = "; it looks transposed (samples as rows): pass Z.T" if Zm.shape[0] == cols else ""
        raise ValueError(f"factor_condition: Z must be p x {cols} (one column per column of the node's matrix, "
                         f"{rows} x {cols}), got {Zm.shape[0]} x {Zm.shape[1]}{hint}")
    if Zm.shape[0] < 1:
        raise ValueError("factor_condition: Z has no rows")
    if np.min(Zm) < 0:
        raise ValueError(f"factor_condition: Z must be non-negative for NMF, min is {np.min(Zm):.4g} "
                         "(shift or min-max scale it)")
    return Condition(node, Zm, _check_name(name, "factor_condition"))


def _pair(value: Any, override_w: Any, override_h: Any, check) -> tuple[Any, Any]:
    w, h = check(value)
    return (w if override_w is None else override_w, h if override_h is None else override_h)


def _upstream_layers(node: Node) -> list[Layer]:
    """The layers whose H feeds ``node``'s matrix directly (through concat, add and condition nodes)."""
    if isinstance(node, Layer):
        return [node]
    return [lay for child in node._children() for lay in _upstream_layers(child)]


def nmf_layer(input: Node, k: int, *, W: FactorConfig | None = None, H: FactorConfig | None = None,
              name: str | None = None, L1: Any = 0.0, L2: Any = 0.0, upper_bound: Any = 0.0, nonneg: Any = True,
              seed: Any = None, **options: Any) -> Layer:
    """An NMF layer ``X ≈ W diag(d) H`` of rank k on ``input`` (any node).

    On data (an input, ``factor_shared``, or a condition of these) X is the row-stack ``[A1; ...; Z]`` (r x n):
    W (r x k), H (k x n). On layers X is the transpose of their stacked H (RcppML's deep layers): after a layer with
    H1 (k1 x n), X = H1' (n x k1), so W (n x k) is the per-sample embedding and H (k x k1); after that, H2' (k1 x k)
    has no sample axis. Concat gives X (n x sum k), add X (n x k_branch), a condition p more columns.

    ``L1, L2, upper_bound, nonneg``: the layer's defaults for both factors (a scalar or a (W, H) pair, as ``nmf``);
    ``W=W(...)`` / ``H=H(...)`` override them per factor and carry targets. ``seed`` (an int, a ``jax.random``
    key or an (r, k) initial W) overrides the graph's seed for this layer. Shapes are checked here.
    """
    where = f"nmf_layer({name!r})" if isinstance(name, str) else "nmf_layer"
    _reject_options(where, options)
    _check_node(input, where)
    name = _check_name(name, where)
    for arg, cfg, side in (("W", W, "W"), ("H", H, "H")):
        if cfg is not None and not (isinstance(cfg, FactorConfig) and cfg.side == side):
            got = f"{cfg.side}(...)" if isinstance(cfg, FactorConfig) else type(cfg).__name__
            raise TypeError(f"{where}: {arg}= takes {side}(...), got {got}")
    wc, hc = W or FactorConfig("W"), H or FactorConfig("H")
    layer_rows, layer_cols = (input._shape if input._kind == "data" else input._shape[::-1])
    try:
        k = V.check_rank(k, layer_rows, layer_cols)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err} (the layer factorizes a {layer_rows} x {layer_cols} matrix)") from None
    pairs = {
        "L1": _pair(L1, wc.L1, hc.L1, lambda v: V.check_pair(v, f"{where} L1", low=0.0, high=1.0, high_open=True)),
        "L2": _pair(L2, wc.L2, hc.L2, lambda v: V.check_pair(v, f"{where} L2", low=0.0)),
        "upper_bound": _pair(upper_bound, wc.upper_bound, hc.upper_bound,
                             lambda v: V.check_pair(v, f"{where} upper_bound", low=0.0)),
        "nonneg": _pair(nonneg, wc.nonneg, hc.nonneg, lambda v: V.check_bool_pair(v, f"{where} nonneg")),
    }
    target_w = target_h = None
    if wc.target is not None:
        target_w = V.check_matrix(wc.target, f"{where} W(target=)", (layer_rows, k))
    if hc.target is not None:
        target_h = V.check_matrix(hc.target, f"{where} H(target=)", (k, layer_cols))
    lam = (wc.target_lambda or 0.0, hc.target_lambda or 0.0)
    if input._kind == "factors":
        negative = [lay for lay in _upstream_layers(input) if not lay.nonneg[1]]
        if negative:
            raise ValueError(f"{where}: reads the H of {negative[0]!r}, which has nonneg=False on H and may be "
                             "negative; NMF needs non-negative input")
    seed = _check_seed(seed, where, initial_w_shape=(layer_rows, k))
    return Layer(input=input, k=k, name=name, target_W=target_w, target_H=target_h, target_lambda=lam, seed=seed,
                 **pairs)


# ---------------------------------------------------------------------------------------------------------------
# the net
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FactorNet:
    """A validated graph (made by ``factor_net``): its inputs, layers in build order, and resolved names."""

    inputs: tuple[Input, ...]
    output: Node
    config: GraphConfig
    layers: tuple[Layer, ...]
    names: Mapping[Node, str]

    def fit(self) -> FactorNetResult:
        """``fit(self)``."""
        return fit(self)

    def __repr__(self) -> str:
        lines = [f"FactorNet: {len(self.layers)} layer(s), inputs {[self.names[i] for i in self.inputs]}"]
        for lay in self.layers:
            r, c = lay._x_shape
            what = "X" if lay.input._kind == "data" else "Y'"
            src = ", ".join(self.names[b] for b, _ in lay.input._blocks)
            lines.append(f"  {self.names[lay]}: NMF(k={lay.k}) of {what} ({r}x{c}) from [{src}]")
        return "\n".join(lines)


def _reachable(output: Node) -> list[Node]:
    seen: dict[int, Node] = {}
    stack = [output]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node._children())
    return sorted(seen.values(), key=lambda nd: nd._serial)


def _label(node: Node, names: Mapping[Node, str]) -> str:
    """Name of an H block: a layer's or condition's name; ``a+b`` for a sum, ``[a, b]`` for a stack."""
    if isinstance(node, Add):
        return "+".join(_label(b, names) for b in node.branches)
    if isinstance(node, Concat):
        return "[" + ", ".join(_label(b, names) for b in node.branches) + "]"
    return names[node]


def factor_net(inputs: Input | Sequence[Input] | Node | None = None, output: Node | None = None,
               config: GraphConfig | None = None) -> FactorNet:
    """Validate a graph: ``factor_net(inputs, output, config)``; ``factor_net(layer)`` infers the inputs.

    ``output``: the last layer (or a ``factor_concat`` / ``factor_add`` of layers); every layer upstream of it
    is fitted, each once, in build order. ``inputs`` (optional): the ``factor_input`` nodes, which must be exactly
    those the output depends on; their order is the result's ``input_names`` order. Unnamed nodes get
    ``"input<i>"``, ``"L<i>"`` and ``"Z<i>"`` by position; all names must be unique.
    """
    if output is None and isinstance(inputs, Node) and inputs._kind == "factors":
        output, inputs = inputs, None  # the R pipeline ``x |> nmf_layer(k) |> factor_net()`` passes the layer first
    if output is None:
        raise TypeError("factor_net: output is required (the last nmf_layer, or a factor_concat/factor_add of layers)")
    _check_node(output, "factor_net", "output")
    if output._kind != "factors" or isinstance(output, Condition):
        raise TypeError(f"factor_net: output must be a layer or a factor_concat/factor_add of layers, got {output!r}"
                        + ("; its Z would not be used by any layer" if isinstance(output, Condition) else ""))
    if config is None:
        config = factor_config()
    if not isinstance(config, GraphConfig):
        raise TypeError(f"factor_net: config must come from factor_config(), got {type(config).__name__}")

    nodes = _reachable(output)
    reached = [nd for nd in nodes if isinstance(nd, Input)]
    if inputs is None:
        declared = reached
    else:
        declared = [inputs] if isinstance(inputs, Node) else list(inputs)
        for i, inp in enumerate(declared):
            if not isinstance(inp, Input):
                raise TypeError(f"factor_net: inputs[{i}] must be a factor_input node, got {type(inp).__name__}")
        if len({id(i) for i in declared}) != len(declared):
            raise ValueError("factor_net: an input is listed more than once in inputs")
        unused = [inp for inp in declared if all(inp is not r for r in reached)]
        if unused:
            raise ValueError(f"factor_net: input(s) {unused} are declared but the output does not depend on them")
        missing = [r for r in reached if all(r is not inp for inp in declared)]
        if missing:
            raise ValueError(f"factor_net: the output depends on input(s) {missing} that are not listed in inputs")

    names: dict[Node, str] = {}
    for prefix, group in (("input", declared), ("L", [nd for nd in nodes if isinstance(nd, Layer)]),
                          ("Z", [nd for nd in nodes if isinstance(nd, Condition)])):
        for i, nd in enumerate(group):
            names[nd] = nd.name if nd.name is not None else f"{prefix}{i + 1}"
    counts: dict[str, int] = {}
    for nm in names.values():
        counts[nm] = counts.get(nm, 0) + 1
    dup = sorted(nm for nm, c in counts.items() if c > 1)
    if dup:
        raise ValueError(f"factor_net: names must be unique across inputs, layers and conditions; repeated: {dup}")
    for nd in nodes:
        if isinstance(nd, Add):
            names[nd] = _label(nd, names)
    layers = tuple(nd for nd in nodes if isinstance(nd, Layer))
    return FactorNet(inputs=tuple(declared), output=output, config=config, layers=layers,
                     names=MappingProxyType(names))


# ---------------------------------------------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LayerResult:
    """One fitted layer ``X ≈ W diag(d) H`` (W (r, k), d (k,), H (k, c); see ``FactorNet`` for X).

    ``W_blocks``: W's row blocks by input (and Z) name, in input order, for layers on data (empty otherwise).
    ``H_blocks``: H's column blocks by upstream layer (and Z) name, for layers on layers (empty otherwise).
    ``model``: the ``NMFModel`` of the layer's ``nmf()`` call. ``sample_axis``: ``"H"`` if H's columns are the
    samples, ``"W"`` if W's rows are (a deep layer), None if the layer has no sample axis.
    """

    name: str
    W: jax.Array
    d: jax.Array
    H: jax.Array
    iterations: int
    loss: float
    converged: bool
    W_blocks: Mapping[str, jax.Array]
    H_blocks: Mapping[str, jax.Array]
    model: NMFModel
    sample_axis: str | None

    @property
    def k(self) -> int:
        return int(self.d.shape[0])

    def embedding(self) -> jax.Array:
        """The (n, k) sample embedding: ``(diag(d) H)'`` for a layer on data, ``W diag(d)`` for a deep layer."""
        if self.sample_axis == "H":
            return (self.d[:, None] * self.H).T
        if self.sample_axis == "W":
            return self.W * self.d
        raise ValueError(f"layer {self.name!r} has no sample embedding: it factorizes the transpose of a deeper "
                         "layer's H, whose rows are components, not samples (RcppML's deep-layer meaning)")

    def __repr__(self) -> str:
        (r, k), c = self.W.shape, self.H.shape[1]
        status = "converged" if self.converged else "not converged"
        return (f"LayerResult({self.name!r}: W {r}x{k}, d[{k}], H {k}x{c}, iter={self.iterations}, "
                f"loss={self.loss:.6g}, {status})")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FactorNetResult:
    """A fitted graph: ``layers`` in build order, ``result[name]`` or ``result[i]`` for one ``LayerResult``.

    ``input_names`` are in input order; ``seed`` is the graph seed that was used (drawn when the config had None).
    """

    layers: tuple[LayerResult, ...]
    by_name: Mapping[str, LayerResult]
    input_names: tuple[str, ...]
    seed: Any
    config: GraphConfig

    def __getitem__(self, key: str | int) -> LayerResult:
        if isinstance(key, str):
            if key not in self.by_name:
                raise KeyError(f"no layer named {key!r}; layers are {list(self.by_name)}")
            return self.by_name[key]
        return self.layers[key]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.layers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lay.name for lay in self.layers)

    @property
    def converged(self) -> bool:
        return all(lay.converged for lay in self.layers)

    @property
    def total_loss(self) -> float:
        """Sum of the layers' squared errors (each in its own input's units)."""
        return float(sum(lay.loss for lay in self.layers))

    def embedding(self, layer: str | int | None = None) -> jax.Array:
        """The (n, k) sample embedding of ``layer`` (a name or a build index; default the first layer built)."""
        return self[0 if layer is None else layer].embedding()

    def __repr__(self) -> str:
        lines = [f"FactorNetResult: {len(self.layers)} layer(s), seed={self.seed}"]
        lines += [f"  {lay!r}" for lay in self.layers]
        return "\n".join(lines)


def _stack_data(node: Node) -> Any:
    """X of a layer on data: the row-stack of its inputs' matrices and Zs; sparse stays sparse."""
    parts: list[Any] = []

    def collect(nd: Node) -> None:
        if isinstance(nd, Input):
            parts.append(nd.data)
        elif isinstance(nd, Shared):
            for inp in nd.inputs:
                collect(inp)
        elif isinstance(nd, Condition):
            collect(nd.input)
            parts.append(nd.Z)
        else:  # pragma: no cover - excluded by construction
            raise AssertionError(nd)

    collect(node)
    if len(parts) == 1:
        return parts[0]  # the very object nmf() would get, so a one-layer graph is nmf() exactly
    if any(sp.issparse(p) for p in parts):
        return sp.vstack([p if sp.issparse(p) else sp.csr_matrix(p) for p in parts], format="csc")
    return np.vstack([np.asarray(p) for p in parts])


def _stack_factors(node: Node, fitted: Mapping[Node, LayerResult]) -> np.ndarray:
    """Y of a layer on layers (samples as columns): H, [H_a; H_b], H_a + H_b, [Y; Z]."""
    if isinstance(node, Layer):
        return np.asarray(fitted[node].H)
    if isinstance(node, Concat):
        return np.vstack([_stack_factors(b, fitted) for b in node.branches])
    if isinstance(node, Add):
        return sum(_stack_factors(b, fitted) for b in node.branches)
    if isinstance(node, Condition):
        y = _stack_factors(node.input, fitted)
        return np.vstack([y, node.Z.astype(y.dtype)])
    raise AssertionError(node)  # pragma: no cover - excluded by construction


def _layer_seed(layer: Layer, index: int, base: Any) -> Any:
    if layer.seed is not None:
        return layer.seed
    if isinstance(base, jax.Array):
        return base if index == 0 else jax.random.fold_in(base, index)
    return base + index


def _split(x: jax.Array, blocks: tuple[tuple[Node, int], ...], names: Mapping[Node, str], axis: int):
    out, start = {}, 0
    for node, size in blocks:
        out[names[node]] = x[start:start + size] if axis == 0 else x[:, start:start + size]
        start += size
    return MappingProxyType(out)


def fit(net: FactorNet) -> FactorNetResult:
    """Fit every layer of ``net`` in build order, each by one ``jnmf.nmf`` call on the matrix its input provides.

    Returns a ``FactorNetResult`` (layers in build order; multi-modal W blocks in input order). Errors from a
    layer's options name the layer.
    """
    if not isinstance(net, FactorNet):
        raise TypeError(f"fit: expected a FactorNet from factor_net(), got {type(net).__name__}")
    cfg = net.config
    base = cfg.seed
    if base is None:  # RcppML's NULL seed is silently deterministic; draw one, like nmf(seed=None), and record it
        base = int(np.random.default_rng().integers(0, 2**31 - 1 - len(net.layers)))
    fitted: dict[Node, LayerResult] = {}
    for i, layer in enumerate(net.layers):
        name = net.names[layer]
        on_data = layer.input._kind == "data"
        X = _stack_data(layer.input) if on_data else _stack_factors(layer.input, fitted).T
        try:
            model = nmf(X, layer.k, tol=cfg.tol, maxit=cfg.maxit, seed=_layer_seed(layer, i, base), L1=layer.L1,
                        L2=layer.L2, nonneg=layer.nonneg, solver=cfg.solver, norm=cfg.norm, sort=cfg.sort,
                        upper_bound=layer.upper_bound, target_H=layer.target_H, target_W=layer.target_W,
                        target_lambda=layer.target_lambda, removal=cfg.removal, cd_maxit=cfg.cd_maxit,
                        cd_tol=cfg.cd_tol, layout=cfg.layout, loop=cfg.loop, dtype=cfg.dtype)
        except (TypeError, ValueError, FloatingPointError) as err:
            raise type(err)(f"layer {name!r}: {err}") from err
        blocks = layer.input._blocks
        fitted[layer] = LayerResult(
            name=name, W=model.w, d=model.d, H=model.h, iterations=int(model.iter), loss=float(model.loss),
            converged=bool(model.converged),
            W_blocks=_split(model.w, blocks, net.names, 0) if on_data else MappingProxyType({}),
            H_blocks=MappingProxyType({}) if on_data else _split(model.h, blocks, net.names, 1),
            model=model, sample_axis=layer._sample_axis)
    layers = tuple(fitted[lay] for lay in net.layers)
    return FactorNetResult(layers=layers, by_name=MappingProxyType({lay.name: lay for lay in layers}),
                           input_names=tuple(net.names[i] for i in net.inputs), seed=cfg.seed if cfg.seed is not None
                           else base, config=cfg)
