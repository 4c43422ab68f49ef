"""HTTP recordings of the SDK talking to the local server (pytest-recording / VCR.py).

One short session (handshake, create a model, one sample, forward_backward + optim_step, one
save) is recorded into `tests/cassettes/test_serve_recording/`. By default the tests replay it
without a server: a change in what the SDK sends fails the replay. Another test runs the
session against a live server and compares its answers with the recorded ones, so a change in
what the server answers fails too. Re-record with
`pytest tests/test_serve_recording.py --record-mode=rewrite`.

Recorded requests are canonical: zstd undone, protobuf bodies as text, JSON with sorted keys,
and only the headers that say how to read a body. The API key is never recorded, nor a path of
the recording machine.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import tinker
import vcr
import yaml
import zstandard
from google.protobuf import text_format
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.response_conv import deserialize_proto_response

from harness.serve import LocalTinkerServer
from harness.serve.proto import decode_forward_backward
from tests.support.serve import REPO, TINY_MODEL

RECORDING_KEY = "tml-recording-key-9d2e4c"
CASSETTES = Path(__file__).parent / "cassettes" / "test_serve_recording"
SESSION_CASSETTE = CASSETTES / "test_the_sdk_session_replays_without_a_server.yaml"
NOWHERE = "http://127.0.0.1:9"  # nothing listens: in a replay, every answer is recorded
PROTOBUF_TEXT = "text/x-protobuf"  # a canonical body: protobuf text format
KEPT_HEADERS = {"content-type", "accept", "x-tinker-request-type"}
PROMPT = [151, 372, 9, 1020, 88, 4]
REPLAY_TIMEOUT_S = 60


def session(base_url: str) -> dict[str, Any]:
    """The recorded session; returns what it observed."""
    client = tinker.ServiceClient(base_url=base_url, api_key=RECORDING_KEY)
    trainer = client.create_lora_training_client(base_model=TINY_MODEL, rank=2, seed=0).result()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    sample = sampler.sample(
        types.ModelInput.from_ints(PROMPT), 2, types.SamplingParams(max_tokens=5, seed=7)
    ).result()
    sequence = sample.sequences[0]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(PROMPT + sequence.tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": PROMPT[1:] + sequence.tokens,
            "logprobs": [0.0] * (len(PROMPT) - 1) + sequence.logprobs,
            "advantages": [0.0] * (len(PROMPT) - 1) + [1.0] * len(sequence.tokens),
        },
    )
    clip = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    fb_future = trainer.forward_backward([datum], "ppo", clip)
    optim_future = trainer.optim_step(types.AdamParams(learning_rate=1e-3))
    fb, optim = fb_future.result(), optim_future.result()
    saved = trainer.save_state("recorded").result()
    client.close("success").result()
    return {
        "model_id": trainer.model_id,
        "sequence_ids": [s.sequence_id for s in sample.sequences],
        "tokens": [s.tokens for s in sample.sequences],
        "logprobs": fb.loss_fn_outputs[0]["logprobs"].tolist(),
        "loss": fb.metrics["loss:sum"],
        "grad_norm": optim.metrics["grad_norm:mean"],
        "path": saved.path,
    }


def canonical_request(request):
    """What a recorded request keeps, and what a replayed one is matched on (VCR.py applies
    this more than once to a request, so it leaves a canonical request as it is)."""
    if request.path.endswith("/session_heartbeat"):
        return None  # timing-dependent: neither recorded nor matched
    request = copy.deepcopy(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    body = request.body or b""
    if headers.pop("content-encoding", None) == "zstd":
        body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if headers.get("content-type") == "application/x-protobuf":
        body = text_format.MessageToString(pb.ForwardBackwardRequest.FromString(body)).encode()
        headers["content-type"] = PROTOBUF_TEXT
    elif body and headers.get("content-type") != PROTOBUF_TEXT:
        body = json.dumps(json.loads(body), sort_keys=True).encode()
    request.body = _scrub(body)
    request.headers = {k: v for k, v in headers.items() if k in KEPT_HEADERS}
    request.uri = NOWHERE + request.path  # the port of the recording server is no matter
    return request


def scrubbed_response(response: dict[str, Any]) -> dict[str, Any]:
    response["headers"] = {
        name: values for name, values in response["headers"].items() if name.lower() in KEPT_HEADERS
    }
    if "json" in str(response["headers"].get("content-type", "")):
        response["body"]["string"] = _scrub(response["body"]["string"])
    return response


def _scrub(body: bytes) -> bytes:
    """The recording machine's checkout path becomes `<repo>` (tokenizer ids name it)."""
    return body.replace(str(REPO).encode(), b"<repo>")


RECORDER_CONFIG = {
    "before_record_request": canonical_request,
    "before_record_response": scrubbed_response,
    "decode_compressed_response": False,
}


@pytest.fixture
def vcr_config() -> dict[str, Any]:
    return {"match_on": ("method", "path", "body"), **RECORDER_CONFIG}


@pytest.fixture
def sdk_environment(monkeypatch):
    """Nothing outside the test decides what the SDK sends."""
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    for name in ("TINKER_TAGS", "TINKER_PROJECT_ID", "TINKER_BASE_URL", "TINKER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)  # the model is named by its path in the repository


def served(storage_dir: Path) -> LocalTinkerServer:
    return LocalTinkerServer([TINY_MODEL], storage_dir, api_key=RECORDING_KEY, seed=0)


@pytest.mark.vcr
def test_the_sdk_session_replays_without_a_server(
    vcr, record_mode, sdk_environment, monkeypatch, tmp_path
):
    if record_mode == "none":
        observed = replay(vcr, monkeypatch)
    else:
        with served(tmp_path) as server:
            observed = session(server.base_url)
    assert observed["model_id"].endswith(":train:0")
    assert len(set(observed["sequence_ids"])) == 2
    assert [len(tokens) for tokens in observed["tokens"]] == [5, 5]
    assert len(observed["logprobs"]) == len(PROMPT) - 1 + 5
    assert observed["grad_norm"] > 0
    assert observed["path"].startswith("tinker://") and observed["path"].endswith("/recorded")


def replay(cassette, monkeypatch) -> dict[str, Any]:
    """Run the session on the cassette; a request it lacks fails the test at once (the SDK
    would otherwise retry it as a connection error for minutes)."""
    missed: list[str] = []
    can_play = cassette.can_play_response_for

    def noting_misses(request):
        playable = can_play(request)
        if not playable and canonical_request(request) is not None:
            missed.append(f"{request.method} {request.path} {canonical_request(request).body!r}")
        return playable

    monkeypatch.setattr(cassette, "can_play_response_for", noting_misses)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(session(NOWHERE)), daemon=True)
    runner.start()
    runner.join(timeout=0.05)
    for _ in range(int(REPLAY_TIMEOUT_S / 0.05)):
        if missed or not runner.is_alive():
            break
        runner.join(timeout=0.05)
    assert not missed, "the SDK sent a request the recording lacks:\n" + "\n".join(missed)
    assert result, "the replayed session did not finish"
    return result


def test_recordings_hold_no_key_and_no_local_path():
    text = SESSION_CASSETTE.read_text()
    assert RECORDING_KEY not in text and "tml-" not in text
    assert "x-api-key" not in text.lower()
    assert str(REPO) not in text
    assert "/api/v1/forward_backward" in text and "/api/v1/asample" in text


def test_the_server_still_answers_as_recorded(sdk_environment, tmp_path):
    fresh = tmp_path / "fresh.yaml"
    recorder = vcr.VCR(record_mode="all", **RECORDER_CONFIG)
    with served(tmp_path / "storage") as server, recorder.use_cassette(str(fresh)):
        session(server.base_url)
    assert_same_exchange(interactions(fresh), interactions(SESSION_CASSETTE))


# The random ids: uuid4 hex, whole (sessions, requests) or its first 12 digits (the storage
# session in run ids). They are told from numbers by length and by not being part of one (a
# float's 14 decimals are hex digits too); an id may be all digits (about 0.4% of 12-digit ones).
_ID = re.compile(r"(?<![\w.])(?:[0-9a-f]{32}|[0-9a-f]{12})(?![\w]|\.\d)")


def test_ids_are_normalised_even_when_they_hold_no_letter(tmp_path):
    text = SESSION_CASSETTE.read_text()
    storage_session = re.search(r"local-([0-9a-f]{12})-train", text).group(1)
    assert re.search("[a-f]", storage_session)  # else the recording itself is the case below
    all_digits = tmp_path / "all-digits.yaml"
    all_digits.write_text(text.replace(storage_session, "012345678901"))
    assert interactions(all_digits) == interactions(SESSION_CASSETTE)
    floats = tmp_path / "floats.yaml"  # a float's decimals are not an id
    floats.write_text(text.replace(".00475311279297", ".00475311279298"))
    assert interactions(floats) != interactions(SESSION_CASSETTE)


def interactions(path: Path) -> list[dict[str, Any]]:
    """The cassette's exchanges in comparable form: random ids numbered by first appearance,
    protobuf decoded (floats stay floats, to be compared with a tolerance)."""
    names: dict[str, str] = {}

    def rename(text: str) -> str:
        return _ID.sub(lambda m: names.setdefault(m.group(), f"<id{len(names)}>"), text)

    exchanges = []
    for item in yaml.safe_load(path.read_text())["interactions"]:
        request, response = item["request"], item["response"]
        line = f"{request['method']} {rename(request['uri'].split('/api/v1/')[1])}"
        body = rename(request["body"] or "")
        if request["headers"]["content-type"] == [PROTOBUF_TEXT]:
            sent: Any = _decoded_request(body)
            key = line
        else:
            sent = json.loads(body) if body else None
            key = f"{line} {body}"
        answer = response["body"]["string"]
        kind = request["headers"].get("x-tinker-request-type", [None])[0]
        if isinstance(answer, bytes) and kind in ("Sample", "ForwardBackward", "Forward"):
            answer = _decoded_answer(answer, kind)
        elif answer:
            answer = json.loads(rename(answer if isinstance(answer, str) else answer.decode()))
        exchanges.append(
            {"key": key, "sent": sent, "status": response["status"]["code"], "answer": answer}
        )
    return sorted(exchanges, key=lambda e: e["key"])


def _decoded_request(text: str) -> dict[str, Any]:
    call = decode_forward_backward(text_format.Parse(text, pb.ForwardBackwardRequest()))
    return {
        "call": [call.model_id, call.seq_id, call.forward_only, call.loss_fn, call.loss_fn_config],
        "data": [
            {"tokens": d.model_input.to_ints()}
            | {k: v.tolist() for k, v in d.loss_fn_inputs.items()}
            for d in call.data
        ],
    }


def _decoded_answer(body: bytes, kind: str) -> dict[str, Any]:
    if kind == "Sample":
        sample = deserialize_proto_response(body, types.SampleResponse)
        return {
            "sequences": [
                {"tokens": s.tokens, "logprobs": s.logprobs, "stop": s.stop_reason}
                for s in sample.sequences
            ]
        }
    output = deserialize_proto_response(body, types.ForwardBackwardOutput)
    return {
        "metrics": output.metrics,
        "outputs": [{k: v.tolist() for k, v in o.items()} for o in output.loss_fn_outputs],
    }


def assert_same_exchange(actual: list[dict], expected: list[dict]) -> None:
    assert [e["key"] for e in actual] == [e["key"] for e in expected]
    for got, want in zip(actual, expected, strict=True):
        assert got["status"] == want["status"], got["key"]
        assert _close(got["sent"], want["sent"]), (got["key"], got["sent"], want["sent"])
        assert _close(got["answer"], want["answer"]), (got["key"], got["answer"], want["answer"])


def _close(a: Any, b: Any) -> bool:
    """Equal, with floats to 1e-4 relative (another CPU may round differently)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-6)
    return a == b
