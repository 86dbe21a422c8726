"""scikit-learn estimators: ``NMF`` and the label-guided ``GuidedNMF``, thin wrappers of ``nmf`` and ``project``.

Orientation. scikit-learn puts samples in rows: ``X`` is (n_samples, n_features) and ``X ≈ W H`` with
``W = transform(X)`` (n_samples, k) and ``H = components_`` (k, n_features). RcppML, the vignette and ``nmf`` put
samples in columns: ``A = X'`` (n_features, n_samples) ``≈ w diag(d) h``. The estimators fit ``A = X'`` and map

    components_ = w'                      (k, n_features), rows summing to 1 (nmf's L1 scaling)
    fit_transform(X) = (diag(d) h)'       (n_samples, k) = model_.embedding()
    transform(X) = (diag(d) project(model_, X'))'
    inverse_transform(W) = W components_  so inverse_transform(transform(X)) ≈ X.

``GuidedNMF.fit_transform(X, y)`` is ``transform(X)`` of the guided fit (the label-free projection, as at predict
time); the guided fit's own embedding ``model_.embedding()`` is kept as ``embedding_`` (class docstring).

The fitted ``NMFModel`` is kept as ``model_``.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from ._guided import check_labels, guided_nmf
from ._model import NMFModel
from ._options import resolve_solver
from ._project import project_host
from ._solve import nmf
from ._targets import label_codes

_SOLVERS = StrOptions({"auto", "cholesky", "cd", "hals", "rcppml"})


def _check_non_negative(X: Any, whom: str) -> None:
    """scikit-learn's message, but NaN-aware: NaN entries are missing data, not an error."""
    values = X.data if sp.issparse(X) else X
    if values.size and np.nanmin(values, initial=0.0) < 0:
        raise ValueError(f"Negative values in data passed to {whom}")


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization ``X ≈ W H`` as a scikit-learn transformer, fitted by ``jnmf.nmf``.

    X (n_samples, n_features) is fitted as ``A = X'`` (features in rows, as RcppML); see the module docstring for
    the mapping. Minimises ``|X - W H|_F^2`` over W, H >= 0 by alternating NNLS with diagonal scaling (RcppML's
    algorithm), with ``nmf``'s L1/L2 penalties on both factor updates.

    NaN entries of X are missing values: the fit and ``transform`` ignore them (``nmf``'s mask), and
    ``reconstruction_err_`` is over observed entries. Computation runs in JAX's default float dtype (float32
    unless ``jax_enable_x64`` is on); returned arrays have X's float dtype.

    Parameters
    ----------
    n_components : int or None
        Rank k; None uses ``min(n_samples, n_features)``. Must not exceed ``min(n_samples, n_features)``.
    tol, max_iter : float, int
        Stop when the relative change of the squared error stays below ``tol`` for 5 consecutive iterations,
        or after ``max_iter`` iterations (a ``ConvergenceWarning`` then).
    random_state : int, RandomState instance or None
        Initial W: an int is used as R's ``set.seed`` (reproduces RcppML); otherwise an int is drawn from it.
    solver : {"cd", "cholesky", "auto", "hals", "rcppml"}
        ``"cd"`` (default): exact NNLS by coordinate descent, so ``transform(X)`` reproduces ``fit_transform(X)``.
        ``"cholesky"``: RcppML's solve-then-clip (fast, not exact NNLS; its h rows carry the H update's own
        scale, a few % off ``d``, so transform differs from fit_transform by that row factor). ``"auto"``:
        ``jnmf.nmf``'s default (HALS; RcppML's rule for a guided fit below k = 32); ``transform`` then projects
        with RcppML's rule (Cholesky when k < 32 and L1 = 0). ``"rcppml"``: RcppML's rule for fit and transform
        (reproduces RcppML's models); ``"hals"``: as ``jnmf.nmf``.
    L1, L2 : float
        Lasso (0 <= L1 < 1) and ridge penalties on both factors, also used by ``transform``.

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        H of ``X ≈ W H``: nmf's ``w'``, rows summing to 1.
    n_components_, n_features_in_, feature_names_in_ : as in scikit-learn.
    n_iter_ : int
        Outer iterations performed.
    reconstruction_err_ : float
        ``|X - W H|_F`` of the fitted W = fit_transform(X) (observed entries only), in float64.
    model_ : NMFModel
        The fitted model of ``A = X'``.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "solver": [_SOLVERS],
        "L1": [Interval(numbers.Real, 0, 1, closed="left")],
        "L2": [Interval(numbers.Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        n_components: int | None = None,
        *,
        tol: float = 1e-4,
        max_iter: int = 100,
        random_state: Any = None,
        solver: str = "cd",
        L1: float = 0.0,
        L2: float = 0.0,
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.solver = solver
        self.L1 = L1
        self.L2 = L2

    # -- shared machinery -----------------------------------------------------------------------------------------

    def _validate_X(self, X: Any, reset: bool) -> Any:
        X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32],
                          ensure_all_finite="allow-nan", reset=reset)
        _check_non_negative(X, f"{type(self).__name__} (input X)")
        return X

    def _rank(self, X: Any) -> int:
        n_samples, n_features = X.shape
        limit = min(n_samples, n_features)
        k = limit if self.n_components is None else int(self.n_components)
        if k > limit:
            raise ValueError(f"n_components={k} must be <= min(n_samples, n_features)={limit} "
                             f"(X has {n_samples} samples and {n_features} features)")
        return k

    def _seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            return int(rs)
        return int(check_random_state(rs).randint(np.iinfo(np.int32).max))

    def _nmf_kwargs(self) -> dict:
        return dict(tol=self.tol, maxit=self.max_iter, solver=self.solver, L1=self.L1, L2=self.L2)

    def _fit_model(self, A: Any, k: int, y: Any) -> NMFModel:
        return nmf(A, k, seed=self._seed(), **self._nmf_kwargs())

    def _store(self, model: NMFModel, X: Any) -> np.ndarray:
        """Set the fitted attributes from ``model`` (fit on X') and return fit_transform's W in X's dtype."""
        if not bool(model.converged):
            warnings.warn(f"Maximum number of iterations {self.max_iter} reached without convergence "
                          f"(tol={self.tol}). Increase max_iter to improve convergence.", ConvergenceWarning,
                          stacklevel=3)
        self.model_ = model
        self.components_ = np.asarray(model.w, X.dtype).T.copy()
        self.n_components_ = model.k
        self.n_iter_ = int(model.iter)
        # On the host (as model.embedding() computes it): eager jax ops would compile once per new shape.
        embedding = (np.asarray(model.d)[:, None] * np.asarray(model.h)).T.astype(X.dtype)
        self.reconstruction_err_ = _frobenius_error(X, embedding, self.components_)
        return embedding

    def _project_raw(self, model: NMFModel, A: Any, **guidance: Any) -> np.ndarray:
        """The raw NNLS solution ``diag(d) project(model, A)`` (k, n) with the estimator's solver and penalties."""
        h = project_host(model, A, L1=self.L1, L2=self.L2, solver=self.solver, **guidance)
        return np.asarray(model.d)[:, None] * h

    def _project(self, X: Any) -> np.ndarray:
        """W for new samples: nmf's NNLS projection of X' onto the fitted w, as (n_samples, k) in X's dtype."""
        return np.asarray(self._project_raw(self.model_, X.T).T, X.dtype)

    # -- public API -----------------------------------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit the model to X (n_samples, n_features) and return W (n_samples, n_components) of ``X ≈ W H``.

        W is the fitted model's embedding ``(diag(d) h)'``, i.e. ``jnmf.nmf(X.T, k, ...).embedding()``.
        """
        X = self._validate_X(X, reset=True)
        k = self._rank(X)
        model = self._fit_model(X.T, k, y)
        return self._store(model, X)

    def fit(self, X: Any, y: Any = None) -> NMF:
        """Fit the model to X (n_samples, n_features); returns self."""
        self.fit_transform(X, y)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """W (n_samples, n_components) for new X by NNLS projection onto the fitted components (``jnmf.project``)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return self._project(X)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Map W (n_samples, n_components) back to data space: ``W components_`` (n_samples, n_features)."""
        check_is_fitted(self)
        X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
        if X.shape[1] != self.n_components_:
            raise ValueError(f"X has {X.shape[1]} components, but {type(self).__name__} has "
                             f"n_components_={self.n_components_}")
        out = X @ self.components_.astype(X.dtype)
        return np.asarray(out)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True  # NaN = missing entry, masked in the fit and in transform
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _frobenius_error(X: Any, W: np.ndarray, H: np.ndarray) -> float:
    """``|X - W H|_F`` over the non-NaN entries of X, in float64, without densifying a sparse X."""
    W = np.asarray(W, np.float64)
    H = np.asarray(H, np.float64)
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        if not np.isnan(X.data).any():
            x2 = float(X.data @ X.data)
            cross = float(np.sum(X.multiply(W @ H)))
            fit2 = float(np.sum((W.T @ W) * (H @ H.T)))
            return float(np.sqrt(max(x2 - 2.0 * cross + fit2, 0.0)))
        X = X.toarray()
    resid = np.asarray(X, np.float64) - W @ H
    return float(np.sqrt(np.nansum(resid * resid)))


class GuidedNMF(NMF):
    """Label-guided NMF (RcppML's guided NMF vignette) as a scikit-learn transformer: ``fit(X, y)``.

    ``fit(X, y)`` runs the vignette's two steps on ``A = X'``: an unguided fit ``base = nmf(A, k, seed)``, then
    ``T = compute_target(base.h, y, whiten)`` (class centroids, OAS-ZCA whitened) and the guided fit
    ``nmf(A, k, seed, target_H=T, target_lambda=±target_lambda, removal=removal)`` from the same seed:
    ``guidance="enrich"`` (+) pulls each sample's H toward its class target, ``"remove"`` (−) removes the label
    information (``removal="scatter"``: penalises the between-class scatter of the embedding with monotone
    majorize-minimize updates; ``"project"``: removes a fraction ``min(target_lambda, 1)`` of the class-mean
    differences; ``"proj_adv"``: RcppML's PROJ_ADV, which does not converge). Missing labels (None, NaN) leave a
    sample unguided. y is required, with at least 2 classes among its labelled samples (checked before any fit).

    Semantics (what a ``Pipeline`` or ``GridSearchCV`` sees). The labels shape the components W
    (``components_``) and the training embedding of the guided fit (``embedding_``, the vignette's embedding).
    ``transform(X)`` needs no labels: it projects X onto the guided components by NNLS (``jnmf.project``, no target
    term), so held-out samples are embedded as they would be at prediction time. ``fit_transform(X, y)`` returns
    exactly ``fit(X, y).transform(X)``, the same label-free projection of the training data, so that a model
    selected by cross-validation is trained and evaluated on embeddings made the same way; the label-shaped
    training embedding stays available as ``embedding_``. ``transform(X, y)`` applies the fit's guidance to
    new samples with known labels (each gets its class's target column, labels unseen in the fit get 0, scaled per
    component by ``h_scale_`` as the fit's embedding is), and reproduces ``embedding_`` on the training data (up
    to the fit's last W change).

    Parameters
    ----------
    n_components : int or None
        Rank k, as ``NMF``.
    target_lambda : float >= 0
        Guidance strength (the magnitude of nmf's ``target_lambda``; the vignette uses 0.1).
    guidance : {"enrich", "remove"}
        Enrich (``+target_lambda``) or remove (``-target_lambda``) the label information.
    removal : {"scatter", "project", "proj_adv"}
        Removal mode for ``guidance="remove"``.
    whiten : bool
        OAS-ZCA whiten the class target (``compute_target``).
    tol, max_iter, random_state, solver, L1, L2
        As ``NMF``.

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        H of ``X ≈ W H``: the guided fit's ``w'``, rows summing to 1.
    embedding_ : ndarray (n_samples, n_components)
        The guided fit's training embedding ``(diag(d) h)'`` = ``model_.embedding()``, shaped by y.
    reconstruction_err_ : float
        ``|X - W H|_F`` of the returned ``W = fit_transform(X, y)`` (the label-free projection).
    base_model_ : NMFModel
        The unguided fit the target was computed from.
    model_ : NMFModel
        The guided fit of ``A = X'``.
    target_ : ndarray (n_components, n_samples)
        The target T of the guided fit, rows in the order of ``components_``.
    h_scale_ : ndarray (n_components,)
        ``d / d_H``: the fit's d over the row sums of the guided H update on the training data.
    classes_ : ndarray
        Label levels (sorted, as R's ``as.factor``).
    class_targets_ : ndarray (n_components, n_classes)
        The target column of each class.
    n_components_, n_features_in_, feature_names_in_, n_iter_
        As ``NMF``.

    Warnings
    --------
    The embedding of the training samples (``embedding_``, and ``jnmf.tl.nmf(labels_key=...)``'s ``X_nmf``) was
    pulled toward the class targets of the very labels it is then scored against: clustering and
    classification scores of it (``jnmf.assess``, kNN accuracy) partly measure the labels that shaped it, not
    what the model learnt. Score guidance on held-out samples: fit on a training split and assess
    ``transform(X_test)``, e.g. with ``cross_val_score(make_pipeline(GuidedNMF(...), KNeighborsClassifier()), X,
    y)``.

    Examples
    --------
    >>> import numpy as np, jnmf
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.uniform(size=(60, 12)), np.repeat(["a", "b", "c"], 20)
    >>> est = jnmf.GuidedNMF(3, target_lambda=0.1, random_state=0).fit(X, y)
    >>> W = est.transform(X)                  # label-free, == est.fit_transform(X, y)
    >>> est.embedding_.shape                  # the guided training embedding
    (60, 3)
    """

    _parameter_constraints: dict = {
        **NMF._parameter_constraints,
        "target_lambda": [Interval(numbers.Real, 0, None, closed="left")],
        "guidance": [StrOptions({"enrich", "remove"})],
        "removal": [StrOptions({"scatter", "project", "proj_adv"})],
        "whiten": ["boolean"],
    }

    def __init__(
        self,
        n_components: int | None = None,
        *,
        target_lambda: float = 0.1,
        guidance: str = "enrich",
        removal: str = "scatter",
        whiten: bool = True,
        tol: float = 1e-4,
        max_iter: int = 100,
        random_state: Any = None,
        solver: str = "cd",
        L1: float = 0.0,
        L2: float = 0.0,
    ):
        super().__init__(n_components, tol=tol, max_iter=max_iter, random_state=random_state, solver=solver,
                         L1=L1, L2=L2)
        self.target_lambda = target_lambda
        self.guidance = guidance
        self.removal = removal
        self.whiten = whiten

    @property
    def _signed_lambda(self) -> float:
        return float(self.target_lambda) if self.guidance == "enrich" else -float(self.target_lambda)

    def _fit_model(self, A: Any, k: int, y: Any) -> NMFModel:
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None "
                             "(the labels that guide the fit)")
        y = check_array(y, ensure_2d=False, dtype=None, ensure_all_finite=False, input_name="y")
        if y.ndim != 1:
            raise ValueError(f"y should be a 1d array of labels, got shape {y.shape}")
        check_consistent_length(A.T, y)
        codes, levels = check_labels(y, A.shape[1], name="y")
        # The guided fit's solver rule, checked before the base fit runs.
        resolve_solver(self.solver, k, self.L1, scatter=self.guidance == "remove" and self.removal == "scatter",
                       target=True)
        fit = guided_nmf(A, k, y, target_lambda=self.target_lambda, guidance=self.guidance, removal=self.removal,
                         whiten=self.whiten, seed=self._seed(), **self._nmf_kwargs())
        base, model = fit.base, fit.model
        T = fit.target[fit.order]  # rows in the order of the model's (sorted) components
        # The fit's embedding is diag(d) h = diag(d / d_H) H_raw, with H_raw the guided H update's solution and d_H
        # its row sums: the target shrinks H_raw and the W update restores the scale. transform(X, y) applies the
        # same factor to the guided projection of new samples, so that it reproduces fit_transform on X.
        d_H = np.sum(self._project_raw(model, A, target_H=T, target_lambda=self._signed_lambda,
                                       removal=self.removal), axis=1)
        self.h_scale_ = np.where(d_H > 0, np.asarray(model.d) / np.where(d_H > 0, d_H, 1.0), 1.0)
        onehot = np.zeros((len(codes), max(len(levels), 1)), T.dtype)
        onehot[codes >= 0, codes[codes >= 0]] = 1.0
        # T is constant within a class, so its class means are its class columns (0 for an unused level).
        self.base_model_ = base
        self.target_ = T
        self.classes_ = np.asarray(levels)
        self.class_targets_ = T @ onehot / np.maximum(onehot.sum(0), 1.0)
        return model

    def _store(self, model: NMFModel, X: Any) -> np.ndarray:
        self.embedding_ = super()._store(model, X)
        W = self._project(X)  # fit_transform == fit().transform: the label-free projection (class docstring)
        self.reconstruction_err_ = _frobenius_error(X, W, self.components_)
        return W

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit the guided model to X (n_samples, n_features) with labels y (n_samples,); return
        ``W = transform(X)`` (n_samples, k), the label-free projection onto the guided components (the guided fit's
        own training embedding is ``embedding_``)."""
        return super().fit_transform(X, y)

    def fit(self, X: Any, y: Any = None) -> GuidedNMF:
        """Fit the guided model to X (n_samples, n_features) with labels y (n_samples,); returns self."""
        self.fit_transform(X, y)
        return self

    def _project(self, X: Any) -> np.ndarray:
        # The guided projection program at lambda 0 (where the target is inert: the same numbers as the plain
        # projection), so that fit's d_H projection and transform share one compiled program.
        T = np.zeros((self.n_components_, X.shape[0]))
        raw = self._project_raw(self.model_, X.T, target_H=T, target_lambda=0.0, removal=self.removal)
        return np.asarray(raw.T, X.dtype)

    def transform(self, X: Any, y: Any = None) -> np.ndarray:
        """W (n_samples, k) for X: its NNLS projection onto the guided components (no labels needed). With labels
        y (n_samples,), the fit's guidance is applied to the projection too (reproduces ``embedding_`` on the
        training data)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if y is None:
            return self._project(X)
        y = check_array(y, ensure_2d=False, dtype=None, ensure_all_finite=False, input_name="y")
        check_consistent_length(X, y)
        codes, levels = label_codes(y, X.shape[0], name="y")
        index = {level: i for i, level in enumerate(self.classes_.tolist())}
        fit_codes = np.asarray([index.get(level, -1) for level in levels], np.int64)
        mapped = np.where(codes >= 0, fit_codes[np.maximum(codes, 0)] if len(levels) else -1, -1)
        T_new = np.where(mapped >= 0, self.class_targets_[:, np.maximum(mapped, 0)], 0.0)
        raw = self._project_raw(self.model_, X.T, target_H=T_new, target_lambda=self._signed_lambda,
                                removal=self.removal)
        return np.asarray((self.h_scale_[:, None] * raw).T, X.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
