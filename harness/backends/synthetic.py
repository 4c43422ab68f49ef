"""A synthetic model for the offline twin: a full-size run's calls answered without a network.

`--backend=synthetic` answers the training loop's calls with real `tinker.types` objects at
the latencies of a weather profile, so a run of the seed's full configuration (256 questions x
8 samples, up to 1,024 tokens, Qwen3's vocabulary) runs end to end on a few CPUs, through the
unchanged loop, recording included: a dress rehearsal of a cloud run.

Sampling: the prompt is decoded, its question found among the task's problems, and each
sample is that problem's reference solution (GSM8K's calculator notes removed) rewritten into
the prompt's format, with the right answer or a wrong one, or rambling on until it is cut at
`max_tokens`. Whether a sample is right is drawn from the request's seed and the sample's
index, with a per-question difficulty that eases with every optimizer step the weights have
taken, so rewards vary within groups and rise as the run trains; greedy requests answer right
exactly when a right answer is the likelier. Logprobs are drawn from the same seed.

Training: `forward_backward` returns each Datum's target logprobs (the sampler's on response
tokens: exactly on-policy) and `loss:sum` of the requested loss; `optim_step` counts steps.
Checkpoints are small files under `storage_dir` holding that count, so a run resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture

from harness.data import Problem
from harness.prompts import PromptName, answers_in_tags, prompt_template
from harness.weather import Call, Weather

from .local.checkpoint_format import CheckpointMeta, Kind, read_meta, write_meta
from .local.futures import OrderedWorker, run_now
from .local.models import LoraSpec
from .local.storage import CheckpointStore, TinkerPath, check_name
from .local.weather import local_weather

# Beside the local backend's checkpoint.json (which the store reads for lifetimes and listings):
# the one number a synthetic model's state is.
STATE_FILE = "synthetic_state.json"

T = TypeVar("T")
# GSM8K's calculator annotations, `<<48/2=24>>`, which no model writes.
_CALCULATOR = re.compile(r"<<[^>]*>>")
TRUNCATED_FRAC = 0.05
"""Of the sampled (not greedy) responses, the share that ramble on until cut at max_tokens."""
LEARNING_PER_STEP = 0.02
"""Each optimizer step raises every question's log-odds of a right answer by this much."""
WRONG_VARIANTS = 3
"""Wrong answers per question (each a different number)."""


@functools.cache
def _template_parts(prompt: PromptName) -> tuple[str, str]:
    """The text of the prompt before and after its question."""
    before, after = prompt_template(prompt).split("{question}")
    return before.format(), after.format()


def difficulty(question: str) -> float:
    """A question's log-odds of a right answer before training, from its text: spread over
    [-2.5, 2.5], so some groups are all right, some all wrong, most mixed."""
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") / 2**64 - 0.5) * 5.0


def p_right(question: str, optimizer_steps: int) -> float:
    logit = difficulty(question) + LEARNING_PER_STEP * optimizer_steps
    return 1.0 / (1.0 + math.exp(-logit))


def solution_text(problem: Problem, answer: str, use_r1_zero_format: bool) -> tuple[str, str]:
    """(reasoning, the whole response) for `problem` answered `answer` in the prompt's format."""
    reasoning = _CALCULATOR.sub("", problem.answer.rpartition("####")[0]).strip()
    if use_r1_zero_format:
        return reasoning, f" {reasoning} </think> <answer> {answer} </answer>"
    return reasoning, f"{reasoning}\nThe answer is \\boxed{{{answer}}}."


def wrong_answers(ground_truth: str, n: int) -> list[str]:
    """`n` different wrong final answers: the right number moved by 1, 2, ... n."""
    try:
        value = int(ground_truth.replace(",", ""))
    except ValueError:
        return [f"{ground_truth}{k}" for k in range(1, n + 1)]
    return [str(value + k) for k in range(1, n + 1)]


@dataclasses.dataclass(frozen=True)
class Answers:
    """One question's responses in one prompt format, as token arrays."""

    question: str
    right_T: np.ndarray
    wrong_W_T: list[np.ndarray]
    reasoning_T: np.ndarray
    """Tiled to ramble until max_tokens."""


class SyntheticModel:
    """What answers sampling: the task's problems, the tokenizer, and each prompt's answers
    (built once per prompt). `cpu_s`: the CPU seconds its work took, in whatever thread (what
    a benchmark leaves out of the harness's own cost)."""

    def __init__(self, tokenizer: Any, problems: Sequence[Problem]):
        self.tokenizer = tokenizer
        self.cpu_s = 0.0
        self._problems = {p.question: p for p in problems}
        self._answers: dict[tuple[int, ...], tuple[Answers, bool]] = {}
        self._lock = threading.Lock()
        eos = tokenizer.eos_token_id
        self._eos_T = np.array([eos] if eos is not None else [], dtype=np.int32)

    def answers(self, prompt: Sequence[int]) -> tuple[Answers, bool]:
        """The prompt's answers and whether it is an R1-Zero prompt."""
        key = tuple(prompt)
        with self._lock:
            known = self._answers.get(key)
        if known is None:
            known = self._build(key)
            with self._lock:
                self._answers[key] = known
        return known

    def _build(self, prompt: tuple[int, ...]) -> tuple[Answers, bool]:
        text = self.tokenizer.decode(list(prompt))
        # The question alone last: its template matches any text.
        for prompt in ("r1_zero", "boxed", "question_only"):
            before, after = _template_parts(prompt)
            if text.startswith(before) and text.endswith(after):
                question = text[len(before) : len(text) - len(after)]
                if question in self._problems:
                    r1_zero = answers_in_tags(prompt)
                    return self._encode(self._problems[question], r1_zero), r1_zero
        raise ValueError(
            "the synthetic model answers only the task's questions in the harness's prompts;"
            f" this prompt is not one: {text[:80]!r}"
        )

    def _encode(self, problem: Problem, r1_zero: bool) -> Answers:
        def encode(text: str) -> np.ndarray:
            tokens_T = np.asarray(self.tokenizer.encode(text), dtype=np.int32)
            # An R1-Zero response stops at `</answer>`, a plain one at the end of sequence.
            return tokens_T if r1_zero else np.concatenate([tokens_T, self._eos_T])

        reasoning, right = solution_text(problem, problem.ground_truth, r1_zero)
        wrong = [
            solution_text(problem, answer, r1_zero)[1]
            for answer in wrong_answers(problem.ground_truth, WRONG_VARIANTS)
        ]
        return Answers(
            question=problem.question,
            right_T=encode(right),
            wrong_W_T=[encode(text) for text in wrong],
            reasoning_T=np.asarray(self.tokenizer.encode(f" {reasoning}\n"), dtype=np.int32),
        )

    def sample(
        self, prompt: Sequence[int], params: types.SamplingParams, num_samples: int,
        seed: int, optimizer_steps: int,
    ) -> types.SampleResponse:  # fmt: skip
        return self.timed(lambda: self._sample(prompt, params, num_samples, seed, optimizer_steps))

    def timed(self, work: Callable[[], T]) -> T:
        start = time.thread_time()
        try:
            return work()
        finally:
            with self._lock:
                self.cpu_s += time.thread_time() - start

    def _sample(
        self, prompt: Sequence[int], params: types.SamplingParams, num_samples: int,
        seed: int, optimizer_steps: int,
    ) -> types.SampleResponse:  # fmt: skip
        if params.max_tokens is None or params.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be a positive int: {params}")
        answers, _ = self.answers(prompt)
        p = p_right(answers.question, optimizer_steps)
        rng = np.random.default_rng(seed)
        greedy = params.temperature == 0
        sequences = []
        for sample in range(num_samples):
            ramble = not greedy and rng.random() < TRUNCATED_FRAC
            if ramble:
                tokens_T = np.resize(answers.reasoning_T, params.max_tokens)
            elif greedy:
                tokens_T = answers.right_T if p >= 0.5 else answers.wrong_W_T[0]
            elif rng.random() < p:
                tokens_T = answers.right_T
            else:
                tokens_T = answers.wrong_W_T[int(rng.integers(WRONG_VARIANTS))]
            cut = ramble or tokens_T.size > params.max_tokens
            tokens_T = tokens_T[: params.max_tokens]
            scale = 0.05 if greedy else 0.4 * params.temperature
            logprobs_T = -rng.exponential(scale, tokens_T.size).astype(np.float32)
            sequences.append(
                types.SampledSequence(
                    stop_reason="length" if cut else "stop",
                    sequence_id=f"synthetic-{seed}:{sample}",
                    tokens_np=tokens_T,
                    logprobs_np=logprobs_T,
                )
            )
        return types.SampleResponse(sequences=sequences)


def _array(value: Any) -> np.ndarray:
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)


def loss_sum(
    loss_fn: str, config: Mapping[str, float] | None, inputs: Mapping[str, np.ndarray],
    logprobs_N: np.ndarray,
) -> float:  # fmt: skip
    """One Datum's summed loss, as the service defines `loss_fn`, at target logprobs
    `logprobs_N` (Tinker's losses are sums over tokens)."""
    config = config or {}
    if loss_fn == "cross_entropy":
        return float(-(inputs["weights"] * logprobs_N).sum())
    ratio_N = np.exp(logprobs_N - inputs["logprobs"])
    advantages_N = inputs["advantages"]
    if loss_fn == "importance_sampling":
        return float(-(ratio_N * advantages_N).sum())
    if loss_fn == "ppo":
        low = config.get("clip_low_threshold", 0.8)
        high = config.get("clip_high_threshold", 1.2)
        clipped_N = np.clip(ratio_N, low, high) * advantages_N
        return float(-np.minimum(ratio_N * advantages_N, clipped_N).sum())
    raise ValueError(
        "the synthetic model implements cross_entropy, importance_sampling and ppo,"
        f" not {loss_fn!r}"
    )


def forward_output(
    data: Sequence[types.Datum], loss_fn: str, loss_fn_config: Mapping[str, float] | None
) -> types.ForwardBackwardOutput:
    """Target logprobs per Datum (the sampler's where it gave them: on-policy) and the loss."""
    outputs, total = [], 0.0
    for datum in data:
        inputs = {key: _array(value) for key, value in datum.loss_fn_inputs.items()}
        sampler_N = inputs.get("logprobs")
        logprobs_N = (
            sampler_N.astype(np.float32)
            if sampler_N is not None
            else np.full(inputs["target_tokens"].size, -1.0, dtype=np.float32)
        )
        total += loss_sum(loss_fn, loss_fn_config, inputs, logprobs_N)
        outputs.append({"logprobs": types.TensorData.from_numpy(logprobs_N)})
    return types.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": total}
    )


class SyntheticSamplingClient:
    """Samples from the synthetic model as it stands after `optimizer_steps` steps."""

    def __init__(self, service: SyntheticServiceClient, base_model: str, optimizer_steps: int):
        self._service = service
        self._base_model = base_model
        self.optimizer_steps = optimizer_steps

    def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[types.SampleResponse]:
        if include_prompt_logprobs or topk_prompt_logprobs:
            raise NotImplementedError("the synthetic model returns no prompt logprobs")
        seed = sampling_params.seed
        seed = seed if seed is not None else self._service.next_seed()
        tokens = prompt.to_ints()
        model = self._service.model
        return self._service.weather.sample(
            lambda: self._service.sampler.submit(
                lambda: model.sample(
                    tokens, sampling_params, num_samples, seed, self.optimizer_steps
                )
            )
        )

    def get_tokenizer(self) -> Any:
        return self._service.model.tokenizer

    def get_base_model(self) -> str:
        return self._base_model


class SyntheticTrainingClient:
    """A training client of the synthetic model: its state is its optimizer step count."""

    def __init__(self, service: SyntheticServiceClient, base_model: str, rank: int, steps: int):
        self._service = service
        self._base_model = base_model
        self.model_id = service.store.new_run_id()
        self.optimizer_steps = steps
        self._worker = OrderedWorker(f"synthetic-train-{self.model_id}")
        self._timeline = service.weather.timeline()
        self._info = types.GetInfoResponse(
            model_data=types.ModelData(arch="synthetic", model_name=base_model),
            model_id=self.model_id,
            is_lora=True,
            lora_rank=rank,
            model_name=base_model,
        )

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def _submit(self, call: Call, fn: Callable[[], T], tokens: int = 0) -> APIFuture[T]:
        return self._service.weather.training(
            call, self._timeline, lambda: self._worker.submit(fn), tokens
        )

    def _forward(self, call: Call, data, loss_fn, loss_fn_config):
        if not data:
            raise ValueError("No data provided")
        data = list(data)
        tokens = sum(datum.model_input.length for datum in data)
        model = self._service.model
        return self._submit(
            call,
            lambda: model.timed(lambda: forward_output(data, loss_fn, loss_fn_config)),
            tokens,
        )

    def forward(self, data, loss_fn, loss_fn_config=None):
        return self._forward("forward", data, loss_fn, loss_fn_config)

    def forward_backward(self, data, loss_fn, loss_fn_config=None):
        return self._forward("forward_backward", data, loss_fn, loss_fn_config)

    def optim_step(self, optim_params: types.AdamParams) -> APIFuture[types.OptimStepResponse]:
        def step() -> types.OptimStepResponse:
            self.optimizer_steps += 1
            return types.OptimStepResponse(
                metrics={"learning_rate:mean": optim_params.learning_rate}
            )

        return self._submit("optim_step", step)

    def _save(self, kind: Kind, name: str, ttl_seconds: int | None, overwrite: bool) -> str:
        path = TinkerPath(self.model_id, kind, check_name(name))
        store = self._service.store
        saved_at, expires_at = store.lifetime(ttl_seconds)
        directory = store.directory(path)
        if store.find(path) is not None and not overwrite:
            raise FileExistsError(f"checkpoint {path} exists; pass overwrite=True to replace it")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps({"optimizer_steps": self.optimizer_steps}))
        meta = CheckpointMeta(
            kind=kind,
            base_model=self._base_model,
            model_dir="",  # a synthetic model has no weights on disk
            lora=LoraSpec(rank=self._info.lora_rank, seed=0),
            ttl_seconds=ttl_seconds,
            saved_at=saved_at,
            expires_at=expires_at,
        )
        write_meta(directory, meta)
        return str(path)

    def save_state(self, name, ttl_seconds=None, overwrite=False, user_metadata=None):
        return self._submit(
            "save_state",
            lambda: types.SaveWeightsResponse(
                path=self._save("weights", name, ttl_seconds, overwrite)
            ),
        )

    def save_weights_for_sampler(self, name, ttl_seconds=None, user_metadata=None):
        return self._submit(
            "save_weights_for_sampler",
            lambda: types.SaveWeightsForSamplerResponse(
                path=self._save("sampler_weights", name, ttl_seconds, True)
            ),
        )

    def save_weights_and_get_sampling_client(self, name=None, retry_config=None):
        return self._submit(
            "save_weights_for_sampler",
            lambda: SyntheticSamplingClient(self._service, self._base_model, self.optimizer_steps),
        )

    def create_sampling_client(self, model_path: str, retry_config: Any = None):
        return self._service.create_sampling_client(model_path=model_path)

    def get_info(self) -> types.GetInfoResponse:
        return self._info

    def get_tokenizer(self) -> Any:
        return self._service.model.tokenizer


class SyntheticServiceClient:
    """Offline twin of `tinker.ServiceClient` over the synthetic model. `weather` gives its
    latencies and faults (`harness.weather.load_weather`, e.g. tinker-like.toml)."""

    def __init__(
        self,
        storage_dir: str | Path,
        tokenizer: Any,
        problems: Sequence[Problem],
        *,
        seed: int | None = None,
        weather: Weather | None = None,
    ):
        self.store = CheckpointStore(storage_dir)
        self.weather = local_weather(weather, self.store)
        self.model = SyntheticModel(tokenizer, problems)
        # Responses are made off the caller's thread, as a service makes them elsewhere.
        self.sampler = OrderedWorker("synthetic-sample")
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._trainers: list[SyntheticTrainingClient] = []

    def __enter__(self) -> SyntheticServiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, status: Literal["success", "errored", "interrupted"] = "success") -> None:
        for trainer in self._trainers:
            trainer.close()
        self.sampler.shutdown(wait=True)
        self.weather.close()

    def next_seed(self) -> int:
        with self._rng_lock:
            return self._rng.randrange(2**63)

    def _trainer(self, base_model: str, rank: int, steps: int) -> SyntheticTrainingClient:
        trainer = SyntheticTrainingClient(self, base_model, rank, steps)
        self._trainers.append(trainer)
        return trainer

    def create_lora_training_client(
        self, base_model: str, rank: int = 32, seed: int | None = None, **options: Any
    ) -> APIFuture[SyntheticTrainingClient]:
        return self.weather.service(
            "create_model", lambda: run_now(lambda: self._trainer(base_model, rank, 0)), load=False
        )

    def _saved(self, path: str) -> tuple[CheckpointMeta, int]:
        """A saved state's metadata and its optimizer steps."""
        directory = self.store.resolve(path)
        steps = json.loads((directory / STATE_FILE).read_text())["optimizer_steps"]
        return read_meta(directory), steps

    def _from_state(self, path: str) -> SyntheticTrainingClient:
        meta, steps = self._saved(path)
        rank = meta.lora.rank if meta.lora is not None else 0
        return self._trainer(meta.base_model, rank, steps)

    def create_training_client_from_state_with_optimizer(
        self, path: str, **options: Any
    ) -> APIFuture[SyntheticTrainingClient]:
        return self.weather.service(
            "load_state", lambda: run_now(lambda: self._from_state(path)), load=True
        )

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None, **options: Any
    ) -> APIFuture[SyntheticSamplingClient]:
        if model_path is None and base_model is None:
            raise ValueError("Either model_path or base_model must be provided")

        def create() -> SyntheticSamplingClient:
            if model_path is None:
                return SyntheticSamplingClient(self, str(base_model), 0)
            meta, steps = self._saved(model_path)
            return SyntheticSamplingClient(self, meta.base_model, steps)

        return self.weather.service(None, lambda: run_now(create), load=model_path is not None)
