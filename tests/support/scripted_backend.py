"""A backend that answers at once from a script and keeps every call the loop makes.

Sampling answers each member of a group with a short number drawn from the request's seed, so
rewards vary within and between groups and the test knows which response came from which
request; training answers with the Datums' own logprobs (on-policy) and counts optimizer
steps. Tests read `ScriptedService.calls` to check what a run sent, independent of any golden
recording and of a model.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
from tinker import types
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture
from transformers import AutoTokenizer

from harness.cli import parse_config
from harness.data import Problem
from harness.logger import RunLogger
from harness.loop import RunResult, train
from tests.support.serve import MODEL


def done(value: Any) -> AwaitableConcurrentFuture:
    future: Future = Future()
    future.set_result(value)
    return AwaitableConcurrentFuture(future)


@dataclasses.dataclass(frozen=True)
class Call:
    client: str
    method: str
    kwargs: dict[str, Any]


def member_number(seed: int | None, member: int) -> int:
    """The number the scripted sampler answers for one member of a request's group."""
    if seed is None:  # validation is unseeded and greedy: one fixed answer
        return 0
    return int(np.random.default_rng([seed, member]).integers(0, 10))


def number_reward(response: str, ground_truth: str) -> dict[str, float]:
    """The scripted responses' number, scaled into [0, 0.9]: rewards the test can recompute."""
    value = float(response.strip() or 0) / 10
    return {"reward": value, "format_reward": 0.0, "answer_reward": value}


class ScriptedSampler:
    def __init__(self, service: ScriptedService, name: str):
        self.service = service
        self.name = name

    def sample(self, prompt, num_samples, sampling_params, **kwargs):
        self.service.record(self.name, "sample", prompt=prompt, num_samples=num_samples,
                            sampling_params=sampling_params)  # fmt: skip
        tokenizer = self.service.tokenizer
        sequences = []
        for g in range(num_samples):
            tokens = tokenizer.encode(f" {member_number(sampling_params.seed, g)}")
            sequences.append(
                types.SampledSequence(
                    stop_reason="stop",
                    sequence_id=f"{self.name}:{len(self.service.calls)}:{g}",
                    _tokens_list=tokens,
                    _logprobs_list=[-0.5 - 0.1 * i for i in range(len(tokens))],
                )
            )
        return done(types.SampleResponse(sequences=sequences))


class ScriptedTraining:
    def __init__(self, service: ScriptedService, name: str, optim_steps: int = 0):
        self.service = service
        self.name = name
        self.optim_steps = optim_steps

    def get_tokenizer(self):
        return self.service.tokenizer

    def save_weights_and_get_sampling_client(self, **kwargs):
        self.service.record(self.name, "save_weights_and_get_sampling_client", **kwargs)
        return done(ScriptedSampler(self.service, f"sampling@{next(self.service.samplers)}"))

    def forward_backward(self, data, loss_fn, loss_fn_config=None):
        self.service.record(self.name, "forward_backward", data=data, loss_fn=loss_fn,
                            loss_fn_config=loss_fn_config)  # fmt: skip
        outputs = [{"logprobs": datum.loss_fn_inputs["logprobs"]} for datum in data]
        return done(types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": 0.0}
        ))  # fmt: skip

    def optim_step(self, adam_params):
        self.service.record(self.name, "optim_step", adam_params=adam_params)
        self.optim_steps += 1
        return done(types.OptimStepResponse(metrics={"learning_rate:mean": 1.0}))

    def save_state(self, name, **kwargs):
        self.service.record(self.name, "save_state", name=name, **kwargs)
        path = f"tinker://scripted/weights/{name}"
        self.service.states[path] = self.optim_steps
        return done(types.SaveWeightsResponse(path=path))

    def save_weights_for_sampler(self, name, **kwargs):
        self.service.record(self.name, "save_weights_for_sampler", name=name, **kwargs)
        return done(types.SaveWeightsForSamplerResponse(path=f"tinker://scripted/sampler/{name}"))


class ScriptedService:
    """Saved states outlive a `ScriptedService`: pass `states` on to resume in a new one."""

    def __init__(self, states: dict[str, int] | None = None):
        self.tokenizer = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
        self.calls: list[Call] = []
        self.states = states if states is not None else {}
        self.samplers = itertools.count()
        self.trainers = itertools.count()

    def record(self, client: str, method: str, **kwargs: Any) -> None:
        self.calls.append(Call(client, method, kwargs))

    def create_lora_training_client(self, base_model, rank=32, seed=None, **kwargs):
        self.record("service", "create_lora_training_client", base_model=base_model)
        return done(ScriptedTraining(self, f"training@{next(self.trainers)}"))

    def create_training_client_from_state_with_optimizer(self, path, **kwargs):
        self.record("service", "create_training_client_from_state_with_optimizer", path=path)
        if path not in self.states:
            raise FileNotFoundError(f"no checkpoint at {path}")
        name = f"training@{next(self.trainers)}"
        return done(ScriptedTraining(self, name, optim_steps=self.states[path]))

    def of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]


# A small run of the training script for the scripted backend: 3 questions, validation and a
# checkpoint every 2 steps.
SCRIPTED_FLAGS = [
    "--rollout_batch_size=3",
    "--save_every=2",
    "--eval_every=2",
    "--eval_n=2",
    "--sampling_max_tokens=8",
]


def scripted_run(
    flags: Sequence[str], problems: tuple[list[Problem], list[Problem]], states=None
) -> tuple[ScriptedService, RunResult]:
    """A run of the training script's `flags` on a new scripted service (resuming from
    `states`, those of an earlier one), rewarded by `number_reward`."""
    config = parse_config(list(flags))
    service = ScriptedService(states)
    result = train(config, service, *problems, RunLogger(config), reward_fn=number_reward)
    return service, result
