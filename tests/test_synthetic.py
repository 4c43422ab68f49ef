"""The synthetic model: responses in the prompt's format that the task's reward can score, the
documented training outputs, and a full-size run of the seed's configuration through the
unchanged loop, recorded, at 1/1000 of the cloud's latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tinker import types

from harness.backends.synthetic import (
    SyntheticServiceClient,
    forward_output,
    p_right,
    solution_text,
)
from harness.cli import main
from harness.data import load_problems
from harness.datums import rollout_to_datum
from harness.estimate import load_tokenizer
from harness.jsonl import read_json_lines
from harness.prompts import format_prompt, prompt_for
from harness.rewards import gsm8k_reward_fn
from tests.test_weather_run import fast_tinker_like

REPO = Path(__file__).resolve().parent.parent
GSM8K = REPO / "fixtures" / "gsm8k"


@pytest.fixture(scope="module")
def problems():
    return load_problems("gsm8k", "test", str(GSM8K))[:20]


@pytest.fixture(scope="module")
def service(problems, tmp_path_factory):
    tokenizer, _ = load_tokenizer("Qwen/Qwen3-8B")
    with SyntheticServiceClient(tmp_path_factory.mktemp("storage"), tokenizer, problems) as s:
        yield s


def sample(service, problem, r1_zero, params, num_samples=8):
    tokenizer = service.model.tokenizer
    text = format_prompt(problem.question, prompt_for(r1_zero))
    prompt = types.ModelInput.from_ints(tokenizer.encode(text))
    client = service.create_sampling_client(base_model="Qwen/Qwen3-8B").result()
    response = client.sample(prompt, num_samples, params).result()
    return prompt, response


@pytest.mark.parametrize("r1_zero", [True, False])
def test_responses_are_reference_solutions_in_the_prompts_format(service, problems, r1_zero):
    tokenizer = service.model.tokenizer
    rewards = []
    for problem in problems:
        params = types.SamplingParams(max_tokens=1024, temperature=1.0, seed=7)
        _, response = sample(service, problem, r1_zero, params)
        for sequence in response.sequences:
            assert sequence.logprobs_np.shape == sequence.tokens_np.shape
            assert (sequence.logprobs_np <= 0).all()
            text = tokenizer.decode(sequence.tokens_np, skip_special_tokens=True)
            score = gsm8k_reward_fn(text, problem.ground_truth, r1_zero)
            if sequence.stop_reason == "length":
                assert len(sequence.tokens_np) == 1024
                assert score["format_reward"] == 0
            else:
                assert score["format_reward"] == 1.0
            rewards.append(score["reward"])
    # Right and wrong answers both occur, and some responses are cut at max_tokens.
    assert 0.2 < np.mean(np.array(rewards) == 1.0) < 0.8
    assert 0.0 in rewards


def test_a_seeded_request_answers_the_same_and_greedy_answers_the_likelier(service, problems):
    problem = problems[0]
    params = types.SamplingParams(max_tokens=1024, temperature=1.0, seed=3)
    _, first = sample(service, problem, True, params)
    _, again = sample(service, problem, True, params)
    assert [s.tokens_np.tolist() for s in first.sequences] == [
        s.tokens_np.tolist() for s in again.sequences
    ]
    greedy = types.SamplingParams(max_tokens=1024, temperature=0.0, seed=3)
    _, answer = sample(service, problem, True, greedy, num_samples=1)
    text = service.model.tokenizer.decode(answer.sequences[0].tokens_np)
    right = solution_text(problem, problem.ground_truth, True)[1]
    assert (text == right) == (p_right(problem.question, 0) >= 0.5)


def test_max_tokens_cuts_a_response(service, problems):
    params = types.SamplingParams(max_tokens=5, temperature=1.0, seed=0)
    _, response = sample(service, problems[0], True, params)
    assert all(len(s.tokens_np) == 5 and s.stop_reason == "length" for s in response.sequences)


def test_training_returns_the_documented_outputs_on_policy(service, problems):
    params = types.SamplingParams(max_tokens=1024, temperature=1.0, seed=1)
    prompt, response = sample(service, problems[0], True, params, num_samples=2)
    datums = [
        rollout_to_datum(prompt.to_ints(), s.tokens_np, s.logprobs_np, advantage)
        for s, advantage in zip(response.sequences, (1.0, -0.5), strict=True)
    ]
    training = service.create_lora_training_client("Qwen/Qwen3-8B", rank=8).result()
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    fb = training.forward_backward(datums, "ppo", config).result()
    optim = training.optim_step(types.AdamParams(learning_rate=1e-5)).result()
    for output, datum in zip(fb.loss_fn_outputs, datums, strict=True):
        expected = datum.loss_fn_inputs["logprobs"].to_numpy()
        np.testing.assert_array_equal(output["logprobs"].to_numpy(), expected)
    # On-policy every ratio is 1: the ppo loss is minus the advantages summed over tokens.
    lengths = [len(s.tokens_np) for s in response.sequences]
    assert fb.metrics["loss:sum"] == pytest.approx(-(1.0 * lengths[0] - 0.5 * lengths[1]))
    assert optim.metrics == {"learning_rate:mean": 1e-5}
    assert training.optimizer_steps == 1
    path = training.save_state("one").result().path
    resumed = service.create_training_client_from_state_with_optimizer(path).result()
    assert resumed.optimizer_steps == 1


def test_an_unknown_loss_is_refused():
    datum = rollout_to_datum([1, 2], [3], [-0.5], 1.0)
    assert forward_output([datum], "ppo", None).metrics == {"loss:sum": -1.0}
    with pytest.raises(ValueError, match="not 'dro'"):
        forward_output([datum], "dro", None)


def test_a_prompt_the_model_does_not_know_is_refused(service):
    client = service.create_sampling_client(base_model="Qwen/Qwen3-8B").result()
    prompt = types.ModelInput.from_ints(service.model.tokenizer.encode("What is 2 + 2?"))
    future = client.sample(prompt, 1, types.SamplingParams(max_tokens=8))
    with pytest.raises(ValueError, match="only the task's questions"):
        future.result()


def test_the_full_size_rehearsal_runs_through_the_unchanged_loop(tmp_path):
    """The seed's configuration (256 questions x 8 samples, 1,024 tokens, Qwen3's vocabulary,
    the tinker-like weather at 1/1000), two steps, recorded; validation on a few questions."""
    flags = [
        "--backend=synthetic",
        "--model_name=Qwen/Qwen3-8B",
        f"--dataset_path={GSM8K}",
        "--n_grpo_steps=2",
        "--eval_n=16",
        f"--weather={fast_tinker_like(tmp_path)}",
        f"--log_path={tmp_path / 'run'}",
        f"--record_cassette={tmp_path / 'run.jsonl'}",
    ]
    assert main(flags) == 0
    rows = read_json_lines(tmp_path / "run" / "metrics.jsonl")
    assert [row["progress/grpo_step"] for row in rows] == [0.0, 1.0, 2.0]
    for row in rows[:2]:
        assert row["tokens/sampled"] > 256 * 8 * 50  # realistic lengths, not stubs
        assert row["response/length_max"] == 1024.0
        assert 0 < row["response/truncated_frac"] < 0.2
        assert 0 < row["reward/mean"] < 1
        assert row["train/datums"] > 1024  # the SDK would send two requests
        assert row["train/kl_sampler_trainer"] == 0.0
        # forward_backward and optim_step waited for their 10 ms clock cycle.
        assert row["time/training"] >= 0.010
    assert (tmp_path / "run.jsonl").stat().st_size > 0
