"""Where a run's numbers go: `metrics.jsonl`, optionally Weights & Biases, and the terminal."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.config import Config
from harness.jsonl import (
    append_json_line,
    read_json_lines,
    rewrite_json_lines,
    unreadable_lines,
)

STEP_KEY = "progress/grpo_step"


class RunLogger:
    """Appends one row per step to `{log_path}/metrics.jsonl` (and W&B), prints a line per step."""

    def __init__(self, config: Config, console: Console | None = None) -> None:
        self.log_path = Path(config.log_path)
        self.metrics_path = self.log_path / "metrics.jsonl"
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.n_steps = config.n_grpo_steps
        self._wandb_run = _start_wandb(config, self.log_path) if config.wandb_project else None

    def drop_rows_from(self, step: int) -> None:
        """Forget rows of steps >= `step`: a resumed run logs them again. A line that does not
        read as JSON is not thrown away with them but kept aside, and said."""
        if self.metrics_path.exists():
            unreadable = unreadable_lines(self.metrics_path)
            if unreadable:
                aside = self.metrics_path.with_name("metrics.unreadable.txt")
                with aside.open("a", encoding="utf-8") as f:
                    f.writelines(text + "\n" for _, text in unreadable)
                numbers = ", ".join(str(number) for number, _ in unreadable)
                self.warn(
                    f"{self.metrics_path}: line {numbers} does not read as JSON (cut short by a"
                    f" kill?); kept in {aside}"
                )
            rows = read_json_lines(self.metrics_path)
            rewrite_json_lines(self.metrics_path, [row for row in rows if row[STEP_KEY] < step])

    def log(self, row: dict[str, float]) -> None:
        append_json_line(self.metrics_path, row)
        if self._wandb_run is not None:
            self._wandb_run.log(row, step=int(row[STEP_KEY]))
        self.console.print(_one_line(row, self.n_steps), highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False)

    def write_eval_samples(self, step: int, records: Sequence[dict[str, Any]]) -> Path:
        path = self.log_path / "eval" / f"step_{step:06d}.jsonl"
        rewrite_json_lines(path, list(records))
        return path

    def collect(self, futures: Sequence[Any], description: str) -> list[Any]:
        return collect_with_progress(futures, description, self.console)

    @contextlib.contextmanager
    def progress(self, totals: Mapping[str, int]) -> Iterator[Callable[..., None]]:
        """One bar per phase, shown at once (e.g. sampling and training of a streamed step);
        yields `advance(name, n=1)`."""
        with _progress(self.console) as progress:
            tasks = {name: progress.add_task(name, total=total) for name, total in totals.items()}
            yield lambda name, n=1: progress.advance(tasks[name], n)

    def close(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()


def _one_line(row: dict[str, float], n_steps: int) -> str:
    parts = [f"step {int(row[STEP_KEY]):>4}/{n_steps}"]
    if "reward/mean" in row:
        parts.append(f"reward {row['reward/mean']:.3f}")
    if "val/accuracy" in row:
        parts.append(f"val acc {row['val/accuracy']:.3f} (format {row['val/format_accuracy']:.3f})")
    if "time/total" in row:
        parts.append(f"{row['time/total']:.1f} s")
    return " | ".join(parts)


def _start_wandb(config: Config, log_path: Path) -> Any:
    import wandb

    log_path.mkdir(parents=True, exist_ok=True)
    id_file = log_path / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(
        project=config.wandb_project,
        name=config.wandb_name,
        id=run_id,
        resume="allow",
        dir=str(log_path),
        config=dataclasses.asdict(config),
    )


def collect_with_progress(futures: Sequence[Any], description: str, console: Console) -> list[Any]:
    """Wait on futures in order, with a progress bar on a terminal."""
    with _progress(console) as progress:
        task = progress.add_task(description, total=len(futures))
        results = []
        for future in futures:
            results.append(future.result())
            progress.advance(task)
    return results


def _progress(console: Console) -> Progress:
    """Progress bars on a terminal (elsewhere they would leave an empty line in the log)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
