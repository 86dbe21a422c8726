"""The guided-NMF vignette end to end: baseline, refine, target enrichment, target removal; tables and figures.

Run through the CLI: ``jnmf run guided_nmf [--out DIR] [--data-dir DIR] [--quiet] [--verbose]`` (the shipped
``jnmf/configs/guided_nmf.toml``; ``jnmf run guided_nmf_digits`` needs no files). Only composes library functions
(``nmf``, ``guided_nmf``, ``refine``, ``assess``, ``evaluate``, ``jnmf.pl``).
Writes ``results.json``, ``results.md``, ``umap.png``, ``factor_composition.png`` (and ``run.log`` via the CLI).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

import jnmf
from jnmf._options import SOLVERS
from jnmf.cli import ConfigError, OneOf, Required, progress

# The config this experiment reads, checked by `jnmf run` before any compute (protocol: jnmf/cli.py's docstring).
_NUMBERS = {"nmi": float, "ari": float, "accuracy_knn": float, "accuracy_lr": float, "mse_ratio": float}
CONFIG_SCHEMA = {
    "experiment": Required(str),
    "title": str,
    "data": Required({"name": Required(str), "labels": Required(str), "subsample": int, "subsample_seed": int}),
    # Options passed to every jnmf.nmf call; nmf itself checks their values. target_*/removal come from [[methods]].
    "nmf": Required({"k": Required(int), "tol": float, "maxit": int, "seed": int, "L1": (float, [float]),
                     "L2": (float, [float]), "nonneg": (bool, [bool]),
                     "solver": OneOf(*SOLVERS),
                     "norm": OneOf("L1", "L2", "none"), "sort": bool, "upper_bound": (float, [float]),
                     "cd_maxit": int, "cd_tol": float, "layout": OneOf("auto", "dense", "sparse"),
                     "loop": OneOf("while", "scan"), "dtype": OneOf("float32", "float64"),
                     "max_memory_bytes": int,
                     # Non-Gaussian fits (jnmf._losses); the metrics table then adds the loss's own ratio.
                     "loss": OneOf("mse", "poisson", "kl", "nb", "gamma", "tweedie", "inverse_gaussian", "huber",
                                   "mae"),
                     "power": float, "delta": float, "dispersion": (float, OneOf("per_row", "global"))}),
    "assess": {"classifiers": [OneOf("knn", "lr", "rf")], "seed": int},
    "figures": {"umap": bool, "n_neighbors": int, "min_dist": float, "metric": str, "seed": int},
    "methods": Required([{"key": Required(str), "label": Required(str),
                          "kind": Required(OneOf("baseline", "refine", "target")), "lambda": float,
                          "removal": OneOf("scatter", "proj_adv", "project"), "published": _NUMBERS}]),
    "tables": {"*": [str]},
}


def validate_config(config: dict, path) -> None:
    """What the schema cannot say: refine/target need a lambda, method keys are unique, tables name methods."""
    keys = [m["key"] for m in config["methods"]]
    if not keys:
        raise ConfigError(path, "methods", "needs at least one [[methods]] entry")
    for i, m in enumerate(config["methods"]):
        if m["kind"] in ("refine", "target") and "lambda" not in m:
            raise ConfigError(path, f"methods[{i}].lambda", f"missing required key for kind {m['kind']!r} "
                              f"(method {m['key']!r})")
        if m["kind"] != "target" and "removal" in m:
            raise ConfigError(path, f"methods[{i}].removal", f"only applies to kind 'target', not {m['kind']!r}")
        if keys.count(m["key"]) > 1:
            raise ConfigError(path, f"methods[{i}].key", f"duplicate method key {m['key']!r}")
    loss = config["nmf"].get("loss", "mse")
    for i, m in enumerate(config["methods"]):
        # nmf's own rules for non-Gaussian losses (jnmf._losses), checked here before the data are read.
        if loss != "mse" and m["kind"] == "target" and m.get("lambda", 0) < 0 and m.get("removal", "scatter") != \
                "scatter":
            raise ConfigError(path, f"methods[{i}].removal", f"{m['removal']!r} removal is not supported with "
                              f"nmf.loss = {loss!r} (it minimises no stated objective); use 'scatter'")
    for name, listed in config.get("tables", {}).items():
        for key in listed:
            if key not in keys:
                raise ConfigError(path, f"tables.{name}", f"names method {key!r}, which is not a [[methods]] key "
                                  f"({', '.join(repr(k) for k in keys)})")


RECORD_FIELDS = ("method", "nmi", "ari", "accuracy_knn", "accuracy_lr", "mse_ratio", "loss_ratio", "iterations",
                 "converged", "seconds")


def _fit(kind: str, spec: dict, A, labels, base, nmf_opts: dict):
    if kind == "baseline":
        return base
    if kind == "refine":
        return jnmf.refine(base, labels, lambda_=spec["lambda"])
    if kind == "target":  # the library's guided recipe, from the baseline already fitted
        lam = spec["lambda"]
        return jnmf.guided_nmf(A, labels=labels, target_lambda=abs(lam), guidance="enrich" if lam >= 0 else "remove",
                               removal=spec.get("removal", "scatter"), base=base, **nmf_opts).model
    raise ValueError(f"method kind must be baseline, refine or target, got {kind!r} in {spec.get('key')!r}")


def _once(report, seen: set[str], fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its warnings written to the log, each distinct message once per run (assess
    drops the same small classes for every method; a convergence warning names its method's fit)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    for w in caught:
        if str(w.message) not in seen:
            seen.add(str(w.message))
            report(f"  {type(w.message).__name__}: {w.message}")
    return result


def _assess(model, labels, cfg: dict):
    return jnmf.assess(model, labels, metrics=("nmi", "ari", "silhouette", "classification"),
                       classifiers=tuple(cfg.get("classifiers", ("knn", "lr"))), seed=cfg.get("seed", 42))


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def _table(records: dict, keys: list[str], methods: dict, loss: str = "mse") -> str:
    """A markdown table; the vignette column only when some row has published numbers (none do on digits), the
    loss's own ratio only for a non-Gaussian fit."""
    published = any(methods[key].get("published") for key in keys)
    head = ["Method", "NMI", "ARI", "KNN accuracy", "LR accuracy", "MSE ratio", "iterations", "converged"]
    if loss != "mse":
        head.insert(6, f"{loss} loss ratio")
    if published:
        head.append("vignette NMI / ARI / KNN / MSE ratio")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        r = records[key]
        conv = "–" if r["converged"] is None else ("yes" if r["converged"] else "no")
        iters = "–" if r["iterations"] is None else str(r["iterations"])
        row = [r["method"], _fmt(r["nmi"]), _fmt(r["ari"]), _fmt(r["accuracy_knn"]), _fmt(r["accuracy_lr"]),
               _fmt(r["mse_ratio"], 1), iters, conv]
        if loss != "mse":
            row.insert(6, _fmt(r["loss_ratio"], 2))
        if published:
            pub = methods[key].get("published")
            row.append("–" if not pub else (f"{pub['nmi']:.3f} / {pub['ari']:.3f} / {pub['accuracy_knn']:.3f} / "
                                            f"{pub['mse_ratio']:.1f}"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _precision(model) -> str:
    """What the fits ran in, e.g. "float32, cpu", read from the model's arrays."""
    devices = sorted({d.platform for d in model.w.devices()})
    return f"{model.w.dtype}, {'/'.join(devices)}"


def run(config: dict, out_dir: Path, data_dir, report) -> dict:
    data_cfg = config["data"]
    ds = jnmf.datasets.load(data_cfg["name"], data_dir)
    A, labels = ds.A, ds.obs[data_cfg["labels"]]
    if "subsample" in data_cfg:  # a reproducible subset of samples (columns), for quick runs and tests
        keep = np.sort(np.random.default_rng(data_cfg.get("subsample_seed", 0)).permutation(A.shape[1])
                       [: int(data_cfg["subsample"])])
        A, labels = A[:, keep], np.asarray(labels)[keep]
    report(f"data {data_cfg['name']}: {A.shape[0]} x {A.shape[1]}, {A.nnz} non-zeros, labels '{data_cfg['labels']}'")
    nmf_opts = dict(config.get("nmf", {}))
    methods = {m["key"]: m for m in config["methods"]}

    seen: set[str] = set()
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    base = _once(report, seen, jnmf.nmf, A, **nmf_opts)
    base_seconds = time.perf_counter() - t0
    report(f"baseline nmf: k={nmf_opts.get('k')}, {int(base.iter)} iterations, "
           f"{'converged' if bool(base.converged) else 'not converged'}, {base_seconds:.2f} s")
    base_mse = jnmf.evaluate(base, A)
    loss_opts = {key: nmf_opts[key] for key in ("loss", "power", "delta", "dispersion") if key in nmf_opts}
    loss_name = loss_opts.get("loss", "mse")
    base_loss = jnmf.evaluate(base, A, **loss_opts) if loss_name != "mse" else base_mse

    records, models = {}, {}
    for i, (key, spec) in enumerate(progress(report, methods.items(), desc="fits and assessments",
                                             total=len(methods)), 1):
        t0 = time.perf_counter()
        model = _once(report, seen, _fit, spec["kind"], spec, A, labels, base, nmf_opts)
        fit_seconds = base_seconds if spec["kind"] == "baseline" else time.perf_counter() - t0
        t1 = time.perf_counter()
        res = _once(report, seen, _assess, model, labels, config.get("assess", {}))
        seconds = fit_seconds + time.perf_counter() - t1
        refit = spec["kind"] != "refine"
        records[key] = {
            "method": spec["label"],
            "nmi": float(res.metrics["nmi"]),
            "ari": float(res.metrics["ari"]),
            "accuracy_knn": float(res.metrics.get("accuracy_knn", np.nan)),
            "accuracy_lr": float(res.metrics.get("accuracy_lr", np.nan)),
            "silhouette": float(res.metrics["silhouette"]),
            "mse_ratio": float(jnmf.evaluate(model, A) / base_mse),
            # The fit's own objective against the baseline's (equal to mse_ratio for loss = "mse").
            "loss_ratio": float(jnmf.evaluate(model, A, **loss_opts) / base_loss) if loss_name != "mse" else None,
            "iterations": int(model.iter) if refit else None,
            "converged": bool(model.converged) if refit else None,
            "seconds": round(seconds, 3),
        }
        models[key] = model
        r = records[key]
        report(f"[{i}/{len(methods)}] {spec['label']}: NMI {r['nmi']:.3f}, ARI {r['ari']:.3f}, "
               f"KNN {r['accuracy_knn']:.3f}, LR {r['accuracy_lr']:.3f}, MSE ratio {r['mse_ratio']:.2f}, "
               + (f"{loss_name} loss ratio {r['loss_ratio']:.2f}, " if loss_name != "mse" else "") +
               f"iterations {r['iterations'] if refit else '–'}, {seconds:.2f} s")
    fits_seconds = time.perf_counter() - t_all
    report(f"fits and assessments: {fits_seconds:.2f} s")

    tables = config.get("tables", {"all": list(methods)})
    md = [f"# {config.get('title', 'jnmf results')}", ""]
    for name, keys in tables.items():
        md += [f"## {name.capitalize()}", "", _table(records, keys, methods, loss_name), ""]
    md.append(f"Fits and assessments: {fits_seconds:.2f} s ({_precision(base)}, JAX compilation included).")
    (out_dir / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    payload = {"title": config.get("title"), "data": data_cfg, "nmf": nmf_opts, "fits_seconds": fits_seconds,
               "records": [records[k] for k in methods]}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    report(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")

    fig_cfg = config.get("figures", {})
    titles = [methods[k]["label"] for k in methods]
    scores = [{"NMI": records[k]["nmi"], "ARI": records[k]["ari"], "kNN": records[k]["accuracy_knn"]}
              for k in methods]
    t0 = time.perf_counter()
    plt = jnmf.pl._pyplot()
    if fig_cfg.get("umap", True):
        # One call for all panels: their layouts run on every core at once (each as its own call would give).
        coords = jnmf.pl.umap_coordinates([models[k] for k in methods], n_neighbors=fig_cfg.get("n_neighbors", 15),
                                          min_dist=fig_cfg.get("min_dist", 0.3),
                                          metric=fig_cfg.get("metric", "cosine"), seed=fig_cfg.get("seed", 42))
        fig = jnmf.pl.embedding_grid(coords, labels, titles, metrics=scores, label_name=data_cfg["labels"])
        fig.savefig(out_dir / "umap.png", dpi=jnmf.pl.DPI)
        plt.close(fig)
        report(f"wrote {out_dir / 'umap.png'} ({time.perf_counter() - t0:.2f} s)")
    fig = jnmf.pl.composition_grid([models[k] for k in methods], labels, titles)
    fig.savefig(out_dir / "factor_composition.png", dpi=jnmf.pl.DPI)
    plt.close(fig)
    report(f"wrote {out_dir / 'factor_composition.png'}")
    return payload
