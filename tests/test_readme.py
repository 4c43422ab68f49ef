"""The README's two fresh-machine commands stay true: CI runs the same test command, and it
runs the suite and the lint through tox."""

import configparser
import os
import re
import shlex
import tomllib
from pathlib import Path

from hypothesis import settings

from harness.cli import parse_config

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command():
    _, test_command = readme_commands()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_the_test_command_runs_the_suite_and_the_lint_through_tox_in_the_venv():
    _, test_command = readme_commands()
    assert shlex.split(test_command) == [".venv/bin/tox", "--current-env"]  # every env, here
    tox = configparser.ConfigParser()
    tox.read(REPO / "tox.ini")
    assert tox["tox"]["envlist"].replace(",", " ").split() == ["lint", "tests"]
    assert "-m pytest -q" in tox["testenv:tests"]["commands"]
    # tinker-cookbook installs without its dependencies (tests/cookbook-requirements.txt), so
    # the test command brings it itself rather than the setup command or CI.
    assert "--no-deps -r tests/cookbook-requirements.txt" in tox["testenv:tests"]["commands_pre"]
    lint = tox["testenv:lint"]["commands"]
    assert "ruff check harness scripts tests" in lint
    assert "ruff format --check harness scripts tests" in lint
    # --current-env is a plugin's: the install the README and CI make must bring it.
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(pin.startswith("tox-current-env==") for pin in dev["dev"])


def test_ci_draws_the_same_hypothesis_examples_on_every_run():
    assert settings.default.derandomize == (os.environ.get("CI") == "true")
    assert settings.default.deadline is None


def test_ci_installs_what_the_readme_installs():
    setup_and_run, _ = readme_commands()
    installs = [step for step in setup_and_run.split(" && ") if " install " in step]
    assert len(installs) == 1  # the package with its extras; tox adds the cookbook (below)
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
