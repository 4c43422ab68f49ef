"""Sampling client of the local backend: batching, logprobs, seeds, stopping, snapshots."""

import numpy as np
import pytest
from tinker import types

from harness.backends.local import LocalServiceClient
from harness.datums import rollout_to_datum

PROMPTS = [[11, 12, 13, 14], [200, 201], [5, 6, 7, 8, 9, 10, 30]]


def params(**overrides) -> types.SamplingParams:
    return types.SamplingParams(**{"max_tokens": 12, "stop": [], **overrides})


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> LocalServiceClient:
    return LocalServiceClient(tmp_path_factory.mktemp("storage"), seed=0)


@pytest.fixture(scope="module")
def trained(service, tiny_model_dir):
    """A client one step away from its init, so the adapter is not a no-op."""
    client = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=0).result()
    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints(p[:-1]),
            loss_fn_inputs={"target_tokens": p[1:], "weights": [1.0] * (len(p) - 1)},
        )
        for p in PROMPTS
    ]
    client.forward_backward(data, "cross_entropy")
    client.optim_step(types.AdamParams(learning_rate=0.05)).result()
    return client


@pytest.fixture(scope="module")
def sampler(trained):
    return trained.save_weights_and_get_sampling_client().result()


def sample_all(sampler, sampling_params, num_samples=3, prompts=PROMPTS):
    """The loop's pattern: every request in flight, then collect."""
    futures = [
        sampler.sample(
            prompt=types.ModelInput.from_ints(p),
            num_samples=num_samples,
            sampling_params=sampling_params,
        )
        for p in prompts
    ]
    return [f.result(timeout=120) for f in futures]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_sampler_logprobs_equal_forward_logprobs(trained, sampler, temperature):
    extra = {"top_k": 50, "top_p": 0.9} if temperature == 0.7 else {}
    responses = sample_all(sampler, params(temperature=temperature, **extra))
    data, expected = [], []
    for prompt, response in zip(PROMPTS, responses, strict=True):
        for sequence in response.sequences:
            assert len(sequence.tokens) == 12 and sequence.stop_reason == "length"
            data.append(rollout_to_datum(prompt, sequence.tokens, sequence.logprobs, 1.0))
            expected.append((len(prompt) - 1, sequence.logprobs))
    output = trained.forward(data, "importance_sampling").result()
    for out, (start, sampled) in zip(output.loss_fn_outputs, expected, strict=True):
        np.testing.assert_allclose(out["logprobs"].to_numpy()[start:], sampled, atol=1e-5)


def test_sequences_and_types(sampler):
    responses = sample_all(sampler, params(temperature=1.0))
    ids = [s.sequence_id for r in responses for s in r.sequences]
    assert len(set(ids)) == len(ids) == 9
    sequence = responses[0].sequences[0]
    assert isinstance(sequence, types.SampledSequence)
    assert all(isinstance(t, int) for t in sequence.tokens)
    assert responses[0].prompt_logprobs is None


def test_greedy_is_deterministic(sampler):
    first, second = (sample_all(sampler, params(temperature=0.0)) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        tokens = [s.tokens for s in a.sequences]
        assert tokens == [s.tokens for s in b.sequences]
        assert all(t == tokens[0] for t in tokens)  # every greedy sample is the same


def tokens_of(response) -> list[list[int]]:
    return [s.tokens for s in response.sequences]


def test_seeded_sampling_is_reproducible_and_batch_independent(service, trained, sampler):
    seeded = params(temperature=1.0, seed=1234)
    alone = sample_all(sampler, seeded, num_samples=4, prompts=PROMPTS[:1])[0]
    crowd = [
        sampler.sample(types.ModelInput.from_ints(p), 5, params(temperature=0.9)) for p in PROMPTS
    ]
    crowded = sampler.sample(types.ModelInput.from_ints(PROMPTS[0]), 4, seeded)
    fewer = sampler.sample(types.ModelInput.from_ints(PROMPTS[0]), 2, seeded)
    [f.result() for f in crowd]
    assert tokens_of(crowded.result()) == tokens_of(alone)
    assert tokens_of(fewer.result()) == tokens_of(alone)[:2]
    assert len({tuple(t) for t in tokens_of(alone)}) == 4  # samples of one request differ
    other_seed = sample_all(sampler, params(temperature=1.0, seed=4321), 4, PROMPTS[:1])[0]
    assert tokens_of(other_seed) != tokens_of(alone)
    # One row per batch: the same tokens however the batch is cut.
    tiny_budget = LocalServiceClient(service.store.root, memory_budget_bytes=1)
    path = trained.save_weights_for_sampler("seeded").result().path
    narrow = tiny_budget.create_sampling_client(model_path=path).result()
    assert tokens_of(sample_all(narrow, seeded, 4, PROMPTS[:1])[0]) == tokens_of(alone)


def test_unseeded_requests_replay_with_a_seeded_service(tiny_model_dir, tmp_path):
    def run() -> list[list[int]]:
        service = LocalServiceClient(tmp_path, seed=5)
        sampler = service.create_sampling_client(base_model=str(tiny_model_dir)).result()
        return [tokens_of(r) for r in sample_all(sampler, params(temperature=1.0))]

    assert run() == run()


def test_stop_token_ids_and_strings_end_generation(sampler):
    prompt = PROMPTS[2]
    free = sample_all(sampler, params(temperature=0.0, max_tokens=20), 1, [prompt])[0]
    tokens = free.sequences[0].tokens
    stop_token = tokens[5]
    by_id = sample_all(
        sampler, params(temperature=0.0, max_tokens=20, stop=[stop_token]), 1, [prompt]
    )
    got = by_id[0].sequences[0]
    first = tokens.index(stop_token)
    assert got.stop_reason == "stop" and got.tokens == tokens[: first + 1]

    tokenizer = sampler.get_tokenizer()
    stop_text = tokenizer.decode(tokens[6:8])
    by_string = sample_all(
        sampler, params(temperature=0.0, max_tokens=20, stop=[stop_text]), 1, [prompt]
    )
    got = by_string[0].sequences[0]
    assert got.stop_reason == "stop"
    assert got.tokens == tokens[: len(got.tokens)] and len(got.tokens) <= 8
    assert stop_text in tokenizer.decode(got.tokens)
    assert stop_text not in tokenizer.decode(got.tokens[:-1])


def test_max_tokens_bounds_every_sample(sampler):
    for max_tokens in (1, 7):
        response = sample_all(sampler, params(temperature=1.0, max_tokens=max_tokens))
        assert {len(s.tokens) for r in response for s in r.sequences} == {max_tokens}
        assert {s.stop_reason for r in response for s in r.sequences} == {"length"}


def test_default_stop_is_eos_and_an_empty_list_disables_it(service, tiny_model_dir):
    """Teach the model to answer EOS (token 0 in the fixture) at once, then sample greedily."""
    client = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=4).result()
    prompt = PROMPTS[0]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(prompt),
        loss_fn_inputs={"target_tokens": [*prompt[1:], 0], "weights": [0.0] * 3 + [1.0]},
    )
    for _ in range(10):
        client.forward_backward([datum], "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=0.1))
    sampler = client.save_weights_and_get_sampling_client().result()
    greedy = {"max_tokens": 5, "temperature": 0.0}
    eos = sample_all(sampler, types.SamplingParams(**greedy), 1, [prompt])[0].sequences[0]
    assert eos.tokens == [0] and eos.stop_reason == "stop"
    free = sample_all(sampler, types.SamplingParams(**greedy, stop=[]), 1, [prompt])[0]
    assert free.sequences[0].tokens[0] == 0 and len(free.sequences[0].tokens) == 5


def test_compute_logprobs_matches_forward(trained, sampler):
    prompt = PROMPTS[2]
    got = sampler.compute_logprobs(types.ModelInput.from_ints(prompt)).result()
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(prompt[:-1]),
        loss_fn_inputs={"target_tokens": prompt[1:], "weights": [1.0] * (len(prompt) - 1)},
    )
    expected = trained.forward([datum], "cross_entropy").result().loss_fn_outputs[0]
    assert got[0] is None
    np.testing.assert_allclose(got[1:], expected["logprobs"].to_numpy(), atol=1e-5)
    last = sampler.compute_logprobs(types.ModelInput.from_ints(prompt), 2).result()
    assert last[:-2] == [None] * (len(prompt) - 2) and last[-2:] == pytest.approx(got[-2:])


def test_a_sampler_is_a_snapshot(service, tiny_model_dir):
    client = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=9).result()
    sampler = client.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(PROMPTS[0])
    before = sampler.compute_logprobs(prompt).result()
    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints(PROMPTS[0][:-1]),
            loss_fn_inputs={"target_tokens": PROMPTS[0][1:], "weights": [1.0] * 3},
        )
    ]
    client.forward_backward(data, "cross_entropy")
    client.optim_step(types.AdamParams(learning_rate=0.1)).result()
    assert sampler.compute_logprobs(prompt).result() == before
    fresh = client.save_weights_and_get_sampling_client().result()
    assert fresh.compute_logprobs(prompt).result() != before


def test_samplers_from_paths_and_base(service, trained, sampler, tiny_model_dir):
    prompt = types.ModelInput.from_ints(PROMPTS[1])
    expected = sampler.compute_logprobs(prompt).result()
    for path in (
        trained.save_weights_for_sampler("for-path").result().path,
        trained.save_state("for-path").result().path,
    ):
        from_path = service.create_sampling_client(model_path=path).result()
        assert from_path.compute_logprobs(prompt).result() == pytest.approx(expected, abs=1e-6)
    base = service.create_sampling_client(base_model=str(tiny_model_dir)).result()
    assert base.compute_logprobs(prompt).result() != pytest.approx(expected, abs=1e-4)
    assert base.get_base_model() == str(tiny_model_dir)


@pytest.mark.parametrize(
    ("prompt", "sampling_params", "message"),
    [
        ([1, 2], types.SamplingParams(), "max_tokens"),
        ([1, 2], params(temperature=-1.0), "temperature"),
        ([1, 2], params(top_p=0.0), "top_p"),
        ([1, 5000], params(), "token id 5000"),
        ([], params(), "empty"),
        ([1, 2], params(max_tokens=5000), "context"),
        ([1, 2], params(stop=[""]), "non-empty"),
    ],
)
def test_bad_sampling_requests_fail_clearly(sampler, prompt, sampling_params, message):
    future = sampler.sample(types.ModelInput.from_ints(prompt), 1, sampling_params)
    with pytest.raises(ValueError, match=message):
        future.result(timeout=60)


def test_sampling_after_close_fails_instead_of_hanging(tiny_model_dir, tmp_path):
    service = LocalServiceClient(tmp_path)
    sampler = service.create_sampling_client(base_model=str(tiny_model_dir)).result()
    service.close().result()
    future = sampler.sample(types.ModelInput.from_ints(PROMPTS[0]), 1, params())
    with pytest.raises(RuntimeError, match="closed"):
        future.result(timeout=10)
