"""`grpo_train_tinker.py`: flags in, a GRPO run out; user mistakes end in one line, not a trace."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
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

from harness.backends import check_reachable, open_service_client, scores_hook
from harness.backends.cassette import CassetteError, recorded_flags
from harness.backends.replay_service import ReplayError, recorded_header, recorded_reward_fn
from harness.checkpoints import RunStateError, checkpoints
from harness.config import (
    RESUMABLE_CHANGES,
    Config,
    ConfigError,
    check_config,
    config_changes,
    resolve_backend,
    with_implied_format,
)
from harness.cost import Price, PriceTableError, load_price_table
from harness.data import BatchCursor, DatasetUnavailable, Problem, load_problems, next_batch
from harness.estimate import EstimateError, format_plan, load_tokenizer, plan_run
from harness.jsonl import write_atomically
from harness.logger import RunLogger
from harness.loop import RunResult, train
from harness.objectives import tinker_loss
from harness.plugins import (
    PluginError,
    RunFunctions,
    changed_since_recording,
    load_run_functions,
    preflight,
)
from harness.resilience import RunFailed
from harness.rewards import RewardFn


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Flags as the original README writes them: `--flag=value`, booleans as True/False."""
    config = tyro.cli(
        Config, args=argv, config=(tyro.conf.FlagConversionOff,), use_underscores=True
    )
    flags = sys.argv[1:] if argv is None else argv
    given = any(f.split("=")[0] == "--use_r1_zero_format" for f in flags)
    return with_implied_format(config, format_flag_given=given)


def main(argv: Sequence[str] | None = None, reward_fn: RewardFn | None = None) -> int:
    """Parse, check, run. `reward_fn` replaces the training reward (tests use this seam)."""
    config = parse_config(argv)
    console = Console(stderr=True, soft_wrap=True)
    try:
        check_config(config)
        if reward_fn is None and config.reward_fn is None and config.backend == "replay":
            # The recorded run's reward, unless --reward_fn replaces it anyway.
            reward_fn = recorded_reward_fn(config.cassette)
        prices = load_price_table(config.price_table)
        train_problems = load_problems(config.dataset, "train", config.dataset_path)
        test_problems = load_problems(config.dataset, "test", config.dataset_path)
        if config.estimate_cost:
            return print_estimate(config, train_problems, test_problems, prices)
        check_resumed_config(config, console)
        if resolve_backend(config, os.environ) == "tinker":
            check_reachable(config.base_url)
        functions = load_run_functions(config)
        # Before any client exists: a plugged function that cannot run costs nothing.
        warnings = preflight(functions, config, first_ground_truths(config, train_problems))
        if config.backend == "replay":
            header = recorded_header(config.cassette)
            warnings += changed_since_recording(functions, header.get("plugged") or {})
            # A replay takes the calls in the order they were made.
            recorded = recorded_flags(header)["stream_training"]
            config = dataclasses.replace(config, stream_training=recorded)
    except (
        ConfigError,
        DatasetUnavailable,
        RunStateError,
        PriceTableError,
        EstimateError,
        CassetteError,
    ) as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    save_config(config)  # only now: a run refused above leaves its folder as it was

    backend = resolve_backend(config, os.environ)
    console.print(
        f"GRPO on {config.model_name} via the {backend} backend: {config.n_grpo_steps} steps of "
        f"{config.rollout_batch_size} questions x {config.group_size} samples; logs in "
        f"{config.log_path}",
        highlight=False,
    )
    console.print(describe_functions(functions, reward_fn, config), highlight=False)
    logger = RunLogger(config, console)
    start = time.perf_counter()
    try:
        with (
            _interrupt_once(),
            open_service_client(
                config, os.environ, reward_fn, plugged=functions.header()
            ) as service_client,
        ):
            result = train(
                config, service_client, train_problems, test_problems, logger,
                functions.training_reward() or reward_fn,
                prices=prices,
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
    except RunFailed as e:
        console.print(
            f"[bold red]error:[/] the run stopped: {e}\n  its state is saved: rerun the same"
            f" command to resume from {Path(config.log_path) / 'checkpoints'}",
            highlight=False,
        )
        return 1
    except (RunStateError, CassetteError) as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        console.print(
            f"[bold red]error:[/] no space left writing {e.filename or 'the run folder'}; free"
            " space and rerun the same command to resume",
            highlight=False,
        )
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


def first_ground_truths(config: Config, train_problems: Sequence[Problem]) -> list[str]:
    """The ground truths of the first batch's first questions, for probing rewards."""
    indices, _ = next_batch(
        BatchCursor(), len(train_problems), config.rollout_batch_size, config.seed
    )
    return [train_problems[i].ground_truth for i in indices[:4]]


def describe_functions(functions: RunFunctions, reward_fn: RewardFn | None, config: Config) -> str:
    """Which reward each metric comes from, what computes the advantages, and the loss."""
    task = "the task's gsm8k_reward_fn"
    seam = getattr(reward_fn, "__qualname__", None)
    training = functions.reward_fn.name if functions.reward_fn else seam or task
    validation = functions.eval_reward_fn.name if functions.eval_reward_fn else task
    loss = tinker_loss(config.loss_type, config.cliprange).loss_fn
    advantages = (functions.adapters.name if functions.adapters else "harness.grpo") + (
        f" (the loss stays Tinker's {loss})"
        if config.loss_type == "grpo_clip"
        else f" (--loss_type={config.loss_type}: Tinker's {loss})"
    )
    return f"  reward/* from {training}; val/* from {validation}; advantages from {advantages}"


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


def check_resumed_config(config: Config, console: Console) -> None:
    """Resuming a run with another value of a flag that changes what a step means is refused
    (ConfigError) with every such difference; the flags that may change are noted."""
    path = Path(config.log_path) / "config.json"
    if path.exists() and checkpoints(config.log_path):
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(previous, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{path} is empty or not JSON ({e}): restore it, or delete it to resume with"
                " the flags given now"
            ) from None
        changes = config_changes(previous, config)
        refused = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
        if refused:
            raise ConfigError(
                f"{config.log_path} holds a run started with other values of flags that change"
                " what a step means: "
                + ", ".join(
                    f"--{k} (was {was!r}, now {now!r})" for k, (was, now) in refused.items()
                )
                + "; rerun with the run's values, or pass a new --log_path"
            )
        if changes:
            console.print(
                "note: resuming with "
                + ", ".join(f"--{k}={now} (was {was!r})" for k, (was, now) in changes.items()),
                highlight=False,
            )


def save_config(config: Config) -> None:
    write_atomically(
        Path(config.log_path) / "config.json",
        json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True) + "\n",
    )


def print_summary(config: Config, result: RunResult, seconds: float, console: Console) -> None:
    log_path = Path(config.log_path)
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    final = result.final_metrics
    cost = f", ${final['cost/total_usd']:,.2f}" if "cost/total_usd" in final else ""
    faults = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(result.faults.items()))
    console.print(
        f"done: {result.steps_run} steps in {seconds:.1f} s{resumed}; final validation accuracy "
        f"{final['val/accuracy']:.3f}, format accuracy {final['val/format_accuracy']:.3f}\n"
        f"  tokens:      {final['tokens/prefill_total']:,.0f} prefill, "
        f"{final['tokens/sampled_total']:,.0f} sampled, {final['tokens/trained_total']:,.0f} "
        f"trained (the whole run{cost})\n"
        f"  faults:      {faults or 'none'} (recovered in process)\n"
        f"  metrics:     {log_path / 'metrics.jsonl'}\n"
        f"  checkpoints: {log_path / 'checkpoints' / 'index.jsonl'}\n"
        f"  validation:  {log_path / 'eval'}/",
        highlight=False,
    )


if __name__ == "__main__":
    sys.exit(main())
