"""The server's protobuf conversion against the SDK's own encoder and decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import deserialize_proto_response

from harness.serve.proto import (
    decode_forward_backward,
    encode_forward_backward_output,
    encode_sample_response,
    parse_forward_backward,
)


def sdk_bytes(data: list[types.Datum], loss_fn: str, config=None, **fields) -> bytes:
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(
            data=data, loss_fn=loss_fn, loss_fn_config=config
        ),
        model_id=fields.get("model_id", "session:train:0"),
        seq_id=fields.get("seq_id", 7),
    )
    message = forward_backward_request_to_proto(request)
    message.forward_only = fields.get("forward_only", False)
    return message.SerializeToString()


def ppo_datum(n: int) -> types.Datum:
    rng = np.random.default_rng(n)
    return types.Datum(
        model_input=types.ModelInput.from_ints(list(range(n))),
        loss_fn_inputs={
            "target_tokens": list(range(1, n + 1)),
            "logprobs": rng.normal(size=n).astype(np.float32),
            "advantages": rng.normal(size=n).astype(np.float32),
        },
    )


def test_forward_backward_request_decodes_to_the_datums_the_sdk_encoded():
    data = [ppo_datum(5), ppo_datum(3)]
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    call = decode_forward_backward(
        parse_forward_backward(sdk_bytes(data, "ppo", config, forward_only=True))
    )
    assert (call.model_id, call.seq_id, call.forward_only, call.loss_fn) == (
        "session:train:0",
        7,
        True,
        "ppo",
    )
    # v2 carries doubles: 0.8 stays 0.8, not its float32 neighbour from the legacy map.
    assert call.loss_fn_config == config
    for sent, received in zip(data, call.data, strict=True):
        assert received.model_input.to_ints() == sent.model_input.to_ints()
        assert received.loss_fn_inputs.keys() == sent.loss_fn_inputs.keys()
        for key, tensor in sent.loss_fn_inputs.items():
            got = received.loss_fn_inputs[key]
            assert got.dtype == tensor.dtype
            np.testing.assert_array_equal(got.to_numpy(), tensor.to_numpy())


def test_string_config_values_and_sparse_and_shapeless_tensors_survive():
    weights = torch.zeros(4, 6)
    weights[1, 2] = 0.5
    shapeless = types.TensorData(data=[2, 3, 4, 5], dtype="int64")  # `shape` is optional
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
        loss_fn_inputs={"target_tokens": shapeless, "weights": weights},
    )
    assert datum.loss_fn_inputs["weights"].sparse_crow_indices is not None  # sent as CSR
    call = decode_forward_backward(
        parse_forward_backward(sdk_bytes([datum], "cross_entropy", {"mode": "x", "beta": 2.0}))
    )
    assert call.loss_fn_config == {"mode": "x", "beta": 2.0}
    received = call.data[0].loss_fn_inputs
    np.testing.assert_array_equal(received["weights"].to_numpy(), weights)
    assert received["target_tokens"].shape == [4]
    assert received["target_tokens"].to_numpy().tolist() == [2, 3, 4, 5]


def test_image_chunks_are_refused_with_the_datum_named():
    message = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    message.data.add().model_input.add().image.data = b"\x89PNG"
    with pytest.raises(ValueError, match="datum 0: model_input holds a image chunk"):
        decode_forward_backward(message)


def test_forward_backward_output_reads_back_through_the_sdk():
    output = types.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"logprobs": types.TensorData.from_numpy(np.array([-0.5, -1.25], np.float32))},
            {"logprobs": types.TensorData.from_numpy(np.array([-2.0], np.float32))},
            {"logprobs": types.TensorData.from_numpy(np.zeros((2, 3), np.float32))},
        ],
        metrics={"loss:sum": 1.0 / 3.0},
    )
    decoded = deserialize_proto_response(
        encode_forward_backward_output(output), types.ForwardBackwardOutput
    )
    assert decoded.loss_fn_output_type == "ArrayRecord"
    assert decoded.metrics == {"loss:sum": 1.0 / 3.0}  # a double, bit for bit
    for sent, received in zip(output.loss_fn_outputs, decoded.loss_fn_outputs, strict=True):
        assert received["logprobs"].shape == sent["logprobs"].shape
        np.testing.assert_array_equal(received["logprobs"].to_numpy(), sent["logprobs"].to_numpy())


def test_sample_response_reads_back_through_the_sdk():
    response = types.SampleResponse(
        sequences=[
            types.SampledSequence(
                stop_reason="stop",
                sequence_id="s:0:0",
                tokens_np=np.array([5, 6, 7], np.int32),
                logprobs_np=np.array([-0.1, -0.2, -0.3], np.float32),
            ),
            types.SampledSequence(
                stop_reason="length",
                sequence_id="s:0:1",
                _tokens_list=[9],
                _logprobs_list=[-1.5],
            ),
        ],
        prompt_logprobs_np=np.array([np.nan, -3.0], np.float32),
    )
    decoded = deserialize_proto_response(encode_sample_response(response), types.SampleResponse)
    assert [s.stop_reason for s in decoded.sequences] == ["stop", "length"]
    assert [s.tokens for s in decoded.sequences] == [[5, 6, 7], [9]]
    assert decoded.sequences[0].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert decoded.sequences[1].logprobs == [-1.5]
    assert decoded.prompt_logprobs[0] is None and decoded.prompt_logprobs[1] == -3.0
