"""The README's two fresh-machine commands stay true: CI runs exactly the test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("```bash")
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1:end] if line and not line.startswith("#")]


def test_readme_opens_with_two_commands():
    from jnmf import cli

    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("jnmf run guided_nmf")  # the shipped config, by name: works from a wheel too
    assert "pytest" in commands[1]
    assert cli.resolve_config("guided_nmf") == ROOT / "jnmf" / "configs" / "guided_nmf.toml"


def test_readme_jnmf_run_commands_name_shipped_configs():
    """Every `jnmf run NAME` in the README names a shipped config (or a file of the repository)."""
    import re

    from jnmf import cli

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    names = set(re.findall(r"jnmf run (\w[\w./-]*)", text)) - {"mine.toml"}
    assert "guided_nmf" in names and "integration" in names
    for name in names:
        assert name in cli.shipped_configs() or (ROOT / name).is_file(), name


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert _readme_commands()[1] in ci
