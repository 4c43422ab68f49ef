import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.data import BatchCursor, DatasetUnavailable, cursor_at_step, load_gsm8k, next_batch
from harness.data.gsm8k import read_jsonl_problems


def test_loads_both_gsm8k_splits_from_a_folder(gsm8k_dir):
    train, test = load_gsm8k("train", gsm8k_dir), load_gsm8k("test", gsm8k_dir)
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0].question.startswith("Natalia sold clips")
    assert train[0].answer.endswith("#### 72")


def test_a_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + '{"question": 1}\n')
    with pytest.raises(DatasetUnavailable, match=r"train.jsonl:2: expected a JSON object"):
        read_jsonl_problems(path)


GOOD = json.dumps({"question": "How many?", "answer": "2 + 2 = 4\n#### 4"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "How many?", "answer": "The answer is 4."}', "must end in '#### <number>'"),
        ('{"question": "How many?", "answer": "#### forty-two"}', "must end in '#### <number>'"),
        ('{"question": "How many?", "answer": 42}', "'answer' must be text"),
        ('{"question": null, "answer": "#### 4"}', "'question' must be non-empty text"),
        ('{"question": "How many?"}', "expected a JSON object with 'question' and 'answer'"),
        ('["How many?", "#### 4"]', "expected a JSON object"),
        ('{"question": "How many?", "answer": "#### 4"', "not a JSON line"),
    ],
)
def test_a_row_the_reward_cannot_score_is_refused_at_load_naming_file_and_line(
    tmp_path, line, message
):
    path = tmp_path / "train.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")
    with pytest.raises(DatasetUnavailable, match=rf"train.jsonl:3: .*{re.escape(message)}"):
        read_jsonl_problems(path)


def test_a_line_that_is_not_utf8_is_refused_naming_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
    with pytest.raises(DatasetUnavailable, match=r"test.jsonl:2: not UTF-8 text"):
        read_jsonl_problems(path)


def test_rows_from_the_hub_are_checked_the_same_way(monkeypatch):
    import datasets

    rows = [{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "#### one"}]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, split: rows)
    with pytest.raises(DatasetUnavailable, match=r"openai/gsm8k train row 1: 'answer' must end"):
        load_gsm8k("train")


def test_unreachable_hub_names_the_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("harness.data.gsm8k.hub_reachable", lambda: False)
    with pytest.raises(DatasetUnavailable, match="--dataset_path"):
        load_gsm8k("train")


@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 50),
    n_batches=st.integers(1, 6),
    seed=st.integers(0, 3),
)
def test_cursor_walks_every_epoch_exactly_once(n, batch_size, n_batches, seed):
    cursor, taken = BatchCursor(), []
    for _ in range(n_batches):
        indices, cursor = next_batch(cursor, n, batch_size, seed)
        assert len(indices) == batch_size
        taken.extend(indices)
    for epoch_start in range(0, len(taken) - n + 1, n):
        assert sorted(taken[epoch_start : epoch_start + n]) == list(range(n))


@given(n=st.integers(1, 30), batch_size=st.integers(1, 12), split=st.integers(0, 5))
def test_resuming_from_a_saved_cursor_takes_the_same_batches(n, batch_size, split):
    cursor, straight = BatchCursor(), []
    for _ in range(6):
        indices, cursor = next_batch(cursor, n, batch_size, seed=7)
        straight.append(indices)
    cursor, resumed = BatchCursor(), []
    for _ in range(split):
        indices, cursor = next_batch(cursor, n, batch_size, seed=7)
        resumed.append(indices)
    saved = BatchCursor(**json.loads(json.dumps(cursor.__dict__)))
    for _ in range(6 - split):
        indices, saved = next_batch(saved, n, batch_size, seed=7)
        resumed.append(indices)
    assert resumed == straight


def test_seeds_give_different_orders():
    first, _ = next_batch(BatchCursor(), 100, 10, seed=0)
    other, _ = next_batch(BatchCursor(), 100, 10, seed=1)
    assert first != other


@given(n=st.integers(1, 30), batch_size=st.integers(1, 12), step=st.integers(0, 20))
def test_the_cursor_at_a_step_is_where_that_many_batches_leave_it(n, batch_size, step):
    cursor = BatchCursor()
    for _ in range(step):
        _, cursor = next_batch(cursor, n, batch_size, seed=5)
    assert cursor_at_step(step, n, batch_size) == cursor
