"""Re-record the golden cassettes in fixtures/cassettes/ (local backend, the tiny fixture model).

python scripts/record_golden_cassettes.py [NAME ...]

Each cassette is a few steps of the smoke configuration on the warm-started tiny-arith model and
its arithmetic task, with the task's own reward: the warm start answers some questions right, so
groups have reward variance and the cassette holds real forward_backward and optim_step calls,
and a replay needs nothing but the harness. Each cassette is then replayed, the replay's metrics
must equal the recorded run's (timings aside), and they are written beside the cassette as
NAME.metrics.jsonl for the replay tests. Recording is deterministic (fixed seeds, CPU) up to run
ids, sequence ids and latencies.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from harness.backends.cassette import read_cassette
from harness.backends.cassette_compare import request_changes
from harness.cli import main
from harness.jsonl import read_json_lines, rewrite_json_lines
from harness.metrics import without_timings

REPO = Path(__file__).resolve().parent.parent
CASSETTES = Path("fixtures/cassettes")
SMOKE = [
    "--n_grpo_steps=4",
    "--rollout_batch_size=8",
    "--group_size=2",
    "--save_every=2",
    "--eval_every=2",
    "--sampling_max_tokens=48",
    "--eval_n=4",
    "--learning_rate=1e-3",
    # The order they were recorded in (a replay takes training calls in recorded order, and
    # the sampling between them): validation before the rollouts, not after their training.
    "--stream_training=False",
]
# name: (model, flags)
GOLDEN = {
    "smoke": ("fixtures/tiny-arith", ["--dataset=arith", "--use_r1_zero_format=False", *SMOKE]),
}


def run(flags: list[str], log_path: Path) -> float:
    shutil.rmtree(log_path, ignore_errors=True)
    start = time.perf_counter()
    if main([*flags, f"--log_path={log_path}"]) != 0:
        raise SystemExit(f"the run failed: {' '.join(flags)}")
    return time.perf_counter() - start


def record(name: str, model: str, flags: list[str]) -> None:
    cassette = CASSETTES / f"{name}.jsonl"
    before = read_cassette(cassette).calls if cassette.exists() else None
    cassette.unlink(missing_ok=True)  # else the recorder keeps it as NAME.1.jsonl
    flags = [f"--model_name={model}", *flags]
    recorded, replayed = Path("runs") / f"golden-{name}", Path("runs") / f"golden-{name}-replay"
    record_s = run([*flags, "--backend=local", f"--record_cassette={cassette}"], recorded)
    replay_s = run([*flags, "--backend=replay", f"--cassette={cassette}"], replayed)
    expected = without_timings(read_json_lines(recorded / "metrics.jsonl"))
    if without_timings(read_json_lines(replayed / "metrics.jsonl")) != expected:
        raise SystemExit(f"{cassette}: the replay's metrics differ from the recorded run's")
    rewrite_json_lines(CASSETTES / f"{name}.metrics.jsonl", expected)
    for log_path in (recorded, replayed):
        shutil.rmtree(log_path)
    print(
        f"{cassette}: {cassette.stat().st_size / 1024:.0f} KiB; run {record_s:.2f} s,"
        f" replay {replay_s:.2f} s ({record_s / replay_s:.0f}x faster)"
    )
    if before is None:
        print("  (no previous recording to compare with)")
        return
    changes = request_changes(before, read_cassette(cassette).calls)
    print("  requests changed against the previous recording:" if changes else
          "  no request changed against the previous recording")  # fmt: skip
    for line in changes:
        print(f"    {line}")


if __name__ == "__main__":
    os.chdir(REPO)  # paths in the cassettes are relative to the repository, none of this machine
    names = sys.argv[1:] or list(GOLDEN)
    for name in names:
        record(name, *GOLDEN[name])
