"""Each rule of what a run sends, checked on its own, from the flag to the request.

The golden-cassette replay compares everything a recorded run sent, but it is re-recorded
whenever the loop changes on purpose, and a bug present at that moment would be recorded with
it. These tests state the rules instead: a run on the scripted backend (answers at once,
keeps every call) or the pure function that owns the rule, with values the test recomputes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tinker
import torch

from harness.backends.local import LocalServiceClient
from harness.cli import parse_config
from harness.data import BatchCursor, next_batch
from harness.grpo import compute_group_normalized_rewards, group_normalized_advantages
from harness.loop import rollout_params
from harness.rollouts import request_seed, stop_sequences
from tests.support.scripted_backend import (
    SCRIPTED_FLAGS,
    Call,
    ScriptedService,
    member_number,
    scripted_run,
)
from tests.support.serve import MODEL

GROUP_SIZE = 4
FLAGS = [*SCRIPTED_FLAGS, "--n_grpo_steps=4", f"--group_size={GROUP_SIZE}"]


@pytest.fixture(scope="module")
def problems(gsm8k_problems):
    return gsm8k_problems


@pytest.fixture
def run(problems, gsm8k_dir, tmp_path):
    """`run(*flags, log_path=..., states=...)`: the scripted service after a run of FLAGS."""

    def run_with(*flags: str, log_path: Path | None = None, states=None) -> ScriptedService:
        log_path = log_path or tmp_path / "run"
        flags = [*FLAGS, f"--dataset_path={gsm8k_dir}", f"--log_path={log_path}", *flags]
        return scripted_run(flags, problems, states)[0]

    return run_with


def rollouts(service: ScriptedService) -> list[Call]:
    return [c for c in service.of("sample") if c.kwargs["num_samples"] == GROUP_SIZE]


def validations(service: ScriptedService) -> list[Call]:
    return [c for c in service.of("sample") if c.kwargs["num_samples"] == 1]


def steps_of_rollouts(service: ScriptedService) -> list[list[Call]]:
    """Each step's rollout requests, in the order the loop made them."""
    steps: list[list[Call]] = []
    for call in service.calls:
        if call.method == "save_weights_and_get_sampling_client":
            steps.append([])
        elif call in rollouts(service):
            steps[-1].append(call)
    return [step for step in steps if step]


# -- the data order ---------------------------------------------------------------------------


def test_each_epoch_is_a_new_permutation_of_all_problems():
    n, batch_size = 50, 7
    cursor, taken = BatchCursor(), []
    while len(taken) < 3 * n:
        indices, cursor = next_batch(cursor, n, batch_size, seed=3)
        taken.extend(indices)
    epochs = [taken[e * n : (e + 1) * n] for e in range(3)]
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


def test_a_resume_in_the_middle_of_a_later_epoch_continues_its_order():
    n, batch_size, seed = 20, 6, 5
    cursor, straight, cursors = BatchCursor(), [], []
    for _ in range(10):
        cursors.append(cursor)
        indices, cursor = next_batch(cursor, n, batch_size, seed)
        straight.append(indices)
    resume_at = 5  # 30 problems taken: in the middle of the second epoch
    assert cursors[resume_at].epoch == 1 and 0 < cursors[resume_at].offset < n
    cursor, resumed = BatchCursor(**vars(cursors[resume_at])), []
    for _ in range(resume_at, 10):
        indices, cursor = next_batch(cursor, n, batch_size, seed)
        resumed.append(indices)
    assert resumed == straight[resume_at:]


# -- advantages -------------------------------------------------------------------------------


def test_advantage_eps_is_added_to_the_group_std():
    expected = 0.5 / (math.sqrt(0.5) + 0.5)  # group [0, 1]: n-1 std sqrt(0.5)
    advantages = group_normalized_advantages(torch.tensor([[0.0, 1.0]]), 0.5, True)
    torch.testing.assert_close(advantages, torch.tensor([[-expected, expected]]))
    flat, _, _ = compute_group_normalized_rewards(
        lambda response, truth: {"reward": float(response)},
        ["0", "1"],
        ["", ""],
        group_size=2,
        advantage_eps=0.5,
        normalize_by_std=True,
    )
    torch.testing.assert_close(flat, torch.tensor([-expected, expected]))


def test_a_constant_group_without_eps_has_zero_advantages_not_nan():
    advantages = group_normalized_advantages(torch.tensor([[0.4, 0.4, 0.4]]), 0.0, True)
    assert torch.equal(advantages, torch.zeros(1, 3))


def expected_advantages(rollout: Call, eps: float) -> np.ndarray:
    """Recomputed from the scripted responses: (r - mean) / (std + eps), 0 in a constant group."""
    seed = rollout.kwargs["sampling_params"].seed
    rewards_G = np.array([member_number(seed, g) / 10 for g in range(GROUP_SIZE)])
    if np.ptp(rewards_G) == 0:
        return np.zeros(GROUP_SIZE)
    return (rewards_G - rewards_G.mean()) / (rewards_G.std(ddof=1) + eps)


def test_each_datum_carries_its_own_groups_advantage_with_the_flags_eps(run):
    eps = 0.5
    service = run(f"--advantage_eps={eps}")
    trained = service.of("forward_backward")
    assert len(trained) == len(steps_of_rollouts(service))
    tokenizer = service.tokenizer
    for step_rollouts, fb in zip(steps_of_rollouts(service), trained, strict=True):
        expected_D = []
        for rollout in step_rollouts:
            advantages_G = expected_advantages(rollout, eps)
            if advantages_G.any():
                expected_D.extend((rollout, g, a) for g, a in enumerate(advantages_G))
        assert len(fb.kwargs["data"]) == len(expected_D)
        groups = [tuple(a for r, _, a in expected_D if r is rollout) for rollout in step_rollouts]
        groups = [g for g in groups if g]
        assert len(set(groups)) == len(groups)  # a neighbour's advantages would differ
        for datum, (rollout, g, advantage) in zip(fb.kwargs["data"], expected_D, strict=True):
            prompt_T = rollout.kwargs["prompt"].to_ints()
            number = member_number(rollout.kwargs["sampling_params"].seed, g)
            sampled_S = tokenizer.encode(f" {number}")
            assert datum.model_input.to_ints() == prompt_T + sampled_S[:-1]
            advantages_N = datum.loss_fn_inputs["advantages"].to_numpy()
            np.testing.assert_allclose(
                advantages_N,
                [0.0] * (len(prompt_T) - 1) + [advantage] * len(sampled_S),
                rtol=1e-6,
                atol=1e-7,
            )


# -- the training request ---------------------------------------------------------------------


@pytest.mark.parametrize("cliprange", [0.1, 0.25, 0.5])
def test_the_ppo_request_clips_at_exactly_one_plus_or_minus_cliprange(run, cliprange):
    service = run(f"--cliprange={cliprange}")
    trained = service.of("forward_backward")
    assert trained
    for call in trained:
        assert call.kwargs["loss_fn"] == "ppo"
        assert call.kwargs["loss_fn_config"] == {
            "clip_low_threshold": pytest.approx(1 - cliprange, abs=1e-12),
            "clip_high_threshold": pytest.approx(1 + cliprange, abs=1e-12),
        }


def test_one_optim_step_at_the_flags_learning_rate_follows_each_forward_backward(run):
    service = run("--learning_rate=3e-4")
    methods = [c.method for c in service.calls if c.method in ("forward_backward", "optim_step")]
    assert methods == ["forward_backward", "optim_step"] * 4
    assert {c.kwargs["adam_params"].learning_rate for c in service.of("optim_step")} == {3e-4}


# -- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_rollouts_sample_at_the_flags_temperature_and_validation_greedily(run, temperature):
    service = run(f"--sampling_temperature={temperature}", "--sampling_max_tokens=11")
    assert len(rollouts(service)) == 4 * 3 and len(validations(service)) == 3 * 2
    for call in rollouts(service):
        assert call.kwargs["sampling_params"].temperature == temperature
        assert call.kwargs["sampling_params"].max_tokens == 11
    for call in validations(service):
        assert call.kwargs["sampling_params"].temperature == 0.0
        assert call.kwargs["sampling_params"].max_tokens == 11


def test_each_rollout_request_of_a_step_has_its_own_seed_from_seed_step_and_index(run, tmp_path):
    for seed in (0, 1):
        service = run(f"--seed={seed}", log_path=tmp_path / f"seed{seed}")
        for step, step_rollouts in enumerate(steps_of_rollouts(service)):
            seeds = [c.kwargs["sampling_params"].seed for c in step_rollouts]
            assert seeds == [request_seed(seed, step, i) for i in range(3)]
            assert len(set(seeds)) == len(seeds)
    assert request_seed(0, 1, 2) != request_seed(1, 1, 2) != request_seed(0, 2, 1)


def test_a_resumed_run_sends_the_requests_an_uninterrupted_one_does(run, tmp_path):
    straight = run(log_path=tmp_path / "straight")
    first = run("--n_grpo_steps=2", log_path=tmp_path / "interrupted")
    resumed = run(log_path=tmp_path / "interrupted", states=first.states)
    assert resumed.of("create_training_client_from_state_with_optimizer")

    def sent(service):
        return [
            (tuple(c.kwargs["prompt"].to_ints()), c.kwargs["sampling_params"].seed)
            for c in rollouts(service)
        ]

    assert sent(first) + sent(resumed) == sent(straight)
    assert len(set(sent(straight))) == len(sent(straight))


def test_every_step_samples_from_a_sampler_made_after_the_last_update(run):
    service = run()
    made, updated_since = 0, True
    for call in service.calls:
        if call.method == "save_weights_and_get_sampling_client":
            newest, made, updated_since = f"sampling@{made}", made + 1, False
        elif call.method == "optim_step":
            updated_since = True
        elif call.method == "sample":
            # Rollouts sample before any update; a streamed step's validation, on the same
            # snapshot (the weights the step started from), may follow the step's optim_step.
            rollout = call.kwargs["sampling_params"].seed is not None
            assert call.client == newest and not (updated_since and rollout), call
    assert len(service.of("save_weights_and_get_sampling_client")) == 4 + 1  # steps, final


# -- stops ------------------------------------------------------------------------------------


def test_the_r1_zero_stop_list_names_eos_and_the_boxed_prompt_keeps_the_implicit_stop():
    tokenizer = ScriptedService().tokenizer
    assert stop_sequences(tokenizer, use_r1_zero_format=True) == [
        "</answer>",
        tokenizer.eos_token,
    ]
    assert stop_sequences(tokenizer, use_r1_zero_format=False) is None


@pytest.mark.parametrize("r1_zero", [True, False])
def test_rollouts_and_validation_send_the_formats_stop_list(run, r1_zero):
    service = run(f"--use_r1_zero_format={r1_zero}")
    expected = stop_sequences(service.tokenizer, r1_zero)
    assert {str(c.kwargs["sampling_params"].stop) for c in service.of("sample")} == {str(expected)}


def eos_only_sampler(service: LocalServiceClient, model_dir: str):
    """A sampler over the tiny model rewired to say EOS at once: the layers add nothing, so the
    last hidden state is the input token's embedding, and the final norm keeps only a
    coordinate in which every embedding is positive and EOS's (tied) row is 100 times larger."""
    _, base = service.base(model_dir)
    eos = service.tokenizer(Path(model_dir)).eos_token_id
    with torch.no_grad():
        for layer in base.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        base.model.embed_tokens.weight[:, 0] = 1.0
        base.model.embed_tokens.weight[eos, 0] = 100.0
        base.model.norm.weight.zero_()
        base.model.norm.weight[0] = 1.0
    return service.create_sampling_client(base_model=model_dir).result()


def test_a_response_that_says_eos_before_its_answer_stops_there(tmp_path):
    service = LocalServiceClient(tmp_path, device="cpu", seed=0)
    sampler = eos_only_sampler(service, MODEL)
    tokenizer = sampler.get_tokenizer()
    config = parse_config([f"--model_name={MODEL}", "--sampling_max_tokens=6"])
    params = rollout_params(config, tokenizer, step=0, n_problems=1)[0]
    prompt = tinker.ModelInput.from_ints(tokenizer.encode("Question: 1 + 1?"))
    stopped = sampler.sample(prompt, num_samples=2, sampling_params=params).result()
    assert [s.stop_reason for s in stopped.sequences] == ["stop", "stop"]
    assert [s.tokens for s in stopped.sequences] == [[tokenizer.eos_token_id]] * 2
    # Without EOS in the list, the same response would run on to max_tokens.
    answer_only = params.model_copy(update={"stop": ["</answer>"]})
    ran_on = sampler.sample(prompt, num_samples=1, sampling_params=answer_only).result()
    assert ran_on.sequences[0].stop_reason == "length" and len(ran_on.sequences[0].tokens) == 6
