"""What the viewer makes of a recording, against the run's own metrics."""

from __future__ import annotations

from pathlib import Path

from harness.cassette_view import load_view
from harness.jsonl import read_json_lines

# What a cassette cannot know: wall-clock timings, the run's progress, its token and dollar
# counters. Every other key of a logged row the viewer computes, and equal.
NOT_RECORDED = ("time/", "progress/", "tokens/", "cost/")


def assert_viewer_trains_as_logged(cassette: Path, metrics: Path, dataset_path: str | None):
    """Each step's training metrics as the viewer rebuilds them from the cassette's training
    calls (however many requests and optimizer steps a step made) equal the row the run
    logged; what depends on rewards is left out, as the viewer may score with another reward."""
    rows = {row["progress/grpo_step"]: row for row in read_json_lines(metrics)}
    view = load_view(cassette, dataset_path, None)
    trained = [s for s in view.steps if "train/kl_sampler_trainer" in s.metrics]
    assert trained  # the check saw training steps
    for step in trained:
        row = rows[float(step.number)]
        keys = [
            k
            for k in row
            if k.startswith(("train/", "optim_step/", "optim/"))
            and k != "train/frac_zero_variance_groups"  # a count of rewards
        ]
        assert {k: step.metrics.get(k) for k in keys} == {k: row[k] for k in keys}
