"""A run survives the faults of the cloud and ends as an undisturbed run does, never applying a
training step twice: sampling is sent again as it was, a failed training step is redone from
the last saved state, and a permanent fault stops the run with its state saved for a rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends.local import LocalServiceClient
from harness.backends.local.storage import saved_optimizer_steps
from harness.checkpoints import last_checkpoint, resume_points
from harness.cli import main, parse_config
from harness.jsonl import read_json_lines
from harness.logger import RunLogger
from harness.loop import train
from harness.resilience import RunFailed, describe
from tests.support.faults import FAULT_RUN_FLAGS, Faulty, failed
from tests.support.varied_reward_run import varied_reward

FLAGS = ["--backend=local", *FAULT_RUN_FLAGS, "--request_timeout_s=60"]


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without timings and fault counters, floats to 1e-4: a request sent again is
    sampled in another batch than the first time, which changes its logprobs (not its tokens)
    at float32 rounding (see the README's local backend)."""
    return [
        {
            k: pytest.approx(v, rel=1e-4, abs=1e-5)
            for k, v in row.items()
            if not k.startswith(("time/", "faults/"))
        }
        for row in rows
    ]


def optimizer_steps(log_path: Path) -> int:
    """Steps the optimizer took, as its saved state counts them (not as the loop does)."""
    return saved_optimizer_steps(log_path / "tinker-storage", last_checkpoint(log_path).state_path)


@pytest.fixture(scope="module")
def problems(gsm8k_problems):
    return gsm8k_problems


def run(log_path, problems, tiny_model_dir, gsm8k_dir, plan=None, *flags):
    config = parse_config(
        [*FLAGS, f"--model_name={tiny_model_dir}", f"--dataset_path={gsm8k_dir}",
         f"--log_path={log_path}", *flags]
    )  # fmt: skip
    service = LocalServiceClient(log_path / "tinker-storage", seed=config.seed)
    faulty = Faulty(service, plan or {})
    try:
        result = train(config, faulty, *problems, RunLogger(config), reward_fn=varied_reward)
    finally:
        service.close()
    return result, faulty.faults


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, problems, tiny_model_dir, gsm8k_dir):
    log_path = tmp_path_factory.mktemp("undisturbed")
    run(log_path, problems, tiny_model_dir, gsm8k_dir)
    rows = read_json_lines(log_path / "metrics.jsonl")
    assert any(row.get("train/datums", 0) > 0 for row in rows)  # it trained
    assert optimizer_steps(log_path) == 4
    return comparable(rows)


def without_faults(rows: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in row.items() if not k.startswith(("time/", "faults/"))} for row in rows
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("plan", "recovery"),
    [
        ({("sample", 3): "before"}, "sampling_resends"),
        ({("sample", 9): "after"}, "sampling_resends"),
        ({("forward_backward", 2): "before"}, "training_redos"),
        ({("forward_backward", 3): "after"}, "training_redos"),  # its gradients accumulated
        ({("optim_step", 2): "after"}, "training_redos"),  # an update applied, answer lost
        ({("save_state", 1): "after"}, "training_redos"),  # the rolling save exists
        ({("save_weights_and_get_sampling_client", 4): "before"}, "training_redos"),
    ],
    ids=lambda v: "-".join(f"{m}{n}-{f}" for (m, n), f in v.items()) if isinstance(v, dict) else v,
)
def test_a_fault_is_recovered_in_process_and_the_run_ends_as_an_undisturbed_one(
    plan, recovery, undisturbed, tmp_path, problems, tiny_model_dir, gsm8k_dir, capsys
):
    result, faults = run(tmp_path, problems, tiny_model_dir, gsm8k_dir, plan)
    assert len(faults.injected) == 1
    assert result.faults == {recovery: 1}
    assert without_faults(read_json_lines(tmp_path / "metrics.jsonl")) == undisturbed
    assert optimizer_steps(tmp_path) == 4  # no step applied twice, none lost
    err = capsys.readouterr().err
    assert "injected fault" in err  # said as it happened
    rows = read_json_lines(tmp_path / "metrics.jsonl")
    assert sum(row.get(f"faults/{recovery}", 0) for row in rows) == 1


@pytest.mark.slow
def test_a_request_that_never_answers_is_sent_again_after_its_deadline(
    undisturbed, tmp_path, problems, tiny_model_dir, gsm8k_dir
):
    plan = {("sample", 5): "hang", ("optim_step", 3): "hang"}
    result, _ = run(tmp_path, problems, tiny_model_dir, gsm8k_dir, plan,
                    "--request_timeout_s=3")  # fmt: skip
    assert result.faults == {"sampling_resends": 1, "training_redos": 1}
    assert without_faults(read_json_lines(tmp_path / "metrics.jsonl")) == undisturbed
    assert optimizer_steps(tmp_path) == 4


@pytest.mark.slow
def test_a_permanent_fault_stops_the_run_with_its_state_saved_and_a_rerun_resumes(
    undisturbed, tmp_path, problems, tiny_model_dir, gsm8k_dir
):
    with pytest.raises(RunFailed, match="injected fault"):
        run(tmp_path, problems, tiny_model_dir, gsm8k_dir, {("sample", 9): "refused"})
    # Sample 9 is one of step 1's; the state after step 1 was saved before stopping.
    assert [p.step for p in resume_points(tmp_path)] == [1]
    result, _ = run(tmp_path, problems, tiny_model_dir, gsm8k_dir)
    assert result.resumed_from == 1
    assert without_faults(read_json_lines(tmp_path / "metrics.jsonl")) == undisturbed
    assert optimizer_steps(tmp_path) == 4


def test_a_permanent_fault_is_one_line_and_exit_1_at_the_command_line(
    tmp_path, tiny_model_dir, gsm8k_dir, capsys, monkeypatch
):
    monkeypatch.setattr(
        LocalServiceClient, "create_lora_training_client", lambda self, **kwargs: failed("user")
    )
    flags = [*FLAGS, f"--model_name={tiny_model_dir}", f"--dataset_path={gsm8k_dir}",
             f"--log_path={tmp_path}"]  # fmt: skip
    assert main(flags) == 1
    err = capsys.readouterr().err
    assert "error: the run stopped: create_lora_training_client failed" in err
    assert "rerun the same command to resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_rolling_save_releases_the_one_before_it_through_the_sdk(
    tmp_path, tiny_model_dir, gsm8k_dir
):
    flags = [*FLAGS, "--backend=local-server", "--n_grpo_steps=3", "--save_every=10",
             "--rolling_save_every=1", f"--model_name={tiny_model_dir}",
             f"--dataset_path={gsm8k_dir}", f"--log_path={tmp_path}"]  # fmt: skip
    assert main(flags, reward_fn=varied_reward) == 0
    kept = sorted(p.name for p in (tmp_path / "tinker-storage").rglob("rolling_*"))
    assert kept == ["rolling_000002"]  # rolling_000001 was deleted once 2 was saved
    assert [p.step for p in resume_points(tmp_path)] == [2, 3]


@pytest.mark.slow
def test_a_full_disk_is_one_line_leaves_no_staging_files_and_a_rerun_resumes(
    undisturbed, tmp_path, tiny_model_dir, gsm8k_dir, capsys, monkeypatch
):
    from harness.backends.local import checkpoint_format

    def full_disk(model, directory):
        (directory / "adapter_model.safetensors").write_bytes(b"\0" * 100)  # partly written
        raise RuntimeError("Error while serializing: No space left on device (os error 28)")

    flags = [*FLAGS, f"--model_name={tiny_model_dir}", f"--dataset_path={gsm8k_dir}",
             f"--log_path={tmp_path}"]  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_format, "save_weights", full_disk)
        assert main(flags, reward_fn=varied_reward) == 1
    err = capsys.readouterr().err
    assert "no space left writing tinker://" in err and "free space and rerun" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "tinker-storage").rglob("*.tmp"))
    assert main(flags, reward_fn=varied_reward) == 0
    assert without_faults(read_json_lines(tmp_path / "metrics.jsonl")) == undisturbed
    assert optimizer_steps(tmp_path) == 4


def test_a_404_for_what_the_run_made_says_the_server_may_have_restarted():
    lost = ValueError("Error retrieving result: Error code: 404 - {'detail': 'request unknown'}")
    assert describe(lost).endswith("(the service no longer knows this run's session: did the"
                                   " server restart?)")  # fmt: skip
    assert "restart" not in describe(ValueError("prompt is empty"))
