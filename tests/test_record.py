"""The recorder: wrapping a backend changes nothing it returns, and every call becomes a line."""

from __future__ import annotations

import asyncio
import json

import pytest
import tinker

import harness
from harness.backends.cassette import read_cassette
from harness.backends.record import RecordingServiceClient, dumps_line, reward_name, secrets_in
from harness.rollouts import sampling_purpose, submit_groups
from tests.support.fake_backend import PARAMS, PROMPT, FakeService, Tokenizer, response
from tests.support.varied_reward_run import varied_reward


def recording(path, environ=None, backend=None, **config):
    return RecordingServiceClient(
        backend or FakeService(),
        path,
        backend="fake",
        config={"model_name": "Org/Model", **config},
        reward=reward_name(varied_reward),
        environ=environ or {},
    )


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_header_says_what_replay_needs(tmp_path):
    with recording(tmp_path / "run.jsonl", cliprange=0.2):
        pass
    (header,) = lines(tmp_path / "run.jsonl")
    assert header["harness"] == harness.__version__ and header["tinker"] == tinker.__version__
    assert header["backend"] == "fake" and header["model"] == "Org/Model"
    assert header["config"] == {"model_name": "Org/Model", "cliprange": 0.2}
    assert header["reward"] == "tests.support.varied_reward_run:varied_reward"


def test_wrapped_clients_give_the_backends_results_through_sdk_futures(tmp_path):
    fake = FakeService()
    with recording(tmp_path / "run.jsonl", backend=fake) as service:
        create = service.create_lora_training_client("Org/Model", rank=8)
        assert isinstance(create, tinker.APIFuture)
        training = create.result()
        sampler = training.save_weights_and_get_sampling_client().result()
        future = sampler.sample(PROMPT, 2, PARAMS)
        expected = response(5, 6)
        fake.training.sampler.pending[0].set_result(expected)
        assert future.result() is expected

        async def submit_and_await():
            future = sampler.sample(PROMPT, 1, PARAMS)
            fake.training.sampler.pending[-1].set_result(expected)
            return await future

        assert asyncio.run(submit_and_await()) is expected
        assert service.backend_only == "not a recorded method"


def test_each_call_is_indexed_at_submission_and_written_when_its_result_arrives(tmp_path):
    path, fake = tmp_path / "run.jsonl", FakeService()
    with recording(path, backend=fake) as service:
        training = service.create_lora_training_client("Org/Model").result()
        tokenizer = training.get_tokenizer()
        sampler = training.save_weights_and_get_sampling_client().result()
        first = sampler.sample(PROMPT, 2, PARAMS)
        second = sampler.sample(prompt=PROMPT, num_samples=3, sampling_params=PARAMS)
        pending = fake.training.sampler.pending
        pending[1].set_result(response(1))
        assert len(lines(path)) == 5  # header + 3 calls + the second sample; the first waits
        pending[0].set_result(response(2))
        first.result(), second.result()
    assert isinstance(tokenizer, Tokenizer)
    rows = lines(path)[1:]
    assert [row["index"] for row in rows] == [0, 1, 2, 4, 3]
    assert [(row["client"], row["method"]) for row in rows] == [
        ("service", "create_lora_training_client"),
        ("training@0", "get_tokenizer"),
        ("training@0", "save_weights_and_get_sampling_client"),
        ("sampling@2", "sample"),
        ("sampling@2", "sample"),
    ]
    assert rows[0]["request"] == {"base_model": "Org/Model"}  # rank=32 is the SDK's default
    assert rows[0]["response"] == {"$client": "training@0"}
    assert rows[1]["response"] == {"$tokenizer": {"name": "Org/Model"}}
    assert rows[3]["request"]["num_samples"] == 3 and rows[4]["request"]["num_samples"] == 2
    assert rows[4]["submitted_s"] <= rows[3]["submitted_s"]
    assert all(row["latency_s"] >= 0 for row in rows)
    calls = read_cassette(path).calls
    assert [c.index for c in calls] == [0, 1, 2, 3, 4]
    assert calls[3].response["sequences"][0]["_tokens_list"] == [2]


def test_errors_reach_the_caller_unchanged_and_are_recorded(tmp_path):
    path, fake = tmp_path / "run.jsonl", FakeService()
    with recording(path, backend=fake) as service:
        training = service.create_lora_training_client("Org/Model").result()
        sampler = training.save_weights_and_get_sampling_client().result()
        with pytest.raises(ValueError, match="num_samples must be >= 1"):
            sampler.sample(PROMPT, 0, PARAMS)
        future = sampler.sample(PROMPT, 1, PARAMS)
        failure = RuntimeError("sampler crashed")
        fake.training.sampler.pending[0].set_exception(failure)
        with pytest.raises(RuntimeError) as raised:
            future.result()
        assert raised.value is failure
    submit_error, result_error = (row["error"] for row in lines(path)[-2:])
    assert submit_error == {
        "type": "ValueError",
        "message": "num_samples must be >= 1",
        "at": "submit",
    }
    assert result_error == {"type": "RuntimeError", "message": "sampler crashed", "at": "result"}


def test_a_rerun_keeps_the_earlier_cassette(tmp_path):
    path = tmp_path / "run.jsonl"
    for config in ({"seed": 1}, {"seed": 2}, {"seed": 3}):
        with recording(path, **config):
            pass
    seeds = [
        lines(p)[0]["config"]["seed"]
        for p in (tmp_path / "run.1.jsonl", tmp_path / "run.2.jsonl", path)
    ]
    assert seeds == [1, 2, 3]


def test_secrets_in_the_environment_never_reach_the_file(tmp_path):
    path = tmp_path / "run.jsonl"
    secret = "tml-recorder-test-0123456789"
    fake = FakeService()
    environ = {"TINKER_API_KEY": secret}
    with recording(path, environ, fake, wandb_name=f"run-{secret}") as service:
        training = service.create_lora_training_client(f"Org/{secret}").result()
        sampler = training.save_weights_and_get_sampling_client().result()
        future = sampler.sample(PROMPT, 1, PARAMS)
        fake.training.sampler.pending[0].set_exception(RuntimeError(f"bad key {secret}"))
        with pytest.raises(RuntimeError):
            future.result()
    text = path.read_text()
    assert secret not in text
    assert text.count("<redacted:TINKER_API_KEY>") == 3


def test_secret_values_are_found_by_variable_name_and_scrubbed_wherever_they_occur():
    environ = {
        "TINKER_API_KEY": "tml-0123456789abcdef",
        "my_service_token": "tok-zyxwvutsrq",
        "DB_SECRET": 'pa"ss\\word-é',
        "HOME_DIR_SECRET": "short",  # too short to be a credential
        "TOKENIZERS_PARALLELISM": "falsefalse",  # a tokenizer setting, not a token
        "PATH": "tml-0123456789abcdef-not-a-secret-name-but-contains-one",
    }
    secrets = secrets_in(environ)
    assert set(secrets.values()) == {"TINKER_API_KEY", "my_service_token", "DB_SECRET"}
    row = {
        "message": "401 for key tml-0123456789abcdef",
        "tok-zyxwvutsrq": [1.5, 'pa"ss\\word-é'],
    }
    line = dumps_line(row, secrets)
    for value in secrets:
        assert value not in line and json.dumps(value)[1:-1] not in line
    assert json.loads(line) == {
        "message": "401 for key <redacted:TINKER_API_KEY>",
        "<redacted:my_service_token>": [1.5, "<redacted:DB_SECRET>"],
    }


def test_a_sample_call_keeps_the_purpose_its_sender_marked(tmp_path):
    fake = FakeService()
    with recording(tmp_path / "run.jsonl", backend=fake) as service:
        training = service.create_lora_training_client("Org/Model", rank=8).result()
        sampler = training.save_weights_and_get_sampling_client().result()
        unmarked = sampler.sample(PROMPT, 1, PARAMS)
        for purpose in ("rollout", "evaluation"):
            submit_groups(sampler, [PROMPT], 1, [PARAMS], purpose=purpose)
        for future in fake.training.sampler.pending:
            future.set_result(response(5))
        unmarked.result()
    calls = [c for c in read_cassette(tmp_path / "run.jsonl").calls if c.method == "sample"]
    assert [c.purpose for c in calls] == [None, "rollout", "evaluation"]
    assert sampling_purpose() is None  # the mark ends with the submission
