"""The cassette file format: canonical requests, reading files cut short or damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tinker import types

from harness.backends.cassette import CassetteError, canonical_request, read_cassette


def test_requests_are_canonical_whether_arguments_are_positional_keyword_or_default():
    prompt, params = types.ModelInput.from_ints([1, 2]), types.SamplingParams(max_tokens=8)
    positional = canonical_request("sampling", "sample", (prompt, 2, params), {})
    keyword = canonical_request(
        "sampling",
        "sample",
        (),
        {"prompt": prompt, "num_samples": 2, "sampling_params": params, "topk_prompt_logprobs": 0},
    )
    assert positional == keyword
    assert set(positional) == {"prompt", "num_samples", "sampling_params"}


def test_a_token_sequence_is_the_same_request_however_it_is_split_into_chunks():
    def prompt(*chunks):
        return types.ModelInput(chunks=[types.EncodedTextChunk(tokens=c) for c in chunks])

    def request(model_input):
        return canonical_request("sampling", "compute_logprobs", (model_input,), {})

    assert request(prompt([1, 2], [3], [4, 5])) == request(prompt([1, 2, 3, 4, 5]))
    assert request(prompt([1, 2], [3]))["prompt"]["chunks"][0]["tokens"] == [1, 2, 3]
    assert request(prompt([1, 2], [4])) != request(prompt([1, 2, 3]))

    def trained(model_input):  # a ModelInput inside a Datum inside the list of data
        weights = np.ones(3, np.float32)
        datum = types.Datum(model_input=model_input, loss_fn_inputs={"weights": weights})
        return canonical_request("training", "forward_backward", ([datum], "cross_entropy"), {})

    joined = trained(prompt([1], [2, 3]))
    assert joined == trained(prompt([1, 2, 3]))
    assert [c["tokens"] for c in joined["data"][0]["model_input"]["chunks"]] == [[1, 2, 3]]


def test_credentials_passed_as_arguments_are_never_recorded():
    request = canonical_request(
        "service",
        "create_training_client_from_state",
        ("tinker://run/weights/x",),
        {"weights_access_token": "tml-abcdef123456"},
    )
    assert request["weights_access_token"] == "<redacted>"


def test_a_line_cut_short_by_a_kill_is_skipped_and_order_is_by_index(tmp_path):
    path = tmp_path / "run.jsonl"
    call = {"client": "service", "method": "create_lora_training_client", "request": {}}
    path.write_text(
        json.dumps({"cassette": 1})
        + "\n"
        + json.dumps({"index": 1, **call})
        + "\n"
        + json.dumps({"index": 0, **call})
        + '\n{"index": 2, "cli'
    )
    assert [c.index for c in read_cassette(path).calls] == [0, 1]


def test_a_call_whose_result_never_came_ends_the_recording(tmp_path):
    path = tmp_path / "run.jsonl"
    rows = [{"cassette": 1}] + [
        {"index": i, "client": "service", "method": "m", "request": {}} for i in (0, 1, 3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [c.index for c in read_cassette(path).calls] == [0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no cassette header"), ('{"cassette": 99}\n', "format 99"), ("{}\n", "no cassette")],
)
def test_files_that_are_not_cassettes_are_refused_clearly(tmp_path, text, message):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(CassetteError, match=message):
        read_cassette(path)
