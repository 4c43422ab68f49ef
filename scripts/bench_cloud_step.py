"""A full-size cloud step at its critical path: serial against streaming, side by side.

Run from the repository root:

    python scripts/bench_cloud_step.py [--steps=5] [--time_scale=1.0]
        [--weather=fixtures/weather/tinker-like.toml] [--stream_request_tokens=262144]

Each order (`--stream_training=False`, then True) runs `--steps` steps of the seed's full
configuration (Qwen/Qwen3-8B's vocabulary, 256 questions x 8 samples, up to 1,024 tokens,
validation of 100 questions at step 0) on the synthetic model (`--backend=synthetic`) under the
weather profile at `time_scale`, through the unchanged loop, recording a cassette. It prints
per step:

- wall: the step's `time/total`, divided by `time_scale` (the profile's real seconds; exact at
  time_scale 1, where the harness's own CPU time is not scaled up with the waits);
- bound: the critical path no order can beat. With the profile's latency (before scaling)
  ttft, per_token, save_s, cycle_s and cycle_tokens, a step whose longest response has L
  tokens and whose Datums hold N model-input tokens:
      sampling = save_s + ttft + per_token * L     (a fresh sampler, then the slowest request;
                                                    all rollout requests hold a slot at once)
      cycles   = ceil(N / cycle_tokens)            (clock cycles the training needs)
      hidden   = floor((ttft + per_token * L) / cycle_s)
                                                   (cycles that pass while sampling)
      bound    = sampling + cycle_s * max(1, cycles - hidden)
  (on-policy, the last group's Datums can train only after the last response, in at least one
  more cycle; at most one cycle's work per cycle_s of sampling can be done before);
- ratio: wall / bound;
- harness CPU: the process's CPU seconds during the step less those of the synthetic model's
  own work (generating responses, answering training calls), as a share of the unscaled wall;
- cassette: bytes the step added to the recording;
- recording: CPU seconds per step of a recording run less those of the same run unrecorded,
  both run once more per order at time_scale 1e-3, where only CPU matters (at real time, what
  the process spends while it waits, e.g. on its progress display, would count too); the
  summary divides the whole runs' difference, the cassette's writer emptied, by the steps.

Then, on the streaming run's cassette, the viewer (`scripts/replay.py CASSETTE --step k`) of
each step, as a user starts it: the seconds until its first screen (`SCREEN_LINES` lines) is
out, and until it is done. The last line sums the streaming order up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tyro

from harness.backends.record import RecordingServiceClient
from harness.backends.synthetic import SyntheticServiceClient
from harness.config import Config
from harness.data import load_problems
from harness.estimate import load_tokenizer
from harness.logger import RunLogger
from harness.loop import train
from harness.weather import Latency, Weather, load_weather

REPO_ROOT = Path(__file__).resolve().parent.parent
SCREEN_LINES = 50
"""A terminal's screen of the viewer's output: its header and the first groups' rows."""


@dataclasses.dataclass
class Args:
    steps: int = 5
    time_scale: float = 1.0
    weather: str = "fixtures/weather/tinker-like.toml"
    stream_request_tokens: int = Config.stream_request_tokens


@dataclasses.dataclass(frozen=True)
class Step:
    wall_s: float
    bound_s: float
    cpu_s: float
    cassette_bytes: int

    @property
    def ratio(self) -> float:
        return self.wall_s / self.bound_s


class MeasuringLogger(RunLogger):
    """Takes the process's CPU time, the synthetic model's and the cassette's size at each
    logged row."""

    def __init__(self, config: Config, service: SyntheticServiceClient, cassette: Path | None):
        super().__init__(config)
        self.service = service
        self.cassette = cassette
        self.marks: list[tuple[float, float, int]] = []
        self.rows: list[dict] = []
        self.mark()

    def mark(self) -> None:
        size = self.cassette.stat().st_size if self.cassette and self.cassette.exists() else 0
        self.marks.append((time.process_time(), self.service.model.cpu_s, size))

    def log(self, row: dict[str, float]) -> None:
        super().log(row)
        self.rows.append(row)
        self.mark()


def bound_s(latency: Latency, row: dict[str, float]) -> float:
    """The docstring's critical-path bound of a step, in the profile's real seconds."""
    sample_s = latency.ttft_s + latency.per_token_s * row["response/length_max"]
    cycles = math.ceil(row["tokens/trained"] / latency.cycle_tokens) if latency.cycle_tokens else 1
    hidden = math.floor(sample_s / latency.cycle_s) if latency.cycle_s else 0
    return latency.save_s + sample_s + latency.cycle_s * max(1, cycles - hidden)


def run(
    stream: bool, args: Args, weather: Weather, time_scale: float, record: bool, folder: Path
) -> Run:
    config = Config(
        model_name="Qwen/Qwen3-8B",
        dataset_path=str(REPO_ROOT / "fixtures" / "gsm8k"),
        backend="synthetic",
        n_grpo_steps=args.steps,
        log_path=str(folder / "run"),
        stream_training=stream,
        stream_request_tokens=args.stream_request_tokens,
    )
    train_problems = load_problems("gsm8k", "train", config.dataset_path)
    test_problems = load_problems("gsm8k", "test", config.dataset_path)
    tokenizer, _ = load_tokenizer(config.model_name)
    scaled = dataclasses.replace(weather, time_scale=time_scale)
    cassette = folder / "run.cassette" if record else None  # the binary format
    service = SyntheticServiceClient(
        folder / "storage", tokenizer, [*train_problems, *test_problems], seed=0, weather=scaled
    )
    logger = MeasuringLogger(config, service, cassette)
    start_cpu_s = time.process_time()
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(service)
        if cassette is not None:
            client = stack.enter_context(
                RecordingServiceClient(
                    service,
                    cassette,
                    backend="synthetic",
                    config=dataclasses.asdict(config),
                    environ={},
                )
            )
        train(config, client, train_problems, test_problems, logger)
    total_cpu_s = time.process_time() - start_cpu_s - service.model.cpu_s
    steps = []
    for row, before, after in zip(logger.rows, logger.marks, logger.marks[1:], strict=False):
        if row["progress/grpo_step"] == args.steps:  # the final validation's row
            break
        steps.append(
            Step(
                wall_s=row["time/total"] / time_scale,
                bound_s=bound_s(weather.latency, row),
                cpu_s=(after[0] - before[0]) - (after[1] - before[1]),
                cassette_bytes=after[2] - before[2],
            )
        )
    return Run(steps, total_cpu_s)


@dataclasses.dataclass(frozen=True)
class Run:
    steps: list[Step]
    cpu_s: float
    """The harness's CPU seconds over the whole run, the recording's writer emptied."""


def view_s(cassette: Path, step: int) -> tuple[float, float]:
    """Seconds from starting the viewer of `step` until its first screen is out, and until
    it exits."""
    command = [sys.executable, "-u", str(REPO_ROOT / "scripts" / "replay.py"), str(cassette)]
    command += ["--step", str(step), "--dataset_path", str(REPO_ROOT / "fixtures" / "gsm8k")]
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as viewer:
        assert viewer.stdout is not None
        screen = math.nan
        for lines, _ in enumerate(viewer.stdout, start=1):
            if lines == SCREEN_LINES:
                screen = time.perf_counter() - start
        if viewer.wait() != 0:
            raise SystemExit(f"the viewer failed on step {step} of {cassette}")
    return screen, time.perf_counter() - start


def main(args: Args) -> None:
    weather = load_weather(REPO_ROOT / args.weather).without_faults()
    results: dict[str, tuple[Run, Run, Run]] = {}
    for name, stream in (("serial", False), ("streaming", True)):
        with contextlib.ExitStack() as folders:
            timed_dir, recorded_dir, bare_dir = (
                Path(folders.enter_context(tempfile.TemporaryDirectory())) for _ in range(3)
            )
            timed = run(stream, args, weather, args.time_scale, True, timed_dir)
            recorded = run(stream, args, weather, 1e-3, True, recorded_dir)
            bare = run(stream, args, weather, 1e-3, False, bare_dir)
            if stream:
                viewed = [view_s(timed_dir / "run.cassette", k) for k in range(args.steps)]
        results[name] = (timed, recorded, bare)
        print(f"\n{name} ({args.steps} steps, time_scale {args.time_scale:g})")
        print("step   wall s  bound s  ratio  harness CPU s (%)  cassette MB  recording s")
        for k, (step, fast, bare_step) in enumerate(
            zip(timed.steps, recorded.steps, bare.steps, strict=True)
        ):
            print(
                f"{k:>4} {step.wall_s:>8.1f} {step.bound_s:>8.1f} {step.ratio:>6.2f}"
                f" {bare_step.cpu_s:>9.2f} ({100 * bare_step.cpu_s / step.wall_s:>4.1f} %)"
                f" {step.cassette_bytes / 1e6:>12.1f} {fast.cpu_s - bare_step.cpu_s:>12.2f}"
            )
    print("\nviewer (scripts/replay.py CASSETTE --step k, the streaming run's cassette)")
    print("step  first screen s  whole step s")
    for k, (screen, whole) in enumerate(viewed):
        print(f"{k:>4} {screen:>15.1f} {whole:>13.1f}")
    print(f"slowest first screen {max(screen for screen, _ in viewed):.1f} s")
    timed, recorded, bare = results["streaming"]
    serial = results["serial"][0].steps
    pairs = list(zip(timed.steps, bare.steps, strict=True))
    ratio = float(np.mean([s.ratio for s in timed.steps]))
    cpu = float(np.mean([b.cpu_s / s.wall_s for s, b in pairs]))
    megabytes = float(np.mean([s.cassette_bytes for s in timed.steps])) / 1e6
    recording = (recorded.cpu_s - bare.cpu_s) / args.steps
    print(
        f"\nmean wall per step: serial {np.mean([s.wall_s for s in serial]):.1f} s,"
        f" streaming {np.mean([s.wall_s for s in timed.steps]):.1f} s;"
        f" serial ratio {np.mean([s.ratio for s in serial]):.2f} to the bound"
    )
    print(
        f"streaming: ratio {ratio:.2f} to the bound, harness CPU {100 * cpu:.1f} %,"
        f" cassette {megabytes:.1f} MB/step, recording {recording:.2f} s/step"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
