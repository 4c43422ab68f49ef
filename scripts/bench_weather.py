"""Per-step cost of a weather profile: the smoke run calm and under a profile, per backend.

Run from the repository root:

    python scripts/bench_weather.py [--weather=fixtures/weather/tinker-like.toml]
        [--time_scale=0.001] [--repeats=3] [--backends local local-server]

Each run is the README's offline smoke command (5 steps of 8 questions x 2 samples, 64
tokens, 16 validation questions) in a fresh process, with the tests' reward that varies within
groups (`tests/support/varied_reward_run.py`) so every step trains; calm and weathered runs
alternate. The profile is copied with `time_scale` replaced. It prints the mean seconds per
step (the metrics' `time/*` columns, the final validation row left out) calm and under the
weather, and whether the weathered runs' step metrics (timings aside) equal the calm ones.
The runs are bench_server.py's.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bench_server  # beside this script
import numpy as np
import tyro

from harness.metrics import without_timings

REPO_ROOT = Path(__file__).resolve().parent.parent
PHASES = bench_server.PHASES


@dataclass
class Args:
    weather: str = "fixtures/weather/tinker-like.toml"
    time_scale: float = 0.001
    repeats: int = 3
    backends: tuple[str, ...] = ("local", "local-server")


def run(backend: str, weather: Path | None, log_path: Path) -> list[dict]:
    flags = [f"--weather={weather}"] if weather is not None else []
    smoke = bench_server.Args(sampling_max_tokens=64, eval_n=16)
    return bench_server.run(backend, log_path, smoke, flags)[0]


def main(args: Args) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        profile = Path(scratch) / "weather.toml"
        text = (REPO_ROOT / args.weather).read_text()
        profile.write_text(
            re.sub(r"(?m)^time_scale = .*$", f"time_scale = {args.time_scale}", text)
        )
        for backend in args.backends:
            steps: dict[str, list[dict]] = {"calm": [], "weather": []}
            same = True
            for repeat in range(args.repeats):
                calm = run(backend, None, Path(scratch) / f"{backend}-calm-{repeat}")
                weathered = run(backend, profile, Path(scratch) / f"{backend}-weather-{repeat}")
                same &= without_timings(calm) == without_timings(weathered)
                steps["calm"] += calm
                steps["weather"] += weathered
            means = {
                kind: {p: float(np.mean([r[f"time/{p}"] for r in rows])) for p in PHASES}
                for kind, rows in steps.items()
            }
            print(
                f"{backend}: seconds per step, mean of {len(steps['calm'])} steps each;"
                f" {args.weather} at time_scale {args.time_scale}"
            )
            print(f"{'phase':>14} {'calm':>8} {'weather':>8} {'added':>8}")
            for phase in PHASES:
                calm_s, weather_s = means["calm"][phase], means["weather"][phase]
                print(f"{phase:>14} {calm_s:8.3f} {weather_s:8.3f} {weather_s - calm_s:+8.3f}")
            print(f"  step metrics (timings aside) equal to the calm runs': {same}")


if __name__ == "__main__":
    main(tyro.cli(Args, config=(tyro.conf.FlagConversionOff,), use_underscores=True))
