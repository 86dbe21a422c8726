"""Command line: ``jnmf run CONFIG [--out DIR] [--data-dir DIR] [--quiet]``.

A config (TOML) names an experiment script (``experiment = "../experiments/guided_nmf.py"``, relative to the
config file) whose ``run(config, out_dir, data_dir, report)`` composes library functions. Progress goes to the
terminal (unless ``--quiet``) and always to ``OUT/run.log``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import TextIO


class Reporter:
    """Timestamped progress lines to the terminal and a log file."""

    def __init__(self, log: TextIO, quiet: bool = False):
        self._log = log
        self._quiet = quiet
        self._t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self._t0:7.2f}s] {message}"
        self._log.write(line + "\n")
        self._log.flush()
        if not self._quiet:
            print(line, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


def _load_experiment(config_path: Path, name: str):
    path = (config_path.parent / name).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"experiment script {path} (from 'experiment' in {config_path}) does not exist")
    spec = importlib.util.spec_from_file_location(f"jnmf_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "run"):
        raise AttributeError(f"experiment script {path} has no run(config, out_dir, data_dir, report) function")
    return module


def _enable_compilation_cache(path: str | None) -> None:
    """Keep compiled XLA programs on disk so a second run of the same experiment skips compilation."""
    import jax

    cache = path or os.environ.get("JNMF_CACHE_DIR") or str(Path.home() / ".cache" / "jnmf" / "xla")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run(config_path: str | Path, out: str | Path | None = None, data_dir: str | None = None,
        quiet: bool = False, cache: bool = True) -> dict:
    """Run the experiment a config names; returns what the experiment returns (its results)."""
    started = time.perf_counter()
    if cache:
        _enable_compilation_cache(None)
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"config file {config_path} does not exist")
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    if "experiment" not in config:
        raise KeyError(f"{config_path} has no 'experiment' key naming the experiment script")
    out_dir = Path(out) if out is not None else Path("results") / config_path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "run.log", "w", encoding="utf-8") as log:
        report = Reporter(log, quiet)
        report(f"config {config_path} -> {out_dir}")
        module = _load_experiment(config_path, config["experiment"])
        result = module.run(config, out_dir, data_dir, report)
        report(f"done: wall time {time.perf_counter() - started:.2f} s (including imports and JAX compilation)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jnmf", description="jnmf: label-guided NMF in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run an experiment config (TOML)")
    p_run.add_argument("config", help="path to a TOML config, e.g. configs/guided_nmf.toml")
    p_run.add_argument("--out", default=None, help="output folder (default results/<config name>/)")
    p_run.add_argument("--data-dir", default=None, help="folder with the data files (default: $JNMF_DATA_DIR, "
                       "then ../shared/data beside the repository)")
    p_run.add_argument("--quiet", action="store_true", help="no progress on the terminal (the log is still written)")
    p_run.add_argument("--no-cache", action="store_true", help="do not keep compiled programs in $JNMF_CACHE_DIR "
                       "(default ~/.cache/jnmf/xla); every run then compiles from scratch")
    args = parser.parse_args(argv)
    try:
        run(args.config, args.out, args.data_dir, args.quiet, cache=not args.no_cache)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"jnmf: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
