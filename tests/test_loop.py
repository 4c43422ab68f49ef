"""The training run end to end on the local backend with the tiny fixture model."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tinker

from harness.backends import open_service_client
from harness.backends.local import LocalServiceClient
from harness.checkpoints import last_checkpoint
from harness.cli import main, parse_config
from harness.data import load_gsm8k
from harness.jsonl import read_json_lines
from harness.logger import RunLogger
from harness.loop import train
from harness.metrics import without_timings
from tests.support.runs import (
    REPO,
    SMOKE,
    checkpoint_steps,
    metric_steps,
    offline_args,
    run_script,
    wait_for,
)
from tests.support.varied_reward_run import varied_reward

README_METRICS = [
    "progress/grpo_step",
    "progress/done_frac",
    "reward/mean",
    "reward/std",
    "reward/min",
    "reward/max",
    "time/save_weights",
    "time/sampling",
    "time/compute_rewards",
    "time/build_data",
    "time/training",
    "time/total",
]
EXTRA_METRICS = [
    "reward/format_mean",
    "reward/answer_mean",
    "train/frac_zero_variance_groups",
    "response/length_mean",
    "response/length_max",
    "response/truncated_frac",
]
TRAINING_METRICS = [
    "train/loss",
    "train/kl_sampler_trainer",
    "train/ratio_mean",
    "train/ratio_min",
    "train/ratio_max",
    "train/clip_frac",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_model_dir, gsm8k_dir):
    log_path = tmp_path_factory.mktemp("smoke")
    assert main(SMOKE + offline_args(tiny_model_dir, gsm8k_dir, log_path)) == 0
    return log_path


def test_smoke_run_writes_every_metric_each_step(smoke_run):
    rows = read_json_lines(smoke_run / "metrics.jsonl")
    step_rows, final_row = rows[:-1], rows[-1]
    assert [row["progress/grpo_step"] for row in step_rows] == [0, 1, 2, 3, 4]
    for row in step_rows:
        missing = [k for k in README_METRICS + EXTRA_METRICS if k not in row]
        assert not missing, (row["progress/grpo_step"], missing)
    validation = {"val/accuracy", "val/accuracy_stderr", "val/format_accuracy"}
    for step in (0, 2, 4):
        assert validation <= set(step_rows[step])
    assert "val/accuracy" not in step_rows[1]
    assert final_row["progress/grpo_step"] == 5 and final_row["progress/done_frac"] == 1.0
    assert 0.0 <= final_row["val/accuracy"] <= 1.0


def test_smoke_run_checkpoints_and_validation_files(smoke_run):
    index = read_json_lines(smoke_run / "checkpoints" / "index.jsonl")
    assert [entry["step"] for entry in index] == [2, 4, 5]
    for entry in index:
        assert entry["state_path"].startswith("tinker://")
        assert entry["sampler_path"].startswith("tinker://")
    eval_files = sorted(p.name for p in (smoke_run / "eval").iterdir())
    assert eval_files == [f"step_{s:06d}.jsonl" for s in (0, 2, 4, 5)]
    records = read_json_lines(smoke_run / "eval" / "step_000000.jsonl")
    assert len(records) == 6
    for key in ("question", "response", "parsed_answer", "reward", "format_reward"):
        assert key in records[0]


def test_a_random_model_earns_nothing_so_nothing_trains(smoke_run):
    rows = read_json_lines(smoke_run / "metrics.jsonl")[:-1]
    assert all(row["train/frac_zero_variance_groups"] == 1.0 for row in rows)
    assert all(row["time/training"] == 0.0 and "train/loss" not in row for row in rows)


def logprobs_under(service: LocalServiceClient, tokens: list[int], **weights: str) -> list[float]:
    sampler = service.create_sampling_client(**weights).result()
    return sampler.compute_logprobs(tinker.ModelInput.from_ints(tokens)).result()[1:]


def test_varied_rewards_train_and_change_the_weights(tmp_path, tiny_model_dir, gsm8k_dir):
    config = parse_config(SMOKE + offline_args(tiny_model_dir, gsm8k_dir, tmp_path))
    service = LocalServiceClient(storage_dir=tmp_path / "tinker-storage")
    train_problems = load_gsm8k("train", gsm8k_dir)
    test_problems = load_gsm8k("test", gsm8k_dir)
    logger = RunLogger(config)
    train(config, service, train_problems, test_problems, logger, reward_fn=varied_reward)

    rows = read_json_lines(tmp_path / "metrics.jsonl")[:-1]
    assert any(row["train/datums"] > 0 for row in rows)
    for row in rows:
        if row["train/datums"] > 0:
            assert all(k in row for k in TRAINING_METRICS), row
            assert row["time/training"] > 0
            assert any(k.startswith("optim/") for k in row)
            # on-policy: the trainer sees the sampler's tokens with the sampler's logprobs
            assert abs(row["train/kl_sampler_trainer"]) < 1e-4
            assert abs(row["train/ratio_mean"] - 1) < 1e-4
    probe = list(range(1, 30))
    before = logprobs_under(service, probe, base_model=str(tiny_model_dir))
    after = logprobs_under(service, probe, model_path=last_checkpoint(tmp_path).sampler_path)
    assert max(abs(a - b) for a, b in zip(before, after, strict=True)) > 1e-4


class DelayedSampling:
    """Wraps a service so every `sample` answers 0.5 s late, and records call order."""

    def __init__(self, inner, events: list[str]):
        self.inner, self.events = inner, events
        self.pool = ThreadPoolExecutor(max_workers=64)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def create_lora_training_client(self, *args, **kwargs):
        return _Ready(
            DelayedTraining(self.inner.create_lora_training_client(*args, **kwargs).result(), self)
        )


class DelayedTraining:
    def __init__(self, inner, owner: DelayedSampling):
        self.inner, self.owner = inner, owner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save_weights_and_get_sampling_client(self, *args, **kwargs):
        sampler = self.inner.save_weights_and_get_sampling_client(*args, **kwargs).result()
        return _Ready(DelayedSampler(sampler, self.owner))


class DelayedSampler:
    def __init__(self, inner, owner: DelayedSampling):
        self.inner, self.owner = inner, owner
        self.lock = threading.Lock()

    def sample(self, *args, **kwargs):
        self.owner.events.append("submit")
        future = self.inner.sample(*args, **kwargs)

        def late():
            time.sleep(0.5)
            result = future.result()
            self.owner.events.append("done")
            return result

        return self.owner.pool.submit(late)


class _Ready:
    def __init__(self, value):
        self.value = value

    def result(self, timeout=None):
        return self.value


@pytest.mark.parametrize(
    ("order", "batches"),
    # Streamed, validation samples once the rollouts are in, while their training runs.
    [("--stream_training=False", [6, 16, 6]), ("--stream_training=True", [16, 6, 6])],
)
def test_every_sampling_request_is_in_flight_before_any_wait(
    tmp_path, tiny_model_dir, gsm8k_dir, order, batches
):
    args = offline_args(tiny_model_dir, gsm8k_dir, tmp_path)
    config = parse_config(
        [*args, "--n_grpo_steps=1", "--rollout_batch_size=16", "--group_size=2", "--eval_every=5",
         order]
    )  # fmt: skip
    events: list[str] = []
    service = DelayedSampling(LocalServiceClient(storage_dir=tmp_path / "storage"), events)
    train_problems, test_problems = load_gsm8k("train", gsm8k_dir), load_gsm8k("test", gsm8k_dir)
    train(config, service, train_problems, test_problems, RunLogger(config))
    # Validation at step 0 (6 requests), the step's 16 rollout requests, the final validation:
    # each batch is wholly submitted before any of its answers is awaited.
    assert events == [e for n in batches for e in ["submit"] * n + ["done"] * n]


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_metrics(tmp_path, tiny_model_dir, gsm8k_dir):
    prices = tmp_path / "prices.toml"  # so the run's dollar totals must survive the kills too
    prices.write_text(
        f'["{tiny_model_dir}"]\nprefill = 0.3\nsample = 0.7\ntrain = 1.1\n'
        'source = "a test"\ndate = "2026-12-01"\n'
    )

    def args(log_path: Path) -> list[str]:
        flags = offline_args(tiny_model_dir, gsm8k_dir, log_path)
        return [*SMOKE, *flags, "--seed=3", f"--price_table={prices}"]

    straight = tmp_path / "straight"
    process = run_script(straight, args(straight))
    assert process.wait() == 0, process.stderr.read()

    after_checkpoint = tmp_path / "after_checkpoint"
    process = run_script(after_checkpoint, args(after_checkpoint))
    wait_for(lambda: 2 in checkpoint_steps(after_checkpoint), process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    mid_step = tmp_path / "mid_step"
    process = run_script(mid_step, args(mid_step))
    wait_for(lambda: 2 in metric_steps(mid_step), process)  # step 3 has begun: no checkpoint yet
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint_steps(mid_step) == [2] and 3 not in metric_steps(mid_step)

    for killed in (after_checkpoint, mid_step):
        process = run_script(killed, args(killed))
        assert process.wait() == 0, process.stderr.read()

    expected = without_timings(read_json_lines(straight / "metrics.jsonl"))
    assert any(row.get("train/datums", 0) > 0 for row in expected)
    assert expected[-1]["cost/total_usd"] > 0 and expected[-1]["tokens/trained_total"] > 0
    for killed in (after_checkpoint, mid_step):
        assert without_timings(read_json_lines(killed / "metrics.jsonl")) == expected
        assert checkpoint_steps(killed)[-1] == 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--group_size=1"], "--group_size=1 with --use_std_normalization=True"),
        (["--n_grpo_steps=0"], "--n_grpo_steps must be positive"),
        (["--cliprange=1.5"], "--cliprange must lie in (0, 1)"),
        (["--dataset_path=no/such/dir"], "--dataset_path=no/such/dir: no such folder"),
        (["--model_name=no/such/model"], "--model_name=no/such/model: no such model directory"),
    ],
)
def test_validation_errors_are_one_line(
    flags, message, tiny_model_dir, gsm8k_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    assert main([*offline_args(tiny_model_dir, gsm8k_dir, tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_mistake_is_one_line_without_traceback_at_the_process_boundary(
    tiny_model_dir, gsm8k_dir, tmp_path
):
    argv = [*offline_args(tiny_model_dir, gsm8k_dir, tmp_path), "--n_grpo_steps=0"]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "grpo_train_tinker.py"), *argv],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TINKER_API_KEY"},
    )
    assert result.returncode == 2
    assert "--n_grpo_steps must be positive" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tinker_backend_without_a_key_stops_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    assert main(["--backend=tinker", f"--log_path={tmp_path}"]) == 2
    assert "TINKER_API_KEY is not set" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_base_url_builds_a_real_tinker_service_client(monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", "tml-test")
    config = parse_config(["--base_url=http://127.0.0.1:9"])
    with open_service_client(config, {"TINKER_API_KEY": "tml-test"}) as client:
        assert isinstance(client, tinker.ServiceClient)


def test_run_real_without_a_key_says_how_to_set_it(capsys, monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(REPO / "scripts" / "run_real.py"), run_name="__main__")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export TINKER_API_KEY=" in err


def test_wandb_offline_logs_every_row(tmp_path, tiny_model_dir, gsm8k_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = [
        *offline_args(tiny_model_dir, gsm8k_dir, tmp_path),
        "--n_grpo_steps=2",
        "--rollout_batch_size=2",
        "--group_size=2",
        "--wandb_project=harness-test",
        "--wandb_name=offline",
    ]
    assert main(args) == 0
    run_id = (tmp_path / "wandb_run_id").read_text()
    (run_file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    # W&B's service process may still be flushing the run file when finish() returns.
    deadline = time.monotonic() + 30
    while b"val/accuracy" not in run_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    data = run_file.read_bytes()
    assert data.count(b"reward/mean") >= 2 and b"val/accuracy" in data
