"""scripts/replay.py on the golden cassette: the step table, a step's groups, one group in full."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from harness.backends.cassette import read_header
from harness.cli import main
from harness.data import load_problems, next_batch
from harness.data.cursor import BatchCursor
from harness.jsonl import read_json_lines
from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "fixtures" / "cassettes" / "smoke.jsonl"
METRICS = read_json_lines(GOLDEN.with_suffix(".metrics.jsonl"))


VIEWER = load_script("replay.py", "replay_viewer")


def show(*args: str, cassette: Path = GOLDEN) -> tuple[int, str]:
    out = io.StringIO()
    code = VIEWER.main(
        [str(cassette), f"--dataset_path={REPO / 'fixtures' / 'gsm8k'}", *args],
        Console(file=out, width=200, color_system=None),
    )
    return code, out.getvalue()


def table_rows(text: str, first_cell: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and re.fullmatch(first_cell, cells[0]):
            rows[cells[0]] = cells
    return rows


def test_the_step_table_agrees_with_the_recorded_runs_metrics():
    code, text = show()
    assert code == 0
    assert "4 steps; reward tests.support.varied_reward_run:varied_reward" in text
    assert "replay: python scripts/grpo_train_tinker.py --backend=replay" in text
    steps_text, timings_text = text.split("seconds per step")
    rows = table_rows(steps_text, r"\d+|final")
    assert list(rows) == ["0", "1", "2", "3", "final"]
    for metrics in METRICS[:-1]:
        _, reward, acc, fmt, zero_var, datums, length, trunc, loss, val = rows[
            str(int(metrics["progress/grpo_step"]))
        ][:10]
        assert reward == f"{metrics['reward/mean']:.3f}"
        assert acc == f"{metrics['reward/answer_mean']:.3f}"
        assert fmt == f"{metrics['reward/format_mean']:.3f}"
        assert zero_var == f"{round(metrics['train/frac_zero_variance_groups'] * 8)}/8"
        assert int(datums) == metrics["train/datums"]
        assert length.startswith(f"{metrics['response/length_mean']:.1f}/")
        assert trunc == f"{metrics['response/truncated_frac']:.2f}"
        assert loss == f"{metrics['train/loss']:.3g}" if "train/loss" in metrics else loss == "—"
        assert val == (f"{metrics['val/accuracy']:.3f}" if "val/accuracy" in metrics else "—")
    assert rows["final"][9] == f"{METRICS[-1]['val/accuracy']:.3f}"
    timings = table_rows(timings_text, r"\d+|final")
    assert list(timings) == list(rows) and all(float(t) >= 0 for t in timings["1"][1:])


def step_problems(step: int):
    config = read_header(GOLDEN)["config"]
    problems = load_problems("gsm8k", "train", REPO / config["dataset_path"])
    cursor = BatchCursor()
    for _ in range(step + 1):
        indices, cursor = next_batch(cursor, len(problems), 8, config["seed"])
    return [problems[i] for i in indices]


def test_a_steps_groups_show_questions_answers_rewards_and_advantages():
    code, text = show("--step", "1")
    assert code == 0
    for problem in step_problems(1):
        assert problem.question[:20] in text
        assert f"→ {problem.answer.split('####')[-1].strip()}" in text
    # Groups with reward variance were trained: their advantages are +-1/sqrt(2) for a pair.
    advantages = re.findall(r" (-?0\.707|—) *$", text, flags=re.M)
    assert len(advantages) == 16
    assert advantages.count("—") == 2 * round(METRICS[1]["train/frac_zero_variance_groups"] * 8)
    assert advantages.count("0.707") == advantages.count("-0.707") == METRICS[1]["train/datums"] / 2


def test_one_group_in_full_with_token_counts_and_logprob_statistics():
    code, text = show("--step", "1", "--group", "0")
    assert code == 0
    problem = step_problems(1)[0]
    assert " ".join(problem.question.split()[:8]) in " ".join(text.split())
    assert f"ground truth: {problem.answer.split('####')[-1].strip()}" in text
    assert "matches the dataset" in text
    for g in range(2):
        assert re.search(rf"response {g}: \d+ tokens, stop (length|stop)", text)
    assert text.count("logprob mean") == 2


def test_a_step_or_group_the_cassette_lacks_is_one_clear_error():
    code, text = show("--step", "9")
    assert code == 2 and "--step=9: the cassette records steps [0, 1, 2, 3]" in text
    code, text = show("--step", "1", "--group", "8")
    assert code == 2 and "--group=8: step 1 has groups 0..7" in text


@pytest.fixture
def cloud_like(tmp_path) -> Path:
    """The golden cassette as if from the cloud: a hub tokenizer and the hub dataset."""
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    rows[0]["config"]["dataset_path"] = None
    for row in rows[1:]:
        if row["method"] == "get_tokenizer":
            row["response"] = {"$tokenizer": {"name": "Qwen/Qwen3-8B-not-cached"}}
    path = tmp_path / "cloud.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_cloud_cassette_needs_and_takes_the_tokenizer_and_dataset_flags(cloud_like, monkeypatch):
    monkeypatch.delenv("HARNESS_REPLAY_TOKENIZER", raising=False)
    code, text = show(cassette=cloud_like)
    assert code == 2 and "HARNESS_REPLAY_TOKENIZER" in text
    code, text = show(f"--tokenizer={REPO / 'fixtures' / 'tiny-qwen3'}", cassette=cloud_like)
    assert code == 0
    assert (
        table_rows(text.split("seconds per step")[0], r"\d+")["1"][1]
        == f"{METRICS[1]['reward/mean']:.3f}"
    )


def test_a_run_with_plugged_rewards_is_scored_with_them(tmp_path):
    grader = f"{REPO / 'examples' / 'cs336_student' / 'cs336_alignment' / 'drgrpo_grader.py'}"
    cassette = tmp_path / "run.jsonl"
    flags = [
        "--backend=local",
        f"--model_name={REPO / 'fixtures' / 'tiny-arith'}",
        "--dataset=arith",
        "--use_r1_zero_format=False",
        "--n_grpo_steps=1",
        "--rollout_batch_size=4",
        "--group_size=4",
        "--sampling_max_tokens=48",
        "--eval_n=4",
        f"--reward_fn={grader}:boxed_reward_fn",
        f"--eval_reward_fn={grader}:boxed_reward_fn",
        f"--log_path={tmp_path / 'run'}",
        f"--record_cassette={cassette}",
    ]
    assert main(flags) == 0
    view = VIEWER.load_view(cassette, None, None)
    assert view.notes == []
    for rollouts in (
        [r for step in view.steps for group in step.groups for r in group.rollouts],
        [r for step in view.steps for r in step.validation],
    ):
        # The grader gives no credit for format alone; the task's reward gives 0.2.
        assert rollouts and all(r.reward["reward"] == r.reward["answer_reward"] for r in rollouts)
        assert any(r.reward["format_reward"] > r.reward["answer_reward"] for r in rollouts)
