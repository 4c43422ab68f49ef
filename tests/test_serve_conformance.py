"""SDK-level conformance: each call the loop makes, through the real SDK and the local server,
returns what the in-process local backend returns for the same input."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tinker
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto

from harness.backends.local import LocalServiceClient
from harness.backends.local import engine as local_engine
from harness.serve import Limits
from harness.serve import app as app_module
from harness.serve import state as state_module
from tests.support.serve import KEY, MODEL, loopback_only, sdk_client, start_server

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def offline():
    """Everything in this module runs with connections off 127.0.0.1 refused."""
    with loopback_only() as refused:
        yield
    assert not refused, f"connections left the machine: {refused}"


@pytest.fixture(scope="module")
def server(offline, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("server-storage"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(server, monkeypatch_module):
    monkeypatch_module.setenv("TINKER_TELEMETRY", "0")
    client = sdk_client(server)
    yield client
    client.close("success").result(timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def local(offline, tmp_path_factory):
    service = LocalServiceClient(tmp_path_factory.mktemp("local-storage"), seed=0)
    yield service
    service.close()


def both(clients, method: str, *args, **kwargs) -> list:
    futures = [getattr(client, method)(*args, **kwargs) for client in clients]
    return [future.result(timeout=TIMEOUT_S) for future in futures]


def trainers(sdk, local, seed: int = 11) -> list:
    # One after the other: LoRA init seeds torch's global RNG, shared by the server's thread.
    return [
        client.create_lora_training_client(base_model=MODEL, rank=4, seed=seed).result(TIMEOUT_S)
        for client in (sdk, local)
    ]


def assert_same_output(a: types.ForwardBackwardOutput, b: types.ForwardBackwardOutput) -> None:
    assert a.metrics == b.metrics
    assert len(a.loss_fn_outputs) == len(b.loss_fn_outputs)
    for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
        assert x.keys() == y.keys() == {"logprobs"}
        np.testing.assert_array_equal(x["logprobs"].to_numpy(), y["logprobs"].to_numpy())


def assert_same_samples(a: types.SampleResponse, b: types.SampleResponse) -> None:
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert [s.stop_reason for s in a.sequences] == [s.stop_reason for s in b.sequences]
    assert [s.logprobs for s in a.sequences] == [s.logprobs for s in b.sequences]


def text_datum(tokenizer, text: str) -> types.Datum:
    tokens = tokenizer.encode(text)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )


def ppo_datum(prompt: list[int], sequence: types.SampledSequence, advantage: float):
    n_prompt, n_sampled = len(prompt), len(sequence.tokens)
    return types.Datum(
        model_input=types.ModelInput.from_ints(prompt + sequence.tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": prompt[1:] + sequence.tokens,
            "logprobs": [0.0] * (n_prompt - 1) + sequence.logprobs,
            "advantages": [0.0] * (n_prompt - 1) + [advantage] * n_sampled,
        },
    )


def seeded_sample(trainer, prompt: list[int]) -> types.SampledSequence:
    """One seeded 6-token sample from `trainer`'s current weights."""
    sampler = trainer.save_weights_and_get_sampling_client().result()
    params = types.SamplingParams(max_tokens=6, seed=5)
    return sampler.sample(types.ModelInput.from_ints(prompt), 1, params).result().sequences[0]


def test_model_info_and_an_offline_tokenizer(sdk, local):
    remote, reference = trainers(sdk, local)
    info = remote.get_info()
    assert info.model_id == remote.model_id and ":train:" in remote.model_id
    assert (info.is_lora, info.lora_rank, info.model_data.model_name) == (True, 4, MODEL)
    assert info.model_data.tokenizer_id == str(reference.get_info().model_data.tokenizer_id)
    # The SDK loads the tokenizer from the directory the server names, with no hub call.
    text = "Natalia sold 48 clips in April."
    assert remote.get_tokenizer().encode(text) == reference.get_tokenizer().encode(text)


def test_forward_backward_and_optim_step_match_in_process(sdk, local):
    pair = trainers(sdk, local)
    tokenizer = pair[1].get_tokenizer()
    data = [text_datum(tokenizer, t) for t in ("Two plus two is four.", "Five times three?")]

    assert_same_output(*both(pair, "forward", data, "cross_entropy"))
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    prompt = tokenizer.encode("Question: 3 + 4 =")
    sequence = seeded_sample(pair[1], prompt)
    ppo_data = [ppo_datum(prompt, sequence, 1.0), ppo_datum(prompt, sequence, -0.5)]
    for client in pair:  # submitted back to back, as the loop does
        client.forward_backward(ppo_data, "ppo", config)
    fb = both(pair, "forward_backward", data, "cross_entropy")
    assert_same_output(*fb)
    optim = both(pair, "optim_step", types.AdamParams(learning_rate=1e-2, grad_clip_norm=1.0))
    assert optim[0] == optim[1] and optim[0].metrics["grad_norm:mean"] > 0
    after = both(pair, "forward", data, "cross_entropy")
    assert_same_output(*after)
    assert after[0].metrics != fb[0].metrics  # the step changed the weights, the same way


@pytest.mark.parametrize(
    ("loss_fn", "config"), [("dro", {"beta": 0.1}), ("gspo", {"clip_high_threshold": 1.1})]
)
def test_the_newer_built_in_losses_match_in_process(sdk, local, loss_fn, config):
    pair = trainers(sdk, local)
    tokenizer = pair[1].get_tokenizer()
    prompt = tokenizer.encode("Question: 3 + 4 =")
    sequence = seeded_sample(pair[1], prompt)
    datum = ppo_datum(prompt, sequence, 1.0)
    n_prompt, n_sampled = len(prompt) - 1, len(sequence.tokens)
    inputs = dict(datum.loss_fn_inputs)
    inputs["sequence_ratio_mask"] = types.TensorData.from_numpy(
        np.array([0.0] * n_prompt + [1.0] * n_sampled, dtype=np.float32)
    )
    data = [types.Datum(model_input=datum.model_input, loss_fn_inputs=inputs)]
    remote, reference = both(pair, "forward_backward", data, loss_fn, config)
    assert_same_output(remote, reference)
    assert remote.metrics["loss:sum"] != 0


def test_stable_reinforce_as_the_cookbook_sends_it_is_importance_sampling(sdk, local):
    # tinker-cookbook's rl_loop.py: a sampler that records stability information, and Datums
    # whose provenance names the sampled sequence behind every position.
    remote, reference = trainers(sdk, local)
    prompt = reference.get_tokenizer().encode("Question: 3 + 4 =")
    sampler = remote.save_weights_and_get_sampling_client(record_stability_info=True).result()
    params = types.SamplingParams(max_tokens=6, seed=5)
    sequence = sampler.sample(types.ModelInput.from_ints(prompt), 1, params).result().sequences[0]
    datum = ppo_datum(prompt, sequence, 1.0)
    name, n_prompt, n_sampled = sequence.sequence_id, len(prompt), len(sequence.tokens)
    with_provenance = datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id=name, length=n_prompt),
            types.SampledProvenanceSpan(sequence_id=name, length=n_sampled - 1),
        ],
        loss_fn_inputs=[
            types.PromptProvenanceSpan(sequence_id=name, offset=1, length=n_prompt - 1),
            types.SampledProvenanceSpan(sequence_id=name, length=n_sampled),
        ],
    )
    got = remote.forward_backward([with_provenance], "stable_reinforce").result()
    want = reference.forward_backward([datum], "importance_sampling").result()
    assert_same_output(got, want)
    assert got.metrics["loss:sum"] != 0


def test_a_step_the_sdk_splits_into_chunks_trains_as_one_request_does(server, local, monkeypatch):
    """The cloud caps a forward_backward request (1,024 Datums by default) and the SDK splits a
    larger step; gradients then accumulate over the chunks. Here the cap is 2 Datums."""
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    small_chunks = app_module.CLIENT_CONFIG.model_copy(update={"fwdbwd_max_chunk_len": 2})
    monkeypatch.setattr(app_module, "CLIENT_CONFIG", small_chunks)
    requests: list[int] = []
    decode = state_module.decode_forward_backward

    def counting_decode(message):
        call = decode(message)
        requests.append(len(call.data))
        return call

    monkeypatch.setattr(state_module, "decode_forward_backward", counting_decode)
    chunking_sdk = sdk_client(server)
    try:
        pair = trainers(chunking_sdk, local, seed=23)
        tokenizer = pair[1].get_tokenizer()
        texts = ["Two plus two is four.", "Five times three?", "Tom has 9 apples.", "1 2 3", "Ok"]
        data = [text_datum(tokenizer, t) for t in texts]
        chunked, whole = both(pair, "forward_backward", data, "cross_entropy")
        assert requests == [2, 2, 1]
        assert [len(o["logprobs"].to_numpy()) for o in chunked.loss_fn_outputs] == [
            len(d.loss_fn_inputs["target_tokens"].to_numpy()) for d in data
        ]
        assert_close_output(chunked, whole)
        optim = both(pair, "optim_step", types.AdamParams(learning_rate=1e-2))
        assert optim[0].metrics["grad_norm:mean"] == pytest.approx(
            optim[1].metrics["grad_norm:mean"], rel=1e-5
        )
        after = both(pair, "forward", data, "cross_entropy")
        assert_close_output(*after)
        assert after[0].metrics["loss:sum"] < chunked.metrics["loss:sum"]
    finally:
        chunking_sdk.close("success").result(timeout=TIMEOUT_S)


def assert_close_output(a: types.ForwardBackwardOutput, b: types.ForwardBackwardOutput) -> None:
    """Equal up to float32 rounding: batches of other shapes sum in another order."""
    assert a.metrics.keys() == b.metrics.keys() == {"loss:sum"}
    assert a.metrics["loss:sum"] == pytest.approx(b.metrics["loss:sum"], rel=1e-5)
    for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
        np.testing.assert_allclose(x["logprobs"].to_numpy(), y["logprobs"].to_numpy(), atol=1e-5)


def test_sampling_and_logprobs_match_in_process(sdk, local):
    samplers = [t.save_weights_and_get_sampling_client().result() for t in trainers(sdk, local)]
    tokenizer = local.tokenizer(local.base(MODEL)[0])
    prompts = [
        types.ModelInput.from_ints(tokenizer.encode(f"Q{i}: what is {i} + 7?")) for i in range(4)
    ]
    params = [
        types.SamplingParams(max_tokens=12, temperature=1.0, seed=100 + i, stop=["?", "\n"])
        for i in range(4)
    ]
    results = []
    for sampler in samplers:  # all requests in flight before any wait, as the loop does
        futures = [sampler.sample(p, 3, s) for p, s in zip(prompts, params, strict=True)]
        results.append([f.result(timeout=TIMEOUT_S) for f in futures])
    for remote, reference in zip(*results, strict=True):
        assert_same_samples(remote, reference)
        ids = [s.sequence_id for s in remote.sequences]
        assert len(set(ids)) == 3 and all(ids)

    greedy = types.SamplingParams(max_tokens=8, temperature=0.0)
    assert_same_samples(*[s.sample(prompts[0], 1, greedy).result() for s in samplers])
    logprobs = [s.compute_logprobs(prompts[1]).result(timeout=TIMEOUT_S) for s in samplers]
    assert logprobs[0] == logprobs[1] and logprobs[0][0] is None


def test_checkpoint_paths_load_back(sdk, local):
    remote, _ = trainers(sdk, local)
    tokenizer = remote.get_tokenizer()
    data = [text_datum(tokenizer, "Weng earns $12 an hour.")]
    remote.forward_backward(data, "cross_entropy")
    remote.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=TIMEOUT_S)
    state = remote.save_state("one-step").result(timeout=TIMEOUT_S).path
    sampler_path = remote.save_weights_for_sampler("one-step").result(timeout=TIMEOUT_S).path
    assert state.startswith("tinker://") and "/weights/one-step" in state
    assert sampler_path.startswith("tinker://") and "/sampler_weights/one-step" in sampler_path

    resumed = sdk.create_training_client_from_state_with_optimizer(state).result(TIMEOUT_S)
    weights_only = sdk.create_training_client_from_state(state).result(TIMEOUT_S)
    assert resumed.model_id != remote.model_id
    assert_same_output(*[c.forward(data, "cross_entropy").result() for c in (remote, resumed)])
    # One more step: only the client that kept the optimizer's moments continues identically.
    steps = []
    for client in (remote, resumed, weights_only):
        client.forward_backward(data, "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=TIMEOUT_S)
        steps.append(client.forward(data, "cross_entropy").result(timeout=TIMEOUT_S))
    assert_same_output(steps[0], steps[1])
    assert steps[2].metrics != steps[0].metrics

    prompt = types.ModelInput.from_ints(tokenizer.encode("Betty needs $100."))
    params = types.SamplingParams(max_tokens=10, seed=3)
    from_path = sdk.create_sampling_client(model_path=sampler_path).result(TIMEOUT_S)
    assert from_path.get_base_model() == MODEL
    from_state = resumed.create_sampling_client(sampler_path).result(TIMEOUT_S)
    assert_same_samples(
        from_path.sample(prompt, 2, params).result(), from_state.sample(prompt, 2, params).result()
    )


def test_concurrent_samples_reach_the_engine_as_one_batch(sdk, local, monkeypatch):
    batches: list[int] = []
    generate = local_engine.generate

    def counting_generate(sampler, items, *args):
        batches.append(sum(len(samples) for _, samples in items))
        return generate(sampler, items, *args)

    monkeypatch.setattr(local_engine, "generate", counting_generate)
    remote, _ = trainers(sdk, local)
    sampler = remote.save_weights_and_get_sampling_client().result(TIMEOUT_S)
    prompt = types.ModelInput.from_ints(remote.get_tokenizer().encode("Count: 1 2 3"))
    futures = [
        sampler.sample(prompt, 2, types.SamplingParams(max_tokens=4, seed=i)) for i in range(8)
    ]
    assert all(len(f.result(TIMEOUT_S).sequences) == 2 for f in futures)
    assert batches == [16]


def raw_post(server, path: str, headers: dict[str, str] | None = None, **kwargs):
    return httpx.post(
        f"{server.base_url}/api/v1/{path}",
        headers={"X-API-Key": KEY, **(headers or {})},
        timeout=30,
        **kwargs,
    )


def proto_body(model_id: str, seq_id: int, data: list[types.Datum]) -> bytes:
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn="cross_entropy"),
        model_id=model_id,
        seq_id=seq_id,
    )
    return forward_backward_request_to_proto(request).SerializeToString()


def retrieve(server, request_id: str) -> httpx.Response:
    return raw_post(server, "retrieve_future", json={"request_id": request_id})


def test_requests_run_in_seq_id_order_whatever_order_they_arrive(sdk, local, server):
    remote, _ = trainers(sdk, local, seed=5)  # the raw requests below take its seq ids 1 and 2
    datum = text_datum(remote.get_tokenizer(), "Order matters.")
    optim = raw_post(
        server,
        "optim_step",
        json={"model_id": remote.model_id, "seq_id": 2, "adam_params": {"learning_rate": 0.01}},
    )
    body = proto_body(remote.model_id, 1, [datum])
    protobuf = {"Content-Type": "application/x-protobuf"}
    fb = raw_post(server, "forward_backward", content=body, headers=protobuf)
    resent = raw_post(server, "forward_backward", content=body, headers=protobuf)
    assert resent.json()["request_id"] == fb.json()["request_id"]  # a resend is not run twice
    optim_result = retrieve(server, optim.json()["request_id"]).json()
    # optim_step arrived first but ran second: it found forward_backward's gradients.
    assert optim_result["metrics"]["grad_norm:mean"] > 0
    assert (
        retrieve(server, fb.json()["request_id"])
        .headers["content-type"]
        .startswith("application/x-protobuf")
    )


def test_a_request_behind_a_missing_one_polls_then_fails(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    limits = Limits(hold_s=0.2, gap_timeout_s=1.0)
    server = start_server(tmp_path, limits)
    try:
        client = sdk_client(server)
        trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
        body = {"model_id": trainer.model_id, "seq_id": 3, "adam_params": {}}
        request_id = raw_post(server, "optim_step", json=body).json()["request_id"]
        assert retrieve(server, request_id).json()["type"] == "try_again"  # held, then released
        for _ in range(50):
            answer = retrieve(server, request_id).json()
            if answer.get("type") != "try_again":
                break
        assert answer["category"] == "server"
        assert "seq_id 3 waited 1 s for seq_id 1, which never arrived" in answer["error"]
        client.close("success").result(timeout=TIMEOUT_S)
    finally:
        server.stop()


def test_health_capabilities_telemetry_and_unknown_endpoints(server):
    assert httpx.get(f"{server.base_url}/api/v1/healthz").json() == {"status": "ok"}
    capabilities = httpx.get(
        f"{server.base_url}/api/v1/get_server_capabilities", headers={"X-API-Key": KEY}
    ).json()
    assert capabilities["supported_models"][0]["model_name"] == MODEL
    assert raw_post(server, "telemetry", json={}).json() == {"status": "accepted"}
    unknown = raw_post(server, "copy_weights", json={})
    assert unknown.status_code == 404
    assert "POST /api/v1/copy_weights is not implemented" in unknown.json()["detail"]


def test_a_wrong_key_is_refused_by_the_sdk_without_echoing_it(server, caplog):
    wrong = "tml-wrong-key-5e1a"
    client = tinker.ServiceClient(base_url=server.base_url, api_key=wrong)
    with pytest.raises(tinker.AuthenticationError, match="missing or wrong X-API-Key"):
        client.create_lora_training_client(base_model=MODEL, rank=2)
    assert wrong not in caplog.text and KEY not in caplog.text
