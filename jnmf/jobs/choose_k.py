"""Which k, and is it stable? Cross-validated test error and consensus stability against the rank.

Run through the CLI: ``jnmf run choose_k_hawaiibirds [--out DIR] [--data-dir DIR]``. Composes
``jnmf.cross_validate`` (speckled hold-out, all ranks in one program) and ``jnmf.consensus`` (cNMF's consensus of
replicate spectra, RcppML's cophenetic coefficient). Writes ``results.json``, ``results.md``, ``cv.png`` (train and
test MSE vs k) and ``k_selection.png`` (cNMF's ``k_selection_plot``: stability and error vs k).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import jnmf
from jnmf import _consensus
from jnmf._options import SOLVERS
from jnmf.cli import ConfigError, OneOf, Required

_SOLVER = OneOf(*SOLVERS)

CONFIG_SCHEMA = {
    "experiment": Required(str),
    "title": str,
    "data": Required({"name": Required(str)}),
    "cv": Required({"ks": Required([int]), "seeds": [int], "test_fraction": float, "stop": OneOf("train", "rcppml"),
                    "init": OneOf("r", "rcppml"), "rule": OneOf("min", "1se"), "tol": float, "maxit": int,
                    "dtype": OneOf("float32", "float64"), "compare_rcppml": bool, "solver": _SOLVER}),
    "consensus": {"ks": Required([int]), "reps": int, "seed": int, "density_threshold": float, "tol": float,
                  "maxit": int, "solver": _SOLVER},
}


def validate_config(config: dict, path) -> None:
    """Ranks must be positive; RcppML's fixture only describes hawaiibirds."""
    for table in ("cv", "consensus"):
        ks = config.get(table, {}).get("ks", [])
        if table in config and (not ks or min(ks) < 1):
            raise ConfigError(path, f"{table}.ks", "needs at least one rank, all >= 1")
    if config["cv"].get("compare_rcppml") and config["data"]["name"] != "hawaiibirds":
        raise ConfigError(path, "cv.compare_rcppml", "RcppML's CV fixture exists for hawaiibirds only")


def _fixture(data_dir) -> Path | None:
    """RcppML's CV result, in ``reference/`` beside the folder that holds the hawaiibirds files."""
    try:
        base = jnmf.datasets.find_data_dir(("hawaiibirds.mtx",), data_dir).parent
    except FileNotFoundError:
        return None
    p = base / "reference" / "hawaiibirds_cv_rcppml.npz"
    return p if p.exists() else None


def _cv_figure(res, path: Path, title: str, ref=None) -> None:
    plt = jnmf.pl._pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = res.ks
    for r in range(res.seeds.size):
        ax.plot(ks, res.test_mse[:, r], color="C1", alpha=0.3, lw=0.8)
    ax.plot(ks, res.mean_test_mse, "o-", color="C1", label="test (mean over replicates)")
    ax.plot(ks, res.mean_train_mse, "s-", color="C0", label="train")
    if ref is not None:
        ax.plot(ref[0], ref[1], "x--", color="k", label="RcppML test (mean)")
    ax.axvline(res.k, color="grey", ls=":", label=f"chosen k = {res.k} ({res.rule})")
    ax.set_xlabel("k")
    ax.set_ylabel("MSE")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _k_selection_figure(table: dict, path: Path, title: str) -> None:
    plt = jnmf.pl._pyplot()

    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(table["k"], table["silhouette"], "o-", color="C0", label="stability (silhouette)")
    ax1.plot(table["k"], table["cophenetic"], "^-", color="C2", label="cophenetic (RcppML)")
    ax1.set_xlabel("k")
    ax1.set_ylabel("stability")
    ax2 = ax1.twinx()
    ax2.plot(table["k"], table["prediction_error"], "s-", color="C3", label="error")
    ax2.set_ylabel("prediction error |A - WH|^2", color="C3")
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="center right")
    ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: dict, out_dir, data_dir, report) -> dict:
    out = Path(out_dir)
    name = config["data"]["name"]
    ds = jnmf.datasets.load(name, data_dir)
    A = ds.A
    report(f"data {name}: {A.shape[0]} x {A.shape[1]}")
    results: dict = {"data": name, "shape": list(A.shape)}
    cv = dict(config["cv"])
    compare = cv.pop("compare_rcppml", False)
    ks = cv.pop("ks")
    if "dtype" in cv:
        import jax.numpy as jnp

        cv["dtype"] = getattr(jnp, cv["dtype"])
    t = time.perf_counter()
    res = jnmf.cross_validate(A, ks, **cv)
    secs = time.perf_counter() - t
    report(f"cross_validate: {res} in {secs:.1f} s (padded={res.padded}, programs={res.programs})")
    results["cv"] = {"ks": res.ks.tolist(), "seeds": res.seeds.tolist(), "k": res.k, "k_1se": res.choose("1se")
                     if res.seeds.size > 1 else None, "mean_test_mse": res.mean_test_mse.tolist(),
                     "mean_train_mse": res.mean_train_mse.tolist(), "test_mse": res.test_mse.tolist(),
                     "iter": res.iter.tolist(), "padded": res.padded, "pad_reason": res.pad_reason,
                     "seconds": secs, "fits_per_second": res.test_mse.size / secs}
    ref = None
    fx = _fixture(data_dir) if compare else None
    if fx is not None:
        f = np.load(fx)
        rk = np.arange(2, 13)
        ref_mean = f["cv_mean_test_mse"]
        common = [k for k in res.ks if k in rk]
        ours = np.asarray([res.mean_test_mse[list(res.ks).index(k)] for k in common])
        theirs = np.asarray([ref_mean[k - 2] for k in common])
        results["cv"]["rcppml"] = {"chosen_k": int(f["cv_chosen_k"]), "mean_test_mse": ref_mean.tolist(),
                                   "max_rel_diff_mean_test": float(np.max(np.abs(ours / theirs - 1)))}
        ref = (common, theirs)
        report(f"RcppML: chosen k {int(f['cv_chosen_k'])}, jnmf {res.k}; mean test MSE max relative difference "
               f"{results['cv']['rcppml']['max_rel_diff_mean_test']:.2e}")
    _cv_figure(res, out / "cv.png", config.get("title", name), ref)

    lines = [f"# {config.get('title', name)}", "", f"Cross-validation ({res.seeds.size} replicates, test fraction "
             f"{res.test_fraction}, stop={res.stop!r}): chosen k = **{res.k}** ({res.rule}); "
             f"{res.test_mse.size} fits in {secs:.1f} s.", "", "| k | mean train MSE | mean test MSE |",
             "|---|---|---|"]
    lines += [f"| {k} | {a:.6g} | {b:.6g} |"
              for k, a, b in zip(res.ks, res.mean_train_mse, res.mean_test_mse, strict=True)]
    if "consensus" in config:
        c = dict(config["consensus"])
        cks = c.pop("ks")
        t = time.perf_counter()
        cons = jnmf.consensus(A, cks, **c)
        csecs = time.perf_counter() - t
        table = _consensus.k_selection_table(cons)
        report(f"consensus over k = {cks}: {csecs:.1f} s")
        results["consensus"] = {key: np.asarray(v).tolist() for key, v in table.items()}
        results["consensus"]["seconds"] = csecs
        results["consensus"]["error_spread"] = {int(k): r.error_spread for k, r in cons.items()}
        _k_selection_figure(table, out / "k_selection.png", config.get("title", name))
        lines += ["", f"Consensus ({c.get('reps', 50)} replicates per k):", "",
                  "| k | silhouette | cophenetic | prediction error | replicate loss range |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {s:.4f} | {cp:.4f} | {e:.6g} | {cons[int(k)].error_spread['relative_range']:.2%} |"
                  for k, s, cp, e in zip(table["k"], table["silhouette"], table["cophenetic"],
                                         table["prediction_error"], strict=True)]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return results
