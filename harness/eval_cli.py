"""`evaluate.py`: a base model, a sampler checkpoint or a whole run, on the test split, with
95% intervals; and two evaluations compared, paired over their questions.

It samples, scores and records through `harness.evaluation`, as the loop's validation does, and
talks to the same backends (recordable, replayable) through `open_service_client`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tinker
import tyro
from rich.console import Console
from rich.table import Table

from harness import stats
from harness.backends import open_service_client
from harness.backends.replay_service import ReplayError
from harness.checkpoints import checkpoint_name, index_path
from harness.config import (
    Backend,
    Config,
    ConfigError,
    Dataset,
    check_config,
    check_eval_sampling,
    resolve_backend,
)
from harness.data import DatasetUnavailable, load_problems
from harness.evaluation import (
    Question,
    Sampling,
    estimates,
    evaluate,
    per_question,
    validation_subset,
)
from harness.jsonl import read_json_lines, rewrite_json_lines
from harness.logger import STEP_KEY, collect_with_progress
from harness.plugins import check_reward, load_function
from harness.prompts import PromptName, answers_in_tags, effective_prompt
from harness.rewards import RewardFn, make_reward_fn

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
# Flags a run folder's config.json supplies when not given.
FROM_RUN = (
    "model_name",
    "base_url",
    "backend",
    "dataset",
    "dataset_path",
    "use_r1_zero_format",
    "prompt",
    "sampling_max_tokens",
    "seed",
    "eval_reward_fn",
)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluate a base model, a tinker:// sampler checkpoint, or every checkpoint of a run on
    the test split; or compare two evaluations. Flags left unset take the --run's values, else
    the training script's defaults."""

    run: str | None = None
    """A training run's --log_path: evaluate its base model and every checkpoint in it."""
    checkpoint: str | None = None
    """A sampler checkpoint (tinker://.../sampler_weights/NAME) to evaluate."""
    compare: tuple[str, ...] = ()
    """Two evaluation folders (holding samples.jsonl): print B - A, paired over questions."""
    num_samples: int = 1
    """Answers per question (more than 1 needs --temperature > 0): mean accuracy, pass@k, maj@k."""
    temperature: float = 0.0
    """Sampling temperature (0: greedy)."""
    eval_n: int | None = None
    """Evaluate the run's seeded validation subset of this size (default: the whole test split)."""
    log_path: str | None = None
    """Where the evaluations go (default: {run}/evaluation, else /tmp/grpo-eval)."""
    storage_dir: str | None = None
    """Local backends: where tinker:// checkpoints live (default: {run}/tinker-storage)."""

    model_name: str | None = None
    """Base model (default: the run's, else Qwen/Qwen3-8B)."""
    base_url: str | None = None
    """Tinker API base URL."""
    backend: Backend | None = None
    """auto, tinker, local, local-server, or replay (with --cassette)."""
    dataset: Dataset | None = None
    """gsm8k or arith."""
    dataset_path: str | None = None
    """Folder with GSM8K train.jsonl and test.jsonl."""
    use_r1_zero_format: bool | None = None
    """R1-Zero prompt; False: plain prompt with \\boxed{}."""
    prompt: PromptName | None = None
    """r1_zero, question_only or boxed (default: the run's, else what --use_r1_zero_format
    names)."""
    sampling_max_tokens: int | None = None
    """Max tokens per answer."""
    seed: int | None = None
    """The validation subset (with --eval_n), sampling seeds and bootstrap resamples."""
    eval_reward_fn: str | None = None
    """The reward to score with, module:function or PATH.py:function (default: the run's
    validation reward, else the task's gsm8k_reward_fn)."""
    record_cassette: str | None = None
    """Record every client call to this JSONL file."""
    cassette: str | None = None
    """With --backend=replay: the cassette to answer from."""
    replay_realtime: bool = False
    """With --backend=replay: sleep the recorded latencies."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One model to evaluate: the base model (no path) or a sampler checkpoint."""

    name: str
    step: int
    path: str | None


def parse_eval_config(argv: Sequence[str] | None = None) -> EvalConfig:
    return tyro.cli(
        EvalConfig, args=argv, config=(tyro.conf.FlagConversionOff,), use_underscores=True
    )


def resolved(config: EvalConfig) -> EvalConfig:
    """Every unset shared flag filled: from the run's config.json, else the training default."""
    recorded: dict[str, Any] = {}
    if config.run is not None:
        path = Path(config.run) / "config.json"
        if not path.is_file():
            raise ConfigError(f"--run={config.run}: no config.json there (not a run's log_path)")
        recorded = json.loads(path.read_text())
        if recorded.get("backend") == "replay":  # a replay's checkpoints were never written
            recorded["backend"] = "auto"
    if config.prompt is not None and config.use_r1_zero_format is None:
        config = dataclasses.replace(config, use_r1_zero_format=answers_in_tags(config.prompt))
    defaults = Config()
    filled = {
        name: recorded.get(name, getattr(defaults, name))
        for name in FROM_RUN
        if getattr(config, name) is None
    }
    if config.log_path is None:
        filled["log_path"] = f"{config.run}/evaluation" if config.run else "/tmp/grpo-eval"
    return dataclasses.replace(config, **filled)


def check(config: EvalConfig) -> None:
    """The training script's checks of the shared flags, then the evaluation's own."""
    check_config(
        Config(
            **{name: getattr(config, name) for name in FROM_RUN},
            eval_n=config.eval_n or 1,
            record_cassette=config.record_cassette,
            cassette=config.cassette,
        )
    )
    if config.num_samples <= 0:
        raise ConfigError(f"--num_samples must be positive, got {config.num_samples}")
    check_eval_sampling(config.num_samples, config.temperature, prefix="")
    if config.eval_n is not None and config.eval_n <= 0:
        raise ConfigError(f"--eval_n must be positive, got {config.eval_n}")
    if config.run is not None and config.checkpoint is not None:
        raise ConfigError("--run evaluates every checkpoint of a run; drop --checkpoint or --run")
    if config.checkpoint is not None and not config.checkpoint.startswith("tinker://"):
        raise ConfigError(
            f"--checkpoint={config.checkpoint}: not a tinker:// path (a run's sampler weights "
            "are in its checkpoints/index.jsonl, or pass the run folder as --run)"
        )


def targets(config: EvalConfig) -> list[Target]:
    """The models to evaluate, in order of training steps."""
    if config.checkpoint is not None:
        return [Target(config.checkpoint.rstrip("/").rsplit("/", 1)[-1], 0, config.checkpoint)]
    base = [Target("base", 0, None)]
    if config.run is None:
        return base
    rows = read_json_lines(index_path(config.run))
    if not rows:
        raise ConfigError(f"--run={config.run}: no checkpoints in {index_path(config.run)}")
    return base + [
        Target(checkpoint_name(int(r["step"])), int(r["step"]), r["sampler_path"]) for r in rows
    ]


def validation_reward(
    config: EvalConfig, test_problems: Sequence[Any]
) -> tuple[dict[str, Any] | None, RewardFn, list[str]]:
    """The reward the run validated with (--eval_reward_fn, probed on real ground truths as
    the training script does before any paid call), else the task's; what a cassette's header
    records of a plugged one; and the probe's warnings."""
    if config.eval_reward_fn is None:
        return None, make_reward_fn(config.use_r1_zero_format), []
    plugged = load_function("--eval_reward_fn", config.eval_reward_fn)
    truths = [p.ground_truth for p in test_problems[:4]]
    warnings = check_reward(plugged, truths, config.use_r1_zero_format)
    return {"eval_reward_fn": plugged.header()}, plugged.reward(), warnings


def storage_dir(config: EvalConfig) -> Path | None:
    if config.storage_dir is not None:
        return Path(config.storage_dir)
    return Path(config.run) / "tinker-storage" if config.run is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_eval_config(argv)
    console, errors = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    if not console.is_terminal:  # a file or pipe: tables at full width, not squeezed into 80
        console.width = 200
    if config.compare:
        return compare_main(config.compare, console, errors)
    try:
        config = resolved(config)
        check(config)
        test_problems = load_problems(config.dataset, "test", config.dataset_path)
        chosen = targets(config)
        plugged, reward_fn, warnings = validation_reward(config, test_problems)
    except (ConfigError, DatasetUnavailable) as e:
        errors.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    for warning in warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False)
    indices = (
        validation_subset(len(test_problems), config.eval_n, config.seed)
        if config.eval_n is not None
        else list(range(len(test_problems)))
    )
    questions = [(i, test_problems[i]) for i in indices]
    console.print(
        f"evaluating {', '.join(t.name for t in chosen)} of {config.model_name} via the "
        f"{resolve_backend(config, os.environ)} backend on {len(questions)} {config.dataset} "
        f"test questions x {config.num_samples} answer(s) at temperature {config.temperature}; "
        f"results in {config.log_path}",
        highlight=False,
    )
    summaries: list[dict[str, Any]] = []
    try:
        with open_service_client(
            config, os.environ, plugged=plugged, storage_dir=storage_dir(config)
        ) as service:
            for target in chosen:
                summaries.append(
                    evaluate_target(config, service, target, questions, reward_fn, console)
                )
    except ConfigError as e:  # a checkpoint not found; a plugged reward failing on real data
        errors.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except ReplayError as e:
        errors.print(f"[bold red]replay error:[/] {e}", highlight=False)
        return 1
    except KeyboardInterrupt:
        errors.print(f"interrupted: evaluations finished so far are in {config.log_path}")
        return 130
    if len(summaries) > 1:
        print_steps(summaries, config, console)
        first, last = (Path(config.log_path) / s["name"] for s in (summaries[0], summaries[-1]))
        print_comparison(first, last, console)
    return 0


def evaluate_target(
    config: EvalConfig,
    service: Any,
    target: Target,
    questions: Sequence[Question],
    reward_fn: RewardFn,
    console: Console,
) -> dict[str, Any]:
    """Sample, score and record one model; write its samples and summary; print the summary."""
    start = time.perf_counter()
    client = sampling_client(service, config, target)
    sampling = Sampling(
        max_tokens=config.sampling_max_tokens,
        num_samples=config.num_samples,
        temperature=config.temperature,
        seed=config.seed,
        step=target.step,
    )
    records = evaluate(
        client,
        client.get_tokenizer(),
        questions,
        reward_fn,
        effective_prompt(config.prompt, config.use_r1_zero_format),
        sampling,
        collect=lambda futures, what: collect_with_progress(futures, what, console),
        description=target.name,
    )
    found = estimates(per_question(records), config.num_samples, config.seed)
    summary = {
        "name": target.name,
        "step": target.step,
        "checkpoint": target.path,
        **{k: getattr(config, k) for k in (*FROM_RUN, "eval_n")},
        "n_questions": len(questions),
        "num_samples": config.num_samples,
        "temperature": config.temperature,
        "metrics": {name: dataclasses.asdict(e) for name, e in found.items()},
        "seconds": round(time.perf_counter() - start, 3),
    }
    folder = Path(config.log_path) / target.name
    rewrite_json_lines(folder / SAMPLES, records)
    (folder / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    console.print(
        f"{target.name}: "
        + ", ".join(f"{name} {interval_text(e)}" for name, e in found.items())
        + f" ({summary['seconds']:.1f} s; {folder})",
        highlight=False,
    )
    return summary


def sampling_client(service: Any, config: EvalConfig, target: Target) -> Any:
    """The target's sampler; a checkpoint the backend cannot find is a user mistake."""
    if target.path is None:
        return service.create_sampling_client(base_model=config.model_name).result()
    try:
        return service.create_sampling_client(model_path=target.path).result()
    except (FileNotFoundError, tinker.NotFoundError, tinker.RequestFailedError) as e:
        hint = "; with a local backend, --storage_dir names the tinker-storage/ folder holding it"
        raise ConfigError(f"--checkpoint={target.path}: {e}{hint}") from None


def interval_text(estimate: stats.Estimate) -> str:
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def print_steps(summaries: list[dict[str, Any]], config: EvalConfig, console: Console) -> None:
    """The accuracy-vs-step table (with the run's own validation where it logged one at that
    step) and its plot."""
    in_loop, caption = {}, None
    if config.run is not None and (Path(config.run) / "metrics.jsonl").is_file():
        rows = read_json_lines(Path(config.run) / "metrics.jsonl")
        in_loop = {int(r[STEP_KEY]): r["val/accuracy"] for r in rows if "val/accuracy" in r}
        eval_n = json.loads((Path(config.run) / "config.json").read_text()).get("eval_n")
        caption = f"in-run val: the run's own val/accuracy on its {eval_n} validation questions"
    names = headline(summaries[0])
    title = f"{summaries[0]['n_questions']} test questions, 95% intervals"
    table = Table(title=title, caption=caption)
    for column in ("step", *names, "in-run val"):
        table.add_column(column, justify="right")
    for summary in summaries:
        cells = [interval_text(stats.Estimate(**summary["metrics"][n])) for n in names]
        loop = in_loop.get(summary["step"])
        table.add_row(str(summary["step"]), *cells, "" if loop is None else f"{loop:.3f}")
    console.print(table)
    out = plot_steps(summaries, Path(config.log_path) / "accuracy_vs_step.png")
    console.print(f"plot: {out}", highlight=False)


def headline(summary: dict[str, Any]) -> list[str]:
    """The metrics a table or plot shows: accuracy and format accuracy, and with k answers per
    question pass@k and maj@k (every pass@k' is in the summaries)."""
    k = summary["num_samples"]
    extra = [f"pass@{k}", f"maj@{k}"] if k > 1 else []
    return ["accuracy", "format_accuracy", *extra]


def plot_steps(summaries: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    steps = [s["step"] for s in summaries]
    figure, axes = plt.subplots(figsize=(6, 4))
    for name in headline(summaries[0]):
        values = [stats.Estimate(**s["metrics"][name]) for s in summaries]
        axes.plot(steps, [e.value for e in values], "o-", label=name)
        axes.fill_between(
            steps, [e.low for e in values], [e.high for e in values], alpha=0.2, linewidth=0
        )
    axes.set_xlabel("GRPO step")
    axes.set_ylabel(f"on {summaries[0]['n_questions']} test questions (95% interval)")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out


def compare_main(folders: Sequence[str], console: Console, errors: Console) -> int:
    try:
        if len(folders) != 2:
            raise ConfigError(f"--compare takes two folders, got {len(folders)}")
        print_comparison(Path(folders[0]), Path(folders[1]), console)
    except ConfigError as e:
        errors.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    return 0


def paired_differences(
    a_records: Sequence[dict[str, Any]], b_records: Sequence[dict[str, Any]], seed: int
) -> dict[str, tuple[float, float, stats.Estimate]]:
    """For each metric both evaluations have: A's value, B's, and B - A with its interval."""
    if sorted({r["index"] for r in a_records}) != sorted({r["index"] for r in b_records}):
        raise ConfigError("the two evaluations answered different questions; pair only the same")
    a, b = per_question(a_records), per_question(b_records)
    return {
        name: (
            float(a[name].mean()),
            float(b[name].mean()),
            stats.paired_difference(a[name], b[name], np.random.default_rng(seed)),
        )
        for name in a
        if name in b
    }


def print_comparison(a: Path, b: Path, console: Console) -> None:
    for folder in (a, b):
        if not (folder / SAMPLES).is_file():
            raise ConfigError(f"--compare: {folder} holds no {SAMPLES} (an evaluation's folder)")
    seed = json.loads((b / SUMMARY).read_text()).get("seed") or 0
    found = paired_differences(read_json_lines(a / SAMPLES), read_json_lines(b / SAMPLES), seed)
    table = Table(title=f"{b.name} - {a.name}, paired over questions (95% bootstrap interval)")
    for column in ("metric", a.name, b.name, "difference"):
        table.add_column(column, justify="right")
    for name, (value_a, value_b, d) in found.items():
        signed = f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
        table.add_row(name, f"{value_a:.3f}", f"{value_b:.3f}", signed)
    console.print(table)
