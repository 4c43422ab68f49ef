"""scripts/evaluate.py end to end on the local backend: a run's checkpoints evaluated give the
run's own validation, sampled evaluations reproduce sampled validation, recordings replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main as train_main
from harness.eval_cli import main
from harness.jsonl import read_json_lines
from tests.support.runs import SMOKE

REPO = Path(__file__).resolve().parent.parent
ARITH = [
    "--backend=local",
    f"--model_name={REPO / 'fixtures' / 'tiny-arith'}",
    "--dataset=arith",
    "--use_r1_zero_format=False",
    "--sampling_max_tokens=48",
    "--eval_n=24",
]
TRAIN = [*ARITH, "--learning_rate=1e-3"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory):
    """The smoke configuration on the warm-started arithmetic model: checkpoints at 2, 4, 5."""
    log_path = tmp_path_factory.mktemp("greedy-run")
    assert train_main([*SMOKE, *TRAIN, f"--log_path={log_path}"]) == 0
    return log_path


@pytest.fixture(scope="module")
def evaluated(greedy_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    cassette = out / "evaluation.jsonl"
    argv = [f"--run={greedy_run}", "--eval_n=24", f"--record_cassette={cassette}"]
    assert main([*argv, f"--log_path={out}"]) == 0
    return out, cassette


def validation_rows(run: Path) -> dict[int, dict]:
    rows = read_json_lines(run / "metrics.jsonl")
    return {int(r["progress/grpo_step"]): r for r in rows if "val/accuracy" in r}


def test_a_runs_checkpoints_evaluate_to_the_runs_own_validation(greedy_run, evaluated):
    out, _ = evaluated
    validation = validation_rows(greedy_run)
    assert sorted(validation) == [0, 2, 4, 5]
    for name, step in [("base", 0), ("step_000002", 2), ("step_000004", 4), ("step_000005", 5)]:
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["step"] == step and summary["n_questions"] == 24
        accuracy = summary["metrics"]["accuracy"]
        assert accuracy["value"] == validation[step]["val/accuracy"], name
        assert accuracy["method"] == "wilson" and accuracy["low"] < accuracy["value"]
        format_accuracy = summary["metrics"]["format_accuracy"]["value"]
        assert format_accuracy == validation[step]["val/format_accuracy"]
        # Answer for answer, the same questions and responses as the run's validation file.
        ours = read_json_lines(out / name / "samples.jsonl")
        theirs = read_json_lines(greedy_run / "eval" / f"step_{step:06d}.jsonl")
        assert ours == theirs, name
    assert 0 < validation[0]["val/accuracy"] < 1  # the model is neither always right nor wrong
    assert (out / "accuracy_vs_step.png").read_bytes().startswith(PNG_MAGIC)


def test_an_evaluation_replays_from_its_recording(greedy_run, evaluated, tmp_path):
    out, cassette = evaluated
    argv = [f"--run={greedy_run}", "--eval_n=24", "--backend=replay", f"--cassette={cassette}"]
    assert main([*argv, f"--log_path={tmp_path}"]) == 0
    for name in ("base", "step_000002", "step_000004", "step_000005"):
        replayed = read_json_lines(tmp_path / name / "samples.jsonl")
        assert replayed == read_json_lines(out / name / "samples.jsonl"), name


def test_comparing_two_evaluations_prints_the_paired_difference(evaluated, capsys):
    out, _ = evaluated
    assert main(["--compare", str(out / "base"), str(out / "step_000005")]) == 0
    text = capsys.readouterr().out
    base, final = (
        json.loads((out / n / "summary.json").read_text())["metrics"]["accuracy"]["value"]
        for n in ("base", "step_000005")
    )
    line = next(line for line in text.splitlines() if " accuracy " in line)
    assert f"{base:.3f}" in line and f"{final:.3f}" in line and f"{final - base:+.3f} [" in line


def test_one_checkpoint_evaluates_from_the_storage_folder_it_lives_in(greedy_run, tmp_path, capsys):
    final = read_json_lines(greedy_run / "checkpoints" / "index.jsonl")[-1]["sampler_path"]
    argv = [*ARITH, f"--checkpoint={final}", f"--log_path={tmp_path}"]
    assert main(argv) == 2  # the local backend looks in --log_path's tinker-storage/
    error = capsys.readouterr().err
    assert f"--checkpoint={final}: no checkpoint at" in error and "--storage_dir" in error
    assert main([*argv, f"--storage_dir={greedy_run / 'tinker-storage'}"]) == 0
    summary = json.loads((tmp_path / "step_000005" / "summary.json").read_text())
    assert summary["metrics"]["accuracy"]["value"] == validation_rows(greedy_run)[5]["val/accuracy"]


def test_a_run_validated_with_a_plugged_reward_is_evaluated_with_it(tmp_path):
    grader = REPO / "examples" / "cs336_student" / "cs336_alignment" / "drgrpo_grader.py"
    run, out = tmp_path / "run", tmp_path / "evaluation"
    plugged = f"--eval_reward_fn={grader}:boxed_reward_fn"
    flags = ["--n_grpo_steps=1", "--rollout_batch_size=4", "--group_size=2", "--save_every=1"]
    assert train_main([*flags, *TRAIN, plugged, f"--log_path={run}"]) == 0
    assert main([f"--run={run}", "--eval_n=24", f"--log_path={out}"]) == 0  # the run's reward
    for step, name in [(0, "base"), (1, "step_000001")]:
        records = read_json_lines(out / name / "samples.jsonl")
        assert records == read_json_lines(run / "eval" / f"step_{step:06d}.jsonl")
        assert all(r["reward"] == r["answer_reward"] for r in records)  # not 0.2 f + 0.8 a
    assert main([f"--run={run}", "--eval_reward_fn=no_such_module:f", "--log_path=x"]) == 2


def test_sampled_validation_and_a_sampled_evaluation_draw_the_same_answers(tmp_path):
    run, out = tmp_path / "run", tmp_path / "evaluation"
    sampled = ["--eval_temperature=1.0", "--eval_num_samples=3"]
    flags = ["--n_grpo_steps=2", "--rollout_batch_size=8", "--group_size=2", "--save_every=2"]
    assert train_main([*flags, *TRAIN, *sampled, f"--log_path={run}"]) == 0
    argv = [f"--run={run}", "--eval_n=24", "--num_samples=3", "--temperature=1.0"]
    assert main([*argv, f"--log_path={out}"]) == 0

    for step, name in [(0, "base"), (2, "step_000002")]:
        row = validation_rows(run)[step]
        records = read_json_lines(out / name / "samples.jsonl")
        assert len(records) == 24 * 3
        assert records == read_json_lines(run / "eval" / f"step_{step:06d}.jsonl")
        metrics = json.loads((out / name / "summary.json").read_text())["metrics"]
        assert list(metrics) == [
            "accuracy",
            "format_accuracy",
            "pass@1",
            "pass@2",
            "pass@3",
            "maj@3",
        ]
        for key in ("accuracy", "pass@3", "maj@3"):
            assert metrics[key]["value"] == pytest.approx(row[f"val/{key}"]), (step, key)
        assert row["val/accuracy_stderr"] > 0
        passes = [metrics[f"pass@{k}"]["value"] for k in (1, 2, 3)]
        assert passes == sorted(passes)
        assert passes[0] == pytest.approx(metrics["accuracy"]["value"], abs=1e-15)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint=step_000005"], "--checkpoint=step_000005: not a tinker:// path"),
        (["--num_samples=4"], "--num_samples=4 at --temperature=0 would draw 4 identical"),
        (["--eval_n=0"], "--eval_n must be positive"),
        (["--run=."], "--run=.: no config.json there"),
        (["--compare", "a"], "--compare takes two folders"),
        (["--compare", "a", "b"], "--compare: a holds no samples.jsonl"),
    ],
)
def test_mistakes_end_in_one_line(flags, message, capsys):
    model = ["--backend=local", f"--model_name={REPO / 'fixtures' / 'tiny-arith'}"]
    assert main([*model, "--dataset=arith", *flags]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert message in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
