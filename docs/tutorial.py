"""jnmf tutorial: RcppML's guided-NMF vignette on hawaiibirds, then an integration workflow on pbmc68k_reduced.

An executable script (CI runs it: tests/test_tutorial.py). Read it top to bottom; every step prints what it found.

    python docs/tutorial.py                         # the vignette's settings (maxit 100), ~1 min on 2 cores
    python docs/tutorial.py --quick --out /tmp/tut  # small maxit (what the test runs), figures into /tmp/tut

Needs the hawaiibirds files (RcppML's ``hawaiibirds`` data set, exported as ``hawaiibirds.mtx``,
``hawaiibirds_samples.csv``, ``hawaiibirds_species.csv``; ``--data-dir``, ``$JNMF_DATA_DIR`` or ``../shared/data``),
and for part 2 scanpy (``pip install "jnmf[integration]"``: pbmc68k_reduced ships inside scanpy). Figures need
matplotlib (``jnmf[figures]``) and are written only with ``--out``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

import jnmf

# assess drops classes with fewer than 10 samples (3 of hawaiibirds' 8 islands), as RcppML does, and says so.
warnings.filterwarnings("ignore", message="assess: dropped")


def scores(model_or_x, labels, A=None, base_mse=None) -> str:
    """NMI and ARI of k-means, kNN accuracy (5-fold CV) against the labels, and the MSE ratio to the baseline."""
    m = jnmf.assess(model_or_x, labels, metrics=("nmi", "ari", "classification"), classifiers=("knn",)).metrics
    text = f"NMI {m['nmi']:.3f}  ARI {m['ari']:.3f}  kNN {m['accuracy_knn']:.3f}"
    if A is not None:
        text += f"  MSE ratio {jnmf.evaluate(model_or_x, A) / base_mse:.2f}"
    return text


def vignette(data_dir: str | None, maxit: int, out: Path | None) -> None:
    """Part 1: baseline, post-hoc refine, target enrichment, removal, each judged by assess."""
    print("== Part 1: the guided-NMF vignette on hawaiibirds ==")
    ds = jnmf.datasets.load_hawaiibirds(data_dir)
    A, island = ds.A, ds.obs["island"]  # A: 183 species x 1183 grid cells (scipy CSC); island per cell
    print(f"A: {A.shape[0]} species x {A.shape[1]} cells, {A.nnz} non-zeros")

    # 1. Baseline: set.seed(42); nmf(A, k = 8, tol = 1e-4, maxit = 100) in RcppML. solver="rcppml" takes RcppML's
    #    NNLS rule (Cholesky-then-clip below k = 32), so the fit is RcppML's to the digit; jnmf's default, HALS,
    #    reaches a lower loss sooner but is another fit.
    base = jnmf.nmf(A, 8, tol=1e-4, maxit=maxit, seed=42, solver="rcppml")
    base_mse = jnmf.evaluate(base, A)
    print(f"baseline  ({int(base.iter)} iterations): {scores(base, island, A, base_mse)}")

    # 2. Post-hoc refine: pull each cell's embedding towards its island's (whitened) centroid; W is refitted.
    refined = jnmf.refine(base, island, lambda_=0.5)
    print(f"refine    (lambda 0.5):      {scores(refined, island, A, base_mse)}")

    # 3. Target enrichment: a new fit whose H is drawn towards T, the islands' whitened centroids.
    T = jnmf.compute_target(base.h, island)  # (k, n)
    guided = jnmf.nmf(A, 8, tol=1e-4, maxit=maxit, seed=42, target_H=T, target_lambda=0.10, solver="rcppml")
    print(f"target    (lambda 0.10):     {scores(guided, island, A, base_mse)}")

    # 4. Removal: the opposite goal, an embedding whose island means agree (the between-island scatter penalty,
    #    a stated objective whose updates never increase it). remove= names the grouping explicitly.
    removed = jnmf.nmf(A, 8, tol=1e-4, maxit=maxit, seed=42, remove=island, remove_lambda=0.1)
    print(f"removal   (scatter, 0.1):    {scores(removed, island, A, base_mse)}")

    if out is not None:
        import matplotlib.pyplot as plt

        fig = jnmf.pl.composition_grid([base, refined, guided, removed], island,
                                       ["baseline", "refine", "target", "removal"])
        fig.savefig(out / "tutorial_composition.png", dpi=jnmf.pl.DPI)
        plt.close(fig)
        print(f"wrote {out / 'tutorial_composition.png'}")


def integration(maxit: int, out: Path | None) -> None:
    """Part 2: scanpy's pbmc68k_reduced, the cell-cycle phase removed as a batch, with jnmf.tl.nmf."""
    print("== Part 2: integration on pbmc68k_reduced (scanpy) ==")
    try:
        import scanpy as sc
    except ImportError:
        print('skipped: needs scanpy (pip install "jnmf[integration]")')
        return
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()  # 700 cells x 765 genes, log-normalised (non-negative)
    print(f"adata: {adata.n_obs} cells x {adata.n_vars} genes; batch = phase, cell types = bulk_labels")

    jnmf.tl.nmf(adata, 10, seed=0, maxit=maxit, key_added="nmf")  # unintegrated
    # phase removed: the between-phase scatter penalty, weight batch_lambda (an array leaf of one compiled program,
    # so a second strength costs no compile). Stronger removal mixes the phases more and keeps less of the rest.
    jnmf.tl.nmf(adata, 10, seed=0, maxit=maxit, batch_key="phase", batch_lambda=0.1, key_added="nmf_rm01")
    jnmf.tl.nmf(adata, 10, seed=0, maxit=maxit, batch_key="phase", batch_lambda=1.0, key_added="nmf_rm")
    for key in ("nmf", "nmf_rm01", "nmf_rm"):
        x = adata.obsm["X_" + key]  # (cells, k), as sc.pp.pca writes X_pca
        m = jnmf.assess(x, adata.obs["bulk_labels"], batch=adata.obs["phase"],
                        metrics=("nmi", "ari", "batch_mixing")).metrics
        print(f"{key:8s} cell types NMI {m['nmi']:.3f} ARI {m['ari']:.3f}; phase mixing (kNN entropy, higher "
              f"= better) {m['batch_knn_entropy']:.3f}")
    # The embedding is scanpy's to use from here: neighbours, clustering, UMAP (sc.tl.umap(adata) next). The
    # Gaussian kernel keeps this step quick; scanpy's default ("umap") compiles umap-learn's numba code first.
    sc.pp.neighbors(adata, use_rep="X_nmf_rm", n_neighbors=15, method="gauss")
    print(f"neighbour graph on X_nmf_rm: {adata.obsp['connectivities'].nnz} edges")
    if out is not None:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)  # jnmf.pl draws into the axes given
        jnmf.pl.composition(adata, "phase", basis="X_nmf", ax=axes[0], title="NMF", legend=False)
        jnmf.pl.composition(adata, "phase", basis="X_nmf_rm", ax=axes[1], title="phase removed")
        fig.tight_layout()
        fig.savefig(out / "tutorial_pbmc_phase.png", dpi=jnmf.pl.DPI)
        plt.close(fig)
        print(f"wrote {out / 'tutorial_pbmc_phase.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with the hawaiibirds files")
    parser.add_argument("--quick", action="store_true", help="maxit 20 (for CI): the steps, not the numbers")
    parser.add_argument("--out", type=Path, default=None, help="write the figures into this folder")
    args = parser.parse_args(argv)
    maxit = 20 if args.quick else 100
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    np.set_printoptions(precision=3)
    vignette(args.data_dir, maxit, args.out)
    integration(maxit, args.out)


if __name__ == "__main__":
    main()
