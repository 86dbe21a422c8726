"""The guided-NMF vignette's factor-graph snippet on hawaiibirds, where the target now changes the embedding.

RcppML 1.0.0 (vignette ``guided-nmf``, last section)::

    T_mat <- compute_target(model_base@h, labels)
    net_enrich <- factor_input(A) |> nmf_layer(k = 8, H = H(target = T_mat, target_lambda = 0.10)) |> factor_net()
    net_remove <- factor_input(A) |> nmf_layer(k = 8, H = H(target = T_mat, target_lambda = -0.10)) |> factor_net()

In RcppML the ``H(target=)`` of a graph never reaches the solver (reference B.4, B.8 Ex 4): both nets return the
unguided model. Here each net is fitted (seed 42, tol 1e-4, maxit 100) and compared with ``nmf(target_H=T, ...)``
and with the unguided graph (what RcppML returns). Printed per model: max |difference| to the matching ``nmf()``,
the relative change of the (n x k) embedding against the unguided graph, the between/within-island variance ratio
of the embedding, NMI, ARI and kNN accuracy of ``assess`` (RcppML's protocol; islands with < 10 cells dropped),
and the MSE ratio to the baseline. A second part fits the vignette's multi-modal example (species + geography,
both sparse) and shows that both inputs are used, with W blocks in input order.

The removal row uses RcppML's PROJ_ADV, which does not converge on this data and is chaotic after ~20 iterations,
so its scores depend on rounding (README); "remove project" is jnmf's convergent ``removal="project"`` mode.

Run: ``python experiments/factor_graph.py [--float32] [--json PATH]``. float64 by default: PROJ_ADV's iterates
overflow float32 late in the 100 iterations (see experiments/removal_modes.py).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import jax
import numpy as np
import scipy.sparse as sp

import jnmf

VIGNETTE = {  # RcppML's printed numbers for the nmf() versions of these models (the graph versions are unguided)
    "baseline": {"nmi": 0.488, "ari": 0.382, "knn_acc": 0.898, "mse_ratio": 1.0},
    "enrich": {"nmi": 0.846, "ari": 0.663, "knn_acc": 0.997, "mse_ratio": 1.4},
    "remove": {"nmi": 0.257, "ari": 0.156, "knn_acc": 0.829, "mse_ratio": 3.6},
}


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def variance_ratio(E: np.ndarray, labels: np.ndarray) -> float:
    """Between-class over within-class sum of squares of the embedding rows (all classes, summed over columns)."""
    E = np.asarray(E, np.float64)
    mean = E.mean(axis=0)
    between = within = 0.0
    for c in np.unique(labels):
        Ec = E[labels == c]
        between += len(Ec) * float(np.sum((Ec.mean(axis=0) - mean) ** 2))
        within += float(np.sum((Ec - Ec.mean(axis=0)) ** 2))
    return between / within


def scores(result, A, island, mse_base) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # assess warns about the three islands with < 10 cells, as RcppML does
        m = jnmf.assess(result, island, metrics=("nmi", "ari", "classification"), classifiers=("knn",)).metrics
    layer = result[0]
    return {
        "nmi": m["nmi"],
        "ari": m["ari"],
        "knn_acc": m["accuracy_knn"],
        "mse_ratio": jnmf.evaluate(layer.model, A) / mse_base,
        "variance_ratio": variance_ratio(np.asarray(result.embedding()), island),
        "iter": layer.iterations,
        "converged": layer.converged,
    }


def guided_part(A, island, fit) -> dict:
    base = jnmf.nmf(A, 8, **fit)
    mse_base = jnmf.evaluate(base, A)
    T = jnmf.compute_target(base.h, island)
    config = jnmf.factor_config(**fit)

    # the vignette's snippet, in jnmf's chaining spelling, plus the unguided graph RcppML actually returns
    nets = {
        "unguided graph": jnmf.factor_input(A).nmf_layer(8).factor_net(config),
        "enrich": jnmf.factor_input(A).nmf_layer(8, H=jnmf.H(target=T, target_lambda=0.10)).factor_net(config),
        "remove": jnmf.factor_input(A).nmf_layer(8, H=jnmf.H(target=T, target_lambda=-0.10)).factor_net(config),
        # jnmf's convergent removal mode, chosen graph-wide in factor_config
        "remove project": jnmf.factor_input(A).nmf_layer(8, H=jnmf.H(target=T, target_lambda=-0.30))
        .factor_net(jnmf.factor_config(removal="project", **fit)),
    }
    lambdas = {"unguided graph": None, "enrich": 0.10, "remove": -0.10, "remove project": -0.30}
    results = {name: jnmf.fit(net) for name, net in nets.items()}
    E_plain = np.asarray(results["unguided graph"].embedding(), np.float64)

    rows = {}
    for name, res in results.items():
        lam = lambdas[name]
        removal = "project" if name == "remove project" else "proj_adv"
        ref = base if lam is None else jnmf.nmf(A, 8, target_H=T, target_lambda=lam, removal=removal, **fit)
        E = np.asarray(res.embedding(), np.float64)
        row = scores(res, A, island, mse_base)
        row.update({
            "vs_nmf_max_abs_w": max_diff(res[0].W, ref.w),
            "vs_nmf_max_abs_h": max_diff(res[0].H, ref.h),
            "vs_nmf_max_rel_d": float(np.max(np.abs(np.asarray(res[0].d) / np.asarray(ref.d) - 1.0))),
            "embedding_rel_change": float(np.linalg.norm(E - E_plain) / np.linalg.norm(E_plain)),
            "h_max_abs_change": max_diff(res[0].H, results["unguided graph"][0].H),
        })
        rows[name] = row
    return rows


def multimodal_part(data, fit) -> dict:
    """Vignette Ex 2: species (183 x n, sparse) + geography (2 x n), weighted to 0.1 of the species mass.

    RcppML scales lat/lng with ``scale()`` (negative values) and, with both inputs sparse, fits species only.
    Here geography is min-max scaled to [0, 1] (NMF needs non-negative data) and both inputs are fitted.
    """
    A = data.A
    geo = np.vstack([data.obs["lat"], data.obs["lng"]]).astype(np.float64)
    geo = (geo - geo.min(axis=1, keepdims=True)) / np.ptp(geo, axis=1, keepdims=True)
    geo *= 0.1 * np.abs(A).sum() / geo.sum()
    geography = sp.csc_matrix(geo)
    species_in = jnmf.factor_input(A, name="species")
    geo_in = jnmf.factor_input(geography, name="geography")
    joint = jnmf.factor_shared(species_in, geo_in).nmf_layer(8, name="joint")
    res = jnmf.fit(jnmf.factor_net([species_in, geo_in], joint, jnmf.factor_config(**fit)))
    species_only = jnmf.nmf(A, 8, **fit)
    stacked = jnmf.nmf(sp.vstack([A, geography], format="csc"), 8, **fit)
    layer = res["joint"]
    return {
        "W_blocks": {name: list(block.shape) for name, block in layer.W_blocks.items()},
        "vs_stacked_nmf_max_abs_h": max_diff(layer.H, stacked.h),
        "vs_species_only_max_abs_h": max_diff(layer.H, species_only.h),
        "geography_block_max_loading": float(np.max(np.asarray(layer.W_blocks["geography"]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float32", action="store_true", help="fit in float32 (PROJ_ADV may then overflow)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    if not args.float32:
        jax.config.update("jax_enable_x64", True)

    data = jnmf.datasets.load_hawaiibirds()
    A, island = data.A, data.obs["island"]
    fit = dict(tol=1e-4, maxit=100, seed=42)
    t0 = time.perf_counter()
    rows = guided_part(A, island, fit)
    multi = multimodal_part(data, fit)
    seconds = time.perf_counter() - t0

    print(f"hawaiibirds {A.shape[0]}x{A.shape[1]}, k = 8, {'float32' if args.float32 else 'float64'}, "
          f"{seconds:.1f} s\n")
    head = (f"{'model':16s} {'NMI':>6s} {'ARI':>6s} {'kNN':>6s} {'MSE×':>5s} {'B/W var':>8s} {'iter':>4s} "
            f"{'|ΔE|/|E|':>9s} {'max|ΔH|':>8s} {'vs nmf() max|Δ| w, h':>22s}")
    print(head)
    for name, r in rows.items():
        print(f"{name:16s} {r['nmi']:6.3f} {r['ari']:6.3f} {r['knn_acc']:6.3f} {r['mse_ratio']:5.2f} "
              f"{r['variance_ratio']:8.4f} {r['iter']:4d} {r['embedding_rel_change']:9.4f} "
              f"{r['h_max_abs_change']:8.4f} {r['vs_nmf_max_abs_w']:10.2e} {r['vs_nmf_max_abs_h']:10.2e}")
    print("\nRcppML vignette (nmf() with targets; its graph versions return the unguided model):")
    for name, v in VIGNETTE.items():
        print(f"  {name:10s} NMI {v['nmi']:.3f}  ARI {v['ari']:.3f}  kNN {v['knn_acc']:.3f}  MSE× {v['mse_ratio']}")
    print("\nmulti-modal (species + geography, both sparse):")
    print(f"  W blocks (input order): {multi['W_blocks']}")
    print(f"  max |ΔH| vs nmf() on the row stack: {multi['vs_stacked_nmf_max_abs_h']:.2e}; "
          f"vs species-only nmf(): {multi['vs_species_only_max_abs_h']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"guided": rows, "multimodal": multi, "seconds": seconds,
                       "dtype": "float32" if args.float32 else "float64"}, f, indent=2)


if __name__ == "__main__":
    main()
