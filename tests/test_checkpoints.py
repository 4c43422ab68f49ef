import json
from types import SimpleNamespace

from harness.checkpoints import (
    checkpoint_name,
    index_path,
    last_checkpoint,
    rolling_name,
    save_checkpoint,
    step_of,
)
from harness.cost import Tokens
from harness.data import BatchCursor
from harness.jsonl import append_json_line, read_json_lines


class FakeFuture:
    def __init__(self, value):
        self.value = value

    def result(self, timeout=None):
        return self.value


class RecordingTrainingClient:
    def __init__(self):
        self.calls = []

    def save_state(self, name):
        self.calls.append(("save_state", name))
        return FakeFuture(SimpleNamespace(path=f"tinker://run/weights/{name}"))

    def save_weights_for_sampler(self, name):
        self.calls.append(("save_weights_for_sampler", name))
        return FakeFuture(SimpleNamespace(path=f"tinker://run/sampler_weights/{name}"))


def test_no_index_means_no_checkpoint(tmp_path):
    assert last_checkpoint(tmp_path) is None


def test_saves_both_kinds_of_weights_and_resumes_from_the_last(tmp_path):
    client = RecordingTrainingClient()
    save_checkpoint(client, tmp_path, 2, BatchCursor(0, 16), seed=3, tokens=Tokens(10, 20, 30))
    save_checkpoint(client, tmp_path, 4, BatchCursor(1, 8), seed=3, tokens=Tokens(11, 22, 33))
    assert client.calls == [
        ("save_state", "step_000002"),
        ("save_weights_for_sampler", "step_000002"),
        ("save_state", "step_000004"),
        ("save_weights_for_sampler", "step_000004"),
    ]
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint.step == 4
    assert checkpoint.state_path == "tinker://run/weights/step_000004"
    assert checkpoint.sampler_path == "tinker://run/sampler_weights/step_000004"
    assert checkpoint.cursor == BatchCursor(1, 8) and checkpoint.seed == 3
    assert checkpoint.tokens == Tokens(prefill=11, sampled=22, trained=33)


def test_an_index_from_before_token_accounting_resumes_with_zero_totals(tmp_path):
    save_checkpoint(RecordingTrainingClient(), tmp_path, 2, BatchCursor(0, 16), 0, Tokens(1, 2, 3))
    (row,) = read_json_lines(index_path(tmp_path))
    del row["tokens"]
    index_path(tmp_path).write_text(json.dumps(row) + "\n")
    assert last_checkpoint(tmp_path).tokens == Tokens()


def test_a_line_cut_by_a_kill_is_skipped_and_does_not_swallow_the_next(tmp_path):
    client = RecordingTrainingClient()
    save_checkpoint(client, tmp_path, 2, BatchCursor(0, 16), seed=0, tokens=Tokens())
    with index_path(tmp_path).open("a") as f:
        f.write('{"step": 4, "state_pa')  # killed mid-write
    assert last_checkpoint(tmp_path).step == 2
    save_checkpoint(client, tmp_path, 4, BatchCursor(0, 32), seed=0, tokens=Tokens())
    assert last_checkpoint(tmp_path).step == 4
    assert len(read_json_lines(index_path(tmp_path))) == 2


def test_json_lines_round_trip(tmp_path):
    path = tmp_path / "a" / "rows.jsonl"
    rows = [{"x": 1.5, "y": "z"}, {"x": 2}]
    for row in rows:
        append_json_line(path, row)
    assert read_json_lines(path) == rows


def test_a_saved_paths_step_is_the_step_its_name_was_made_from():
    for step in (0, 7, 123456):
        for name in (checkpoint_name(step), rolling_name(step)):
            assert step_of(name) == step
            assert step_of(f"tinker://run-1/weights/{name}") == step
            assert step_of(f"tinker://run-1/sampler_weights/{name}/") == step
    for other in ("tinker://run-1/weights/final", "step_12", "tinker://x/weights/step_000001b", ""):
        assert step_of(other) is None
