"""Runs with plugged functions, end to end on the local backend and through replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends.cassette import read_cassette
from harness.cli import main
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from tests.support.adapters import ADAPTER, POPULATION_STD, adapters_file, formula_adapters
from tests.support.varied_reward_run import varied_reward

REPO = Path(__file__).resolve().parent.parent
STUDENT = REPO / "examples" / "cs336_student"
GRADER = STUDENT / "cs336_alignment" / "drgrpo_grader.py"
SMALL = [
    "--backend=local",
    f"--model_name={REPO / 'fixtures' / 'tiny-qwen3'}",
    f"--dataset_path={REPO / 'fixtures' / 'gsm8k'}",
    "--n_grpo_steps=2",
    "--rollout_batch_size=4",
    "--group_size=2",
    "--save_every=2",
    "--eval_every=2",
    "--sampling_max_tokens=16",
    "--eval_n=2",
    "--learning_rate=1e-3",
]
ARITH = [
    "--backend=local",
    f"--model_name={REPO / 'fixtures' / 'tiny-arith'}",
    "--dataset=arith",
    "--use_r1_zero_format=False",
    "--n_grpo_steps=1",
    "--rollout_batch_size=8",
    "--group_size=4",
    "--sampling_max_tokens=48",
    "--eval_n=8",
    "--learning_rate=1e-3",
]


def requests(cassette: Path) -> list[tuple]:
    return [(c.client, c.method, c.request) for c in read_cassette(cassette).calls]


@pytest.fixture(scope="module")
def with_and_without_reexport(tmp_path_factory):
    """The same run twice: the harness's own advantages, and an adapters file re-exporting them."""
    root = tmp_path_factory.mktemp("reexport")
    adapters = adapters_file(
        root / "student",
        f"from harness.grpo import compute_group_normalized_rewards as {ADAPTER}\n",
    )
    runs = {}
    for name, extra in (("plain", []), ("adapters", [f"--adapters={adapters}"])):
        log_path, cassette = root / name, root / f"{name}.jsonl"
        flags = [*SMALL, *extra, f"--log_path={log_path}", f"--record_cassette={cassette}"]
        assert main(flags, reward_fn=varied_reward) == 0
        runs[name] = (log_path, cassette)
    return runs


def test_an_adapters_file_reexporting_the_harness_runs_exactly_as_without_it(
    with_and_without_reexport,
):
    (plain_log, plain_cassette), (plugged_log, plugged_cassette) = (
        with_and_without_reexport["plain"],
        with_and_without_reexport["adapters"],
    )
    metrics = without_timings(read_json_lines(plain_log / "metrics.jsonl"))
    assert any(row.get("train/datums", 0) > 0 for row in metrics)  # advantages reached training
    assert without_timings(read_json_lines(plugged_log / "metrics.jsonl")) == metrics
    assert requests(plugged_cassette) == requests(plain_cassette)
    plain, plugged = read_cassette(plain_cassette), read_cassette(plugged_cassette)
    assert plain.header["plugged"] == {}
    assert plugged.header["plugged"]["adapters"]["function"].endswith(f"adapters.py:{ADAPTER}")
    assert len(plugged.header["plugged"]["adapters"]["sha256"]) == 64
    assert sorted(plain.scores) == sorted(plugged.scores) == [0, 1]
    for step, (rewards, advantages) in plain.scores.items():
        assert (plugged.scores[step][0] == rewards).all()
        assert (plugged.scores[step][1] == advantages).all()


def test_a_replay_with_the_recorded_adapters_replays_to_the_same_metrics(
    with_and_without_reexport, tmp_path, capsys
):
    log_path, cassette = with_and_without_reexport["adapters"]
    adapters = read_cassette(cassette).config["adapters"]
    flags = [*SMALL[1:], "--backend=replay", f"--cassette={cassette}", f"--adapters={adapters}"]
    assert main([*flags, f"--log_path={tmp_path / 'replay'}"], reward_fn=varied_reward) == 0
    assert "differ from the recorded run's" not in capsys.readouterr().err  # the same sources
    replayed = read_json_lines(tmp_path / "replay" / "metrics.jsonl")
    assert without_timings(replayed) == without_timings(read_json_lines(log_path / "metrics.jsonl"))


def test_a_replay_with_other_advantages_names_the_first_step_that_differs(
    with_and_without_reexport, tmp_path, capsys
):
    _, cassette = with_and_without_reexport["adapters"]
    flags = [
        *SMALL[1:],
        "--backend=replay",
        f"--cassette={cassette}",
        f"--log_path={tmp_path / 'replay'}",
        f"--adapters={formula_adapters(tmp_path / 'student', POPULATION_STD)}",
    ]
    assert main(flags, reward_fn=varied_reward) == 1
    err = capsys.readouterr().err
    assert "its sources (" in err and "differ from the recorded run's" in err
    assert "replay error: step 0: the advantages differ from the recording, first in group" in err


def test_a_replay_with_another_reward_names_the_first_step_whose_rewards_differ(
    with_and_without_reexport, tmp_path, capsys
):
    _, cassette = with_and_without_reexport["plain"]
    reward = tmp_path / "other_reward.py"
    reward.write_text(
        "def reward(response, ground_truth):\n"
        "    r = float(len(response) % 3 == 0)\n"
        "    return {'reward': r, 'format_reward': 0.0, 'answer_reward': r}\n"
    )
    flags = [
        *SMALL[1:],
        "--backend=replay",
        f"--cassette={cassette}",
        f"--log_path={tmp_path / 'replay'}",
        f"--reward_fn={reward}:reward",
    ]
    assert main(flags) == 1
    assert "replay error: step 0: the rewards differ from the recording" in capsys.readouterr().err


def test_a_wrong_adapters_file_is_warned_about_before_training(tmp_path, capsys):
    adapters = formula_adapters(tmp_path / "student", POPULATION_STD)
    flags = [*SMALL, "--n_grpo_steps=1", f"--adapters={adapters}", f"--log_path={tmp_path / 'r'}"]
    assert main(flags, reward_fn=varied_reward) == 0
    err = capsys.readouterr().err
    warning = (
        f"warning: --adapters={adapters}: {ADAPTER} with normalize_by_std=True (this run's),"
        " advantage_eps=1e-06 differs from the harness's compute_group_normalized_rewards, first in"
        " group 0 (rewards [0, 1]): yours [-1, 1], the harness's [-0.7071, 0.7071]"
    )
    assert warning in err
    assert err.index(warning) < err.index("step    0/1")


def test_an_adapter_that_raises_stops_before_any_client_call(tmp_path, capsys):
    adapters = adapters_file(
        tmp_path / "student",
        f"""
        def {ADAPTER}(reward_fn, responses, truths, group_size, eps, normalize_by_std):
            raise NotImplementedError("TODO")
        """,
    )
    log_path, cassette = tmp_path / "run", tmp_path / "run.jsonl"
    flags = [*SMALL, f"--adapters={adapters}", f"--log_path={log_path}"]
    assert main([*flags, f"--record_cassette={cassette}"], reward_fn=varied_reward) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --adapters={adapters}: {ADAPTER} raised NotImplementedError: TODO at"
        f" {adapters}:6\n"
    )
    # The recording backend never saw a call: not even the header of a cassette was written.
    assert not cassette.exists() and not log_path.exists()


def test_reward_fn_from_a_file_trains_while_validation_keeps_the_tasks_reward(tmp_path, capsys):
    log_path = tmp_path / "run"
    flags = [*ARITH, f"--reward_fn={GRADER}:boxed_reward_fn", f"--log_path={log_path}"]
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert f"reward/* from {GRADER}:boxed_reward_fn; val/* from the task's gsm8k_reward_fn" in err
    step = read_json_lines(log_path / "metrics.jsonl")[0]
    # The grader gives no credit for format alone: reward is the answer reward.
    assert step["reward/format_mean"] > step["reward/answer_mean"]
    assert step["reward/mean"] == pytest.approx(step["reward/answer_mean"])
    records = read_json_lines(log_path / "eval" / "step_000000.jsonl")
    assert all(
        r["reward"] == pytest.approx(0.2 * r["format_reward"] + 0.8 * r["answer_reward"])
        for r in records
    )
    assert any(r["format_reward"] > r["answer_reward"] for r in records)


def test_eval_reward_fn_scores_validation(tmp_path, capsys):
    log_path = tmp_path / "run"
    flags = [*ARITH, f"--eval_reward_fn={GRADER}:boxed_reward_fn", f"--log_path={log_path}"]
    assert main(flags) == 0
    assert f"val/* from {GRADER}:boxed_reward_fn" in capsys.readouterr().err
    records = read_json_lines(log_path / "eval" / "step_000000.jsonl")
    assert all(r["reward"] == r["answer_reward"] for r in records)
    assert any(r["format_reward"] > r["answer_reward"] for r in records)


def test_a_reward_with_the_wrong_keys_is_one_line_before_any_work(tmp_path, capsys):
    reward = tmp_path / "my_reward.py"
    reward.write_text("def reward(response, ground_truth):\n    return {'score': 1.0}\n")
    log_path = tmp_path / "run"
    assert main([*ARITH, f"--reward_fn={reward}:reward", f"--log_path={log_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --reward_fn={reward}:reward: reward returned the keys ['score']")
    assert err.count("\n") == 1 and "Traceback" not in err and not log_path.exists()


def test_an_adapter_failing_on_real_data_stops_the_run_at_that_step_in_one_line(tmp_path, capsys):
    adapters = adapters_file(
        tmp_path / "student",
        f"""
        def {ADAPTER}(reward_fn, responses, truths, group_size, eps, normalize_by_std):
            if not responses[0].startswith("probe"):
                raise ValueError("only probes")
            from harness.grpo import compute_group_normalized_rewards

            return compute_group_normalized_rewards(
                reward_fn, responses, truths, group_size, eps, normalize_by_std
            )
        """,
    )
    flags = [*SMALL, f"--adapters={adapters}", f"--log_path={tmp_path / 'run'}"]
    assert main(flags, reward_fn=varied_reward) == 1
    err = capsys.readouterr().err
    assert f"error: --adapters={adapters}: {ADAPTER} raised ValueError: only probes at" in err
    assert "Traceback" not in err and "step    0/2" not in err  # step 0 never finished
