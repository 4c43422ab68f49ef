"""Weather through the local server, met by the real SDK: what it retries by itself succeeds
(and a request it resent after its answer was lost is applied once), what it leaves to its
caller reaches the caller as the SDK's own error, and a server that died comes back on the
same storage."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tinker
import torch
from tinker import types
from tinker.lib.retryable_exception import RetryableException

from harness.backends.local import LocalServiceClient
from harness.serve import Limits
from harness.serve.__main__ import main as serve_main
from harness.serve.weather import DIED_EXIT_CODE
from harness.weather import parse_weather
from tests.support.local_training import ADAM, batch
from tests.support.serve import KEY, MODEL, REPO, sdk_client, serving

TIMEOUT_S = 30
PARAMS = types.SamplingParams(max_tokens=6, temperature=1.0, seed=11)
PROMPT = types.ModelInput.from_ints([5, 17, 42, 7])
# Polls of a hung request are held this long before `try_again`.
LIMITS = Limits(hold_s=0.2)


def stormy(*faults: dict, **table):
    return parse_weather({"faults": list(faults), **table}, "test.toml")


def served_gradients(server, trainer) -> list[torch.Tensor]:
    client = server.state.model(trainer.model_id).client
    return [p.grad.clone() for p in client.model.parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def calm_gradients(tmp_path_factory) -> list[torch.Tensor]:
    """The gradients of one forward_backward of batch(1), in process and without weather."""
    with LocalServiceClient(tmp_path_factory.mktemp("calm"), seed=0) as service:
        trainer = service.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result()
        trainer.forward_backward(batch(1), "ppo").result()
        return [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]


def session(tmp_path, weather):
    return serving(tmp_path / "storage", LIMITS, weather=weather)


def trainer_on(client):
    return client.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result(TIMEOUT_S)


def applied_once(server, trainer, calm_gradients) -> bool:
    served = served_gradients(server, trainer)
    return all(torch.allclose(a, b, atol=1e-6) for a, b in zip(served, calm_gradients, strict=True))


@pytest.mark.parametrize(
    "fault",
    [
        {"error": "status", "status": 503},
        {"error": "status", "status": 408},
        {"error": "disconnect"},
        {"error": "status", "status": 500, "when": "after"},
        {"error": "disconnect", "when": "after"},
        {"error": "status", "status": 500, "when": "after", "count": 2},
    ],
    ids=["503-before", "408-before", "drop-before", "500-after", "drop-after", "500-after-x2"],
)
def test_the_sdk_retries_http_faults_and_the_step_is_applied_once(tmp_path, fault, calm_gradients):
    weather = stormy({"call": "forward_backward", "at": 1, **fault})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        trainer = trainer_on(client)
        output = trainer.forward_backward(batch(1), "ppo").result(TIMEOUT_S)
        assert output.metrics["loss:sum"] != 0
        schedule = server.state.weather.schedule
        count = fault.get("count", 1)
        assert [f.n for f in schedule.fired] == list(range(1, count + 1))  # the first arrivals
        assert schedule.counts["forward_backward"] == count + 1  # ... and the SDK sent it again
        assert applied_once(server, trainer, calm_gradients)  # not skipped, not doubled
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_failed_future_after_applying_reaches_the_caller_with_its_gradients(
    tmp_path, calm_gradients
):
    weather = stormy({"call": "forward_backward", "error": "failed", "when": "after", "at": 1})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        trainer = trainer_on(client)
        with pytest.raises(tinker.RequestFailedError) as caught:
            trainer.forward_backward(batch(1), "ppo").result(TIMEOUT_S)
        assert caught.value.category == types.RequestErrorCategory.Server
        assert "failed after the 1st forward_backward" in str(caught.value)
        assert applied_once(server, trainer, calm_gradients)  # applied, and not retried
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_failed_future_before_applying_leaves_no_gradients(tmp_path):
    weather = stormy({"call": "forward_backward", "error": "failed", "at": 1})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        trainer = trainer_on(client)
        with pytest.raises(tinker.RequestFailedError):
            trainer.forward_backward(batch(1), "ppo").result(TIMEOUT_S)
        # The next request still runs in its turn: the skipped one took its seq_id.
        assert trainer.optim_step(ADAM).result(TIMEOUT_S).metrics is not None
        model = server.state.model(trainer.model_id).client.model
        assert all(p.grad is None for p in model.parameters() if p.requires_grad)
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_410_on_a_training_future_is_left_to_the_caller(tmp_path, calm_gradients):
    weather = stormy({"call": "forward_backward", "error": "expired", "when": "after", "at": 1})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        trainer = trainer_on(client)
        with pytest.raises(RetryableException, match="Promise expired"):
            trainer.forward_backward(batch(1), "ppo").result(TIMEOUT_S)
        assert applied_once(server, trainer, calm_gradients)
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_410_on_a_sampling_future_is_resent_by_the_sdk(tmp_path):
    with session(tmp_path, None) as server:
        client = sdk_client(server)
        sampler = client.create_sampling_client(base_model=MODEL).result(TIMEOUT_S)
        expected = sampler.sample(PROMPT, 2, PARAMS).result(TIMEOUT_S)
        client.close("success").result(timeout=TIMEOUT_S)
    with session(tmp_path, stormy({"call": "sample", "error": "expired", "at": 1})) as server:
        client = sdk_client(server)
        sampler = client.create_sampling_client(base_model=MODEL).result(TIMEOUT_S)
        response = sampler.sample(PROMPT, 2, PARAMS).result(TIMEOUT_S)
        assert [s.tokens for s in response.sequences] == [s.tokens for s in expected.sequences]
        assert server.state.weather.schedule.counts["sample"] == 2  # sent again as a new one
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_sampling_5xx_is_retried_by_the_sdk(tmp_path):
    weather = stormy({"call": "sample", "error": "status", "status": 502, "at": 1})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        sampler = client.create_sampling_client(base_model=MODEL).result(TIMEOUT_S)
        assert sampler.sample(PROMPT, 1, PARAMS).result(TIMEOUT_S).sequences
        assert server.state.weather.schedule.counts["sample"] == 2
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_failed_sample_reaches_the_caller(tmp_path):
    weather = stormy({"call": "sample", "error": "failed", "at": 1})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        sampler = client.create_sampling_client(base_model=MODEL).result(TIMEOUT_S)
        with pytest.raises(tinker.RequestFailedError) as caught:
            sampler.sample(PROMPT, 1, PARAMS).result(TIMEOUT_S)
        assert caught.value.category == types.RequestErrorCategory.Server
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_hung_sample_is_polled_forever_while_the_next_answers(tmp_path):
    weather = stormy({"call": "sample", "error": "hang", "when": "after", "at": 1})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        sampler = client.create_sampling_client(base_model=MODEL).result(TIMEOUT_S)
        hung = sampler.sample(PROMPT, 1, PARAMS)
        assert sampler.sample(PROMPT, 1, PARAMS).result(TIMEOUT_S).sequences
        with pytest.raises(TimeoutError):
            hung.result(timeout=1.0)  # five try_again polls of 0.2 s, and still waiting
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_stopping_server_fails_a_hung_request_at_once(tmp_path):
    weather = stormy({"call": "sample", "error": "hang", "when": "after", "at": 1})
    with serving(tmp_path / "storage", Limits(hold_s=30), weather=weather) as server:
        client = sdk_client(server)
        sampler = client.create_sampling_client(base_model=MODEL).result(TIMEOUT_S)
        hung = sampler.sample(PROMPT, 1, PARAMS)
        with pytest.raises(TimeoutError):
            hung.result(timeout=1.0)  # its poll is held for up to 30 s
        stopping = time.monotonic()
        server.stop()
        assert time.monotonic() - stopping < 10  # not the poll's 30 s
        with pytest.raises(tinker.RequestFailedError, match="stopped"):
            hung.result(timeout=TIMEOUT_S)


def test_a_bad_profile_stops_the_server_in_one_line(tmp_path, capsys):
    profile = tmp_path / "bad.toml"
    profile.write_text('[[faults]]\ncall = "sample"\nerror = "hang"\n')
    assert serve_main([f"--model={MODEL}", f"--weather={profile}"]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error == f"error: {profile}: faults[0]: give exactly one of 'at' (the n-th call) and"
        " 'rate' (per call)"
    )


def test_a_checkpoint_expires_through_the_server(tmp_path):
    weather = stormy({"call": "save_state", "error": "checkpoint_expired", "at": 1})
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        path = trainer_on(client).save_state("gone").result(TIMEOUT_S).path
        with pytest.raises(tinker.RequestFailedError, match="expired"):
            client.create_training_client_from_state_with_optimizer(path).result(TIMEOUT_S)
        client.close("success").result(timeout=TIMEOUT_S)


def _serve(storage: Path, weather: Path) -> tuple[subprocess.Popen, str]:
    environment = {**os.environ, "TINKER_API_KEY": KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "harness.serve", f"--model={MODEL}", "--port=0",
         f"--storage_dir={storage}", "--log_level=warning", f"--weather={weather}"],
        cwd=REPO, env=environment, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    banner = server.stderr.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+)", banner)
    assert match, banner
    return server, match.group(1)


def test_a_server_that_dies_comes_back_on_the_same_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    profile = tmp_path / "die.toml"
    profile.write_text('[[faults]]\ncall = "save_state"\nerror = "die"\nwhen = "after"\nat = 2\n')
    storage = tmp_path / "storage"
    server, base_url = _serve(storage, profile)
    try:
        client = tinker.ServiceClient(base_url=base_url, api_key=KEY)
        trainer = trainer_on(client)
        trainer.forward_backward(batch(1), "ppo").result(TIMEOUT_S)
        trainer.optim_step(ADAM).result(TIMEOUT_S)
        first = trainer.save_state("first").result(TIMEOUT_S).path
        trainer.save_state("second")  # the server saves it, then dies before answering
        assert server.wait(timeout=TIMEOUT_S) == DIED_EXIT_CODE
        stderr = server.stderr.read()
        assert f"weather: injected weather {profile}: die after the 2nd save_state" in stderr
        assert "weather: the server process dies here" in stderr
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGKILL)
    second = first.replace("/first", "/second")
    with serving(storage) as restarted:  # on a thread here: the storage is what matters
        client = sdk_client(restarted)
        restored = client.create_training_client_from_state_with_optimizer(second)
        assert restored.result(TIMEOUT_S).get_info().model_data is not None
        client.close("success").result(timeout=TIMEOUT_S)


def test_a_drop_breaks_the_answer_off_and_a_status_answers_it(tmp_path):
    weather = stormy(
        {"call": "create_model", "error": "disconnect", "at": 1},
        {"call": "create_model", "error": "status", "status": 503, "at": 2},
    )
    body = {"session_id": "s", "model_seq_id": 0, "base_model": MODEL}
    with session(tmp_path, weather) as server:
        url, headers = f"{server.base_url}/api/v1/create_model", {"X-API-Key": KEY}
        with pytest.raises(httpx.RemoteProtocolError):  # headers, then the connection closes
            httpx.post(url, headers=headers, json=body)
        answer = httpx.post(url, headers=headers, json=body)
        assert answer.status_code == 503
        assert "status before the 2nd create_model" in answer.json()["detail"]


def test_the_servers_backend_keeps_the_profiles_clock(tmp_path):
    cycle, save = 0.4, 0.3
    weather = parse_weather({"latency": {"cycle_s": cycle * 100, "save_s": save * 100},
                             "time_scale": 0.01}, "test.toml")  # fmt: skip
    with session(tmp_path, weather) as server:
        client = sdk_client(server)
        trainer = trainer_on(client)
        submitted = time.monotonic()
        fwd_bwd, optim = trainer.forward_backward(batch(1), "ppo"), trainer.optim_step(ADAM)
        fwd_bwd.result(TIMEOUT_S)
        assert time.monotonic() - submitted >= cycle - 0.05  # it waited for a cycle to end
        optim.result(TIMEOUT_S)
        saving = time.monotonic()
        trainer.save_state("timed").result(TIMEOUT_S)
        assert time.monotonic() - saving >= save - 0.05
        client.close("success").result(timeout=TIMEOUT_S)
