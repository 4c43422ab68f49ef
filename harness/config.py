"""The run's configuration: one typed object, built once from the command line, validated once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

Backend = Literal["auto", "tinker", "local", "local-server", "replay"]
Dataset = Literal["gsm8k", "arith"]


class ConfigError(ValueError):
    """A user mistake in the configuration; its message is one line, fit to print as is."""


@dataclasses.dataclass(frozen=True)
class Config:
    """On-policy GRPO-Clip on GSM8K through the Tinker training API."""

    # Model and service.
    model_name: str = "Qwen/Qwen3-8B"
    """Base model: a Tinker model name, or (local backend) a Hugging Face model directory."""
    base_url: str | None = None
    """Tinker API base URL (default: the SDK's, with TINKER_API_KEY)."""
    lora_rank: int = 32
    """LoRA rank."""
    backend: Backend = "auto"
    """auto: tinker when TINKER_API_KEY is set or --base_url is given, else local.
    local-server: the local backend behind a Tinker-protocol server on 127.0.0.1, real SDK.
    replay: answer every call from --cassette."""

    # Training hyperparameters.
    n_grpo_steps: int = 200
    """Number of GRPO steps."""
    learning_rate: float = 1e-5
    """AdamW learning rate."""
    rollout_batch_size: int = 256
    """Questions per step."""
    group_size: int = 8
    """Samples per question."""

    # GRPO.
    advantage_eps: float = 1e-6
    """Epsilon added to the group std when normalising."""
    use_std_normalization: bool = True
    """Divide advantages by the group std."""
    cliprange: float = 0.2
    """PPO clip range c: ratios are clipped to [1 - c, 1 + c]."""

    # Sampling.
    sampling_temperature: float = 1.0
    """Rollout sampling temperature."""
    sampling_max_tokens: int = 1024
    """Max tokens per sampled response."""
    use_r1_zero_format: bool = True
    """R1-Zero prompt with <think></think><answer></answer>; False: plain prompt with \\boxed{}."""

    # Data and validation.
    dataset: Dataset = "gsm8k"
    """gsm8k, or arith: seeded GSM8K-style arithmetic word problems (offline, no files needed)."""
    dataset_path: str | None = None
    """Folder with train.jsonl and test.jsonl (GSM8K rows); default: openai/gsm8k from the hub."""
    eval_n: int = 100
    """Number of test questions in the fixed validation subset."""
    seed: int = 0
    """Seed for the data order, the validation subset, sampling and LoRA init."""

    # Logging and checkpointing.
    log_path: str = "/tmp/grpo-tinker"
    """Directory for metrics, checkpoints and validation samples; rerun to resume."""
    save_every: int = 20
    """Checkpoint every N steps (and at the end)."""
    eval_every: int = 20
    """Validate every N steps (and at step 0 and at the end)."""
    wandb_project: str | None = None
    """Weights & Biases project (off when unset; WANDB_MODE=offline works offline)."""
    wandb_name: str | None = None
    """Weights & Biases run name."""

    # The student's own code (CS336 assignment 5).
    adapters: str | None = None
    """Advantages from a CS336 tests/adapters.py (its run_compute_group_normalized_rewards), or
    from module:function / PATH.py:function of compute_group_normalized_rewards's signature.
    Checked on a probe batch against the harness's before any paid call. The loss stays
    Tinker's ppo (GRPO-Clip), whatever the adapters file says."""
    reward_fn: str | None = None
    """Training reward, module:function or PATH.py:function: (response, ground_truth) -> dict
    with reward, format_reward, answer_reward (e.g. CS336's r1_zero_reward_fn); default: the
    task's gsm8k_reward_fn. ground_truth is the final answer, e.g. '72'."""
    eval_reward_fn: str | None = None
    """Validation reward (val/*), same form; default: the task's, whatever --reward_fn says."""

    # Recording and replay.
    record_cassette: str | None = None
    """Record every client call of the run (request, response, latency) to this JSONL file."""
    cassette: str | None = None
    """With --backend=replay: the cassette to answer from."""
    replay_realtime: bool = False
    """With --backend=replay: sleep the recorded latencies, reproducing the run's timing."""

    # The offline twin's weather.
    weather: str | None = None
    """With --backend=local or local-server: a weather profile (TOML, e.g.
    fixtures/weather/tinker-like.toml) giving the cloud's latency and faults."""


# Flags a resumed run may change: how long it runs, how often it checkpoints and validates,
# where it logs and records, how it reaches the service and the weather it meets there
# (timing and faults, not what a step computes). Every other flag changes what a
# step means (the model, the data, the batch, the algorithm, the seed), so a run resumed
# with another value would be neither the old run nor a new one.
RESUMABLE_CHANGES = frozenset(
    {
        "n_grpo_steps",
        "save_every",
        "eval_every",
        "wandb_project",
        "wandb_name",
        "record_cassette",
        "cassette",
        "replay_realtime",
        "backend",
        "base_url",
        "weather",
    }
)


def config_changes(
    previous: Mapping[str, object], config: Config
) -> dict[str, tuple[object, object]]:
    """Flag -> (value the run was started with, value now), for each flag that differs. A
    flag the earlier run did not know (an older harness) counts as having had its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    current = dataclasses.asdict(config)
    return {
        name: (previous.get(name, defaults[name]), value)
        for name, value in current.items()
        if previous.get(name, defaults[name]) != value
    }


def resolve_backend(config: Config, environ: Mapping[str, str]) -> str:
    """The backend `auto` stands for: Tinker when a key or a URL says so, else local."""
    if config.backend != "auto":
        return config.backend
    if environ.get("TINKER_API_KEY") or config.base_url:
        return "tinker"
    return "local"


def validate(config: Config, environ: Mapping[str, str] = os.environ) -> None:
    """Raise ConfigError with a one-line message for the first mistake found."""
    positive = (
        "lora_rank",
        "n_grpo_steps",
        "rollout_batch_size",
        "group_size",
        "sampling_max_tokens",
        "save_every",
        "eval_every",
        "eval_n",
    )
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(config, name)}")
    if config.use_std_normalization and config.group_size < 2:
        raise ConfigError(
            f"--group_size={config.group_size} with --use_std_normalization=True: the group std "
            "needs at least 2 samples per question"
        )
    if not config.learning_rate > 0:
        raise ConfigError(f"--learning_rate must be positive, got {config.learning_rate}")
    if not 0 < config.cliprange < 1:
        raise ConfigError(f"--cliprange must lie in (0, 1), got {config.cliprange}")
    if not config.advantage_eps >= 0:
        raise ConfigError(f"--advantage_eps must be >= 0, got {config.advantage_eps}")
    if not config.sampling_temperature >= 0:
        raise ConfigError(f"--sampling_temperature must be >= 0, got {config.sampling_temperature}")
    if config.dataset_path is not None:
        if config.dataset != "gsm8k":
            raise ConfigError(
                f"--dataset_path is for --dataset=gsm8k, not --dataset={config.dataset}"
            )
        _check_dataset_folder(Path(config.dataset_path))
    backend = resolve_backend(config, environ)
    if backend == "tinker" and not environ.get("TINKER_API_KEY"):
        raise ConfigError(
            "TINKER_API_KEY is not set: export TINKER_API_KEY=<your key> for the Tinker cloud, "
            "or run offline with --backend=local"
        )
    if backend in ("local", "local-server"):
        _check_local_model(config.model_name)
    if config.weather is not None:
        _check_weather(config, backend)
    if backend == "replay":
        if config.cassette is None:
            raise ConfigError("--backend=replay needs --cassette=PATH (a recording of a run)")
        if not Path(config.cassette).is_file():
            raise ConfigError(f"--cassette={config.cassette}: no such file")
        if config.record_cassette is not None:
            raise ConfigError("--record_cassette cannot record a replay; drop one of the two")


def _check_weather(config: Config, backend: str) -> None:
    from harness.weather import WeatherError, load_weather

    if backend not in ("local", "local-server"):
        raise ConfigError(
            f"--weather is for --backend=local or --backend=local-server (the offline twin),"
            f" not the {backend} backend"
        )
    if backend == "local-server" and config.base_url is not None:
        raise ConfigError(
            "--weather with --base_url: the server there has its own weather; start it with"
            " python -m harness.serve --weather=PATH"
        )
    try:
        load_weather(config.weather)
    except WeatherError as e:
        raise ConfigError(f"--weather={e}") from None


def _check_dataset_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ConfigError(f"--dataset_path={folder}: no such folder")
    missing = [name for name in ("train.jsonl", "test.jsonl") if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"--dataset_path={folder}: missing {' and '.join(missing)}")


def _check_local_model(model_name: str) -> None:
    if Path(model_name).is_dir():
        if not (Path(model_name) / "config.json").is_file():
            raise ConfigError(
                f"--model_name={model_name}: the folder has no config.json "
                "(not a Hugging Face model directory)"
            )
        return
    if not _in_hub_cache(model_name):
        raise ConfigError(
            f"--model_name={model_name}: no such model directory, and not in the Hugging Face "
            "cache (the hub is unreachable offline); pass a local model directory such as "
            "--model_name=fixtures/tiny-qwen3, or use --backend=tinker"
        )


def _in_hub_cache(model_name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(model_name, "config.json"), str)
    except HFValidationError:
        return False
