"""`jnmf run`: the whole config checked before any compute, atomic output folders, one run per folder."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jnmf
from jnmf import cli
from jnmf.cli import ConfigError, RunLockedError

ROOT = Path(__file__).resolve().parents[1]
# The shipped config names its job (experiment = "guided_nmf"), so a copy runs from any folder.
DIGITS = (cli.SHIPPED_CONFIGS / "guided_nmf_digits.toml").read_text(encoding="utf-8")


@pytest.fixture
def no_compute(monkeypatch):
    """Any data load or fit fails the test: config errors must come before them."""
    def forbidden(*args, **kwargs):
        raise AssertionError("compute ran before the config was validated")

    for name in ("nmf", "refine", "compute_target", "assess", "evaluate"):
        monkeypatch.setattr(jnmf, name, forbidden)
    monkeypatch.setattr(jnmf.datasets, "load", forbidden)


def _edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


CASES = {
    "toml_syntax": (lambda t: _edit(t, "k = 10", "k = = 10"), None, r"invalid TOML: .*line"),
    "unknown_top": (lambda t: _edit(t, "title =", "titel ="), "titel", r"unknown key \(did you mean 'title'\?\)"),
    "misspelt_section": (lambda t: _edit(t, "[assess]", "[assesss]"), "assesss",
                         r"unknown key \(did you mean 'assess'\?\)"),
    "unknown_nested": (lambda t: _edit(t, "maxit = 100", "maxitt = 100"), "nmf.maxitt",
                       r"unknown key \(did you mean 'maxit'\?\)"),
    "missing_k": (lambda t: _edit(t, "k = 10\n", ""), "nmf.k", r"missing required key \(an integer\)"),
    "wrong_type": (lambda t: _edit(t, "k = 10", 'k = "ten"'), "nmf.k", r"must be an integer, got 'ten'"),
    "method_kind": (lambda t: _edit(t, 'kind = "refine"', 'kind = "refin"'), "methods[1].kind",
                    r"must be one of 'baseline', 'refine', 'target'; got 'refin' \(did you mean 'refine'\?\)"),
    "last_method_kind": (lambda t: _edit(t, 'removal = "project"', 'removal = "projekt"'), "methods[4].removal",
                         r"must be one of 'scatter', 'proj_adv', 'project'; got 'projekt'"),
    "lambda_missing": (lambda t: _edit(t, "kind = \"refine\"\nlambda = 0.5", "kind = \"refine\""),
                       "methods[1].lambda", r"missing required key for kind 'refine'"),
    "table_ref": (lambda t: _edit(t, 'enrichment = ["baseline", "refine", "target"]',
                                  'enrichment = ["baseline", "refined"]'), "tables.enrichment",
                  r"names method 'refined', which is not a \[\[methods\]\] key"),
    "no_experiment": (lambda t: t.split("\n", 2)[2], "experiment", r"missing required key naming the experiment"),
    "bad_classifier": (lambda t: _edit(t, 'classifiers = ["knn", "lr"]', 'classifiers = ["knn", "svm"]'),
                       "assess.classifiers[1]", r"must be one of 'knn', 'lr', 'rf'; got 'svm'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_name_file_and_key_before_any_compute(tmp_path, no_compute, case):
    edit, key, pattern = CASES[case]
    path = tmp_path / "bad.toml"
    path.write_text(edit(DIGITS), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="^" + pattern_prefix(path, key) + pattern) as info:
        cli.run(path, out, quiet=True, cache=False)
    assert info.value.path == path and info.value.key == key
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]  # nothing written


def pattern_prefix(path, key):
    import re

    return re.escape(f"{path}: " + (f"{key}: " if key else ""))


def test_missing_data_dir_is_an_error_not_a_fallback(tmp_path, no_compute):
    path = tmp_path / "ok.toml"
    path.write_text(DIGITS, encoding="utf-8")
    with pytest.raises(ConfigError, match=r": --data-dir .*nowhere is not an existing folder"):
        cli.run(path, tmp_path / "out", data_dir=str(tmp_path / "nowhere"), quiet=True, cache=False)


def test_main_reports_config_errors_with_status_2(tmp_path, no_compute, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(_edit(DIGITS, "[assess]", "[assesss]"), encoding="utf-8")
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jnmf: error: {path}: assesss: unknown key (did you mean 'assess'?)")


def test_every_shipped_config_validates_by_name_and_names_labels_alike(no_compute):
    names = cli.shipped_configs()
    assert {"guided_nmf", "guided_nmf_digits", "choose_k_hawaiibirds", "choose_k_digits", "integration"} <= set(names)
    for name in names:
        if name == "integration":
            pytest.importorskip("scanpy", reason="the integration job needs the integration extra")
        config, module = cli.check(name)
        assert module.__name__ == f"jnmf.jobs.{config['experiment']}" and callable(module.run)
        assert Path(module.__file__).parent == ROOT / "jnmf" / "jobs"
        # class labels are `labels` everywhere (a [[methods]] entry's `label` is its display name)
        tables = [config.get("data", {})] + list(config.get("datasets", []))
        assert not any("label" in table for table in tables), name


def test_run_by_name_resolves_to_the_package_and_paths_keep_working(tmp_path):
    assert cli.resolve_config("guided_nmf") == cli.SHIPPED_CONFIGS / "guided_nmf.toml"
    assert cli.resolve_config("guided_nmf.toml") == cli.SHIPPED_CONFIGS / "guided_nmf.toml"
    copy = tmp_path / "mine.toml"
    copy.write_text(DIGITS, encoding="utf-8")
    assert cli.resolve_config(copy) == copy  # a path wins
    with pytest.raises(ConfigError, match=r"guided_nmff: config file does not exist, and it is not the name of a "
                                          r"shipped config \(.*guided_nmf_digits.*\) \(did you mean 'guided_nmf'\?\)"):
        cli.resolve_config("guided_nmff")


def test_unknown_job_name_is_a_config_error(tmp_path, no_compute):
    path = tmp_path / "bad.toml"
    path.write_text(_edit(DIGITS, 'experiment = "guided_nmf"', 'experiment = "guided_nfm"'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"experiment: no job named 'guided_nfm' \(jobs: .*\) \(did you mean "
                                          r"'guided_nmf'\?\)"):
        cli.check(path)


def test_list_and_show(capsys):
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.split() == cli.shipped_configs()
    assert cli.main(["show", "guided_nmf_digits"]) == 0
    assert capsys.readouterr().out == DIGITS
    assert cli.main(["show", "nope"]) == 2


def test_standalone_script_config_is_reported_as_not_for_jnmf_run(no_compute):
    with pytest.raises(ConfigError, match=r"lambda_sweep.toml: experiment: missing required key .*not for `jnmf run`"):
        cli.check(ROOT / "experiments" / "lambda_sweep.toml")
    assert "lambda_sweep" not in cli.shipped_configs()


def test_help_and_import_load_no_heavy_modules():
    """`jnmf --help` and `import jnmf` import neither JAX nor scikit-learn, matplotlib or scanpy."""
    code = textwrap.dedent("""
        import sys
        import jnmf
        from jnmf import cli
        try:
            cli.main(["--help"])
        except SystemExit:
            pass
        heavy = [m for m in ("jax", "sklearn", "matplotlib", "scanpy", "anndata", "numpy") if m in sys.modules]
        print("HEAVY", heavy, jnmf.__version__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    line = out.splitlines()[-1].split(" ", 2)
    assert line[:2] == ["HEAVY", "[]"], out
    assert line[2][0].isdigit()


def test_schema_spec_rules():
    schema = {"a": Required_(int), "b": (float, [float]), "t": {"*": [str]}, "x": float}
    cli.check_table({"a": 1, "b": [1, 2.5], "t": {"any": ["s"]}, "x": 3}, schema, "c.toml")  # int is a float
    with pytest.raises(ConfigError, match=r"^c.toml: x: must be a number, got True"):
        cli.check_table({"a": 1, "x": True}, schema, "c.toml")  # bool is not a number
    with pytest.raises(ConfigError, match=r"^c.toml: b: must be a number or an array of a number, got 's'"):
        cli.check_table({"a": 1, "b": "s"}, schema, "c.toml")
    with pytest.raises(ConfigError, match=r"^c.toml: t.any\[0\]: must be a string, got 3"):
        cli.check_table({"a": 1, "t": {"any": [3]}}, schema, "c.toml")


Required_ = cli.Required


# Output folders: a fake experiment with no schema (only the top-level checks apply), which writes results and
# can fail or wait for a signal.

FAKE = textwrap.dedent('''
    import time

    def run(config, out_dir, data_dir, report):
        (out_dir / "results.json").write_text(config["tag"])
        report("STARTED")
        if config.get("fail"):
            raise RuntimeError("boom")
        if config.get("wait"):
            time.sleep(120)
        (out_dir / "results.md").write_text(config["tag"])
        return {"tag": config["tag"]}
''')


def _fake_config(tmp_path, tag, **flags):
    (tmp_path / "fake.py").write_text(FAKE)
    extra = "".join(f"{k} = true\n" for k in flags)
    path = tmp_path / f"{tag}.toml"
    path.write_text(f'experiment = "fake.py"\ntag = "{tag}"\nanything = {{ free = 1 }}\n{extra}')
    return path


def _siblings(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((out.name, "." + out.name)))


def test_successful_run_replaces_the_folder_as_a_whole(tmp_path):
    out = tmp_path / "out"
    assert cli.run(_fake_config(tmp_path, "one"), out, quiet=True, cache=False) == {"tag": "one"}
    (out / "stale.png").write_text("from run one")
    cli.run(_fake_config(tmp_path, "two"), out, quiet=True, cache=False)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "run.log"]  # no stale.png
    assert (out / "results.json").read_text() == "two" and "done: wall time" in (out / "run.log").read_text()
    assert _siblings(out) == ["out"]  # no lock, no partial or old folder left


def test_failed_run_keeps_the_previous_results_and_marks_its_log(tmp_path):
    out = tmp_path / "out"
    cli.run(_fake_config(tmp_path, "good"), out, quiet=True, cache=False)
    before = {p.name: p.read_text() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="boom"):
        cli.run(_fake_config(tmp_path, "bad", fail=True), out, quiet=True, cache=False)
    assert {p.name: p.read_text() for p in out.iterdir()} == before  # the previous run, whole
    log = (tmp_path / "out.failed" / "run.log").read_text()
    assert "failed: RuntimeError: boom" in log and "done" not in log
    assert _siblings(out) == ["out", "out.failed"]


def _start(tmp_path, config, out):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "jnmf.cli", "run", str(config), "--out", str(out), "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    for line in proc.stdout:  # wait until the experiment runs (it holds the lock then)
        if "STARTED" in line:
            return proc
    proc.wait()
    raise AssertionError(f"the run did not start: rc {proc.returncode}, {proc.stderr.read()}")


def test_interrupted_run_leaves_no_stale_results_and_says_interrupted(tmp_path):
    out = tmp_path / "out"
    cli.run(_fake_config(tmp_path, "old"), out, quiet=True, cache=False)
    proc = _start(tmp_path, _fake_config(tmp_path, "new", wait=True), out)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=600) == 130
    finally:
        proc.kill()
        proc.wait()
    assert "interrupted" in proc.stderr.read()
    # out holds the old run only: its results beside its own, complete log
    assert (out / "results.json").read_text() == "old" and "done: wall time" in (out / "run.log").read_text()
    failed = tmp_path / "out.failed"
    assert sorted(p.name for p in failed.iterdir()) == ["results.json", "run.log"]  # the new run's partial files
    log = (failed / "run.log").read_text()
    assert "interrupted (KeyboardInterrupt)" in log and "done" not in log
    assert _siblings(out) == ["out", "out.failed"]  # lock released, no partial folder


def test_second_run_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    proc = _start(tmp_path, _fake_config(tmp_path, "first", wait=True), out)
    try:
        with pytest.raises(RunLockedError, match=rf"{out} is being written by another jnmf run \(pid {proc.pid} "):
            cli.run(_fake_config(tmp_path, "second"), out, quiet=True, cache=False)
        proc.send_signal(signal.SIGTERM)  # ends like Ctrl-C
        assert proc.wait(timeout=600) == 130
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()  # neither run completed; the second wrote nothing
    assert "interrupted" in (tmp_path / "out.failed" / "run.log").read_text()
    assert (tmp_path / "out.failed" / "results.json").read_text() == "first"  # not interleaved with the second


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / ".out.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    cli.run(_fake_config(tmp_path, "after"), out, quiet=True, cache=False)
    assert (out / "results.json").read_text() == "after" and not (tmp_path / ".out.lock").exists()


def test_verbose_reaches_the_job_and_its_progress_loops(tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent('''
        from jnmf.cli import progress

        def run(config, out_dir, data_dir, report):
            seen = [i for i in progress(report, range(4), desc="steps", total=4)]
            report(f"seen {seen}")
            return {"verbose": report.verbose, "seen": seen}
    '''))
    (tmp_path / "job.toml").write_text('experiment = "job.py"\n')
    for verbose, quiet in ((True, False), (False, False), (True, True)):
        out = tmp_path / f"out-{verbose}-{quiet}"
        result = cli.run(tmp_path / "job.toml", out, quiet=quiet, cache=False, verbose=verbose)
        assert result == {"verbose": verbose and not quiet, "seen": [0, 1, 2, 3]}
        assert "seen [0, 1, 2, 3]" in (out / "run.log").read_text()
