"""The cassette codec: exact round trips of tinker.types values, arrays and plain data."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tinker import types
from tinker.types.topk_logprobs import TopkLogprobs

from harness.backends.cassette import BinaryWriter, _records, _row
from harness.backends.cassette_codec import decode, encode

FAST = settings(max_examples=60, deadline=None)


def through_json(value):
    """encode -> strict JSON text -> decode, as a cassette line does."""
    return decode(json.loads(json.dumps(encode(value), allow_nan=False)))


def assert_same(a, b, path="value"):
    """Equal values of identical types, arrays to the dtype, shape, bits (NaN as NaN) and sign."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, np.ndarray | np.generic):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (path, a.dtype, b.dtype)
        if a.dtype.kind == "f":
            nan = np.isnan(a)
            assert np.array_equal(nan, np.isnan(b)), path
            a, b = a[~nan], b[~nan]
            assert np.array_equal(np.signbit(a), np.signbit(b)), path  # -0.0 stays -0.0
        assert np.array_equal(a, b), path
    elif isinstance(a, types.TensorData):
        for name in ("dtype", "shape", "sparse_crow_indices", "sparse_col_indices"):
            assert getattr(a, name) == getattr(b, name), (path, name)
        assert_same(a.to_numpy(), b.to_numpy(), f"{path}.data")
    elif isinstance(a, float):
        same_sign = math.copysign(1, a) == math.copysign(1, b)
        assert (math.isnan(a) and math.isnan(b)) or (a == b and same_sign), path
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif dataclasses.is_dataclass(a):
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name), f"{path}.{field.name}")
    elif isinstance(a, pydantic.BaseModel):
        for name in type(a).model_fields:
            assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    else:
        assert a == b, (path, a, b)


def through_binary(value):
    """`value` through the binary cassette format: its arrays as raw bytes, compressed."""
    arrays: list[np.ndarray] = []
    text = json.dumps({"value": encode(value, arrays)}, allow_nan=False)
    buffer = io.BytesIO()
    BinaryWriter(buffer).write({"index": 0}, text, arrays)
    buffer.seek(0)
    ((_, body),) = list(_records(buffer, Path("<memory>")))
    return decode(_row(body())["value"])


def assert_round_trip(value):
    for back in (through_json(value), through_binary(value)):
        assert_same(value, back)
        assert encode(back) == encode(value)  # canonical: a second trip is identical


# -- strategies ---------------------------------------------------------------------------------


FLOAT32 = st.floats(width=32)  # NaN, infinities, -0.0 and subnormals included
INT64 = st.integers(-(2**63), 2**63 - 1)
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)
TOKEN_LISTS = st.lists(st.integers(0, 200_000), max_size=40)


def arrays(dtype, shape=SHAPES, elements=None):
    return hnp.arrays(dtype, shape, elements=elements)


@st.composite
def tensor_data(draw):
    kind = draw(st.sampled_from(["numpy", "list", "sparse"]))
    dtype = draw(st.sampled_from([np.float32, np.int64]))
    elements = FLOAT32 if dtype == np.float32 else INT64
    if kind == "numpy":
        return types.TensorData.from_numpy(draw(arrays(dtype, elements=elements)))
    if kind == "list":
        values = draw(st.lists(elements, max_size=20))
        return types.TensorData(data=values, dtype=np.dtype(dtype).name)
    mostly_zero = st.one_of(st.just(0), st.integers(-5, 5))
    dense = draw(arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2), mostly_zero))
    return types.TensorData.from_torch_sparse(torch.from_numpy(dense).to(dtype=_torch(dtype)))


def _torch(dtype):
    return torch.float32 if dtype == np.float32 else torch.int64


@st.composite
def model_inputs(draw):
    chunks = draw(st.lists(TOKEN_LISTS, min_size=0, max_size=3))
    return types.ModelInput(chunks=[types.EncodedTextChunk(tokens=tokens) for tokens in chunks])


@st.composite
def sampled_sequences(draw):
    n = draw(st.integers(0, 12))
    stop_reason = draw(st.sampled_from(["length", "stop"]))
    sequence_id = draw(st.text(max_size=20))
    if draw(st.booleans()):  # as the SDK decodes a response: numpy arrays
        topk = None
        if draw(st.booleans()):
            k = draw(st.integers(1, 3))
            topk = TopkLogprobs(
                token_ids=draw(arrays(np.int32, st.just((n, k)), st.integers(0, 1000))),
                logprobs=draw(arrays(np.float32, st.just((n, k)), FLOAT32)),
            )
        return types.SampledSequence(
            stop_reason=stop_reason,
            sequence_id=sequence_id,
            tokens_np=draw(arrays(np.int32, st.just((n,)), st.integers(0, 2**31 - 1))),
            logprobs_np=draw(st.none() | arrays(np.float32, st.just((n,)), FLOAT32)),
            topk_logprobs_np=topk,
        )
    return types.SampledSequence(  # as a hand-built one: lists
        stop_reason=stop_reason,
        sequence_id=sequence_id,
        _tokens_list=draw(st.lists(st.integers(0, 200_000), min_size=n, max_size=n)),
        _logprobs_list=draw(st.lists(st.floats(), min_size=n, max_size=n)),
    )


@st.composite
def sample_responses(draw):
    return types.SampleResponse(
        sequences=draw(st.lists(sampled_sequences(), min_size=1, max_size=4)),
        prompt_logprobs_np=draw(st.none() | arrays(np.float32, st.just((5,)), FLOAT32)),
        prompt_cache_hit_tokens=draw(st.integers(0, 100)),
    )


METRICS = st.dictionaries(
    st.sampled_from(["loss:sum", "grad_norm:mean", "clip:max"]), st.floats(allow_nan=False)
)


@st.composite
def forward_backward_outputs(draw):
    outputs = draw(st.lists(st.dictionaries(st.sampled_from(["logprobs", "elementwise_loss"]),
                                            tensor_data(), max_size=2), max_size=4))  # fmt: skip
    return types.ForwardBackwardOutput(
        loss_fn_output_type=draw(st.sampled_from(["ArrayRecord", "TorchLossReturn"])),
        loss_fn_outputs=outputs,
        metrics=draw(METRICS),
    )


@st.composite
def datums(draw):
    n = draw(st.integers(1, 10))
    return types.Datum(
        model_input=types.ModelInput.from_ints(
            draw(st.lists(st.integers(0, 9999), min_size=n, max_size=n))
        ),
        loss_fn_inputs={
            "target_tokens": draw(arrays(np.int64, st.just((n,)), st.integers(0, 9999))),
            "logprobs": draw(arrays(np.float32, st.just((n,)), st.floats(-30, 0, width=32))),
            "advantages": draw(arrays(np.float32, st.just((n,)), st.floats(-3, 3, width=32))),
        },
    )


# -- round trips --------------------------------------------------------------------------------


@FAST
@given(tensor_data())
def test_tensor_data_round_trips_by_data_dtype_and_shape(value):
    assert_round_trip(value)


@FAST
@given(model_inputs())
def test_model_input_round_trips(value):
    assert_round_trip(value)


@FAST
@given(sample_responses())
def test_sample_response_round_trips_with_its_numpy_arrays(value):
    assert_round_trip(value)


@FAST
@given(forward_backward_outputs())
def test_forward_backward_output_round_trips(value):
    assert_round_trip(value)


@FAST
@given(datums())
def test_datum_round_trips(value):
    assert_round_trip(value)


@pytest.mark.parametrize(
    "value",
    [
        types.SamplingParams(max_tokens=16, temperature=0.0, stop=["</answer>", "<|im_end|>"]),
        types.SamplingParams(max_tokens=16, seed=2**62 + 1, stop=[151643, 7]),
        types.AdamParams(learning_rate=1e-5, beta2=0.999),
        types.OptimStepResponse(metrics={"grad_norm:mean": 41.1, "lr:mean": 1e-3}),
        types.OptimStepResponse(),
        types.SaveWeightsResponse(path="tinker://run-1/weights/step_000002"),
        types.SaveWeightsForSamplerResponse(path="tinker://run-1/sampler_weights/step_000002"),
        types.GetInfoResponse(
            model_data=types.ModelData(arch="Qwen3ForCausalLM", model_name="Qwen/Qwen3-8B"),
            model_id="run-1",
            is_lora=True,
            lora_rank=32,
        ),
        [None, True, 3, -0.0, math.inf, -math.inf, math.nan, "text", (1, "a")],
        {1: "non-string key", "$tag": "a key that looks like a tag"},
        np.float32(1.5),
    ],
    ids=lambda v: type(v).__name__,
)
def test_every_other_value_the_loop_uses_round_trips(value):
    assert_round_trip(value)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=3),
    st.floats(allow_nan=True),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
)


@FAST
@given(st.lists(SCALARS, max_size=8))
def test_a_list_of_scalars_encodes_and_decodes_as_its_items_do(items):
    # Lists of plain JSON scalars (a chunk's tokens) take a shortcut; others go item by item.
    encoded = encode(items)
    assert json.dumps(encoded) == json.dumps([encode(item) for item in items])
    decoded = decode(encoded)
    assert json.dumps(encode(decoded)) == json.dumps(encoded)
    assert encoded is not items and decoded is not encoded  # copies, as the walk made


def test_float32_arrays_are_written_as_their_shortest_decimals():
    text = json.dumps(encode(np.array([0.1, -2.3456789, 1e-45], dtype=np.float32)))
    assert text.endswith("[0.1, -2.3456788, 1e-45]}")


def test_unknown_types_are_refused_rather_than_written_inexactly():
    with pytest.raises(TypeError, match=r"not a tinker\.types value"):
        encode(object())
    with pytest.raises(TypeError, match="dtype"):
        encode(np.array(["a"]))
