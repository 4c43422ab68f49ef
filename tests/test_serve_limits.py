"""What one request may cost the server, and who may reach it: bounded bodies (on the wire,
after zstd, as JSON), bounded work per request, no listening beyond loopback without a key,
and no server directory in anything a client sees."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
import tinker
from tinker import types

from harness.serve import Limits, LocalTinkerServer
from harness.serve.__main__ import main as serve_main
from scripts import bench_server_limits
from tests.support.serve import KEY, MODEL, sdk_session, serving

TIMEOUT_S = 30
LIMITS = Limits(max_datums=2, max_request_tokens=12, max_num_samples=3, max_sample_tokens=16)


@pytest.fixture(scope="module")
def bench():
    """scripts/bench_server_limits.py as a module, to reuse its attacks."""
    return bench_server_limits


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def server(storage):
    with serving(storage, LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(server):
    with sdk_session(server) as client:
        yield client


def post(server, endpoint: str, content, **headers) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/v1/{endpoint}",
        content=content,
        headers={"X-API-Key": KEY, "content-type": "application/json", **headers},
        timeout=TIMEOUT_S,
    )


def test_a_zstd_bomb_is_refused_after_the_decompressed_limit(server, bench):
    bomb = bench.zstd_bomb(1)  # the input: ~32 kB that expands to 1 GiB
    assert len(bomb) < 64 << 10
    answer = post(
        server,
        "forward_backward",
        bomb,
        **{"content-type": "application/x-protobuf", "content-encoding": "zstd"},
    )
    assert answer.status_code == 413
    assert answer.json() == {
        "detail": "the decompressed body exceeds this server's limit of 67,108,864 bytes"
    }
    answer = post(server, "create_session", bomb, **{"content-encoding": "zstd"})
    assert answer.status_code == 413
    assert "limit of 8,388,608 bytes" in answer.json()["detail"]


def test_a_huge_json_body_is_refused_streamed_or_declared(server, bench):
    streamed = post(server, "create_session", bench._streamed_json(400))  # 400 MB, chunked
    assert streamed.status_code == 413
    assert streamed.json()["detail"] == (
        "the request body exceeds this server's limit of 8,388,608 bytes"
    )
    # Declared 400 MB: refused from the headers, before the client sends any of it.
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as connection:
        connection.sendall(
            f"POST /api/v1/create_session HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {400 << 20}\r\n\r\n".encode()
        )
        status_line = connection.makefile("rb").readline()
    assert status_line.startswith(b"HTTP/1.1 413 ")


def test_json_nested_too_deeply_or_not_an_object_is_a_one_line_400(server):
    deep = post(server, "create_session", b"[" * 100_000)
    assert deep.status_code == 400
    assert deep.json()["detail"] == "body is not JSON the server accepts: nested too deeply"
    assert post(server, "create_session", b"[1]").json()["detail"] == "body must be a JSON object"


def test_peak_server_memory_under_the_attacks_stays_near_the_body_limits(bench):
    # Measured in a server process of its own: each attack's peak RSS above resident. Without
    # limits the bomb cost about 1 GiB; the bound is the 64 MiB decompressed limit plus slack.
    results = bench.measure(bench.Args(json_mb=64))
    assert [status for _, _, status, _ in results] == [413, 413, 413, 413]
    peaks = {name: peak for name, peak, _, _ in results}
    assert peaks["zstd bomb, forward_backward"] < 64 + 32, peaks
    assert all(peak < 32 for name, peak in peaks.items() if "forward_backward" not in name)


def test_requests_beyond_the_per_request_bounds_fail_with_the_bound(sdk):
    trainer = sdk.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result(TIMEOUT_S)

    def datum(n: int) -> types.Datum:
        return types.Datum(
            model_input=types.ModelInput.from_ints(list(range(1, n + 1))),
            loss_fn_inputs={"target_tokens": list(range(2, n + 2)), "weights": [1.0] * n},
        )

    def user_error(future) -> str:
        with pytest.raises(tinker.RequestFailedError) as caught:
            future.result(timeout=TIMEOUT_S)
        assert caught.value.category == types.RequestErrorCategory.User
        return str(caught.value)

    assert "holds 3 Datums; this server takes at most 2" in user_error(
        trainer.forward([datum(2)] * 3, "cross_entropy")
    )
    assert "holds 14 model_input tokens; this server takes at most 12" in user_error(
        trainer.forward([datum(7)] * 2, "cross_entropy")
    )
    # Within the bounds the model still works: a refused request left no gap in its order.
    assert trainer.forward([datum(6)] * 2, "cross_entropy").result(TIMEOUT_S).loss_fn_outputs
    sampler = sdk.create_sampling_client(base_model=MODEL).result(TIMEOUT_S)
    prompt = types.ModelInput.from_ints([1, 2, 3])
    assert "num_samples=4 exceeds this server's limit of 3" in user_error(
        sampler.sample(prompt, 4, types.SamplingParams(max_tokens=4))
    )
    # Far beyond the bound: refused without the server making an id per sample (10^9 of them).
    assert "num_samples=1,000,000,000 exceeds" in user_error(
        sampler.sample(prompt, 10**9, types.SamplingParams(max_tokens=4))
    )
    assert "max_tokens=17 exceeds this server's limit of 16" in user_error(
        sampler.sample(prompt, 1, types.SamplingParams(max_tokens=17))
    )
    assert (
        len(
            sampler.sample(prompt, 3, types.SamplingParams(max_tokens=16))
            .result(TIMEOUT_S)
            .sequences
        )
        == 3
    )


def test_no_listening_beyond_loopback_without_a_key(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0 .* without an API key"):
        LocalTinkerServer([MODEL], tmp_path, host="0.0.0.0")
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    assert serve_main([f"--model={MODEL}", "--host=0.0.0.0", "--port=0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: refusing to listen on 0.0.0.0")
    # With a key it serves on every address, and the key is required.
    with LocalTinkerServer([MODEL], tmp_path, host="0.0.0.0", api_key=KEY) as server:
        port = server.base_url.rsplit(":", 1)[1]
        answer = httpx.post(f"http://127.0.0.1:{port}/api/v1/create_session", json={})
        assert answer.status_code == 401


def test_clients_see_tinker_paths_never_server_directories(server, sdk, storage):
    path = "tinker://no-such-run/sampler_weights/x"
    with pytest.raises(tinker.NotFoundError) as caught:
        sdk.create_sampling_client(model_path=path).result(TIMEOUT_S)
    assert path in str(caught.value) and str(storage) not in str(caught.value)
    trainer = sdk.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result(TIMEOUT_S)
    saved = trainer.save_state("step_1").result(TIMEOUT_S).path
    run_id, _, name = saved.removeprefix("tinker://").split("/")
    meta = json.loads((storage / run_id / "weights" / name / "checkpoint.json").read_text())
    assert not Path(meta["model_dir"]).is_absolute()
    assert (storage / meta["model_dir"]).resolve() == Path(MODEL).resolve()
    assert str(storage) not in json.dumps(meta)  # (base_model is the name the client used)
    # and the relative path still finds the base model when the checkpoint is loaded
    sdk.create_training_client_from_state_with_optimizer(saved).result(TIMEOUT_S)
