"""Several optimizer steps per rollout batch, and the loss types end to end on the local backend.

Checkpoints land only between rollout batches (a step's optimizer steps are all taken before
its save, and a failed one redoes the whole batch from the last save), so a resumed run is the
run never stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends.local.storage import saved_optimizer_steps
from harness.checkpoints import last_checkpoint
from harness.cli import main
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from tests.support.varied_reward_run import varied_reward
from tests.support.viewed import assert_viewer_trains_as_logged

# 2 questions x 4 samples = 8 rollouts, 2 minibatches of 4 (one group each), 2 epochs.
OFF_POLICY = ["--epochs_per_rollout_batch=2", "--train_batch_size=4"]


def run_args(model: Path, gsm8k: Path, log_path: Path, steps: int) -> list[str]:
    return [
        "--backend=local",
        f"--model_name={model}",
        f"--dataset_path={gsm8k}",
        f"--log_path={log_path}",
        f"--n_grpo_steps={steps}",
        "--rollout_batch_size=2",
        "--group_size=4",
        "--sampling_max_tokens=16",
        "--learning_rate=2e-2",
        "--eval_every=10",
        "--eval_n=2",
        "--save_every=10",
    ]


@pytest.fixture(scope="module")
def off_policy_run(tmp_path_factory, tiny_model_dir, gsm8k_dir):
    log_path = tmp_path_factory.mktemp("off-policy")
    args = run_args(tiny_model_dir, gsm8k_dir, log_path, steps=3) + OFF_POLICY
    cassette = f"--record_cassette={log_path / 'run.jsonl'}"
    assert main([*args, cassette], reward_fn=varied_reward) == 0
    return log_path


def trained_rows(log_path: Path) -> list[dict]:
    return [row for row in read_json_lines(log_path / "metrics.jsonl") if "train/loss" in row]


def test_the_first_optimizer_step_is_on_policy_and_the_later_ones_are_not(off_policy_run):
    rows = [row for row in trained_rows(off_policy_run) if row["train/optim_steps"] == 4]
    assert rows, "no step trained on both minibatches"
    for row in rows:
        assert row["optim_step/0/ratio_min"] == pytest.approx(1, abs=1e-4)
        assert row["optim_step/0/ratio_max"] == pytest.approx(1, abs=1e-4)
        assert abs(row["optim_step/0/kl_sampler_trainer"]) < 1e-5
        later = [row[f"optim_step/{i}/{k}"] for i in (1, 2, 3) for k in ("ratio_min", "ratio_max")]
        assert max(abs(r - 1) for r in later) > 1e-3
        for i in range(4):
            assert 0 <= row[f"optim_step/{i}/clip_frac"] <= 1
            assert f"optim_step/{i}/loss" in row
        # The aggregate spans every optimizer step, and the clip acted somewhere.
        assert row["train/ratio_max"] == max(row[f"optim_step/{i}/ratio_max"] for i in range(4))
    assert any(row["train/clip_frac"] > 0 for row in rows)


def test_the_viewer_splits_a_recorded_step_into_its_optimizer_steps(off_policy_run, gsm8k_dir):
    cassette, metrics = off_policy_run / "run.jsonl", off_policy_run / "metrics.jsonl"
    assert_viewer_trains_as_logged(cassette, metrics, str(gsm8k_dir))
    assert any("optim_step/3/clip_frac" in row for row in read_json_lines(metrics))


def test_checkpoints_hold_every_optimizer_step_of_the_batches_before_them(off_policy_run):
    taken = sum(row.get("train/optim_steps", 0) for row in trained_rows(off_policy_run))
    checkpoint = last_checkpoint(off_policy_run)
    assert checkpoint.step == 3
    storage = off_policy_run / "tinker-storage"
    assert saved_optimizer_steps(storage, checkpoint.state_path) == taken > 3


def test_a_resumed_off_policy_run_is_the_run_never_stopped(
    off_policy_run, tmp_path, tiny_model_dir, gsm8k_dir
):
    assert main(run_args(tiny_model_dir, gsm8k_dir, tmp_path, 2) + OFF_POLICY, varied_reward) == 0
    assert main(run_args(tiny_model_dir, gsm8k_dir, tmp_path, 3) + OFF_POLICY, varied_reward) == 0
    resumed = comparable(read_json_lines(tmp_path / "metrics.jsonl"))
    straight = comparable(read_json_lines(off_policy_run / "metrics.jsonl"))
    # The first run's final validation row (step 2) is dropped when the run goes on.
    assert [r["progress/grpo_step"] for r in resumed] == [0, 1, 2, 3]
    assert resumed == straight


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without timings, nor the fraction done (the first run was asked for fewer steps)."""
    return [
        {k: v for k, v in r.items() if k != "progress/done_frac"} for r in without_timings(rows)
    ]


def test_a_recorded_run_of_another_loss_type_replays_to_its_metrics(
    tmp_path, tiny_model_dir, gsm8k_dir
):
    cassette = tmp_path / "reinforce.jsonl"
    flags = ["--loss_type=reinforce_with_baseline", "--length_normalization=sequence_mean"]
    recorded = tmp_path / "recorded"
    args = run_args(tiny_model_dir, gsm8k_dir, recorded, 2) + flags
    assert main([*args, f"--record_cassette={cassette}"], reward_fn=varied_reward) == 0
    replayed = tmp_path / "replayed"
    args = [a for a in run_args(tiny_model_dir, gsm8k_dir, replayed, 2) if a != "--backend=local"]
    assert main([*args, *flags, "--backend=replay", f"--cassette={cassette}"], varied_reward) == 0
    rows = without_timings(read_json_lines(replayed / "metrics.jsonl"))
    assert rows == without_timings(read_json_lines(recorded / "metrics.jsonl"))
    assert any(row.get("train/datums", 0) > 0 for row in rows)
    assert_viewer_trains_as_logged(cassette, recorded / "metrics.jsonl", str(gsm8k_dir))
