"""Streaming training is exactly on-policy: a step whose groups go to forward_backward in
several requests as they are scored updates the weights as one request after all sampling does
(to float32 rounding), in process and through the real SDK, which splits a request of more
than 1,024 Datums into chunks; and a streamed run's metrics replay from its cassette."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tinker
import torch
from safetensors.torch import load_file
from tinker import types

from harness.backends.local import LocalServiceClient
from harness.backends.local.storage import parse
from harness.cli import main
from harness.config import Config
from harness.data import Problem
from harness.grpo import compute_group_normalized_rewards
from harness.jsonl import read_json_lines
from harness.logger import RunLogger
from harness.loop import (
    TIME_KEYS,
    StepFunctions,
    finished_training,
    request_tokens,
    serial_training,
    stream_forward_backward,
    training_metrics,
)
from harness.metrics import without_timings
from harness.resilience import FaultLog, RetryPolicy, Waits
from harness.timing import Timer
from scripts.record_golden_cassettes import SMOKE
from tests.support.serve import MODEL, sdk_session, serving
from tests.support.varied_reward_run import varied_reward
from tests.support.viewed import assert_viewer_trains_as_logged

REPO = Path(__file__).resolve().parent.parent
GROUP = 8


class Answered:
    """A sampling request whose response has arrived."""

    def __init__(self, response: types.SampleResponse):
        self.response = response

    def result(self) -> types.SampleResponse:
        return self.response


class Counting:
    """A training client that counts its forward_backward requests and their Datums."""

    def __init__(self, client):
        self._client = client
        self.requests: list[int] = []

    def forward_backward(self, data, **kwargs):
        self.requests.append(len(data))
        return self._client.forward_backward(data, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def step_inputs(n_problems: int, seed: int = 0):
    """Problems, prompts and already-sampled responses of random tokens (a reward that looks
    at lengths gives the groups their variance)."""
    rng = np.random.default_rng(seed)
    problems = [Problem(question=f"q{p}", answer="#### 1") for p in range(n_problems)]
    prompts = [
        types.ModelInput.from_ints(rng.integers(0, 2048, size=rng.integers(4, 9)).tolist())
        for _ in problems
    ]

    def sequence(p: int, g: int) -> types.SampledSequence:
        length = int(rng.integers(2, 7))
        return types.SampledSequence(
            stop_reason="length",
            sequence_id=f"{p}:{g}",
            tokens_np=rng.integers(0, 2048, size=length).astype(np.int32),
            logprobs_np=-rng.random(length).astype(np.float32) * 3,
        )

    responses = [
        types.SampleResponse(sequences=[sequence(p, g) for g in range(GROUP)])
        for p in range(n_problems)
    ]
    return problems, prompts, responses


def one_step(mode, training_client, tokenizer, inputs, config, tmp_path):
    """The loop's step on given responses; its rollouts, training answers and the scores
    it showed."""
    problems, prompts, responses = inputs
    shown = []
    functions = StepFunctions(
        reward_fn=varied_reward,
        eval_reward_fn=varied_reward,
        advantages_fn=compute_group_normalized_rewards,
        on_scores=lambda step, rewards, advantages: shown.append((rewards, advantages)),
    )
    waits = Waits(RetryPolicy(120.0, 1, 0.0), FaultLog(lambda message: None))
    logger = RunLogger(dataclasses.replace(config, log_path=str(tmp_path / mode)))
    requests = [Answered(r) for r in responses]
    timer = Timer(TIME_KEYS)
    if mode == "serial":
        rollouts, trained = serial_training(
            0, requests, problems, prompts, training_client, tokenizer, functions, config,
            waits, timer, logger,
        )  # fmt: skip
    else:
        rollouts, submitted = stream_forward_backward(
            0, requests, problems, prompts, training_client, tokenizer, functions, config,
            timer, logger,
        )  # fmt: skip
        trained = finished_training(*submitted, waits)
    return rollouts, trained, shown


def saved_weights(training_client, storage_dir: Path) -> dict:
    path = parse(training_client.save_state("after").result().path)
    directory = storage_dir / path.run_id / path.kind / path.name
    (weights,) = directory.glob("*.safetensors")
    return load_file(weights)


def assert_same_step(serial, streamed, serial_weights, streamed_weights, config):
    (rollouts_a, trained_a, shown_a), (rollouts_b, trained_b, shown_b) = serial, streamed
    assert len(rollouts_a.datums_D) == len(rollouts_b.datums_D)
    np.testing.assert_array_equal(shown_a[0][1], shown_b[0][1])  # the same advantages shown
    assert serial_weights.keys() == streamed_weights.keys()
    changed = 0
    for name, tensor in serial_weights.items():
        torch_testing_close(streamed_weights[name], tensor)
        changed += int(tensor.abs().sum() > 0)
    assert changed  # the step moved the weights
    metrics_a = training_metrics(
        trained_a, rollouts_a.scored, rollouts_a.sources_D, rollouts_a.signal_P_G, config
    )
    metrics_b = training_metrics(
        trained_b, rollouts_b.scored, rollouts_b.sources_D, rollouts_b.signal_P_G, config
    )
    assert metrics_b == pytest.approx(metrics_a, rel=1e-4, abs=1e-5)


def torch_testing_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_streamed_step_updates_as_one_request_does_in_process(tmp_path):
    inputs = step_inputs(24)
    config = Config(model_name=MODEL, group_size=GROUP, learning_rate=1e-2, seed=0)
    storage = tmp_path / "storage"
    service = LocalServiceClient(storage, seed=0)
    serial_client = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    streamed_client = Counting(service.create_lora_training_client(MODEL, rank=4, seed=0).result())
    tokenizer = serial_client.get_tokenizer()
    total = sum(len(p.to_ints()) + 5 for p in inputs[1]) * GROUP
    streaming = dataclasses.replace(config, stream_request_tokens=total // 5)
    serial = one_step("serial", serial_client, tokenizer, inputs, config, tmp_path)
    streamed = one_step("streamed", streamed_client, tokenizer, inputs, streaming, tmp_path)
    assert len(streamed_client.requests) >= 3
    assert sum(streamed_client.requests) == len(serial[0].datums_D)
    assert_same_step(
        serial, streamed, saved_weights(serial_client, storage),
        saved_weights(streamed_client, storage), config,
    )  # fmt: skip
    service.close()


def test_requests_are_cut_by_tokens_and_the_last_group_closes_one(tmp_path):
    inputs = step_inputs(6, seed=1)
    service = LocalServiceClient(tmp_path / "storage", seed=0)
    client = Counting(service.create_lora_training_client(MODEL, rank=4, seed=0).result())
    config = Config(model_name=MODEL, group_size=GROUP, stream_request_tokens=1)
    tokenizer = client.get_tokenizer()
    rollouts, _, _ = one_step("streamed", client, tokenizer, inputs, config, tmp_path)
    # A request per group that has Datums: each one alone already brings >= 1 token.
    per_group = [sum(1 for p, _ in rollouts.sources_D if p == q) for q in range(6)]
    assert client.requests == [n for n in per_group if n]
    assert request_tokens(rollouts.datums_D) == sum(d.model_input.length for d in rollouts.datums_D)
    service.close()


def test_through_the_sdk_which_splits_a_request_of_more_than_1024_datums(tmp_path):
    inputs = step_inputs(140, seed=2)  # 1,120 Datums at most: the serial request is split
    storage = tmp_path / "storage"
    with serving(storage) as server, sdk_session(server) as service:
        serial_client = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
        streamed_client = Counting(
            service.create_lora_training_client(MODEL, rank=4, seed=0).result()
        )
        tokenizer = serial_client.get_tokenizer()
        config = Config(model_name=MODEL, group_size=GROUP, learning_rate=1e-2, seed=0)
        total = sum(len(p.to_ints()) + 5 for p in inputs[1]) * GROUP
        streaming = dataclasses.replace(config, stream_request_tokens=total // 3)
        serial = one_step("serial", serial_client, tokenizer, inputs, config, tmp_path)
        streamed = one_step("streamed", streamed_client, tokenizer, inputs, streaming, tmp_path)
        assert len(serial[0].datums_D) > 1024
        assert len(streamed_client.requests) >= 2
        assert isinstance(serial_client, tinker.TrainingClient)
        assert_same_step(
            serial, streamed, saved_weights(serial_client, storage),
            saved_weights(streamed_client, storage), config,
        )  # fmt: skip


def test_a_streamed_runs_metrics_replay_from_its_cassette(tmp_path):
    """A streamed run of several requests per step (validation beside the rollouts), recorded,
    then replayed through the training script: the same metrics; and they agree with the
    serial order's run to float32 rounding."""
    flags = [
        f"--model_name={REPO / 'fixtures' / 'tiny-qwen3'}",
        f"--dataset_path={REPO / 'fixtures' / 'gsm8k'}",
        *[flag for flag in SMOKE if not flag.startswith("--stream_training")],
        "--stream_request_tokens=200",
    ]
    cassette = tmp_path / "streamed.jsonl"
    recorded = [*flags, f"--log_path={tmp_path / 'recorded'}", f"--record_cassette={cassette}"]
    assert main(recorded, reward_fn=varied_reward) == 0
    replayed = [*flags, "--backend=replay", f"--cassette={cassette}"]
    assert main([*replayed, f"--log_path={tmp_path / 'replayed'}"], reward_fn=varied_reward) == 0
    serial = [*flags, "--stream_training=False", f"--log_path={tmp_path / 'serial'}"]
    assert main(serial, reward_fn=varied_reward) == 0
    rows = without_timings(read_json_lines(tmp_path / "recorded" / "metrics.jsonl"))
    assert without_timings(read_json_lines(tmp_path / "replayed" / "metrics.jsonl")) == rows
    serial_rows = without_timings(read_json_lines(tmp_path / "serial" / "metrics.jsonl"))
    assert [row.keys() for row in rows] == [row.keys() for row in serial_rows]
    for row, serial_row in zip(rows, serial_rows, strict=True):
        assert row == pytest.approx(serial_row, rel=1e-3, abs=1e-4)
    calls = [line for line in cassette.read_text().splitlines() if '"forward_backward"' in line]
    assert len(calls) > 4  # more than one request per step
    dataset = str(REPO / "fixtures" / "gsm8k")
    assert_viewer_trains_as_logged(cassette, tmp_path / "recorded" / "metrics.jsonl", dataset)
