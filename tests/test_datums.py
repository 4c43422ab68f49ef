"""Rollout -> Datum: token alignment, masking, validation, and agreement with grpo.py."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.datums import rollout_to_datum, step_datums
from harness.grpo import compute_grpo_clip_loss

FAST = settings(max_examples=60, deadline=None)

tokens = st.lists(st.integers(0, 2**40), max_size=24)
finite_logprobs = st.floats(-30.0, 0.0, width=32)
finite_advantages = st.floats(-10.0, 10.0, width=32)


@st.composite
def rollouts(draw, min_sampled=0):
    prompt = draw(tokens.filter(bool))
    sampled = draw(st.lists(st.integers(0, 2**40), min_size=min_sampled, max_size=24))
    logprobs = draw(st.lists(finite_logprobs, min_size=len(sampled), max_size=len(sampled)))
    return prompt, sampled, logprobs, draw(finite_advantages)


def fields(datum):
    """The Datum as plain lists: model_input, target_tokens, logprobs, advantages."""
    inputs = datum.loss_fn_inputs
    return (
        datum.model_input.to_ints(),
        inputs["target_tokens"].tolist(),
        inputs["logprobs"].tolist(),
        inputs["advantages"].tolist(),
    )


def test_golden_datum():
    datum = rollout_to_datum([11, 12, 13], [21, 22], [-0.5, -0.25], 1.5)
    assert fields(datum) == (
        [11, 12, 13, 21],
        [12, 13, 21, 22],
        [0.0, 0.0, -0.5, -0.25],
        [0.0, 0.0, 1.5, 1.5],
    )
    assert datum.loss_fn_inputs["target_tokens"].dtype == "int64"
    assert datum.loss_fn_inputs["logprobs"].dtype == "float32"
    assert datum.loss_fn_inputs["advantages"].dtype == "float32"


def test_one_token_prompt_and_numpy_inputs():
    datum = rollout_to_datum(np.array([5]), np.array([6, 7], dtype=np.uint32), [-1.0, -2.0], -0.5)
    assert fields(datum) == ([5, 6], [6, 7], [-1.0, -2.0], [-0.5, -0.5])


@FAST
@given(rollouts())
def test_datum_alignment(rollout):
    prompt, sampled, logprobs, advantage = rollout
    datum = rollout_to_datum(prompt, sampled, logprobs, advantage)
    if not sampled:
        assert datum is None
        return
    model_input, targets, datum_logprobs, advantages = fields(datum)
    n, p = len(prompt) + len(sampled) - 1, len(prompt)
    assert len(model_input) == len(targets) == len(datum_logprobs) == len(advantages) == n
    assert datum.model_input.length == n
    sequence = prompt + sampled
    assert all(model_input[i] == sequence[i] and targets[i] == sequence[i + 1] for i in range(n))
    assert datum_logprobs[: p - 1] == [0.0] * (p - 1)
    assert advantages[: p - 1] == [0.0] * (p - 1)
    assert datum_logprobs[p - 1 :] == logprobs
    assert advantages[p - 1 :] == [advantage] * len(sampled)


def test_empty_response_gives_no_datum():
    assert rollout_to_datum([1, 2, 3], [], [], 1.0) is None


@pytest.mark.parametrize(
    ("prompt", "sampled", "logprobs", "advantage", "message"),
    [
        ([1, 2], [3, 4], [-1.0], 1.0, "1 sampler logprobs for 2 sampled tokens"),
        ([1, 2], [3, 4], None, 1.0, "sampler_logprobs is None"),
        ([1, 2], [], [-1.0], 1.0, "1 sampler logprobs for 0 sampled tokens"),
        ([], [3, 4], [-1.0, -1.0], 1.0, "prompt_tokens is empty"),
        ([1, 2], [3, 4], [-1.0, -1.0], math.nan, "advantage must be finite"),
        ([1, 2], [3, 4], [-1.0, -1.0], math.inf, "advantage must be finite"),
        ([1, 2], [3, 4], [-1.0, math.nan], 1.0, "sampler_logprobs must all be finite"),
        ([1, 2], [3, 4], [-math.inf, -1.0], 1.0, "sampler_logprobs must all be finite"),
        ([1, -2], [3, 4], [-1.0, -1.0], 1.0, "prompt_tokens holds a negative token id"),
        ([1, 2], [3, -4], [-1.0, -1.0], 1.0, "sampled_tokens holds a negative token id"),
        ([1, 2], [3, 4.5], [-1.0, -1.0], 1.0, "sampled_tokens must be a flat sequence of int"),
        ([1, 2], [True, False], [-1.0, -1.0], 1.0, "sampled_tokens must be a flat sequence"),
        ([[1, 2]], [3, 4], [-1.0, -1.0], 1.0, "prompt_tokens must be a flat sequence"),
        ([1, 2**70], [3, 4], [-1.0, -1.0], 1.0, "prompt_tokens must be a flat sequence"),
    ],
)
def test_bad_rollouts_raise(prompt, sampled, logprobs, advantage, message):
    with pytest.raises(ValueError, match=message):
        rollout_to_datum(prompt, sampled, logprobs, advantage)


def test_step_datums_skip_zero_variance_groups_and_empty_responses():
    prompts_P = [[1, 2], [3], [4, 5, 6]]
    sampled_P_G = [[[7, 8], [9]], [[10], [11]], [[], [12, 13]]]
    logprobs_P_G = [[[-0.1, -0.2], [-0.3]], [[-0.4], [-0.5]], [[], [-0.6, -0.7]]]
    advantages_P_G = torch.tensor([[1.0, -1.0], [0.0, 0.0], [-0.5, 0.5]])
    datums_D, sources_D = step_datums(prompts_P, sampled_P_G, logprobs_P_G, advantages_P_G)
    assert sources_D == [(0, 0), (0, 1), (2, 1)]
    assert [fields(d) for d in datums_D] == [
        fields(rollout_to_datum([1, 2], [7, 8], [-0.1, -0.2], 1.0)),
        fields(rollout_to_datum([1, 2], [9], [-0.3], -1.0)),
        fields(rollout_to_datum([4, 5, 6], [12, 13], [-0.6, -0.7], 0.5)),
    ]


def test_step_datums_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="per-problem inputs differ"):
        step_datums([[1]], [[[2]], [[3]]], [[[-1.0]]], [[1.0]])
    with pytest.raises(ValueError, match=r"prompt_tokens_P\[1\] holds a negative"):
        step_datums([[1], [-1]], [[[2]], [[3]]], [[[-1.0]], [[-1.0]]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="problem 0: group members differ"):
        step_datums([[1]], [[[2], [3]]], [[[-1.0], [-1.0]]], [[1.0]])


@FAST
@given(
    rollouts(min_sampled=1),
    st.sampled_from([0.1, 0.2, 0.3]),
    st.lists(st.floats(-3.0, 3.0), min_size=48, max_size=48),
)
def test_tinker_ppo_loss_on_the_datum_equals_grpo_clip_loss(rollout, cliprange, shifts):
    prompt, sampled, logprobs, advantage = rollout
    datum = rollout_to_datum(prompt, sampled, logprobs, advantage)
    n, s = datum.model_input.length, len(sampled)
    # Current-policy target logprobs: anything on prompt positions, sampler's + shift after.
    target_logprobs_N = torch.tensor(
        [logprobs[i - (n - s)] + shifts[i] if i >= n - s else -shifts[i] for i in range(n)]
    )
    # docs/DESIGN.md §3, the `ppo` loss from the Datum's own fields.
    sampler_logprobs_N = datum.loss_fn_inputs["logprobs"].to_torch()
    advantages_N = datum.loss_fn_inputs["advantages"].to_torch()
    ratio_N = torch.exp(target_logprobs_N - sampler_logprobs_N)
    ppo_loss = -torch.minimum(
        ratio_N * advantages_N, torch.clamp(ratio_N, 1 - cliprange, 1 + cliprange) * advantages_N
    ).sum()
    grpo_loss_1_S, _ = compute_grpo_clip_loss(
        torch.tensor([[advantage]]),
        target_logprobs_N[n - s :][None],
        torch.tensor([logprobs]),
        cliprange,
    )
    torch.testing.assert_close(ppo_loss, grpo_loss_1_S.sum(), rtol=1e-5, atol=1e-4)
