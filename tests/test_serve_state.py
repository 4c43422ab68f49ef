"""The server's bookkeeping on its own: silent sessions; and, through the SDK, what a session's
end and the sampler cap release (request ordering, sampling batches and result lifetimes:
test_serve_ordering.py)."""

from __future__ import annotations

import os
import warnings

import httpx
import pytest
import tinker
from tinker import types

from harness.backends.local import LocalServiceClient
from harness.serve import Limits, LocalTinkerServer
from harness.serve import client as local_server
from harness.serve.state import HttpError, ServerState
from tests.support.serve import KEY, MODEL, sdk_client, start_server
from tests.support.timers import FakeTimers

TIMEOUT_S = 30


def test_a_silent_session_is_dropped_and_a_finished_one_refused(tmp_path):
    clock = FakeTimers()
    state = ServerState(
        LocalServiceClient(tmp_path), {}, Limits(session_timeout_s=60.0), clock=clock
    )
    silent, finished = state.create_session(), state.create_session()
    state.finish(finished)
    clock.now = 30.0
    state.heartbeat(silent)  # keeps it alive
    clock.now = 80.0
    state.create_session()  # sweeps sessions silent for 60 s: not this one yet
    state.heartbeat(silent)
    clock.now = 200.0
    state.create_session()
    for session_id in (silent, finished):
        with pytest.raises(HttpError, match="has finished") as error:
            state.heartbeat(session_id)
        assert error.value.status == 410  # the SDK stops its heartbeat on 410
    with pytest.raises(HttpError, match="does not exist") as error:
        state.heartbeat("nobody")
    assert error.value.status == 404


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    server = start_server(tmp_path, Limits(max_samplers=2))
    yield server
    server.stop()


def test_samplers_beyond_the_cap_and_models_of_a_finished_session_are_released(server):
    client = sdk_client(server)
    trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
    samplers = [trainer.save_weights_and_get_sampling_client().result() for _ in range(3)]
    prompt, params = types.ModelInput.from_ints([1, 2, 3]), types.SamplingParams(max_tokens=2)
    assert samplers[2].sample(prompt, 1, params).result(TIMEOUT_S).sequences
    with pytest.raises(tinker.NotFoundError, match="keeps the 2 most recently used samplers"):
        samplers[0].sample(prompt, 1, params).result(TIMEOUT_S)

    client.close("success").result(timeout=TIMEOUT_S)
    answer = httpx.post(
        f"{server.base_url}/api/v1/get_info",
        headers={"X-API-Key": KEY},
        json={"model_id": trainer.model_id},
    )
    assert answer.status_code == 404


def test_loading_into_an_existing_model_is_refused_in_its_turn(server):
    client = sdk_client(server)
    trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
    path = trainer.save_state("here").result(TIMEOUT_S).path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        refused = trainer.load_state(path)
    after = trainer.save_state("after")
    with pytest.raises(tinker.RequestFailedError, match="not supported by the local backend"):
        refused.result(timeout=TIMEOUT_S)
    assert after.result(timeout=TIMEOUT_S).path.endswith("/after")  # the next one still runs
    client.close("success").result(timeout=TIMEOUT_S)


def test_the_local_server_backend_starts_a_server_and_stops_it(tmp_path, monkeypatch):
    started: list[LocalTinkerServer] = []

    class Recorded(LocalTinkerServer):
        def start(self):
            started.append(self)
            return super().start()

    monkeypatch.setattr(local_server, "LocalTinkerServer", Recorded)
    monkeypatch.delenv("TINKER_TELEMETRY", raising=False)
    with local_server.local_server_service_client(MODEL, tmp_path, seed=0) as client:
        assert isinstance(client, tinker.ServiceClient)
        assert os.environ["TINKER_TELEMETRY"] == "0"
        trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
        assert trainer.save_state("kept").result(TIMEOUT_S).path.endswith("/weights/kept")
    assert "TINKER_TELEMETRY" not in os.environ
    assert list(tmp_path.rglob("kept/adapter_model.safetensors"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{started[0].base_url}/api/v1/healthz")
