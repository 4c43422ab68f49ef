"""The loop's end-to-end checks, in a second, on the golden cassette instead of a model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.backends.cassette import read_header, recorded_flags
from harness.backends.replay import ReplayServiceClient, recorded_reward_fn
from harness.config import Config
from harness.data import load_problems
from harness.jsonl import read_json_lines
from harness.logger import RunLogger
from harness.loop import train
from tests.support.metrics import without_timings

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "fixtures" / "cassettes" / "smoke.jsonl"
STEP_METRICS = [
    "progress/grpo_step",
    "progress/done_frac",
    "reward/mean",
    "reward/std",
    "reward/format_mean",
    "reward/answer_mean",
    "train/frac_zero_variance_groups",
    "train/datums",
    "response/length_mean",
    "response/truncated_frac",
    "time/sampling",
    "time/training",
    "time/total",
]
TRAINING_METRICS = ["train/loss", "train/kl_sampler_trainer", "train/ratio_mean", "train/clip_frac"]


def recorded_config(cassette: Path, log_path: Path) -> Config:
    """The recorded run's flags, pointed at a fresh log folder."""
    recorded = recorded_flags(read_header(cassette))
    fields = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in recorded.items() if k in fields})
    return dataclasses.replace(
        config, backend="replay", cassette=str(cassette), log_path=str(log_path)
    )


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("golden")
    config = recorded_config(GOLDEN, log_path)
    service = ReplayServiceClient(GOLDEN)
    dataset = REPO / config.dataset_path
    train_problems = load_problems(config.dataset, "train", dataset)
    test_problems = load_problems(config.dataset, "test", dataset)
    result = train(
        config,
        service,
        train_problems,
        test_problems,
        RunLogger(config),
        reward_fn=recorded_reward_fn(GOLDEN),
    )
    return log_path, config, result, service


def test_the_golden_cassette_replays_to_its_recorded_metrics(replayed):
    log_path, _, _, service = replayed
    expected = read_json_lines(GOLDEN.with_suffix(".metrics.jsonl"))
    rows = read_json_lines(log_path / "metrics.jsonl")
    assert without_timings(rows) == expected
    assert service.replay.unreplayed() == []  # every recorded call was asked for


def test_the_golden_cassette_replay_logs_every_step_and_trains_where_groups_vary(replayed):
    log_path, config, result, _ = replayed
    rows = read_json_lines(log_path / "metrics.jsonl")
    step_rows, final_row = rows[:-1], rows[-1]
    assert [r["progress/grpo_step"] for r in step_rows] == list(range(config.n_grpo_steps))
    assert result.steps_run == config.n_grpo_steps and result.resumed_from == 0
    for row in step_rows:
        assert all(k in row for k in STEP_METRICS), row
        trained = row["train/datums"] > 0
        assert all((k in row) == trained for k in TRAINING_METRICS), row
        if trained:  # on-policy: the trainer saw the sampler's tokens with its logprobs
            assert abs(row["train/kl_sampler_trainer"]) < 1e-4
    assert sum(r["train/datums"] > 0 for r in step_rows) >= 2
    assert final_row["progress/done_frac"] == 1.0 and "val/accuracy" in final_row


def test_the_golden_cassette_replay_checkpoints_and_validates_on_schedule(replayed):
    log_path, config, _, _ = replayed
    index = read_json_lines(log_path / "checkpoints" / "index.jsonl")
    assert [e["step"] for e in index] == [2, 4]
    assert all(e["state_path"].startswith("tinker://") for e in index)
    evals = sorted(p.name for p in (log_path / "eval").iterdir())
    assert evals == [f"step_{s:06d}.jsonl" for s in (0, 2, 4)]
    records = read_json_lines(log_path / "eval" / "step_000000.jsonl")
    assert len(records) == config.eval_n and {"question", "response", "reward"} <= set(records[0])
