"""Timing of ``jnmf.assess(..., classifiers=("knn", "lr"))`` on three cases (issue 16).

* hawaiibirds: RcppML's baseline model (1,183 samples, k = 15, 5 kept classes) from ../shared/reference;
* 40 classes x 10 samples (400, olivetti-sized), a random non-negative k = 15 embedding;
* 9 classes, 2,638 samples (digits-sized), a random non-negative k = 15 embedding.

The first call of a fresh process is printed apart: it includes numba's compile, or its disk-cache load. Then the
median of ``--repeats`` calls. Run: ``python experiments/bench_assess.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # time this checkout's jnmf, not whichever one is installed
import jnmf  # noqa: E402

SHARED = ROOT.parent / "shared"


def hawaii():
    z = np.load(SHARED / "reference" / "hawaiibirds_rcppml.npz")
    emb = (z["base_d"][:, None] * z["base_h"]).T
    with (SHARED / "data" / "hawaiibirds_samples.csv").open(newline="") as f:
        labels = [row["island"] for row in csv.DictReader(f)]
    return emb, labels


def clustered(n_classes, n, k, seed):
    """n samples in n_classes balanced classes: gamma centres + Gaussian noise, folded to >= 0."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    centres = rng.gamma(1.0, size=(n_classes, k))
    return np.abs(centres[y] + rng.normal(scale=0.7, size=(n, k))), y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cases = {
        "hawaiibirds (1183 x 15, 5 cl.)": hawaii(),
        "40 classes (400 x 15)": clustered(40, 400, 15, 0),
        "9 classes (2638 x 15)": clustered(9, 2638, 15, 1),
    }
    warnings.simplefilter("ignore", UserWarning)
    print(f"jnmf from {Path(jnmf.__file__).parent}")
    # CPU seconds of this process too: on a shared machine wall time mostly measures the neighbours.
    print(f"{'case':34s} {'first call s':>12s} {'median s':>9s} {'median CPU s':>12s}  (of {args.repeats})")
    for name, (emb, labels) in cases.items():
        t0 = time.perf_counter()
        jnmf.assess(emb, labels, classifiers=("knn", "lr"))
        first = time.perf_counter() - t0
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            jnmf.assess(emb, labels, classifiers=("knn", "lr"))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"{name:34s} {first:12.3f} {statistics.median(times):9.3f} {statistics.median(cpu):12.3f}")


if __name__ == "__main__":
    main()
