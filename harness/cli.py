"""`grpo_train_tinker.py`: flags in, a GRPO run out; user mistakes end in one line, not a trace."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import tyro
from rich.console import Console

from harness.backends import open_service_client
from harness.backends.replay import ReplayError, recorded_reward_fn
from harness.config import Config, ConfigError, resolve_backend, validate
from harness.cost import Price, PriceTableError, load_price_table
from harness.data import DatasetUnavailable, Problem, load_problems
from harness.estimate import EstimateError, format_plan, load_tokenizer, plan_run
from harness.evaluation import RewardFn
from harness.logger import RunLogger
from harness.loop import RunResult, train


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
        prices = load_price_table(config.price_table)
        train_problems = load_problems(config.dataset, "train", config.dataset_path)
        test_problems = load_problems(config.dataset, "test", config.dataset_path)
        if config.estimate_cost:
            return print_estimate(config, train_problems, test_problems, prices)
    except (ConfigError, DatasetUnavailable, PriceTableError, EstimateError) as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2

    warn_if_config_changed(config, console)
    backend = resolve_backend(config, os.environ)
    console.print(
        f"GRPO on {config.model_name} via the {backend} backend: {config.n_grpo_steps} steps of "
        f"{config.rollout_batch_size} questions x {config.group_size} samples; logs in "
        f"{config.log_path}",
        highlight=False,
    )
    logger = RunLogger(config, console)
    start = time.perf_counter()
    try:
        with (
            _interrupt_once(),
            open_service_client(config, os.environ, reward_fn) as service_client,
        ):
            result = train(
                config, service_client, train_problems, test_problems, logger, reward_fn, prices
            )
    except ReplayError as e:
        console.print(f"[bold red]replay error:[/] {e}", highlight=False)
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


@contextlib.contextmanager
def _interrupt_once() -> Iterator[None]:
    """The first Ctrl-C stops the run; later ones are ignored from then on: the teardown
    waits for the backend's request in flight, and a thread still in torch when the
    interpreter exits aborts the process (exit 134 instead of 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    yield
    signal.signal(signal.SIGINT, previous)  # not reached after a Ctrl-C: the process is leaving


def print_estimate(
    config: Config,
    train_problems: Sequence[Problem],
    test_problems: Sequence[Problem],
    prices: Mapping[str, Price],
) -> int:
    """`--estimate_cost`: the plan on stdout, and no client of any service is made."""
    tokenizer, note = load_tokenizer(config.model_name)
    plan = plan_run(config, tokenizer, train_problems, test_problems)
    print(format_plan(config, plan, note, prices.get(config.model_name)))
    return 0


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
    cost = f", ${final['cost/total_usd']:,.2f}" if "cost/total_usd" in final else ""
    console.print(
        f"done: {result.steps_run} steps in {seconds:.1f} s{resumed}; final validation accuracy "
        f"{final['val/accuracy']:.3f}, format accuracy {final['val/format_accuracy']:.3f}\n"
        f"  tokens:      {final['tokens/prefill_total']:,.0f} prefill, "
        f"{final['tokens/sampled_total']:,.0f} sampled, {final['tokens/trained_total']:,.0f} "
        f"trained (the whole run{cost})\n"
        f"  metrics:     {log_path / 'metrics.jsonl'}\n"
        f"  checkpoints: {log_path / 'checkpoints' / 'index.jsonl'}\n"
        f"  validation:  {log_path / 'eval'}/",
        highlight=False,
    )


if __name__ == "__main__":
    sys.exit(main())
