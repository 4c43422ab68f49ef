"""The sweep: its points, names and log folders, which runs are done, the summary, and the
runner end to end (resumable: a finished run is not run again)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import parse_config
from harness.config import ConfigError
from harness.jsonl import append_json_line
from harness.sweep import (
    Outcome,
    finished,
    grid_points,
    listed_points,
    markdown_table,
    outcome,
    sweep_runs,
)

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--n_grpo_steps=3", "--rollout_batch_size=4", "--group_size=2"]


def test_a_grid_is_the_product_of_its_values_and_points_add_to_it():
    grid = grid_points(["loss_type=no_baseline,grpo_clip", "learning_rate=3e-4,1e-3"])
    assert grid == [
        [("loss_type", "no_baseline"), ("learning_rate", "3e-4")],
        [("loss_type", "no_baseline"), ("learning_rate", "1e-3")],
        [("loss_type", "grpo_clip"), ("learning_rate", "3e-4")],
        [("loss_type", "grpo_clip"), ("learning_rate", "1e-3")],
    ]
    assert listed_points(["epochs_per_rollout_batch=2+train_batch_size=4"]) == [
        [("epochs_per_rollout_batch", "2"), ("train_batch_size", "4")]
    ]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["loss_type"], "expected flag=value"),
        (["loss_type=a,,b"], "an empty value"),
        (["seed=1,2"], "the sweep sets --seed itself"),
        (["loss_type=a", "loss_type=b"], "names a flag twice"),
    ],
)
def test_a_bad_grid_entry_is_named(grid, message):
    with pytest.raises(ConfigError, match=message):
        grid_points(grid)


def test_points_are_named_by_what_they_change_run_once_and_seed_by_seed(tmp_path):
    points = grid_points(["loss_type=grpo_clip,no_baseline"]) + listed_points(
        ["use_std_normalization=True", "epochs_per_rollout_batch=2+train_batch_size=4"]
    )
    runs = sweep_runs(points, [0, 1], COMMON, tmp_path, parse_config)
    names = ["baseline", "loss_type=no_baseline", "epochs_per_rollout_batch=2,train_batch_size=4"]
    assert [(r.point, r.seed) for r in runs] == [(n, s) for s in (0, 1) for n in names]
    assert runs[1].log_path == tmp_path / "loss_type=no_baseline" / "seed0"
    assert runs[1].flags[-2:] == ("--seed=0", f"--log_path={runs[1].log_path}")
    assert all(r.n_grpo_steps == 3 for r in runs)
    with pytest.raises(ConfigError, match="no point"):
        sweep_runs([], [0], COMMON, tmp_path, parse_config)


def log_rows(log_path: Path, accuracies: dict[int, float], steps: int) -> None:
    """Step rows 0 .. steps - 1 as the loop logs them (the final validation row not yet)."""
    for step in range(steps):
        row = {"progress/grpo_step": step, "time/total": 2.0}
        row |= {"tokens/sampled_total": 10.0 * (step + 1), "tokens/trained_total": 5.0 * step}
        if step in accuracies:
            row["val/accuracy"] = accuracies[step]
        append_json_line(log_path / "metrics.jsonl", row)


def test_a_run_is_finished_once_it_logged_its_final_validation(tmp_path):
    (run,) = sweep_runs([[]], [0], COMMON, tmp_path, parse_config)  # the common flags alone
    assert not finished(run)
    log_rows(run.log_path, {0: 0.5, 2: 0.7}, steps=3)  # stopped before its final validation
    assert not finished(run)
    append_json_line(run.log_path / "metrics.jsonl", {"progress/grpo_step": 3, "val/accuracy": 0.6})
    assert finished(run)
    assert outcome(run) == Outcome("baseline", 0, 0.6, 0.7, 3, 6.0, 30.0, 10.0)


def test_the_table_gives_mean_and_range_over_seeds_and_names_what_is_missing():
    outcomes = [
        Outcome("a", 0, 0.5, 0.6, 60, 100.0, 1000.0, 500.0),
        Outcome("a", 1, 0.7, 0.8, 60, 120.0, 1200.0, 700.0),
    ]
    table = markdown_table(outcomes, {"a": 3, "b": 3})
    assert "| a | 2 of 3 | 0.600 [0.500, 0.700] | 0.700 | 60 | 110 | 1,100 | 600 |" in table
    assert "| b | 0 of 3 | not run |" in table


def test_the_sweep_runs_its_runs_and_a_rerun_runs_nothing(tmp_path, tiny_model_dir, gsm8k_dir):
    out = tmp_path / "sweep"
    command = [
        sys.executable, str(REPO / "scripts" / "sweep.py"),
        "--grid", "loss_type=reinforce_with_baseline", "--seeds", "0", "--out", str(out),
        "--", "--backend=local", f"--model_name={tiny_model_dir}", f"--dataset_path={gsm8k_dir}",
        "--n_grpo_steps=1", "--rollout_batch_size=2", "--group_size=2",
        "--sampling_max_tokens=8", "--eval_n=2",
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "0 runs already finished, 1 to run" in first.stderr
    with open(out / "summary.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["point"], r["steps"]) for r in rows] == [("loss_type=reinforce_with_baseline", "1")]
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert "| loss_type=reinforce_with_baseline | 1 of 1 |" in (out / "summary.md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "1 runs already finished, 0 to run" in again.stderr
    (out / "summary.md").unlink()
    more = [*command[:4], "--seeds", "0", "1", "--summary_only=True", *command[6:]]
    summary = subprocess.run(more, capture_output=True, text=True, check=False)
    assert summary.returncode == 0 and "1 runs already finished, 1 to run" in summary.stderr
    assert "| loss_type=reinforce_with_baseline | 1 of 2 |" in (out / "summary.md").read_text()
    assert not (out / "loss_type=reinforce_with_baseline" / "seed1").exists()
