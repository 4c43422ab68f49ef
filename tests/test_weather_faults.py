"""Each fault kind of the weather profile, through the local server and the real SDK, in a
whole run: the run ends as the undisturbed run through the server does, and its saved
optimizer state counts exactly `n_grpo_steps` steps (none lost, none applied twice). What the
SDK retries itself never reaches the loop; what it leaves to the harness is resent or redone."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends.local.storage import saved_optimizer_steps
from harness.checkpoints import last_checkpoint
from harness.cli import main
from harness.jsonl import read_json_lines
from tests.support.faults import FAULT_RUN_FLAGS, FAULT_RUN_STEPS
from tests.support.varied_reward_run import varied_reward

REPO = Path(__file__).resolve().parent.parent
STEPS = FAULT_RUN_STEPS
FLAGS = [
    "--backend=local-server",
    f"--model_name={REPO / 'fixtures' / 'tiny-qwen3'}",
    f"--dataset_path={REPO / 'fixtures' / 'gsm8k'}",
    *FAULT_RUN_FLAGS,
    "--request_timeout_s=5",
]


def comparable(rows: list[dict]) -> list[dict]:
    """Timings and fault counters aside; floats to 1e-4 (a resent sample is batched with other
    requests, which moves its logprobs at float32 rounding, and the loss sums hundreds of
    such terms that cancel to about 0)."""
    return [
        {
            k: pytest.approx(v, rel=1e-4, abs=1e-4)
            for k, v in row.items()
            if not k.startswith(("time/", "faults/"))
        }
        for row in rows
    ]


def run(log_path: Path, fault: str | None = None, *flags: str) -> int:
    weather = []
    if fault is not None:
        profile = log_path.parent / f"{log_path.name}.toml"
        profile.write_text(f"time_scale = 0.001\nseed = 1\n\n[[faults]]\n{fault}\n")
        weather = [f"--weather={profile}"]
    return main([*FLAGS, f"--log_path={log_path}", *weather, *flags], reward_fn=varied_reward)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("calm") / "run"
    assert run(log_path) == 0
    return comparable(read_json_lines(log_path / "metrics.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "recovery"),
    [
        # Retried by the SDK itself: the loop never sees these.
        ('call = "forward_backward"\nerror = "status"\nstatus = 503\nat = 2', None),
        ('call = "optim_step"\nerror = "disconnect"\nwhen = "after"\nat = 2', None),
        ('call = "sample"\nerror = "status"\nstatus = 502\nat = 5', None),
        ('call = "sample"\nerror = "expired"\nat = 7', None),
        # Left to the harness: resent (sampling) or redone from the last saved state.
        ('call = "sample"\nerror = "failed"\nat = 8', "sampling_resends"),
        ('call = "sample"\nerror = "hang"\nat = 9', "sampling_resends"),
        ('call = "forward_backward"\nerror = "failed"\nwhen = "after"\nat = 3', "training_redos"),
        ('call = "optim_step"\nerror = "failed"\nwhen = "after"\nat = 3', "training_redos"),
        ('call = "optim_step"\nerror = "expired"\nat = 2', "training_redos"),
        ('call = "save_state"\nerror = "failed"\nwhen = "after"\nat = 1', "training_redos"),
    ],
    ids=lambda v: (
        "-".join(line.split(" = ")[1].strip('"') for line in v.splitlines())
        if v and "\n" in v
        else str(v)
    ),
)
def test_a_run_through_the_server_survives_each_fault_kind(
    fault, recovery, undisturbed, tmp_path, caplog
):
    assert run(tmp_path / "run", fault) == 0
    assert any("weather: injected" in r.message for r in caplog.records)  # the fault happened
    rows = read_json_lines(tmp_path / "run" / "metrics.jsonl")
    recovered = {k for row in rows for k in row if k.startswith("faults/")}
    assert recovered == ({f"faults/{recovery}"} if recovery else set())
    assert comparable(rows) == undisturbed
    checkpoint = last_checkpoint(tmp_path / "run")
    assert checkpoint.step == STEPS
    storage = tmp_path / "run" / "tinker-storage"
    assert saved_optimizer_steps(storage, checkpoint.state_path) == STEPS


@pytest.mark.slow
def test_an_expired_checkpoint_is_passed_over_when_a_run_resumes(undisturbed, tmp_path, capsys):
    # Saves: a rolling one after steps 1 and 3, checkpoints after 2 and 4; the third save (the
    # rolling one of step 3) expires at once. The run is cut back to how it stood after step 3
    # (the final checkpoint's entry removed), then resumed: the rolling save of step 3 does not
    # load, so it resumes from the checkpoint of step 2 and ends as the calm run.
    schedule = ["--save_every=2", "--rolling_save_every=1"]
    fault = 'call = "save_state"\nerror = "checkpoint_expired"\nat = 3'
    log_path = tmp_path / "run"
    assert run(log_path, fault, *schedule) == 0
    index = log_path / "checkpoints" / "index.jsonl"
    index.write_text(index.read_text().splitlines()[0] + "\n")  # step 2's entry only
    capsys.readouterr()
    assert run(log_path, None, *schedule) == 0
    err = capsys.readouterr().err
    assert "the checkpoint of step 3" in err and "does not load" in err
    assert "resumed at step 2" in err
    assert comparable(read_json_lines(log_path / "metrics.jsonl")) == undisturbed
