"""Comparing recorded and replayed requests: first and all differences, re-recording reports,
display, and the content key."""

from __future__ import annotations

from tinker import types

from harness.backends.cassette import Call, canonical_request
from harness.backends.cassette_codec import encode
from harness.backends.cassette_compare import (
    differences,
    first_difference,
    match_key,
    request_changes,
)


def sample_request(tokens, **params):
    return canonical_request(
        "sampling",
        "sample",
        (types.ModelInput.from_ints(tokens),),
        {"num_samples": 2, "sampling_params": types.SamplingParams(max_tokens=8, **params)},
    )


def test_the_first_difference_names_the_field_and_both_values():
    recorded = sample_request([5, 6, 7], seed=1)
    assert first_difference(recorded, sample_request([5, 6, 7], seed=1)) is None
    found = first_difference(recorded, sample_request([5, 9, 7], seed=1))
    assert found.describe() == "prompt.chunks[0].tokens[1]: recorded 6, replay 9"
    found = first_difference(recorded, sample_request([5, 6, 7], seed=2, temperature=0.5))
    assert found.describe() == "sampling_params.seed: recorded 1, replay 2"
    found = first_difference(recorded, sample_request([5, 6, 7]))
    assert found.describe() == "sampling_params.seed: recorded 1, replay (default)"
    found = first_difference(recorded, sample_request([5, 6]))
    assert found.describe() == "prompt.chunks[0].tokens (length): recorded 3, replay 2"


def test_every_difference_is_listed_in_order():
    recorded = sample_request([5, 6, 7], seed=1)
    found = list(differences(recorded, sample_request([5, 9, 8], seed=2)))
    assert [d.path for d in found] == [
        "prompt.chunks[0].tokens[1]",
        "prompt.chunks[0].tokens[2]",
        "sampling_params.seed",
    ]


def test_a_rerecording_reports_each_changed_field_once_with_its_count():
    def calls(temperature, clip):
        samples = [
            Call(
                i,
                f"sampling@{i}",
                "sample",
                sample_request([i, 2], seed=i, temperature=temperature),
            )
            for i in range(3)
        ]
        config = {"loss_fn": "ppo", "loss_fn_config": {"clip_low_threshold": clip}}
        return [*samples, Call(3, "training@0", "forward_backward", config)]

    before = calls(temperature=1.0, clip=0.8)
    assert request_changes(before, calls(temperature=1.0, clip=0.8)) == []
    assert request_changes(before, calls(temperature=0.7, clip=0.9)) == [
        "sampling.sample sampling_params.temperature: 3 calls, e.g. before 1.0, now 0.7",
        "training.forward_backward loss_fn_config.clip_low_threshold: 1 calls, e.g. before 0.8,"
        " now 0.9",
    ]
    assert request_changes(before, before[:2]) == ["the calls differ: 4 recorded before, 2 now"]
    reordered = [before[0], before[3], before[1], before[2]]
    assert request_changes(before, reordered)[1] == (
        "  first at call 1: sampling@1.sample before, training@0.forward_backward now"
    )


def test_long_values_are_shown_short():
    recorded = {"data": [encode(types.Datum(model_input=types.ModelInput.from_ints([1])))]}
    found = first_difference(recorded, {"data": []})
    assert found.describe() == "data (length): recorded 1, replay 0"
    found = first_difference({"tokens": list(range(100))}, {"tokens": None})
    assert found.describe() == "tokens: recorded [0, 1, 2, 3, ...] (100 items), replay None"


def test_floats_match_within_a_relative_tolerance_and_keys_ignore_it():
    a, b = sample_request([1], temperature=0.7), sample_request([1], temperature=0.7 * (1 + 1e-9))
    assert first_difference(a, b) is None
    assert match_key(a) == match_key(b)
    assert first_difference(a, sample_request([1], temperature=0.71)) is not None
