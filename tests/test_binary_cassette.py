"""Binary cassettes: a run recorded to a path not ending in .jsonl is written compressed, with
its arrays as raw bytes, off the critical path; it replays to the recorded metrics, and the
viewer shows one step of it reading only that step's records."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from harness.backends import cassette as cassette_format
from harness.backends.cassette import is_binary, read_cassette
from harness.cli import main
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from scripts import replay as viewer
from tests.support.golden import FLAGS as GOLDEN_FLAGS
from tests.support.golden import GOLDEN

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
    # The same tokens and logprobs, as the same lists (sequence ids name each run's session).
    for call, golden_call in zip(sampled, golden_sampled, strict=True):
        assert call.request == golden_call.request
        assert without_ids(call.response) == without_ids(golden_call.response)
    assert sorted(binary.scores) == [0, 1, 2, 3]  # (the golden cassette predates them)


def without_ids(tree):
    if isinstance(tree, list):
        return [without_ids(item) for item in tree]
    if isinstance(tree, dict):
        return {k: without_ids(v) for k, v in tree.items() if k != "sequence_id"}
    return tree


def test_it_replays_to_the_recorded_metrics(recorded, tmp_path):
    flags = [*FLAGS, "--backend=replay", f"--cassette={recorded / 'run.cassette'}"]
    assert main([*flags, f"--log_path={tmp_path}"]) == 0
    replayed = without_timings(read_json_lines(tmp_path / "metrics.jsonl"))
    assert replayed == without_timings(read_json_lines(recorded / "run" / "metrics.jsonl"))
    assert replayed == read_json_lines(GOLDEN.with_suffix(".metrics.jsonl"))


def test_the_viewer_shows_a_step_from_its_records_alone(recorded, monkeypatch):
    path = recorded / "run.cassette"
    bodies = []
    read_row = cassette_format._row
    monkeypatch.setattr(cassette_format, "_row", lambda body: bodies.append(1) or read_row(body))
    code, text = view(path, "--step", "2")
    assert code == 0
    monkeypatch.undo()
    # Two reads (the setup, to number the steps; then step 2), each of the header, the setup
    # calls, one step's calls and the steps' scores: not the other steps' calls.
    whole, setup = read_cassette(path), read_cassette(path, segment=0)
    alone = read_cassette(path, segment=2)
    assert len(bodies) <= 1 + 2 * (1 + 4) + len(setup.calls) + len(alone.calls)
    assert len(bodies) < len(whole.calls)
    assert len(alone.calls) < len(whole.calls)
    assert alone.segments == 5  # four steps and the final validation
    _, golden = view(GOLDEN, "--step", "2")
    table = text[text.index("step 2: groups") :]
    assert table == golden[golden.index("step 2: groups") :]
    code, text = view(path, "--step", "9")
    assert code == 2 and "--step=9: the cassette records steps [0, 1, 2, 3]" in text
