"""Mistakes and failures reach the SDK caller as the SDK's own errors with the server's
message, promptly: a wrong loss, a malformed Datum, a model that does not exist, a stopped
server."""

from __future__ import annotations

import threading

import httpx
import pytest
import tinker
from tinker import types
from tinker.lib.retry_handler import RetryConfig

from harness.backends.local import training as local_training
from tests.support.serve import KEY, MODEL, sdk_client, start_server

TIMEOUT_S = 30
STUCK_S = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINKER_TELEMETRY", "0")
        server = start_server(tmp_path_factory.mktemp("storage"))
        yield server
        server.stop()


@pytest.fixture(scope="module")
def trainer(server):
    client = sdk_client(server)
    yield client.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result(TIMEOUT_S)
    client.close("success").result(timeout=TIMEOUT_S)


def datum(n_tokens: int = 4, n_targets: int = 4) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(list(range(1, n_tokens + 1))),
        loss_fn_inputs={
            "target_tokens": list(range(2, n_targets + 2)),
            "weights": [1.0] * n_targets,
        },
    )


def user_error(future) -> tinker.RequestFailedError:
    with pytest.raises(tinker.RequestFailedError) as caught:
        future.result(timeout=TIMEOUT_S)
    assert caught.value.category == types.RequestErrorCategory.User
    return caught.value


def test_a_loss_the_backend_lacks_is_a_user_error_naming_it(trainer):
    error = user_error(trainer.forward_backward([datum()], "reinforce_plus_plus"))
    assert "unknown loss_fn 'reinforce_plus_plus'" in str(error)
    assert "cross_entropy" in str(error)


def test_a_malformed_datum_is_a_user_error_naming_it(trainer):
    error = user_error(trainer.forward([datum(), datum(4, 3)], "cross_entropy"))
    assert "datum 1: loss_fn_inputs['target_tokens'] has shape (3,)" in str(error)
    missing = user_error(trainer.forward([datum()], "ppo"))
    assert "lacks ['logprobs', 'advantages']" in str(missing)
    # The model is still usable: a failed request is not a broken client.
    assert trainer.forward([datum()], "cross_entropy").result(TIMEOUT_S).metrics["loss:sum"] > 0


def test_a_base_model_not_served_is_a_user_error(server):
    client = sdk_client(server)
    error = user_error(client.create_lora_training_client(base_model="no/such-model", rank=2))
    assert "base model 'no/such-model' is not served here" in str(error)
    client.close("success").result(timeout=TIMEOUT_S)


def test_checkpoints_that_do_not_exist_are_refused(server):
    client = sdk_client(server)
    path = "tinker://no-such-run/weights/step_000002"
    error = user_error(client.create_training_client_from_state_with_optimizer(path))
    assert f"no checkpoint at {path}" in str(error)
    with pytest.raises(tinker.NotFoundError, match="no checkpoint at tinker://no-such-run"):
        client.create_sampling_client(model_path="tinker://no-such-run/sampler_weights/x").result(
            TIMEOUT_S
        )
    client.close("success").result(timeout=TIMEOUT_S)


def test_a_model_id_that_does_not_exist_is_not_found(server):
    answer = httpx.post(
        f"{server.base_url}/api/v1/optim_step",
        headers={"X-API-Key": KEY},
        json={"model_id": "nobody:train:0", "seq_id": 1, "adam_params": {}},
    )
    assert answer.status_code == 404
    assert "model 'nobody:train:0' does not exist on this server" in answer.json()["detail"]
    answer = httpx.post(
        f"{server.base_url}/api/v1/get_info",
        headers={"X-API-Key": KEY},
        json={"model_id": "nobody:train:0"},
    )
    assert answer.status_code == 404


def test_a_server_stopped_mid_request_fails_it_and_later_calls_give_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    server = start_server(tmp_path)
    release = threading.Event()
    forward = local_training.LocalTrainingClient._fwd

    def stuck_forward(self, *args, **kwargs):
        # Stuck while the server stops (stop() waits for it), not for as long as the waits
        # below allow: a loaded machine then still has most of them.
        release.wait(STUCK_S)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(local_training.LocalTrainingClient, "_fwd", stuck_forward)
    client = sdk_client(server)
    trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
    sampler = client.create_sampling_client(
        base_model=MODEL, retry_config=RetryConfig(progress_timeout=2)
    ).result(TIMEOUT_S)
    in_flight = trainer.forward_backward([datum()], "cross_entropy")
    try:
        server.stop()
        with pytest.raises(tinker.RequestFailedError, match=r"local Tinker server .* stopped") as e:
            in_flight.result(timeout=TIMEOUT_S)
        assert e.value.category == types.RequestErrorCategory.Server
        # A request after the stop finds no server; the SDK retries until its progress timeout.
        with pytest.raises(tinker.APIConnectionError, match="No progress made in 2"):
            sampler.sample(
                types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=2)
            ).result(timeout=TIMEOUT_S)
    finally:
        release.set()
