"""Properties of the local backend's small pure pieces: how Datums are chunked for a forward
pass, how sampling requests are packed into batches, and `tinker://` paths."""

from __future__ import annotations

import itertools
from concurrent.futures import Future

from hypothesis import given
from hypothesis import strategies as st

from harness.backends.local.batches import chunks
from harness.backends.local.budget import sampling_row_bytes
from harness.backends.local.checkpoint_format import KINDS
from harness.backends.local.engine import Request, RowParams, SamplerModel, batches
from harness.backends.local.storage import SCHEME, TinkerPath, check_name, parse
from tests.support.strategies import PATH_TEXT, RUN_IDS, SEGMENTS

# -- chunks of a forward pass -------------------------------------------------------------------


@given(st.lists(st.integers(1, 300), max_size=40), st.data())
def test_chunks_hold_every_datum_once_longest_first_within_the_budget(lengths, data):
    exact = [k * n for n in lengths for k in (1, 2, 3)]  # budgets a chunk fills exactly
    budget = data.draw(st.integers(1, 2000) | st.sampled_from(exact) if exact else st.just(1))
    grouped = chunks(lengths, budget)
    order = [i for chunk in grouped for i in chunk]
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    for chunk in grouped:
        padded = len(chunk) * max(lengths[i] for i in chunk)
        assert padded <= budget or len(chunk) == 1  # a datum longer than the budget goes alone
    for chunk, following in itertools.pairwise(grouped):
        # A chunk is closed only when the next datum would take it over the budget.
        assert (len(chunk) + 1) * lengths[chunk[0]] > budget
        assert following


# -- sampling batches ---------------------------------------------------------------------------


def sampler_model(vocab_size: int, kv_bytes_per_token: int) -> SamplerModel:
    return SamplerModel(None, None, None, (), vocab_size, None, kv_bytes_per_token)


def request(prompt_tokens: int, num_samples: int, max_tokens: int) -> Request:
    params = RowParams(max_tokens, 1.0, -1, 1.0, 0, (), ())
    return Request([1] * prompt_tokens, num_samples, params, False, None, "", Future())


REQUESTS = st.lists(
    st.builds(request, st.integers(1, 50), st.integers(1, 8), st.integers(1, 50)), max_size=8
)


@given(REQUESTS, st.integers(1, 64), st.integers(1, 16), st.integers(1, 20_000))
def test_batches_hold_every_sample_once_in_order_within_the_budget(
    requests, vocab_size, kv_bytes_per_token, budget
):
    sampler = sampler_model(vocab_size, kv_bytes_per_token)

    def row_bytes(r: Request) -> int:
        return sampling_row_bytes(
            kv_bytes_per_token, vocab_size, len(r.prompt), r.params.max_tokens
        )

    packed = batches(sampler, requests, budget)
    rows = [(id(r), sample) for batch in packed for r, samples in batch for sample in samples]
    assert rows == [(id(r), sample) for r in requests for sample in range(r.num_samples)]
    sizes = [[row_bytes(r) for r, samples in batch for _ in samples] for batch in packed]
    for batch in sizes:
        assert batch and (sum(batch) <= budget or len(batch) == 1)  # one row may exceed it
    for batch, following in itertools.pairwise(sizes):
        assert sum(batch) + following[0] > budget  # closed only when the next row did not fit


# -- tinker:// paths ----------------------------------------------------------------------------

PATHS = st.builds(TinkerPath, RUN_IDS, st.sampled_from(KINDS), SEGMENTS)


@given(PATHS)
def test_a_tinker_path_parses_back_to_itself(path):
    assert parse(str(path)) == path


@given(PATHS, PATH_TEXT)
def test_a_string_either_parses_to_a_path_that_prints_as_it_or_is_refused(path, tail):
    for text in (str(path) + tail, SCHEME + tail, tail):
        try:
            parsed = parse(text)
        except ValueError:
            continue
        assert str(parsed) == text


@given(SEGMENTS | PATH_TEXT)
def test_a_checkpoint_name_is_accepted_where_a_path_ending_in_it_is(name):
    try:
        check_name(name)
    except ValueError:
        named = False
    else:
        named = True
    try:
        parse(f"{SCHEME}run/weights/{name}")
    except ValueError:
        parsed = False
    else:
        parsed = True
    assert named == parsed
    if named:  # one path segment: a directory name on every file system we run on
        assert "/" not in name and name.isascii() and name.isprintable()
