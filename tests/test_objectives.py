"""Each loss type and length normalisation, realised through a Tinker built-in loss, has the
gradient of CS336's `grpo_microbatch_train_step` on the same rollouts, to 1e-5 of its norm.

The Datums go through the local backend's `forward_backward` (its Tinker losses, summed over
every token of every Datum); the reference is `harness.grpo.grpo_microbatch_train_step` with one
accumulation step, which averages the B responses' losses. So the one global constant between
them is B, the number of rollouts of the optimizer step, zero-signal ones included: the
reference counts them in its mean, while the Datums leave them out, since they add nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.backends.local import LocalServiceClient
from harness.backends.local.losses import selected_logprobs
from harness.backends.local.models import causal_lm, forward
from harness.datums import step_datums
from harness.grpo import LOSS_TYPES, group_normalized_advantages, grpo_microbatch_train_step
from harness.objectives import optimizer_steps, tinker_loss, training_signal

MAX_TOKENS = 12
CLIPRANGE = 0.2
NORMALIZATIONS = ("sum", "sequence_mean", "constant")


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    service = LocalServiceClient(tmp_path_factory.mktemp("storage"), seed=0)
    return service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=3).result()


def trainable(client) -> list[torch.nn.Parameter]:
    return [p for p in client.model.parameters() if p.requires_grad]


def take_gradients(client) -> list[torch.Tensor]:
    grads = [p.grad.detach().clone() for p in trainable(client)]
    for p in trainable(client):
        p.grad = None
    return grads


def response_logprobs(client, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log pi of each response token given the prompt and the tokens before it, with grad."""
    sequence = torch.tensor([prompt + response])
    logits, _ = forward(causal_lm(client.model), sequence[:, :-1])
    return selected_logprobs(logits, sequence[:, 1:])[0, len(prompt) - 1 :]


def rollouts(rng: np.random.Generator, prompt_lengths, response_lengths_P_G):
    prompts = [rng.integers(1, 2000, size=n).tolist() for n in prompt_lengths]
    responses = [
        [rng.integers(1, 2000, size=n).tolist() for n in row] for row in response_lengths_P_G
    ]
    return prompts, responses


def reference_gradients(client, prompts, responses_P_G, old_P_G, rewards_P_G, advantages_P_G,
                        loss_type, normalization):  # fmt: skip
    """grpo_microbatch_train_step's gradient on every rollout, right-padded to (B, T)."""
    flat = [(p, g) for p in range(len(prompts)) for g in range(len(responses_P_G[p]))]
    width = max(len(responses_P_G[p][g]) for p, g in flat)
    old = torch.zeros(len(flat), width)
    mask = torch.zeros(len(flat), width)
    rows = []
    for b, (p, g) in enumerate(flat):
        n = len(responses_P_G[p][g])
        rows.append(response_logprobs(client, prompts[p], responses_P_G[p][g]))
        old[b, :n] = torch.from_numpy(old_P_G[p][g])
        mask[b, :n] = 1
    policy = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    grpo_microbatch_train_step(
        policy,
        mask,
        1,
        loss_type,
        raw_rewards=torch.tensor([[rewards_P_G[p, g]] for p, g in flat]),
        advantages=torch.tensor([[advantages_P_G[p, g]] for p, g in flat]),
        old_log_probs=old,
        cliprange=CLIPRANGE,
        length_normalization=normalization,
        normalize_constant=MAX_TOKENS,
    )
    return take_gradients(client), len(flat)


def tinker_gradients(client, prompts, responses_P_G, old_P_G, rewards_P_G, advantages_P_G,
                     loss_type, normalization):  # fmt: skip
    lengths_P_G = np.array([[len(r) for r in row] for row in responses_P_G])
    signal_P_G = training_signal(
        loss_type, advantages_P_G, rewards_P_G, lengths_P_G, normalization, MAX_TOKENS
    )
    loss = tinker_loss(loss_type, CLIPRANGE)
    datums, _ = step_datums(prompts, responses_P_G, old_P_G, signal_P_G, loss.signal_input)
    client.forward_backward(datums, loss.loss_fn, loss.loss_fn_config).result()
    return take_gradients(client)


def check_equivalence(client, rng, prompt_lengths, response_lengths_P_G, rewards_P_G,
                      loss_type, normalization):  # fmt: skip
    prompts, responses = rollouts(rng, prompt_lengths, response_lengths_P_G)
    # Old logprobs away from the current ones, so ratios differ from 1 and some are clipped.
    with torch.no_grad():
        current = [[response_logprobs(client, prompts[p], r).numpy() for r in row]
                   for p, row in enumerate(responses)]  # fmt: skip
    old = [
        [(c + rng.normal(0, 0.3, size=c.shape)).astype(np.float32) for c in row] for row in current
    ]
    advantages = group_normalized_advantages(torch.tensor(rewards_P_G), 1e-6, True).numpy()
    args = (prompts, responses, old, rewards_P_G, advantages, loss_type, normalization)
    got = tinker_gradients(client, *args)
    want, batch_size = reference_gradients(client, *args)
    assert any(w.abs().max() > 0 for w in want)
    got_all, want_all = (
        torch.cat([g.flatten() for g in got]),
        torch.cat([w.flatten() for w in want]),
    )
    # Relative to the gradient's norm: float32 sums in another order leave ~1e-7 everywhere.
    error = torch.linalg.vector_norm(got_all - batch_size * want_all)
    assert error <= 1e-5 * torch.linalg.vector_norm(batch_size * want_all)


# Two prompts of different lengths; responses of different lengths; the third group's rewards
# are all equal (no advantage, but a raw reward for no_baseline).
PROMPT_LENGTHS = (3, 7, 5)
RESPONSE_LENGTHS = ((1, 4, 9), (6, 2, 3), (5, 8, 2))
REWARDS = np.array([[1.0, 0.0, 0.2], [0.0, 0.8, 1.0], [1.0, 1.0, 1.0]], dtype=np.float32)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_the_datums_gradient_is_the_reference_times_the_batch_size(
    client, loss_type, normalization
):
    rng = np.random.default_rng(0)
    check_equivalence(
        client, rng, PROMPT_LENGTHS, RESPONSE_LENGTHS, REWARDS, loss_type, normalization
    )


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    groups=st.integers(1, 3),
    group_size=st.integers(2, 3),
)
def test_ppo_with_sequence_means_matches_the_reference_for_any_lengths_and_rewards(
    client, data, groups, group_size
):
    lengths = st.integers(1, MAX_TOKENS)
    prompt_lengths = data.draw(st.lists(st.integers(1, 8), min_size=groups, max_size=groups))
    response_lengths = data.draw(
        st.lists(
            st.lists(lengths, min_size=group_size, max_size=group_size),
            min_size=groups,
            max_size=groups,
        )
    )
    rewards = np.array(
        data.draw(
            st.lists(
                st.lists(
                    st.sampled_from([0.0, 0.2, 1.0]), min_size=group_size, max_size=group_size
                ),
                min_size=groups,
                max_size=groups,
            )
        ),
        dtype=np.float32,
    )
    if (rewards == rewards[:, :1]).all():  # no gradient to compare
        rewards[0, 0] = 1.0 - rewards[0, 0]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    check_equivalence(
        client, rng, prompt_lengths, response_lengths, rewards, "grpo_clip", "sequence_mean"
    )


def test_the_loss_types_use_tinkers_built_in_losses():
    assert tinker_loss("grpo_clip", 0.2).loss_fn == "ppo"
    assert tinker_loss("grpo_clip", 0.2).loss_fn_config == pytest.approx(
        {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    )
    assert tinker_loss("grpo_no_clip", 0.2).loss_fn == "importance_sampling"
    for loss_type in ("reinforce_with_baseline", "no_baseline"):
        loss = tinker_loss(loss_type, 0.2)
        assert (loss.loss_fn, loss.signal_input) == ("cross_entropy", "weights")


def test_the_default_signal_is_exactly_the_advantages():
    advantages = np.array([[0.5, -0.5], [1.25, -1.25]], dtype=np.float32)
    signal = training_signal(
        "grpo_clip", advantages, advantages + 3, np.array([[3, 4], [5, 6]]), "sum", 9
    )
    assert signal.dtype == np.float32 and np.array_equal(signal, advantages)


def test_minibatches_are_consecutive_rollouts_repeated_each_epoch():
    # 2 problems x 2 members; rollout (0, 1) has no Datum (e.g. an empty response).
    origins = [(0, 0), (1, 0), (1, 1)]
    assert optimizer_steps(origins, 2, 2, epochs=2) == [[0], [1, 2], [0], [1, 2]]
    assert optimizer_steps(origins, 2, 4, epochs=1) == [[0, 1, 2]]
    # A minibatch with no Datum takes no step.
    assert optimizer_steps([(1, 0)], 2, 2, epochs=1) == [[0]]
