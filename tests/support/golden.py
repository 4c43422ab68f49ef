"""The golden cassette (fixtures/cassettes/smoke.jsonl), its recorded run and its metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from harness.backends.cassette import read_header, recorded_flags
from harness.backends.replay_service import ReplayServiceClient
from harness.cassette_view import rerun_flags
from harness.config import Config, config_from_record
from harness.data import Problem, load_problems
from harness.jsonl import read_json_lines
from harness.logger import RunLogger
from harness.loop import RunResult, train

REPO = Path(__file__).resolve().parent.parent.parent
GOLDEN = REPO / "fixtures" / "cassettes" / "smoke.jsonl"
METRICS = read_json_lines(GOLDEN.with_suffix(".metrics.jsonl"))
CONFIG = read_header(GOLDEN)["config"]
# The flags of the recorded run (its paths made absolute), to run it again on any backend.
FLAGS = rerun_flags({**CONFIG, "model_name": str(REPO / CONFIG["model_name"])})


def assert_the_golden_runs_metrics(rows: list[dict[str, Any]]) -> None:
    """`rows` (timings left out) are the golden run's metrics, the floats up to the rounding in
    which CPUs differ: a run on the local backend does float32 arithmetic whose last bits vary
    with the machine's vector instructions, and the golden run was recorded on one machine.
    (A replay of the golden cassette gives its metrics exactly: nothing is computed again.)"""
    assert len(rows) == len(METRICS)
    for row, golden in zip(rows, METRICS, strict=True):
        assert row == pytest.approx(golden, rel=1e-5, abs=1e-4)


def recorded_config(cassette: Path, log_path: Path) -> Config:
    """The recorded run's config as a replay of it, into a fresh log folder."""
    config = config_from_record(recorded_flags(read_header(cassette)))
    return dataclasses.replace(
        config, backend="replay", cassette=str(cassette), log_path=str(log_path)
    )


def problems(config: Config) -> tuple[list[Problem], list[Problem]]:
    """The recorded run's train and test questions."""
    dataset = None if config.dataset_path is None else str(REPO / config.dataset_path)
    return (
        load_problems(config.dataset, "train", dataset),
        load_problems(config.dataset, "test", dataset),
    )


def replay(
    log_path: Path, logger: RunLogger | None = None, **train_options: Any
) -> tuple[Config, ReplayServiceClient, RunResult]:
    """The golden run replayed by the loop into `log_path` (the logger a RunLogger unless
    given), with the service that answered it."""
    config = recorded_config(GOLDEN, log_path)
    service = ReplayServiceClient(GOLDEN)
    train_problems, test_problems = problems(config)
    result = train(
        config,
        service,
        train_problems,
        test_problems,
        logger or RunLogger(config),
        **train_options,
    )
    return config, service, result
