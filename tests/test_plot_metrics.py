"""The learning-curve plot: series placed at the right steps and times, a PNG for any run."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.jsonl import append_json_line
from scripts.plot_metrics import Args, curves, main

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_rows() -> list[dict[str, float]]:
    """Four steps validated at 0 and 2, then the final validation row, as the loop logs them."""
    rows: list[dict[str, float]] = [
        {"progress/grpo_step": s, "reward/mean": 0.1 * s, "time/total": 2.0 + s} for s in range(4)
    ]
    rows[0] |= {"val/accuracy": 0.3}
    rows[2] |= {"val/accuracy": 0.5}
    rows.append({"progress/grpo_step": 4, "val/accuracy": 0.7, "time/total": 1.5})
    return rows


def test_reward_is_placed_at_step_end_and_accuracy_when_its_weights_were_ready():
    run = curves(list(reversed(run_rows())))  # order in the file does not matter
    np.testing.assert_array_equal(run.reward_step, [0, 1, 2, 3])
    np.testing.assert_allclose(run.reward_time, [2, 5, 9, 14])
    np.testing.assert_allclose(run.reward, [0, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(run.accuracy_step, [0, 2, 4])
    np.testing.assert_allclose(run.accuracy_time, [0, 5, 14])
    np.testing.assert_allclose(run.accuracy, [0.3, 0.5, 0.7])


def test_no_rows_is_an_error():
    with pytest.raises(ValueError, match="no metrics rows"):
        curves([])


def write_run(folder: Path) -> Path:
    for row in run_rows():
        append_json_line(folder / "metrics.jsonl", row)
    return folder


def test_writes_a_png_for_several_runs_given_as_folders_or_files(tmp_path):
    first = write_run(tmp_path / "a")
    second = write_run(tmp_path / "b") / "metrics.jsonl"
    out = tmp_path / "plots" / "curves.png"
    main(Args(runs=(first, second), out=out, labels=("GRPO", "flipped"), title="t"))
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert out.stat().st_size > 10_000  # two panels of curves, not an empty canvas


def test_the_command_line_names_its_mistakes(tmp_path):
    run = write_run(tmp_path / "run")
    script = str(REPO / "scripts" / "plot_metrics.py")
    ok = subprocess.run(
        [sys.executable, script, str(run), "--out", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(SystemExit, match="2 labels for 1 runs"):
        main(Args(runs=(run,), labels=("a", "b")))
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl"):
        main(Args(runs=(tmp_path / "missing",)))
