"""`grpo_train_tinker.py`: flags in, a GRPO run out; user mistakes end in one line, not a trace."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import tyro
from rich.console import Console

from harness.backends import open_service_client, scores_hook
from harness.backends.replay import ReplayError, recorded_header, recorded_reward_fn
from harness.config import Config, ConfigError, resolve_backend, validate
from harness.data import BatchCursor, DatasetUnavailable, Problem, load_problems, next_batch
from harness.evaluation import RewardFn
from harness.logger import RunLogger
from harness.loop import RunResult, train
from harness.plugins import (
    PluginError,
    RunFunctions,
    changed_since_recording,
    load_run_functions,
    preflight,
)


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Flags as the original README writes them: `--flag=value`, booleans as True/False."""
    return tyro.cli(Config, args=argv, config=(tyro.conf.FlagConversionOff,), use_underscores=True)


def main(argv: Sequence[str] | None = None, reward_fn: RewardFn | None = None) -> int:
    """Parse, validate, run. `reward_fn` replaces the training reward (tests use this seam)."""
    config = parse_config(argv)
    console = Console(stderr=True, soft_wrap=True)
    try:
        validate(config)
        if reward_fn is None and config.backend == "replay":
            reward_fn = recorded_reward_fn(config.cassette)
        train_problems = load_problems(config.dataset, "train", config.dataset_path)
        test_problems = load_problems(config.dataset, "test", config.dataset_path)
        functions = load_run_functions(config)
        # Before any client exists: a plugged function that cannot run costs nothing.
        warnings = preflight(functions, config, first_ground_truths(config, train_problems))
        if config.backend == "replay":
            warnings += changed_since_recording(
                functions, recorded_header(config.cassette).get("plugged") or {}
            )
    except (ConfigError, DatasetUnavailable) as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)

    warn_if_config_changed(config, console)
    backend = resolve_backend(config, os.environ)
    console.print(
        f"GRPO on {config.model_name} via the {backend} backend: {config.n_grpo_steps} steps of "
        f"{config.rollout_batch_size} questions x {config.group_size} samples; logs in "
        f"{config.log_path}",
        highlight=False,
    )
    console.print(describe_functions(functions, reward_fn), highlight=False)
    logger = RunLogger(config, console)
    start = time.perf_counter()
    try:
        with open_service_client(
            config, os.environ, reward_fn, plugged=functions.header()
        ) as service_client:
            result = train(
                config, service_client, train_problems, test_problems, logger,
                functions.training_reward() or reward_fn,
                eval_reward_fn=functions.validation_reward(),
                advantages_fn=functions.advantages(),
                on_scores=scores_hook(service_client),
            )  # fmt: skip
    except ReplayError as e:
        console.print(f"[bold red]replay error:[/] {e}", highlight=False)
        return 1
    except PluginError as e:  # a plugged function that passed the probe fails on real data
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print(
            "interrupted: rerun the same command to resume from the last checkpoint in "
            f"{Path(config.log_path) / 'checkpoints'}",
            highlight=False,
        )
        return 130
    finally:
        logger.close()
    print_summary(config, result, time.perf_counter() - start, console)
    return 0


def first_ground_truths(config: Config, train_problems: Sequence[Problem]) -> list[str]:
    """The ground truths of the first batch's first questions, for probing rewards."""
    indices, _ = next_batch(
        BatchCursor(), len(train_problems), config.rollout_batch_size, config.seed
    )
    return [train_problems[i].ground_truth for i in indices[:4]]


def describe_functions(functions: RunFunctions, reward_fn: RewardFn | None) -> str:
    """Which reward each metric comes from, and what computes the advantages."""
    task = "the task's gsm8k_reward_fn"
    seam = getattr(reward_fn, "__qualname__", None)
    training = functions.reward_fn.name if functions.reward_fn else seam or task
    validation = functions.eval_reward_fn.name if functions.eval_reward_fn else task
    advantages = (
        functions.adapters.name if functions.adapters else "harness.grpo"
    ) + " (the loss stays Tinker's ppo)"
    return f"  reward/* from {training}; val/* from {validation}; advantages from {advantages}"


def warn_if_config_changed(config: Config, console: Console) -> None:
    """Keep the run's config beside its logs; say so when a resumed run changes it."""
    path = Path(config.log_path) / "config.json"
    current = dataclasses.asdict(config)
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in current if previous.get(k) != current[k])
        if changed:
            console.print(
                "[yellow]warning:[/] this log_path was started with other values of "
                + ", ".join(f"--{k} (was {previous.get(k)!r})" for k in changed),
                highlight=False,
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def print_summary(config: Config, result: RunResult, seconds: float, console: Console) -> None:
    log_path = Path(config.log_path)
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    final = result.final_metrics
    console.print(
        f"done: {result.steps_run} steps in {seconds:.1f} s{resumed}; final validation accuracy "
        f"{final['val/accuracy']:.3f}, format accuracy {final['val/format_accuracy']:.3f}\n"
        f"  metrics:     {log_path / 'metrics.jsonl'}\n"
        f"  checkpoints: {log_path / 'checkpoints' / 'index.jsonl'}\n"
        f"  validation:  {log_path / 'eval'}/",
        highlight=False,
    )


if __name__ == "__main__":
    sys.exit(main())
