"""Protobuf on the wire, in the SDK's own messages (`tinker.proto.tinker_public_pb2`).

Requests: `forward_backward` bodies decode to `tinker.types` Datums, their tensors by the SDK's
own decoder (private to `tinker.proto.response_conv`; the SDK is pinned). Responses: the two
result types the SDK accepts only as protobuf, `ForwardBackwardOutput` and `SampleResponse`,
encode to the bytes the SDK's `tinker.proto.response_conv` reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.response_conv import _PROTO_DTYPE_TO_NUMPY, _tensor_data_from_proto

_PROTO_DTYPES: dict[str, int] = {"float32": pb.DTYPE_FLOAT32, "int64": pb.DTYPE_INT64}
_STOP_REASONS = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}


@dataclass(frozen=True)
class ForwardBackwardCall:
    """A decoded `/forward_backward` request."""

    model_id: str
    seq_id: int
    forward_only: bool
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    data: list[types.Datum]


def parse_forward_backward(body: bytes | bytearray) -> pb.ForwardBackwardRequest:
    """The message itself; `decode_forward_backward` turns it into tinker types."""
    message = pb.ForwardBackwardRequest()
    message.ParseFromString(body)
    return message


def token_count(message: pb.ForwardBackwardRequest) -> int:
    """model_input tokens over all Datums, counted without decoding them (int32 each)."""
    return sum(
        len(chunk.encoded_text.tokens) // 4
        for datum in message.data
        for chunk in datum.model_input
        if chunk.WhichOneof("chunk") == "encoded_text"
    )


def decode_forward_backward(message: pb.ForwardBackwardRequest) -> ForwardBackwardCall:
    return ForwardBackwardCall(
        model_id=message.model_id,
        seq_id=message.seq_id,
        forward_only=message.forward_only,
        loss_fn=message.loss_fn,
        loss_fn_config=_loss_fn_config(message),
        data=[_datum(datum, index) for index, datum in enumerate(message.data)],
    )


def _loss_fn_config(message: pb.ForwardBackwardRequest) -> dict[str, float | str] | None:
    # The SDK writes both maps; v2 carries strings and full doubles, so it wins when present.
    if message.loss_fn_config_v2:
        return {
            key: value.text if value.WhichOneof("value") == "text" else value.number
            for key, value in message.loss_fn_config_v2.items()
        }
    return dict(message.loss_fn_config) or None


def _datum(message: pb.Datum, index: int) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput(
            chunks=[_chunk(chunk, index) for chunk in message.model_input]
        ),
        loss_fn_inputs={
            name: tensor_data(tensor) for name, tensor in message.loss_fn_inputs.items()
        },
    )


def _chunk(message: pb.Chunk, index: int) -> types.EncodedTextChunk:
    kind = message.WhichOneof("chunk")
    if kind != "encoded_text":
        raise ValueError(
            f"datum {index}: model_input holds a {kind} chunk; the local backend takes token"
            " chunks (EncodedTextChunk) only"
        )
    tokens = np.frombuffer(message.encoded_text.tokens, dtype=np.int32)
    # Already integers: skip pydantic's per-token validation, which dominates large batches.
    return types.EncodedTextChunk.model_construct(tokens=tokens.tolist(), type="encoded_text")


def tensor_data(message: pb.Tensor) -> types.TensorData:
    """A `TensorData` from a proto `Tensor`, dense or sparse CSR, by the SDK's own decoder. A
    dense tensor sent without a shape (`TensorData.shape` is optional) is 1-D."""
    np_dtype = _PROTO_DTYPE_TO_NUMPY.get(message.dtype)
    if not message.shape and not message.HasField("sparse_csr") and np_dtype is not None:
        message.shape.append(len(message.dense) // np_dtype.itemsize)
    return _tensor_data_from_proto(message)


def encode_forward_backward_output(output: types.ForwardBackwardOutput) -> bytes:
    """One `ArrayRecord` per run of datums whose fields share dtype and trailing shape."""
    message = pb.ForwardBackwardOutput(loss_fn_output_type=output.loss_fn_output_type)
    message.metrics.update({key: float(value) for key, value in output.metrics.items()})
    arrays_D = [
        {name: tensor.to_numpy() for name, tensor in outputs.items()}
        for outputs in output.loss_fn_outputs
    ]
    for _, run in groupby(arrays_D, key=_signature):
        _add_record(message, list(run))
    return message.SerializeToString()


def _signature(arrays: dict[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple(sorted((name, a.dtype.kind, a.shape[1:]) for name, a in arrays.items()))


def _add_record(message: pb.ForwardBackwardOutput, arrays_D: Sequence[dict[str, np.ndarray]]):
    record = message.loss_fn_outputs.add(num_datums=len(arrays_D))
    for name in arrays_D[0]:
        column = [_wire_array(arrays[name]) for arrays in arrays_D]
        batched = record.fields[name]
        batched.dtype = _PROTO_DTYPES["float32" if column[0].dtype.kind == "f" else "int64"]
        batched.trailing_shape.extend(column[0].shape[1:])
        batched.data = b"".join(a.tobytes() for a in column)
        batched.offsets = np.cumsum([0] + [a.nbytes for a in column], dtype=np.int64).tobytes()


def _wire_array(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32 if array.dtype.kind == "f" else np.int64)


def encode_sample_response(response: types.SampleResponse) -> bytes:
    message = pb.SampleResponse(prompt_cache_hit_tokens=response.prompt_cache_hit_tokens)
    for sequence in response.sequences:
        added = message.sequences.add(
            stop_reason=_STOP_REASONS[sequence.stop_reason],
            tokens=_array(sequence.tokens_np, sequence, "tokens", np.int32).tobytes(),
        )
        if sequence.logprobs_np is not None or sequence.logprobs is not None:
            added.logprobs = _array(
                sequence.logprobs_np, sequence, "logprobs", np.float32
            ).tobytes()
    if response.prompt_logprobs_np is not None or response.prompt_logprobs is not None:
        # NaN marks a prompt position without a logprob (the first), as the SDK's reader expects.
        message.prompt_logprobs = _array(
            response.prompt_logprobs_np, response, "prompt_logprobs", np.float32
        ).tobytes()
    return message.SerializeToString()


def _array(array: np.ndarray | None, owner: Any, listed: str, dtype: type) -> np.ndarray:
    """A response field as numpy: its `_np` form when set, else its list form (None -> NaN)."""
    if array is not None:
        return np.asarray(array, dtype=dtype)
    return np.array([np.nan if x is None else x for x in getattr(owner, listed)], dtype=dtype)
