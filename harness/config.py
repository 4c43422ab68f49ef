"""The run's configuration: one typed object, built once from the command line, validated once."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from harness.grpo import LengthNormalization, LossType
from harness.prompts import PromptName, answers_in_tags, effective_prompt

Backend = Literal["auto", "tinker", "local", "local-server", "synthetic", "replay"]
Dataset = Literal["gsm8k", "arith"]


# Tinker refuses a shorter checkpoint lifetime.
MIN_TTL_S = 3600


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
    synthetic: a synthetic model (reference solutions as responses, no network) for a
    full-size dress rehearsal, e.g. with --weather. replay: answer every call from --cassette."""

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
    loss_type: LossType = "grpo_clip"
    """grpo_clip: Tinker's ppo loss (the ratio clipped to 1 -/+ cliprange); grpo_no_clip: its
    importance_sampling loss (the unclipped ratio); reinforce_with_baseline: cross_entropy with
    the advantages as signed weights (-A log pi, no ratio); no_baseline: the same with the raw
    rewards."""
    length_normalization: LengthNormalization = "sum"
    """How a response's token losses combine: sum (Tinker's token sum), sequence_mean (their
    mean over the response, CS336's masked_mean), constant (their sum over
    --sampling_max_tokens, masked_normalize as in Dr. GRPO)."""
    epochs_per_rollout_batch: int = 1
    """Passes over each rollout batch, each of its minibatches one optimizer step."""
    train_batch_size: int | None = None
    """Rollouts per optimizer step; it must divide rollout_batch_size * group_size (default:
    all of them, one optimizer step per rollout batch and epoch)."""

    # Sampling.
    sampling_temperature: float = 1.0
    """Rollout sampling temperature."""
    sampling_max_tokens: int = 1024
    """Max tokens per sampled response."""
    use_r1_zero_format: bool = True
    """R1-Zero prompt with <think></think><answer></answer>; False: plain prompt with \\boxed{}."""
    prompt: PromptName | None = None
    """r1_zero, question_only (CS336's: the question alone) or boxed; the reward and the stop
    sequences follow it (default: the prompt --use_r1_zero_format names)."""

    # Data and validation.
    dataset: Dataset = "gsm8k"
    """gsm8k, or arith: seeded GSM8K-style arithmetic word problems (offline, no files needed)."""
    dataset_path: str | None = None
    """Folder with train.jsonl and test.jsonl (GSM8K rows); default: openai/gsm8k from the hub."""
    eval_n: int = 100
    """Number of test questions in the fixed validation subset."""
    eval_temperature: float = 0.0
    """Validation sampling temperature (0: greedy)."""
    eval_num_samples: int = 1
    """Validation answers per question (more than 1 needs --eval_temperature > 0)."""
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
    Checked on a probe batch against the harness's before any paid call. The loss is
    --loss_type's (Tinker's ppo by default), whatever the adapters file says."""
    reward_fn: str | None = None
    """Training reward, module:function or PATH.py:function: (response, ground_truth) -> dict
    with reward, format_reward, answer_reward (e.g. CS336's r1_zero_reward_fn); default: the
    task's gsm8k_reward_fn. ground_truth is the final answer, e.g. '72'."""
    eval_reward_fn: str | None = None
    """Validation reward (val/*), same form; default: the task's, whatever --reward_fn says."""

    # Tokens and cost.
    price_table: str | None = None
    """TOML price table (USD per million tokens per model) replacing the shipped one."""
    estimate_cost: bool = False
    """Print the run's requests, tokens and cost, then exit: no training or sampling call."""
    assumed_response_tokens: int | None = None
    """With --estimate_cost: mean response length to expect (default: GSM8K's reference
    solutions' mean, measured with the model's tokenizer)."""

    # Faults and recovery.
    request_timeout_s: float = 1800.0
    """Longest wait for a request's answer before it counts as hung. Generous: on the cloud a
    training request waits for its clock cycle behind other users' work, and a full rollout
    batch samples for minutes; the SDK itself gives up only after hours without progress."""
    request_attempts: int = 5
    """Sends of a failing sampling request, and tries of a step whose training failed, before
    the run stops (its state saved; rerun to resume)."""
    retry_backoff_s: float = 2.0
    """Wait before the first resend, doubled for each next one (at most 60 s)."""
    rolling_save_every: int = 5
    """Also save the training state alone every N steps (1-hour TTL, the previous one
    released), so a training fault redoes at most N-1 steps; 0: periodic checkpoints only."""
    ttl_seconds: int | None = None
    """Lifetime of the periodic checkpoints on the service (>= 3600, its minimum; None: they
    never expire, and their storage is billed). The final checkpoint is always kept."""

    # The step's order (what waits for what; the update is the same either way).
    stream_training: bool = True
    """Send each group's Datums to forward_backward as soon as its samples are scored, in
    requests of about --stream_request_tokens, and validate while the last one trains (with one
    optimizer step per rollout batch; several always run serially); False: the serial order
    (validation, then sampling, then the training requests)."""
    stream_request_tokens: int = 262144
    """With --stream_training: model-input tokens per streamed forward_backward request."""

    # Recording and replay.
    record_cassette: str | None = None
    """Record every client call of the run (request, response, latency) to this file: JSON
    lines for a path ending in .jsonl, else compressed rows with raw arrays and a step index."""
    cassette: str | None = None
    """With --backend=replay: the cassette to answer from."""
    replay_realtime: bool = False
    """With --backend=replay: sleep the recorded latencies, reproducing the run's timing."""

    # The offline twin's weather.
    weather: str | None = None
    """With --backend=local, local-server or synthetic: a weather profile (TOML, e.g.
    fixtures/weather/tinker-like.toml) giving the cloud's latency and faults."""

    @property
    def prompt_name(self) -> PromptName:
        """The prompt the run uses."""
        return effective_prompt(self.prompt, self.use_r1_zero_format)

    @property
    def rollouts_per_step(self) -> int:
        return self.rollout_batch_size * self.group_size

    @property
    def minibatch_size(self) -> int:
        """Rollouts per optimizer step."""
        return self.train_batch_size or self.rollouts_per_step

    @property
    def optimizer_steps_per_rollout_batch(self) -> int:
        return self.epochs_per_rollout_batch * self.rollouts_per_step // self.minibatch_size


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
        "request_timeout_s",
        "request_attempts",
        "retry_backoff_s",
        "rolling_save_every",
        "ttl_seconds",
        "weather",
        "stream_training",
        "stream_request_tokens",
    }
)


def config_from_record(recorded: Mapping[str, object]) -> Config:
    """The Config a recorded run's flags (a cassette header's, a checkpoint's) build; flags this
    harness does not know are left out, those the record lacks take their defaults."""
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in recorded.items() if k in names})  # type: ignore[arg-type]


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


def check_config(config: Config, environ: Mapping[str, str] = os.environ) -> None:
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
        "eval_num_samples",
        "epochs_per_rollout_batch",
        "stream_request_tokens",
    )
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(config, name)}")
    if config.use_std_normalization and config.group_size < 2:
        raise ConfigError(
            f"--group_size={config.group_size} with --use_std_normalization=True: the group std "
            "needs at least 2 samples per question"
        )
    _check_train_batch(config)
    if config.prompt is not None and config.use_r1_zero_format != answers_in_tags(config.prompt):
        raise ConfigError(
            f"--prompt={config.prompt} contradicts --use_r1_zero_format="
            f"{config.use_r1_zero_format}; --prompt alone decides the prompt, so drop the other"
        )
    if config.loss_type == "no_baseline" and config.adapters is not None:
        raise ConfigError(
            "--adapters computes advantages, which --loss_type=no_baseline does not use (it"
            " trains on the raw rewards); drop one of the two"
        )
    if not config.learning_rate > 0:
        raise ConfigError(f"--learning_rate must be positive, got {config.learning_rate}")
    if not 0 < config.cliprange < 1:
        raise ConfigError(f"--cliprange must lie in (0, 1), got {config.cliprange}")
    if not config.advantage_eps >= 0:
        raise ConfigError(f"--advantage_eps must be >= 0, got {config.advantage_eps}")
    if not config.request_timeout_s > 0:
        raise ConfigError(f"--request_timeout_s must be positive, got {config.request_timeout_s}")
    if config.request_attempts < 1:
        raise ConfigError(f"--request_attempts must be >= 1, got {config.request_attempts}")
    if not config.retry_backoff_s >= 0:
        raise ConfigError(f"--retry_backoff_s must be >= 0, got {config.retry_backoff_s}")
    if config.rolling_save_every < 0:
        raise ConfigError(f"--rolling_save_every must be >= 0, got {config.rolling_save_every}")
    if config.ttl_seconds is not None and config.ttl_seconds < MIN_TTL_S:
        raise ConfigError(
            f"--ttl_seconds={config.ttl_seconds}: the Tinker service keeps checkpoints at least"
            f" {MIN_TTL_S} s (one hour); pass >= {MIN_TTL_S}, or leave it unset to keep them"
        )
    if not config.sampling_temperature >= 0:
        raise ConfigError(f"--sampling_temperature must be >= 0, got {config.sampling_temperature}")
    check_eval_sampling(config.eval_num_samples, config.eval_temperature, prefix="eval_")
    if config.dataset_path is not None:
        if config.dataset != "gsm8k":
            raise ConfigError(
                f"--dataset_path is for --dataset=gsm8k, not --dataset={config.dataset}"
            )
        _check_dataset_folder(Path(config.dataset_path))
    if config.assumed_response_tokens is not None and config.assumed_response_tokens <= 0:
        raise ConfigError(
            f"--assumed_response_tokens must be positive, got {config.assumed_response_tokens}"
        )
    if config.estimate_cost:
        return  # no service is reached, so neither a key nor a local model is needed
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


def _check_train_batch(config: Config) -> None:
    rollouts = config.rollouts_per_step
    size = config.train_batch_size
    if size is None:
        return
    where = (
        f"the {rollouts} rollouts of a step (--rollout_batch_size={config.rollout_batch_size}"
        f" x --group_size={config.group_size})"
    )
    if size <= 0:
        raise ConfigError(f"--train_batch_size must be positive, got {size}")
    if size > rollouts:
        raise ConfigError(f"--train_batch_size={size} is more than {where}")
    if rollouts % size:
        raise ConfigError(f"--train_batch_size={size} does not divide {where}")


def with_implied_format(config: Config, format_flag_given: bool) -> Config:
    """With --prompt and no --use_r1_zero_format, the format flag the prompt implies (so every
    reader of either agrees); with both, `check_config` refuses a contradiction."""
    if config.prompt is None or format_flag_given:
        return config
    return dataclasses.replace(config, use_r1_zero_format=answers_in_tags(config.prompt))


def check_eval_sampling(num_samples: int, temperature: float, prefix: str) -> None:
    """Several answers per question need a temperature: greedy ones would all be the same."""
    if not temperature >= 0:
        raise ConfigError(f"--{prefix}temperature must be >= 0, got {temperature}")
    if num_samples > 1 and temperature == 0:
        raise ConfigError(
            f"--{prefix}num_samples={num_samples} at --{prefix}temperature=0 would draw "
            f"{num_samples} identical greedy answers; set --{prefix}temperature > 0"
        )


def _check_weather(config: Config, backend: str) -> None:
    from harness.weather import WeatherError, load_weather

    if backend not in ("local", "local-server", "synthetic"):
        raise ConfigError(
            f"--weather is for --backend=local, local-server or synthetic (the offline twin),"
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
        _check_model_folder(Path(model_name), f"--model_name={model_name}")
        return
    if not _in_hub_cache(model_name):
        raise ConfigError(
            f"--model_name={model_name}: no such model directory, and not in the Hugging Face "
            "cache (the hub is unreachable offline); pass a local model directory such as "
            "--model_name=fixtures/tiny-qwen3, or use --backend=tinker"
        )


# What transformers loads weights from: safetensors (maybe sharded) or PyTorch's format.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def _check_model_folder(folder: Path, flag: str) -> None:
    """A Hugging Face model folder the local backend can load, or a one-line ConfigError
    (transformers would fail later, with a long traceback)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"{flag}: the folder has no config.json (not a Hugging Face model directory)"
        )
    try:
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag}: {config_file} is not valid JSON ({e})") from None
    if not isinstance(model_config, dict) or "model_type" not in model_config:
        raise ConfigError(
            f"{flag}: {config_file} has no model_type (not a Hugging Face model config)"
        )
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
        raise ConfigError(f"{flag}: the folder holds no weights ({' or '.join(WEIGHT_FILES)})")


def _in_hub_cache(model_name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(model_name, "config.json"), str)
    except HFValidationError:
        return False
