"""Resuming from damaged run state: a checkpoint that vanished falls back to the one before it,
an incomplete index entry is one clear error, and nothing is deleted before a resume works."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from rich.console import Console

from harness.checkpoints import RunStateError, checkpoints, index_path
from harness.cli import check_resumed_config, main, parse_config
from harness.config import Config, config_changes
from harness.jsonl import append_json_line, read_json_lines
from harness.logger import RunLogger
from tests.support.scripted_backend import SCRIPTED_FLAGS, scripted_run

FLAGS = [*SCRIPTED_FLAGS, "--group_size=4"]


@pytest.fixture(scope="module")
def problems(gsm8k_problems):
    return gsm8k_problems


@pytest.fixture
def run(problems, gsm8k_dir, tmp_path):
    def run_with(steps: int, states=None, log_path=tmp_path):
        flags = [*FLAGS, f"--n_grpo_steps={steps}", f"--dataset_path={gsm8k_dir}",
                 f"--log_path={log_path}"]  # fmt: skip
        return scripted_run(flags, problems, states)

    return run_with


def test_a_vanished_checkpoint_falls_back_to_the_one_before_it(run, tmp_path, capsys):
    straight, _ = run(6, log_path=tmp_path / "straight")
    first, _ = run(4)  # a checkpoint at steps 2 and 4
    newest = checkpoints(tmp_path)[-1]
    states = {path: n for path, n in first.states.items() if path != newest.state_path}
    resumed, result = run(6, states)
    assert result.resumed_from == 2
    assert "the checkpoint of step 4" in capsys.readouterr().err
    rows = read_json_lines(tmp_path / "metrics.jsonl")
    assert [row["progress/grpo_step"] for row in rows] == list(range(7))
    # Exactly n_grpo_steps optimizer steps in the saved state: none lost, none applied twice.
    assert resumed.states[checkpoints(tmp_path)[-1].state_path] == 6
    assert resumed.of("sample")[-1].kwargs == straight.of("sample")[-1].kwargs


def test_when_no_checkpoint_loads_the_run_stops_and_deletes_nothing(run, tmp_path):
    run(4)
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(RunStateError, match=r"none of the 2 saved states in .*checkpoints loads"):
        run(6, states={})
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics


def test_an_incomplete_index_entry_names_its_line_and_deletes_nothing(run, tmp_path):
    first, _ = run(2)
    append_json_line(index_path(tmp_path), {"step": 4, "state_path": "tinker://x/weights/y"})
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(RunStateError, match=r"index.jsonl:2: incomplete checkpoint entry"):
        run(4, first.states)
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    assert json.loads(index_path(tmp_path).read_text().splitlines()[1])["step"] == 4


# -- resuming with other flags ----------------------------------------------------------------


def started_run(folder, **config) -> None:
    """A run folder as a run leaves it: its config and a checkpoint entry."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(Config(**config))))
    entry = {"step": 2, "state_path": "tinker://r/weights/step_000002", "seed": 0,
             "sampler_path": "tinker://r/sampler_weights/step_000002",
             "cursor": {"epoch": 0, "offset": 6}}  # fmt: skip
    append_json_line(index_path(folder), entry)


def cli_flags(log_path, gsm8k_dir, tiny_model_dir, *flags) -> list[str]:
    return ["--backend=local", f"--model_name={tiny_model_dir}", f"--dataset_path={gsm8k_dir}",
            f"--log_path={log_path}", *flags]  # fmt: skip


def test_resuming_with_flags_that_change_a_step_is_refused_listing_each(
    tmp_path, gsm8k_dir, tiny_model_dir, capsys
):
    started_run(tmp_path, model_name=str(tiny_model_dir), dataset_path=str(gsm8k_dir),
                log_path=str(tmp_path), backend="local", group_size=8)  # fmt: skip
    before = (tmp_path / "config.json").read_text()
    flags = cli_flags(tmp_path, gsm8k_dir, tiny_model_dir, "--group_size=4", "--seed=3")
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "--group_size (was 8, now 4)" in err and "--seed (was 0, now 3)" in err
    assert err.count("\n") == 1  # one line
    assert (tmp_path / "config.json").read_text() == before


def test_resuming_with_flags_that_may_change_notes_them(tmp_path, gsm8k_dir, tiny_model_dir):
    started_run(tmp_path, model_name=str(tiny_model_dir), dataset_path=str(gsm8k_dir),
                log_path=str(tmp_path), backend="local")  # fmt: skip
    config = parse_config(
        cli_flags(tmp_path, gsm8k_dir, tiny_model_dir, "--n_grpo_steps=300", "--eval_every=5")
    )
    console = Console(file=io.StringIO(), width=200)
    check_resumed_config(config, console)
    assert "--n_grpo_steps=300 (was 200)" in console.file.getvalue()
    assert set(config_changes({}, Config())) == set()  # flags an older run lacked: defaults


def test_an_empty_config_json_is_one_clear_error_and_stays(
    tmp_path, gsm8k_dir, tiny_model_dir, capsys
):
    started_run(tmp_path)
    (tmp_path / "config.json").write_text("")
    assert main(cli_flags(tmp_path, gsm8k_dir, tiny_model_dir)) == 2
    assert "config.json is empty or not JSON" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == ""


def test_an_unreadable_metrics_line_is_kept_aside_not_deleted_on_resume(tmp_path, capsys):
    config = Config(log_path=str(tmp_path))
    rows = [{"progress/grpo_step": float(s), "reward/mean": 0.1 * s} for s in range(4)]
    lines = [json.dumps(row) for row in rows]
    lines.insert(2, '{"progress/grpo_step": 1.5, "rew')  # a line cut short in the middle
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    RunLogger(config, Console(stderr=True, soft_wrap=True)).drop_rows_from(3)
    assert read_json_lines(tmp_path / "metrics.jsonl") == rows[:3]
    kept = (tmp_path / "metrics.unreadable.txt").read_text()
    assert kept == '{"progress/grpo_step": 1.5, "rew\n'
    assert "metrics.jsonl: line 3 does not read as JSON" in capsys.readouterr().err
