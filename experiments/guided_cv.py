"""GuidedNMF under honest cross-validation (issue 19, item 2): held-out kNN accuracy on hawaiibirds.

3-fold stratified split of the cells (islands with >= 10 cells), ``GuidedNMF(8, target_lambda=lam)`` fitted on the
training cells, the held-out cells embedded by ``transform`` (no labels, as a Pipeline predicts). A kNN classifier is
trained on either training embedding:

* ``fit_transform`` (now): the label-free projection of the training cells onto the guided W, made as the test
  embedding is;
* ``embedding_`` (what ``fit_transform`` returned before): the guided fit's own, label-shaped training embedding.

Run: ``python experiments/guided_cv.py`` (about a minute; needs ../shared/data/hawaiibirds).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's jnmf, not whichever one is installed
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

import jnmf  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")  # convergence warnings of the short default fits
    ds = jnmf.datasets.load_hawaiibirds()
    X, y = ds.A.T.tocsr(), np.asarray(ds.obs["island"], dtype=object)
    keep = np.isin(y, [c for c in set(y) if np.sum(y == c) >= 10])
    X, y = X[keep], y[keep]
    print(f"hawaiibirds {X.shape[0]} cells x {X.shape[1]} species, 3-fold held-out kNN accuracy")
    for lam in (0.0, 0.1):
        now, before = [], []
        for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(X, y):
            est = jnmf.GuidedNMF(8, target_lambda=lam, random_state=42, solver="auto").fit(X[train], y[train])
            W_test = est.transform(X[test])
            for scores, W_train in ((now, est.transform(X[train])), (before, est.embedding_)):
                scores.append(KNeighborsClassifier().fit(W_train, y[train]).score(W_test, y[test]))
        print(f"target_lambda={lam}: train on fit_transform (projection) {np.mean(now):.3f}, "
              f"on embedding_ (guided) {np.mean(before):.3f}")


if __name__ == "__main__":
    main()
