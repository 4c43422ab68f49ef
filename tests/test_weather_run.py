"""`--weather=PATH` on the training script: checked before any work, refused where it means
nothing, and a run under the cloud's latency computes exactly the calm run's steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.config import RESUMABLE_CHANGES, Config, ConfigError, check_config
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from tests.support.golden import FLAGS as GOLDEN_FLAGS
from tests.support.golden import REPO, assert_the_golden_runs_metrics

TINKER_LIKE = REPO / "fixtures" / "weather" / "tinker-like.toml"


def fast_tinker_like(tmp_path: Path) -> Path:
    """tinker-like.toml at 1/1000 of its latency."""
    text = TINKER_LIKE.read_text().replace("time_scale = 1.0", "time_scale = 0.001")
    assert "time_scale = 0.001" in text
    path = tmp_path / "tinker-like-fast.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("backend", "extra", "message"),
    [
        ("tinker", {}, "--weather is for --backend=local, local-server or synthetic"),
        ("replay", {"cassette": "x.jsonl"}, "not the replay backend"),
        ("local-server", {"base_url": "http://127.0.0.1:1"}, "start it with python -m"),
    ],
)
def test_weather_is_refused_where_it_means_nothing(backend, extra, message):
    config = Config(
        backend=backend, model_name="fixtures/tiny-qwen3", weather=str(TINKER_LIKE), **extra
    )
    with pytest.raises(ConfigError, match=message):
        check_config(config, {"TINKER_API_KEY": "tml-x"})


def test_a_bad_profile_stops_the_run_in_one_line(tmp_path, capsys):
    profile = tmp_path / "bad.toml"
    profile.write_text("[latency]\ncycle_s = -1\n")
    flags = [*GOLDEN_FLAGS, "--backend=local", f"--weather={profile}"]
    assert main([*flags, f"--log_path={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert f"--weather={profile}: latency.cycle_s: must be >= 0" in error
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_weather_may_change_when_a_run_resumes():
    assert "weather" in RESUMABLE_CHANGES


def test_a_run_under_the_clouds_latency_computes_the_calm_runs_steps(tmp_path):
    flags = [*GOLDEN_FLAGS, "--backend=local", f"--weather={fast_tinker_like(tmp_path)}"]
    assert main([*flags, f"--log_path={tmp_path / 'run'}"]) == 0
    rows = read_json_lines(tmp_path / "run" / "metrics.jsonl")
    assert_the_golden_runs_metrics(without_timings(rows))
    trained = [row for row in rows[:-1] if row["train/datums"] > 0]
    assert trained
    # forward_backward and optim_step share one 10 ms clock cycle, which they waited for.
    assert all(row["time/training"] >= 0.010 for row in trained)
    assert all(row["time/save_weights"] >= 0.005 for row in rows[:-1])  # save_s = 5 s / 1000
