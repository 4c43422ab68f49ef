"""Binary cassettes: a run recorded to a path not ending in .jsonl is written compressed, with
its arrays as raw bytes, off the critical path; it replays to the recorded metrics, and the
viewer shows one step of it reading only that step's records."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from harness.backends import cassette as cassette_format
from harness.backends.cassette import is_binary, read_cassette
from harness.backends.cassette_codec import decode, encode
from harness.cassette_view import load_view
from harness.cli import main
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from scripts import replay as viewer
from tests.support.golden import FLAGS as GOLDEN_FLAGS
from tests.support.golden import GOLDEN, assert_the_golden_runs_metrics
from tests.support.viewed import NOT_RECORDED

# The golden run's flags; it was recorded before streaming, in the serial order.
FLAGS = [*GOLDEN_FLAGS, "--stream_training=False"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """The golden run's configuration, recorded to a binary cassette."""
    folder = tmp_path_factory.mktemp("binary")
    flags = [*FLAGS, f"--log_path={folder / 'run'}", f"--record_cassette={folder / 'run.cassette'}"]
    assert main(flags) == 0
    return folder


def view(cassette: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = viewer.main(
        [str(cassette), *args],
        Console(file=out, width=200, color_system=None),
    )
    return code, out.getvalue()


def test_it_is_binary_and_reads_back_to_the_json_formats_calls(recorded):
    path = recorded / "run.cassette"
    assert is_binary(path) and not is_binary(GOLDEN)
    binary, golden = read_cassette(path), read_cassette(GOLDEN)
    assert [c.name for c in binary.calls] == [c.name for c in golden.calls]
    sampled = [c for c in binary.calls if c.method == "sample"]
    golden_sampled = [c for c in golden.calls if c.method == "sample"]
    # The golden run asked for the same (its responses' last bits depend on the CPU's
    # arithmetic, so the trees are checked against the JSON format's encoding instead).
    for call, golden_call in zip(sampled, golden_sampled, strict=True):
        assert call.request == golden_call.request
    raw = read_cassette(path, arrays_as_lists=False)
    arrays = 0
    for call, raw_call in zip(binary.calls, raw.calls, strict=True):
        if call.method not in ("sample", "forward_backward"):
            continue
        for tree, raw_tree in [
            (call.request, raw_call.request),
            (call.response, raw_call.response),
        ]:
            # As the JSON format writes these values: its lists, its float32 decimals.
            assert tree == encode(decode(tree))
            # Left as numpy arrays, the same values.
            assert encode(decode(raw_tree)) == tree
            arrays += holds_array(raw_tree)
    assert arrays > 0
    assert sorted(binary.scores) == [0, 1, 2, 3]  # (the golden cassette predates them)


def holds_array(tree) -> bool:
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list):
        return any(map(holds_array, tree))
    return isinstance(tree, np.ndarray)


def test_it_replays_to_the_recorded_metrics(recorded, tmp_path):
    flags = [*FLAGS, "--backend=replay", f"--cassette={recorded / 'run.cassette'}"]
    assert main([*flags, f"--log_path={tmp_path}"]) == 0
    replayed = without_timings(read_json_lines(tmp_path / "metrics.jsonl"))
    assert replayed == without_timings(read_json_lines(recorded / "run" / "metrics.jsonl"))
    assert_the_golden_runs_metrics(replayed)


def test_the_viewer_shows_a_step_from_its_records_alone(recorded, monkeypatch):
    path = recorded / "run.cassette"
    bodies = []
    read_row = cassette_format._row
    monkeypatch.setattr(
        cassette_format, "_row", lambda body, *args: bodies.append(1) or read_row(body, *args)
    )
    code, text = view(path, "--step", "2")
    assert code == 0
    monkeypatch.undo()
    # One read (the run started at step 0): the header (and once more, for the recorded
    # reward), the setup calls, step 2's calls and the four steps' scores; no other step's.
    whole, alone = read_cassette(path), read_cassette(path, segment=2)
    assert len(bodies) <= 2 + len(alone.calls) + 4
    assert len(bodies) < len(whole.calls)
    assert len(alone.calls) < len(whole.calls)
    assert alone.segments == 5  # four steps and the final validation
    _, golden = view(GOLDEN, "--step", "2")
    table = text[text.index("step 2: groups") :]
    assert table == golden[golden.index("step 2: groups") :]
    code, text = view(path, "--step", "9")
    assert code == 2 and "--step=9: the cassette records steps [0, 1, 2, 3]" in text


def test_the_viewer_numbers_a_resumed_runs_steps_from_its_checkpoint(tmp_path):
    log_path = f"--log_path={tmp_path / 'run'}"
    assert main([*FLAGS, log_path, "--n_grpo_steps=2"]) == 0  # its checkpoint: step 2
    cassette = tmp_path / "resumed.cassette"
    assert main([*FLAGS, log_path, f"--record_cassette={cassette}"]) == 0  # steps 2 and 3
    logged = {
        row["progress/grpo_step"]: row
        for row in read_json_lines(tmp_path / "run" / "metrics.jsonl")
    }
    for number in (2, 3):
        shown = load_view(cassette, None, None, step=number)
        (step,) = [s for s in shown.steps if s.number == number]
        row = logged[number]
        assert step.metrics == {k: v for k, v in row.items() if not k.startswith(NOT_RECORDED)}
    code, text = view(cassette, "--step", "1")
    assert code == 2 and "--step=1: the cassette records steps [2, 3]" in text
