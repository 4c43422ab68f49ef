"""The recorded run's model (harness.cassette_view) on the golden cassette, and the viewer
(scripts/replay.py) that renders it."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from harness.backends.cassette import read_cassette
from harness.cassette_view import load_view, purpose_of, rerun_flags
from harness.cli import main
from harness.data import BatchCursor, load_problems, next_batch
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from scripts import replay as viewer
from tests.support.golden import CONFIG, GOLDEN, METRICS, REPO
from tests.support.viewed import NOT_RECORDED


def show(*args: str, cassette: Path = GOLDEN) -> tuple[int, str]:
    out = io.StringIO()
    code = viewer.main([str(cassette), *args], Console(file=out, width=200, color_system=None))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def view():
    return load_view(GOLDEN, None, None)


def test_each_steps_metrics_are_the_row_the_run_logged(view):
    assert view.notes == []
    assert [s.number for s in view.steps] == [0, 1, 2, 3, 4]
    assert [s.final for s in view.steps] == [False] * 4 + [True]
    assert len(view.steps) == len(METRICS)
    for step, row in zip(view.steps, METRICS, strict=True):
        logged = {k: v for k, v in row.items() if not k.startswith(NOT_RECORDED)}
        assert step.metrics == logged, step.number
    trained = [s for s in view.steps if s.metrics.get("train/datums", 0) > 0]
    assert len(trained) >= 2 and all("train/kl_sampler_trainer" in s.metrics for s in trained)


def old_cassette(tmp_path: Path) -> Path:
    """The golden cassette as recorded before sample calls carried their purpose."""
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert any("purpose" in row for row in rows)
    for row in rows:
        row.pop("purpose", None)
        if row.get("method") == "get_tokenizer":  # where the copy finds the tokenizer
            row["response"] = {"$tokenizer": {"dir": str(REPO / CONFIG["model_name"])}}
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_cassette_without_purposes_reads_as_the_loop_sampled_then(view, tmp_path):
    marked = [c for c in read_cassette(GOLDEN).calls if c.method == "sample"]
    unmarked = [c for c in read_cassette(old_cassette(tmp_path)).calls if c.method == "sample"]
    assert {c.purpose for c in marked} == {"rollout", "evaluation"}
    assert {c.purpose for c in unmarked} == {None}
    assert [purpose_of(c) for c in unmarked] == [c.purpose for c in marked]
    old = load_view(tmp_path / "old.jsonl", None, None)
    assert [s.metrics for s in old.steps] == [s.metrics for s in view.steps]


def test_a_cassette_without_purposes_replays_to_the_runs_metrics(tmp_path):
    flags = ["--backend=replay", f"--cassette={old_cassette(tmp_path)}", *rerun_flags(CONFIG)]
    assert main([*flags, f"--log_path={tmp_path / 'run'}"]) == 0
    assert without_timings(read_json_lines(tmp_path / "run" / "metrics.jsonl")) == METRICS


def loop_batch(step: int):
    """The questions of `step` as the loop takes them: batch after batch from the start."""
    problems = load_problems(CONFIG["dataset"], "train")
    cursor = BatchCursor()
    for _ in range(step + 1):
        indices, cursor = next_batch(cursor, len(problems), CONFIG["rollout_batch_size"], 0)
    return [problems[i] for i in indices]


def test_a_steps_groups_are_its_questions_with_the_recorded_advantages(view):
    scores = read_cassette(GOLDEN).scores
    for step in view.steps[:-1]:
        assert [g.problem for g in step.groups] == loop_batch(step.number)
        assert all(g.prompt_matches for g in step.groups)
        _, advantages_P_G = scores[step.number]
        for p, group in enumerate(step.groups):
            for g, rollout in enumerate(group.rollouts):
                if advantages_P_G[p].any():  # trained: the Datum's advantage
                    assert rollout.advantage == pytest.approx(float(advantages_P_G[p, g]))
                    assert len(rollout.trainer_logprobs) == len(rollout.tokens)
                else:
                    assert rollout.advantage is None and rollout.trainer_logprobs is None


def test_the_viewer_renders_the_header_the_steps_a_step_and_a_group():
    code, text = show()
    assert code == 0
    assert "4 steps; reward the task reward" in text
    assert (
        f"replay: python scripts/grpo_train_tinker.py --backend=replay --cassette={GOLDEN}" in text
    )
    assert "seconds per step" in text
    code, text = show("--step", "1")
    assert code == 0
    for problem in loop_batch(1):
        assert f"→ {problem.ground_truth}" in text
    code, text = show("--step", "1", "--group", "0")
    assert code == 0
    assert "matches the dataset" in text and text.count("logprob mean") == 2


def test_a_step_or_group_the_cassette_lacks_is_one_clear_error():
    code, text = show("--step", "9")
    assert code == 2 and "--step=9: the cassette records steps [0, 1, 2, 3]" in text
    code, text = show("--step", "1", "--group", "8")
    assert code == 2 and "--group=8: step 1 has groups 0..7" in text


@pytest.fixture
def cloud_like(tmp_path) -> Path:
    """The golden cassette as if from the cloud: a hub tokenizer not in the cache."""
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    for row in rows[1:]:
        if row.get("method") == "get_tokenizer":
            row["response"] = {"$tokenizer": {"name": "Qwen/Qwen3-8B-not-cached"}}
    path = tmp_path / "cloud.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_cloud_cassette_needs_and_takes_the_tokenizer_flag(cloud_like, monkeypatch, view):
    monkeypatch.delenv("HARNESS_REPLAY_TOKENIZER", raising=False)
    code, text = show(cassette=cloud_like)
    assert code == 2 and "HARNESS_REPLAY_TOKENIZER" in text
    tokenizer = str(REPO / CONFIG["model_name"])
    assert show(f"--tokenizer={tokenizer}", cassette=cloud_like)[0] == 0
    cloud = load_view(cloud_like, None, tokenizer)
    assert [s.metrics for s in cloud.steps] == [s.metrics for s in view.steps]


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
    view = load_view(cassette, None, None)
    assert view.notes == []
    for scores in (
        [r.reward for step in view.steps for group in step.groups for r in group.rollouts],
        [record for step in view.steps for record in step.validation],
    ):
        # The grader gives no credit for format alone; the task's reward gives 0.2.
        assert scores and all(s["reward"] == s["answer_reward"] for s in scores)
        assert any(s["format_reward"] > s["answer_reward"] for s in scores)


def test_without_its_dataset_a_run_still_shows_what_was_sampled_and_trained(tmp_path, view):
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    rows[0]["config"]["dataset"] = "not-on-this-machine"
    for row in rows[1:]:
        if row.get("method") == "get_tokenizer":
            row["response"] = {"$tokenizer": {"dir": str(REPO / CONFIG["model_name"])}}
    cassette = tmp_path / "elsewhere.jsonl"
    cassette.write_text("".join(json.dumps(row) + "\n" for row in rows))
    blind = load_view(cassette, None, None)
    assert any("no questions or rewards" in note for note in blind.notes)
    kept = ("response/", "train/datums", "train/loss")
    for step, row in zip(blind.steps[:-1], METRICS, strict=False):
        assert step.metrics == {k: v for k, v in row.items() if k.startswith(kept)}
    for seen, known in zip(blind.steps, view.steps, strict=True):
        for group, known_group in zip(seen.groups, known.groups, strict=True):
            assert group.problem is None
            assert [r.advantage for r in group.rollouts] == [
                r.advantage for r in known_group.rollouts
            ]


def test_a_steps_groups_print_in_pages_whose_columns_line_up(view):
    step = view.steps[1]
    step = dataclasses.replace(step, groups=step.groups * 3)  # 24 groups: two pages
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    tables = list(viewer.groups_tables(step))
    assert len(tables) == 2 and viewer.GROUPS_PER_PAGE == 16
    for table in tables:
        console.print(table)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    responses = sum(len(group.rollouts) for group in step.groups)
    assert len(lines) == 1 + 2 + responses  # the title, the header and its rule, the rows
    assert len({len(line) for line in lines[1:]}) == 1  # one width: the same columns
