"""Soak: seeded runs through a local Tinker server under random fault schedules.

python scripts/soak.py --runs 50 --seed 0

Each run trains the offline task (tiny-arith, 4 steps) with the real SDK against
`python -m harness.serve`, while the script kills the server with SIGKILL at random moments
(and restarts it on the same storage and port) and kills the client with SIGKILL (and reruns
the same command), as many times as the run's seeded schedule says; with `--weather=PROFILE`
the server injects that profile's faults too. A run counts as equal when its metrics
(timings and fault counters aside; floats to 1e-4, since a request sent again is batched
differently, and the loss sums hundreds of such terms that cancel to about 0) equal an
undisturbed run's, and a step as applied twice when the optimizer state
of its final checkpoint counts more steps than the run has. The last line sums it up:

    soak: N runs, E equal to the undisturbed run, D steps applied twice, F faults injected,
    R recovered in process, K resumed by rerun
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tyro

from harness.backends.local.storage import saved_optimizer_steps
from harness.checkpoints import last_checkpoint
from harness.jsonl import read_json_lines

REPO = Path(__file__).resolve().parent.parent
STEPS = 4
RUN = [
    "--backend=local-server",
    "--model_name=fixtures/tiny-arith",
    "--dataset=arith",
    "--use_r1_zero_format=False",
    f"--n_grpo_steps={STEPS}",
    "--rollout_batch_size=8",
    "--group_size=4",
    "--sampling_max_tokens=24",
    "--learning_rate=1e-3",
    "--eval_every=2",
    "--eval_n=8",
    "--save_every=2",
    "--rolling_save_every=1",
    "--request_timeout_s=30",
    "--retry_backoff_s=0.5",
]
KEY = "tml-soak-key-5d1c"
# Lines the run prints when it recovers in process (harness/resilience.py's FaultLog).
RECOVERED = re.compile(r"sending it again|redoing from the last saved state")
RERUNS = 12  # a run still not done after this many commands counts as not equal


@dataclasses.dataclass(frozen=True)
class Args:
    runs: int = 10
    """Seeded runs under random fault schedules (after one undisturbed run)."""
    seed: int = 0
    """Seed of the fault schedules."""
    out: str = "runs/soak"
    """Folder for the runs' logs and storage (emptied first)."""
    weather: str | None = None
    """A weather profile for the server (e.g. fixtures/weather/stormy.toml); default: none."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    finished: bool
    """The command ended with exit code 0 within RERUNS reruns."""
    applied_twice: int
    injected: int
    recovered: int
    reruns: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m harness.serve` on a fixed port and storage; killed and restarted at will."""

    def __init__(self, storage: Path, port: int, weather: str | None, log: Path):
        weather_flags = [f"--weather={weather}"] if weather else []
        self.command = [sys.executable, "-m", "harness.serve", "--model=fixtures/tiny-arith",
                        f"--port={port}", f"--storage_dir={storage}", "--seed=0",
                        "--log_level=warning", *weather_flags]  # fmt: skip
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO, env={**os.environ, "TINKER_API_KEY": KEY},
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while "serving" not in self.log.read_text().rsplit("\n--\n", 1)[-1]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {self.log}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        with self.log.open("a") as log:
            log.write("\n--\n")  # a new start's banner is looked for after this mark


def client(log_path: Path, base_url: str, log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "scripts/grpo_train_tinker.py", *RUN, f"--base_url={base_url}",
             f"--log_path={log_path}"],
            cwd=REPO, env={**os.environ, "TINKER_API_KEY": KEY},
            stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip


def comparable(rows: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in row.items() if not k.startswith(("time/", "faults/"))} for row in rows
    ]


def same_run(rows: list[dict], expected: list[dict]) -> bool:
    def close(a: object, b: object) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)
        return a == b

    return len(rows) == len(expected) and all(
        row.keys() == want.keys() and all(close(row[k], want[k]) for k in row)
        for row, want in zip(comparable(rows), comparable(expected), strict=True)
    )


def one_run(folder: Path, rng: random.Random | None, weather: str | None) -> Outcome:
    """A run to its end, killing the server and the client where the schedule says."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = free_port()
    server = Server(folder / "storage", port, weather, folder / "server.log")
    server.start()
    # The schedule: kill which process once the run has logged how many steps, and after
    # what delay (so every kill lands while the run is under way).
    kills = sorted(
        (rng.randint(0, STEPS - 1), rng.uniform(0.0, 1.5), rng.choice(["server", "client"]))
        for _ in range(rng.randint(1, 3) if rng else 0)
    )
    reruns, injected, due = 0, 0, None
    metrics = folder / "run" / "metrics.jsonl"
    process = client(folder / "run", f"http://127.0.0.1:{port}", folder / "client.log")
    try:
        while True:
            rc = process.poll()
            if rc is not None:
                if rc == 0 or reruns >= RERUNS:
                    break
                reruns += 1
                process = client(folder / "run", f"http://127.0.0.1:{port}", folder / "client.log")
            elif kills and due is None and len(read_json_lines(metrics)) >= kills[0][0]:
                due = time.monotonic() + kills[0][1]
            elif due is not None and time.monotonic() >= due:
                _, _, which = kills.pop(0)
                injected, due = injected + 1, None
                if which == "server":
                    server.kill()
                    server.start()
                else:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
            time.sleep(0.05)
    finally:
        server.kill()
        if process.poll() is None:
            process.kill()
    log = (folder / "client.log").read_text()
    injected += (folder / "server.log").read_text().count("weather: injected")
    checkpoint = last_checkpoint(folder / "run") if rc == 0 else None
    steps = saved_optimizer_steps(folder / "storage", checkpoint.state_path) if checkpoint else 0
    return Outcome(
        finished=rc == 0,
        applied_twice=max(steps - STEPS, 0),
        injected=injected,
        recovered=len(RECOVERED.findall(log)),
        reruns=reruns,
    )


def main(args: Args) -> None:
    out = Path(args.out)
    base = one_run(out / "undisturbed", None, None)
    if not base.finished or base.applied_twice:
        raise SystemExit(f"the undisturbed run failed; see {out / 'undisturbed'}")
    expected = read_json_lines(out / "undisturbed" / "run" / "metrics.jsonl")
    outcomes, equal = [], 0
    for i in range(args.runs):
        folder = out / f"run{i:03d}"
        outcome = one_run(folder, random.Random(f"{args.seed}:{i}"), args.weather)
        same = outcome.finished and same_run(
            read_json_lines(folder / "run" / "metrics.jsonl"), expected
        )
        outcomes.append(outcome)
        equal += same
        print(
            f"run {i:3d}: {'equal' if same else 'DIFFERENT'}, {outcome.injected} faults,"
            f" {outcome.recovered} recovered in process, {outcome.reruns} reruns",
            flush=True,
        )

    def total(field: str) -> int:
        return sum(getattr(outcome, field) for outcome in outcomes)

    print(
        f"soak: {args.runs} runs, {equal} equal to the undisturbed run, {total('applied_twice')}"
        f" steps applied twice, {total('injected')} faults injected, {total('recovered')}"
        f" recovered in process, {total('reruns')} resumed by rerun"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
