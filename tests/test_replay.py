"""Record the smoke run on the local backend, replay it offline: the same run, or a clear diff."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tinker.lib.public_interfaces.api_future import APIFuture
from transformers import AutoTokenizer

from harness.backends.cassette import read_cassette
from harness.backends.cassette_codec import decode, encode
from harness.backends.record import RecordingServiceClient
from harness.backends.replay_service import (
    TOKENIZER_ENV,
    RecordedError,
    ReplayError,
    ReplayMismatch,
    ReplayServiceClient,
)
from harness.cli import main
from harness.jsonl import read_json_lines
from harness.metrics import without_timings
from tests.support.fake_backend import PARAMS, PROMPT, FakeService, response
from tests.support.runs import SMOKE as LOOP_SMOKE
from tests.support.varied_reward_run import varied_reward

# The serial order: the tests below find a step's calls where it puts them.
SMOKE = [
    *LOOP_SMOKE, "--sampling_max_tokens=24", "--eval_n=6", "--learning_rate=1e-3",
    "--stream_training=False",
]  # fmt: skip
SECRETS = {
    "TINKER_API_KEY": "tml-replay-test-7f3a9c0e5b1d",
    "HF_TOKEN": "hf_replaytest_QmZx81Lw",
    "MY_SERVICE_SECRET": "s3cr3t-v4lue-for-the-scan",
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_model_dir, gsm8k_dir):
    """The smoke run recorded with secrets in the environment; then its model's weights go."""
    root = tmp_path_factory.mktemp("recorded")
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    args = [*SMOKE, f"--model_name={model}", f"--dataset_path={gsm8k_dir}"]
    with pytest.MonkeyPatch.context() as env:
        for name, value in SECRETS.items():
            env.setenv(name, value)
        argv = [*args, "--backend=local", f"--log_path={root / 'run'}"]
        assert main([*argv, f"--record_cassette={root / 'run.jsonl'}"], varied_reward) == 0
    (model / "model.safetensors").unlink()  # replay must not need the weights
    return root, args


def replay_args(recorded, log_path: Path, *flags: str) -> list[str]:
    root, args = recorded
    return [
        *args,
        *flags,
        "--backend=replay",
        f"--cassette={root / 'run.jsonl'}",
        f"--log_path={log_path}",
    ]


def test_replay_reproduces_the_recorded_run_without_the_model(recorded, tmp_path):
    root, _ = recorded
    assert not (root / "model" / "model.safetensors").exists()
    assert main(replay_args(recorded, tmp_path), varied_reward) == 0

    original = without_timings(read_json_lines(root / "run" / "metrics.jsonl"))
    assert any(row.get("train/datums", 0) > 0 for row in original)  # real training calls
    assert without_timings(read_json_lines(tmp_path / "metrics.jsonl")) == original
    for name in ("checkpoints/index.jsonl", *(f"eval/step_{s:06d}.jsonl" for s in (0, 2, 4, 5))):
        assert (tmp_path / name).read_text() == (root / "run" / name).read_text(), name
    assert not (tmp_path / "tinker-storage").exists()  # nothing was trained or saved


def test_a_reward_from_outside_the_harness_is_not_imported_by_a_replay(recorded, tmp_path, capsys):
    assert main(replay_args(recorded, tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "recorded with the reward tests.support.varied_reward_run:varied_reward" in error
    assert "only rewards from harness.*" in error
    assert not (tmp_path / "metrics.jsonl").exists()


def first_call(recorded, method: str) -> int:
    calls = read_cassette(recorded[0] / "run.jsonl").calls
    return next(c.index for c in calls if c.method == method)


@pytest.mark.parametrize(
    ("flag", "method", "difference"),
    [
        (
            "--cliprange=0.3",
            "forward_backward",
            "loss_fn_config.clip_low_threshold: recorded 0.8, replay 0.7",
        ),
        (
            "--learning_rate=2e-3",
            "optim_step",
            "optim_params.learning_rate: recorded 0.001, replay 0.002",
        ),
        (
            "--sampling_temperature=0.9",
            "sample",
            "sampling_params.temperature: recorded 1.0, replay 0.9",
        ),
    ],
)
def test_a_run_with_another_config_fails_at_the_first_differing_request(
    recorded, tmp_path, capsys, flag, method, difference
):
    assert main(replay_args(recorded, tmp_path, flag), varied_reward) == 1
    message = capsys.readouterr().err
    assert "replay error" in message and difference in message
    if method != "sample":
        assert f"call {first_call(recorded, method)} (training@0.{method}) differs" in message
    else:  # matched by content: the nearest recorded request is named
        assert "request matches no recorded one" in message and "the nearest is call" in message
    assert "Traceback" not in message


def test_no_secret_reaches_the_cassette_metrics_logs_or_checkpoints(recorded):
    root, _ = recorded
    files = [root / "run.jsonl", *(p for p in (root / "run").rglob("*") if p.is_file())]
    assert any(p.name == "index.jsonl" for p in files) and any(
        p.suffix == ".safetensors" for p in files
    )
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, (name, path)


# -- the replayer on its own --------------------------------------------------------------------


def start_step(cassette: Path):
    """A replay driven by hand up to its first step's sampling client."""
    service = ReplayServiceClient(cassette)
    calls = read_cassette(cassette).calls
    create = calls[0]
    training = service.create_lora_training_client(**decode(create.request)).result()
    training.get_tokenizer()
    sampler = training.save_weights_and_get_sampling_client().result()
    step_calls = []
    for call in calls[3:]:
        if call.method != "sample":
            break
        step_calls.append(call)
    return service, training, sampler, step_calls, calls


@settings(max_examples=25)
@given(data=st.data())
def test_concurrent_sample_requests_replay_in_any_arrival_order(recorded, data):
    cassette = recorded[0] / "run.jsonl"
    _, training, sampler, step_calls, calls = start_step(cassette)
    order = data.draw(st.permutations(step_calls), label="arrival order")
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(sampler.sample, **decode(call.request)) for call in order]
        responses = [future.result().result() for future in futures]
    for call, response_ in zip(order, responses, strict=True):
        assert encode(response_) == call.response
    # The step's sampling is done: the next training call is the recorded one.
    next_call = calls[3 + len(step_calls)]
    future = getattr(training, next_call.method)(**decode(next_call.request))
    assert isinstance(future, APIFuture)
    assert encode(future.result()) == next_call.response


def test_a_sample_request_the_recording_lacks_names_the_nearest_one(recorded):
    _, _, sampler, step_calls, _ = start_step(recorded[0] / "run.jsonl")
    request = decode(step_calls[2].request)
    request["prompt"] = request["prompt"].append_int(7)
    with pytest.raises(ReplayMismatch) as raised:
        sampler.sample(**request)
    message = str(raised.value)
    assert f"the nearest is call {step_calls[2].index} (sampling@2.sample):" in message
    assert "prompt.chunks[0].tokens (length): recorded 187, replay 188" in message


def test_skipping_a_recorded_sample_request_is_caught_at_the_next_training_call(recorded):
    _, training, sampler, step_calls, calls = start_step(recorded[0] / "run.jsonl")
    for call in step_calls[1:]:
        sampler.sample(**decode(call.request)).result()
    next_call = calls[3 + len(step_calls)]
    with pytest.raises(
        ReplayMismatch, match=rf"first made 1 more call\(s\).*call {step_calls[0].index} "
    ):
        getattr(training, next_call.method)(**decode(next_call.request))


def fake_cassette(path: Path, latency_s: float | None = None) -> Path:
    """A tiny cassette: a sampler answers once, fails once at submission and once later."""
    fake = FakeService()
    with RecordingServiceClient(fake, path, backend="fake", config={}, environ={}) as service:
        training = service.create_lora_training_client("Org/Model").result()
        sampler = training.save_weights_and_get_sampling_client().result()
        answered = sampler.sample(PROMPT, 1, PARAMS)
        fake.training.sampler.pending[0].set_result(response(4, 2))
        answered.result()
        with pytest.raises(ValueError):
            sampler.sample(PROMPT, 0, PARAMS)
        failed = sampler.sample(PROMPT, 2, PARAMS)
        fake.training.sampler.pending[1].set_exception(ConnectionError("lost"))
        with pytest.raises(ConnectionError):
            failed.result()
    if latency_s is not None:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[1:] = [{**row, "latency_s": latency_s} for row in rows[1:]]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_recorded_errors_are_raised_again_where_they_were(tmp_path):
    service = ReplayServiceClient(fake_cassette(tmp_path / "fake.jsonl"))
    sampler = service.create_lora_training_client("Org/Model").result()
    sampler = sampler.save_weights_and_get_sampling_client().result()
    assert sampler.sample(PROMPT, 1, PARAMS).result().sequences[0].tokens == [4, 2]
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sampler.sample(PROMPT, 0, PARAMS)
    future = sampler.sample(PROMPT, 2, PARAMS)
    with pytest.raises(ConnectionError, match="lost"):
        future.result()
    assert service.replay.unreplayed() == []
    with pytest.raises(AttributeError, match="cassettes record"):
        sampler.close()


def test_a_replay_that_stops_before_the_recording_does_is_an_error(tmp_path):
    cassette = fake_cassette(tmp_path / "fake.jsonl")
    with (
        pytest.raises(ReplayMismatch, match=r"goes on for 4 more call\(s\), from call 1 "),
        ReplayServiceClient(cassette) as service,  # raises as the block ends
    ):
        service.create_lora_training_client("Org/Model").result()


def test_realtime_replay_answers_after_the_recorded_latency(tmp_path):
    slow = ReplayServiceClient(fake_cassette(tmp_path / "slow.jsonl", latency_s=600), realtime=True)
    assert not slow.create_lora_training_client("Org/Model").future().done()
    fast = ReplayServiceClient(
        fake_cassette(tmp_path / "fast.jsonl", latency_s=0.05), realtime=True
    )
    training = fast.create_lora_training_client("Org/Model").result(timeout=60)
    assert training.save_weights_and_get_sampling_client().result(timeout=60) is not None


def test_an_error_from_an_unknown_type_is_raised_as_recorded(tmp_path):
    path = fake_cassette(tmp_path / "fake.jsonl")
    path.write_text(path.read_text().replace('"ConnectionError"', '"TinkerQuotaError"'))
    service = ReplayServiceClient(path)
    sampler = service.create_lora_training_client("Org/Model").result()
    sampler = sampler.save_weights_and_get_sampling_client().result()
    sampler.sample(PROMPT, 1, PARAMS).result()
    with pytest.raises(ValueError):
        sampler.sample(PROMPT, 0, PARAMS)
    with pytest.raises(RecordedError, match="TinkerQuotaError: lost"):
        sampler.sample(PROMPT, 2, PARAMS).result()


def test_a_tokenizer_that_is_not_here_names_the_override(
    recorded, tmp_path, monkeypatch, tiny_model_dir
):
    """As for a cloud cassette: the tokenizer is a hub id this machine has not cached."""
    rows = [json.loads(line) for line in (recorded[0] / "run.jsonl").read_text().splitlines()]
    for row in rows:
        if row.get("method") == "get_tokenizer":
            row["response"] = {"$tokenizer": {"name": "Qwen/Qwen3-8B-not-cached"}}
    cloud = tmp_path / "cloud.jsonl"
    cloud.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def training_client():
        create = read_cassette(cloud).calls[0]
        service = ReplayServiceClient(cloud)
        return service.create_lora_training_client(**decode(create.request)).result()

    monkeypatch.delenv(TOKENIZER_ENV, raising=False)
    with pytest.raises(ReplayError, match=f"Set {TOKENIZER_ENV}=DIR"):
        training_client().get_tokenizer()
    monkeypatch.setenv(TOKENIZER_ENV, str(tiny_model_dir))
    tokenizer = training_client().get_tokenizer()
    expected = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.encode("Tom has 12 apples.") == expected.encode("Tom has 12 apples.")


def test_a_cassette_damaged_in_the_middle_is_one_line_naming_its_line(recorded, tmp_path, capsys):
    root, _ = recorded
    lines = (root / "run.jsonl").read_text().splitlines()
    lines[5] = lines[5][: len(lines[5]) // 2]
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join(lines) + "\n")
    flags = [f for f in replay_args(recorded, tmp_path / "replay") if "--cassette" not in f]
    assert main([*flags, f"--cassette={damaged}"], varied_reward) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {damaged}:6 is not a JSON line"
