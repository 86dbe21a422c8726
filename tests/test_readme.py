"""The README's two fresh-machine commands stay true: CI runs exactly the test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("```bash")
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1:end] if line and not line.startswith("#")]


def test_readme_opens_with_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "jnmf run configs/guided_nmf.toml" in commands[0]
    assert "pytest" in commands[1]
    assert (ROOT / "configs" / "guided_nmf.toml").is_file()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert _readme_commands()[1] in ci
