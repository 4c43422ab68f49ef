"""The README's two fresh-machine commands stay true: CI runs the same test command."""

import re
import shlex
from pathlib import Path

from harness.cli import parse_config

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command():
    _, test_command = readme_commands()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_ci_installs_what_the_readme_installs():
    setup_and_run, _ = readme_commands()
    installs = [step for step in setup_and_run.split(" && ") if " install " in step]
    assert len(installs) == 2  # the package with its extras, the cookbook without dependencies
    for install in installs:
        options = install.replace(".venv/bin/pip install ", "")
        assert any(
            line.endswith(options) for line in (REPO / ".ci" / "run").read_text().split("\n")
        )


def test_the_main_command_parses_and_runs_offline():
    setup_and_run, _ = readme_commands()
    run = shlex.split(setup_and_run.split(" && ")[-1])
    assert run[1] == "scripts/grpo_train_tinker.py"
    config = parse_config(run[2:])
    assert config.backend == "local"
    assert (REPO / config.model_name / "config.json").is_file()
