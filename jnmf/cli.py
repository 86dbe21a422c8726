"""Command line: ``jnmf run CONFIG [--out DIR] [--data-dir DIR] [--quiet] [--verbose] [--no-cache]``.

``CONFIG`` is the name of a shipped config (``jnmf run guided_nmf`` runs ``jnmf/configs/guided_nmf.toml``; ``jnmf
list`` names them, ``jnmf show NAME`` prints one to copy and edit) or the path of a TOML file. A config names its
experiment: a job of the package by name (``experiment = "guided_nmf"``, the module ``jnmf.jobs.guided_nmf``) or a
script of its own (``experiment = "my_job.py"``, relative to the config file); the experiment's
``run(config, out_dir, data_dir, report)`` composes library functions. Progress goes to the terminal (unless
``--quiet``; ``--verbose`` adds progress bars, with tqdm if it is installed) and always to ``OUT/run.log``.
The CLI draws its figures with matplotlib's Agg backend (``$MPLBACKEND`` overrides); ``jnmf --help`` imports
neither JAX nor the rest of the library.

Validation before any compute
-----------------------------
``jnmf run`` reads and checks the whole config before it loads data or fits anything; every problem is a
``ConfigError`` (a ``ValueError``; exit status 2) whose message starts with the config's path and names the key:
TOML syntax errors, a missing or non-string ``experiment``, an unknown job or missing experiment script, an explicit
``--data-dir`` that is not a folder, and whatever the experiment's schema refuses.

An experiment module declares its config in up to two optional module-level names (a module with neither is
run with the top-level checks above only):

``CONFIG_SCHEMA``
    A dict describing the top-level table, checked by ``check_schema``. Each key maps to a *spec*:

    * a type (``str``, ``int``, ``float``, ``bool``; ``float`` accepts integers, neither accepts booleans), or
      ``object`` for anything;
    * a tuple of specs: any one of them (``(float, [float])``: a number or a list of numbers);
    * ``OneOf("a", "b")``: one of these values;
    * a dict: a sub-table with these keys (``"*"``: a spec for any other key, e.g. free table names);
    * a one-element list ``[spec]``: an array whose every item matches spec (``[{...}]``: an array of tables);
    * ``Required(spec)``: the key must be present.

    Unknown keys are errors, with a "did you mean" suggestion (``[assesss]``, ``titel``).
``validate_config(config, path)``
    Further checks a schema cannot express (cross-references, conditional keys); raise
    ``ConfigError(path, key, message)``.

Example (see ``jnmf/jobs/guided_nmf.py``)::

    from jnmf.cli import ConfigError, OneOf, Required
    CONFIG_SCHEMA = {"experiment": Required(str), "title": str,
                     "data": Required({"name": Required(str), "labels": Required(str)}),
                     "methods": Required([{"key": Required(str), "kind": Required(OneOf("baseline", "refine"))}])}

Output folder
-------------
A run writes into a fresh hidden sibling folder (``.OUT.partial-PID``; the experiment's ``out_dir`` is that
folder) and renames it onto ``OUT`` only when the experiment returns, so ``OUT`` always holds one complete run
(its results beside its own ``run.log``). If the run fails or is interrupted (Ctrl-C, SIGTERM), ``OUT`` is left
as it was, and the new run's folder becomes ``OUT.failed/`` (replacing an older one), its ``run.log`` ending with
``interrupted (...)`` or ``failed: ...``. A lock file ``.OUT.lock`` (created with ``O_EXCL``) keeps two runs from
writing the same ``OUT``: the second fails at once (``RunLockedError``, exit status 2) naming the first's pid; a
lock left by a dead process of this host is taken over.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be run: the message starts with the config's path and names the key."""

    def __init__(self, path: str | os.PathLike, key: str | None, message: str):
        self.path, self.key = Path(path), key
        where = f"{path}: " + (f"{key}: " if key else "")
        super().__init__(where + message)


class RunLockedError(RuntimeError):
    """Another ``jnmf run`` is writing the same output folder."""


class Required:
    """Marks a schema entry as required (see the module docstring)."""

    def __init__(self, spec: Any):
        self.spec = spec

    def __repr__(self) -> str:
        return f"Required({self.spec!r})"


class OneOf:
    """A schema entry that must be one of the given values."""

    def __init__(self, *values: Any):
        self.values = values

    def __repr__(self) -> str:
        return f"OneOf{self.values!r}"


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", object: "anything"}


def _matches(value: Any, spec: Any) -> bool:
    """Whether value matches a type spec (no tables: those are walked by ``_check``)."""
    if spec is object:
        return True
    if spec is bool:
        return isinstance(value, bool)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if spec is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(spec, type):
        return isinstance(value, spec)
    raise TypeError(f"not a leaf schema spec: {spec!r}")


def _describe(spec: Any) -> str:
    if isinstance(spec, Required):
        return _describe(spec.spec)
    if isinstance(spec, OneOf):
        return "one of " + ", ".join(repr(v) for v in spec.values)
    if isinstance(spec, dict):
        return "a table"
    if isinstance(spec, list):
        return f"an array of {_describe(spec[0])}"
    if isinstance(spec, tuple):
        return " or ".join(_describe(s) for s in spec)
    return _TYPE_NAMES.get(spec, getattr(spec, "__name__", repr(spec)))


def _suggest(key: str, options: Any) -> str:
    close = difflib.get_close_matches(key, [o for o in options if o != "*"], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check(value: Any, spec: Any, where: str, path: Path) -> None:
    if isinstance(spec, Required):
        spec = spec.spec
    if isinstance(spec, tuple):
        for option in spec:
            try:
                _check(value, option, where, path)
                return
            except ConfigError:
                pass
        raise ConfigError(path, where, f"must be {_describe(spec)}, got {value!r}")
    if isinstance(spec, OneOf):
        if value not in spec.values:
            hint = _suggest(value, [str(v) for v in spec.values]) if isinstance(value, str) else ""
            raise ConfigError(path, where, f"must be {_describe(spec)}; got {value!r}{hint}")
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(path, where, f"must be a table ([{where}] or {{...}}), got {value!r}")
        check_table(value, spec, path, where)
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise ConfigError(path, where, f"must be {_describe(spec)}, got {value!r}")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]", path)
        return
    if not _matches(value, spec):
        raise ConfigError(path, where, f"must be {_describe(spec)}, got {value!r}")


def check_table(table: dict, schema: dict, path: str | os.PathLike, where: str = "") -> None:
    """Check one table against a schema dict: unknown keys, required keys, each value's spec (recursively).

    Parameters
    ----------
    table : dict
        The parsed TOML table.
    schema : dict
        Key -> spec (see the module docstring).
    path : path-like
        The config file, for messages.
    where : str
        The table's dotted name (``""`` for the top level).

    Raises
    ------
    ConfigError
        Naming the file and the dotted key.
    """
    path = Path(path)
    for key in table:
        if key not in schema and "*" not in schema:
            raise ConfigError(path, _join(where, key), f"unknown key{_suggest(key, schema)}; expected one of "
                              f"{', '.join(repr(k) for k in schema)}")
    for key, spec in schema.items():
        if key == "*":
            continue
        if key not in table:
            if isinstance(spec, Required):
                raise ConfigError(path, _join(where, key), f"missing required key ({_describe(spec)})")
            continue
        _check(table[key], spec, _join(where, key), path)
    if "*" in schema:
        for key in table:
            if key not in schema:
                _check(table[key], schema["*"], _join(where, key), path)


def check_schema(config: dict, schema: dict, path: str | os.PathLike) -> None:
    """Check a whole config against an experiment's ``CONFIG_SCHEMA`` (``check_table`` at the top level)."""
    check_table(config, schema, path, "")


class Reporter:
    """Timestamped progress lines to the terminal and a log file (and the ``"jnmf.cli"`` logger, at INFO).

    ``verbose``: jobs show progress bars over their long loops (``progress``).
    """

    def __init__(self, log: TextIO, quiet: bool = False, verbose: bool = False):
        self._log = log
        self._quiet = quiet
        self.verbose = verbose and not quiet
        self._t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self._t0:7.2f}s] {message}"
        self._log.write(line + "\n")
        self._log.flush()
        logging.getLogger("jnmf.cli").info(message)
        if self.verbose and "tqdm" in sys.modules:  # a bar may be on screen: tqdm.write prints above it
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stdout)
        elif not self._quiet:
            print(line, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


def progress(report: Any, iterable: Any, *, desc: str, total: int | None = None) -> Any:
    """A job's long loop, with a progress bar when the run is verbose (``jnmf run --verbose``).

    Parameters
    ----------
    report : Reporter or callable
        The ``report`` a job was given; plain callables (tests, other drivers) get no bar.
    iterable : iterable
        The loop.
    desc : str
        The bar's label.
    total : int, optional
        The loop's length.

    Returns
    -------
    iterator
        Over ``iterable``'s items.
    """
    from ._log import progress as _progress

    return _progress(iterable, desc=desc, total=total, verbose=getattr(report, "verbose", False))


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``jnmf/configs`` (``jnmf run NAME``)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.toml"))


def resolve_config(config: str | os.PathLike) -> Path:
    """The config file ``jnmf run CONFIG`` means: an existing path, else a shipped config's name.

    Raises
    ------
    ConfigError
        Neither a file nor a shipped name (the message lists the shipped names).
    """
    path = Path(config)
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    shipped = SHIPPED_CONFIGS / f"{name}.toml"
    if str(config) in (name, f"{name}.toml") and shipped.is_file():
        return shipped
    names = ", ".join(shipped_configs())
    raise ConfigError(path, None, f"config file does not exist, and it is not the name of a shipped config "
                      f"({names}){_suggest(name, shipped_configs())}")


def _job_names() -> list[str]:
    jobs = Path(__file__).resolve().parent / "jobs"
    return sorted(p.stem for p in jobs.glob("*.py") if not p.stem.startswith("_"))


def _load_experiment(config_path: Path, name: str):
    """The experiment module a config names: a job of ``jnmf.jobs`` by name, or a script by path."""
    if not name.endswith(".py") and "/" not in name and os.sep not in name:
        if not name.isidentifier() or name not in _job_names():
            raise ConfigError(config_path, "experiment", f"no job named {name!r} (jobs: {', '.join(_job_names())})"
                              f"{_suggest(name, _job_names())}; a script of your own is a path ending in .py, "
                              "relative to the config")
        module = importlib.import_module(f"jnmf.jobs.{name}")
        path = Path(module.__file__)
    else:
        path = (config_path.parent / name).resolve()
        if not path.is_file():
            raise ConfigError(config_path, "experiment", f"the experiment script {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"jnmf_experiment_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, "run"):
        raise ConfigError(config_path, "experiment",
                          f"the experiment script {path} has no run(config, out_dir, data_dir, report) function")
    return module


def _enable_compilation_cache(path: str | None) -> None:
    """Keep compiled XLA programs on disk so a second run of the same experiment skips compilation."""
    import jax

    cache = path or os.environ.get("JNMF_CACHE_DIR") or str(Path.home() / ".cache" / "jnmf" / "xla")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def check(config_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> tuple[dict, Any]:
    """Read and validate a config without running anything.

    Parameters
    ----------
    config_path : str or path
        A shipped config's name (``"guided_nmf"``) or a TOML file.
    data_dir : str or path, optional
        An explicit data folder, which must exist.

    Returns
    -------
    (dict, module)
        The parsed config and the experiment module it names.

    Raises
    ------
    ConfigError
        Anything that would stop the run: the message names the file and the key.

    Examples
    --------
    >>> config, job = jnmf.cli.check("guided_nmf_digits")  # doctest: +SKIP
    >>> job.__name__  # doctest: +SKIP
    'jnmf.jobs.guided_nmf'
    """
    config_path = resolve_config(config_path)
    try:
        with open(config_path, "rb") as f:
            config = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(config_path, None, f"invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(config_path, None, f"not UTF-8 text: {e}") from None
    if "experiment" not in config:
        raise ConfigError(config_path, "experiment", "missing required key naming the experiment (a job, e.g. "
                          "experiment = \"guided_nmf\", or a script, experiment = \"my_job.py\", relative to the "
                          "config); without it this config is not for `jnmf run` (a standalone script's config?)")
    if not isinstance(config["experiment"], str):
        raise ConfigError(config_path, "experiment", f"must be a string (a path), got {config['experiment']!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        # An explicit folder is what the user wants: never fall back silently to $JNMF_DATA_DIR or ../shared/data.
        raise ConfigError(config_path, None, f"--data-dir {data_dir} is not an existing folder")
    module = _load_experiment(config_path, config["experiment"])
    schema = getattr(module, "CONFIG_SCHEMA", None)
    if schema is not None:
        check_schema(config, schema, config_path)
    validate = getattr(module, "validate_config", None)
    if validate is not None:
        validate(config, config_path)
    return config, module


@contextlib.contextmanager
def _lock(out_dir: Path) -> Iterator[Path]:
    """Hold ``.OUT.lock`` beside the output folder (O_EXCL), or raise ``RunLockedError``."""
    lock = out_dir.parent / f".{out_dir.name}.lock"
    host = socket.gethostname()
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            owner = _lock_owner(lock)
            if attempt == 0 and owner is not None and owner[1] == host and not _alive(owner[0]):
                with contextlib.suppress(FileNotFoundError):  # left by a killed run of this host: take it over
                    os.unlink(lock)
                continue
            who = f"pid {owner[0]} on {owner[1]}" if owner else "another process"
            raise RunLockedError(f"{out_dir} is being written by another jnmf run ({who}; lock file {lock}); wait "
                                 "for it to finish, choose another --out, or remove the lock if that run is dead"
                                 ) from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()} {host}\n")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``, deleting what ``dst`` held only after ``src`` is in place."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run(config_path: str | Path, out: str | Path | None = None, data_dir: str | None = None,
        quiet: bool = False, cache: bool = True, verbose: bool = False) -> dict:
    """Run the experiment a config names; returns what the experiment returns (its results).

    Validates the config first (``check``), then runs in a fresh folder renamed onto ``out`` at the end; see the
    module docstring for the output folder protocol.

    Parameters
    ----------
    config_path : str or path
        A shipped config's name (``"guided_nmf"``) or a TOML file.
    out : str or path, optional
        The output folder (default ``results/<config name>``, relative to the current directory).
    data_dir : str, optional
        The folder with the data files (must exist; default ``$JNMF_DATA_DIR``, then ``../shared/data``).
    quiet : bool
        No progress on the terminal (the log is still written).
    cache : bool
        Keep compiled programs on disk (``$JNMF_CACHE_DIR``, default ``~/.cache/jnmf/xla``).
    verbose : bool
        Progress bars over the long steps (tqdm, when installed).

    Returns
    -------
    dict
        The experiment's results.

    Examples
    --------
    >>> jnmf.cli.run("guided_nmf_digits", "results/digits", quiet=True)  # doctest: +SKIP

    Raises
    ------
    ConfigError
        Before anything is computed or written.
    RunLockedError
        Another run writes ``out``.
    """
    started = time.perf_counter()
    config_path = resolve_config(config_path)
    config, module = check(config_path, data_dir)
    out_dir = Path(out) if out is not None else Path("results") / config_path.stem
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(config_path, None, f"--out {out_dir} exists and is not a folder")
    if cache:
        _enable_compilation_cache(None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir):
        stage = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
        if stage.exists():  # left by a killed run whose pid this process now has
            shutil.rmtree(stage)
        stage.mkdir()
        with open(stage / "run.log", "w", encoding="utf-8") as log:
            report = Reporter(log, quiet, verbose)
            report(f"config {config_path} -> {out_dir} (written in {stage} until the run completes)")
            try:
                result = module.run(config, stage, data_dir, report)
            except BaseException as e:
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    report(f"interrupted ({type(e).__name__}) after {time.perf_counter() - started:.2f} s; "
                           f"{out_dir} keeps the previous run's files")
                else:
                    report(f"failed: {type(e).__name__}: {e}; {out_dir} keeps the previous run's files")
                log.close()
                failed = out_dir.parent / f"{out_dir.name}.failed"
                with contextlib.suppress(OSError):
                    if failed.exists():
                        shutil.rmtree(failed)
                    os.replace(stage, failed)
                raise
            report(f"done: wall time {time.perf_counter() - started:.2f} s (including imports and JAX compilation)")
        _replace_dir(stage, out_dir)
    return result


def _sigterm(signum, frame):  # SIGTERM ends a run as Ctrl-C does: its folder is marked interrupted
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jnmf", description="jnmf: label-guided NMF in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run an experiment config (a shipped name or a TOML file)")
    p_run.add_argument("config", help="a shipped config's name (see `jnmf list`), e.g. guided_nmf, or the path of "
                       "a TOML config")
    p_run.add_argument("--out", default=None, help="output folder (default results/<config name>/)")
    p_run.add_argument("--data-dir", default=None, help="folder with the data files (default: $JNMF_DATA_DIR, "
                       "then ../shared/data relative to the current folder or a source checkout); an explicit "
                       "folder must exist")
    p_run.add_argument("--quiet", action="store_true", help="no progress on the terminal (the log is still written)")
    p_run.add_argument("--verbose", action="store_true", help="progress bars over the long steps (needs tqdm)")
    p_run.add_argument("--no-cache", action="store_true", help="do not keep compiled programs in $JNMF_CACHE_DIR "
                       "(default ~/.cache/jnmf/xla); every run then compiles from scratch")
    sub.add_parser("list", help="name the shipped configs")
    p_show = sub.add_parser("show", help="print a shipped config (to copy and edit)")
    p_show.add_argument("name", help="a shipped config's name")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in shipped_configs():
            print(name)
        return 0
    if args.command == "show":
        try:
            print(resolve_config(args.name).read_text(encoding="utf-8"), end="")
        except ConfigError as e:
            print(f"jnmf: error: {e}", file=sys.stderr)
            return 2
        return 0
    # A command-line run draws files, never windows; set before pyplot is first imported (a user's choice wins).
    os.environ.setdefault("MPLBACKEND", "Agg")
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        run(args.config, args.out, args.data_dir, args.quiet, cache=not args.no_cache, verbose=args.verbose)
    except (ConfigError, RunLockedError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"jnmf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jnmf: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":  # pragma: no cover
    # `python -m jnmf.cli` runs this file as __main__; the jobs import jnmf.cli, whose schema classes
    # (Required, OneOf) must be the ones the checks compare with, so run the imported module's main.
    from jnmf.cli import main as _main

    sys.exit(_main())
