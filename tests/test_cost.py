"""Token accounting and prices: counts equal the recorded requests' sums, dollars are tokens x
price, totals survive a resume, and a model without a price warns once."""

from __future__ import annotations

from pathlib import Path

import pytest
import tinker

from harness.backends.cassette import read_cassette
from harness.backends.cassette_codec import decode
from harness.backends.replay import ReplayServiceClient, recorded_reward_fn
from harness.cost import (
    Price,
    PriceTableError,
    Tokens,
    cost_usd,
    load_price_table,
    sampling_tokens,
    training_tokens,
    usage_metrics,
)
from harness.data import load_problems
from harness.jsonl import read_json_lines
from harness.logger import RunLogger
from harness.loop import train
from tests.test_replay_loop import GOLDEN, REPO, recorded_config

HAND_TABLE = """
["fixtures/tiny-qwen3"]
prefill = 2.0
sample = 0.5
train = 4.0
source = "a test"
date = "2026-12-01"
"""
HAND_PRICE = Price(prefill=2.0, sample=0.5, train=4.0, source="a test", date="2026-12-01")


def steps_of(calls):
    """The recorded calls cut at each `save_weights_and_get_sampling_client`: one piece per
    logged row (every step starts with one, and so does the final validation)."""
    pieces: list[list] = []
    for call in calls:
        if call.method == "save_weights_and_get_sampling_client":
            pieces.append([])
        if pieces:
            pieces[-1].append(call)
    return pieces


def recorded_tokens(calls) -> Tokens:
    samples = [c for c in calls if c.method == "sample"]
    datums = [d for c in calls if c.method == "forward_backward" for d in decode(c.request)["data"]]
    return sampling_tokens(
        [decode(c.request)["prompt"] for c in samples], [decode(c.response) for c in samples]
    ) + training_tokens(datums)


def test_token_metrics_equal_the_sums_over_each_steps_recorded_requests():
    rows = read_json_lines(GOLDEN.with_suffix(".metrics.jsonl"))
    pieces = steps_of(read_cassette(GOLDEN).calls)
    assert len(pieces) == len(rows)
    total = Tokens()
    for row, calls in zip(rows, pieces, strict=True):
        # Counted independently of the harness's counters: from the raw recorded JSON.
        prompts = [
            c.request["prompt"]["chunks"][0]["tokens"] for c in calls if c.method == "sample"
        ]
        sequences = [s for c in calls if c.method == "sample" for s in c.response["sequences"]]
        assert row["tokens/prefill"] == sum(len(p) for p in prompts)
        assert row["tokens/sampled"] == sum(len(decode(s).tokens) for s in sequences)
        step = recorded_tokens(calls)
        total += step
        assert row["tokens/trained"] == step.trained
        assert (row["tokens/trained"] > 0) == (row.get("train/datums", 0) > 0)
        assert row["tokens/prefill_total"] == total.prefill
        assert row["tokens/sampled_total"] == total.sampled
        assert row["tokens/trained_total"] == total.trained
    assert total.trained > 0 and total.sampled > 0


def test_a_datums_trained_tokens_are_its_model_input():
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints([1, 2, 3, 4]),
        loss_fn_inputs={"target_tokens": [2, 3, 4, 5]},
    )
    assert training_tokens([datum, datum]) == Tokens(trained=8)


def test_cost_is_tokens_times_price_per_million(tmp_path):
    table = tmp_path / "prices.toml"
    table.write_text(HAND_TABLE)
    assert load_price_table(table) == {"fixtures/tiny-qwen3": HAND_PRICE}
    tokens = Tokens(prefill=3_000_000, sampled=1_000_000, trained=250_000)
    assert cost_usd(tokens, HAND_PRICE) == 3 * 2.0 + 1 * 0.5 + 0.25 * 4.0
    metrics = usage_metrics(Tokens(prefill=500_000), tokens, HAND_PRICE)
    assert metrics["cost/step_usd"] == 1.0 and metrics["cost/total_usd"] == 7.5
    assert metrics["tokens/prefill"] == 500_000 and metrics["tokens/trained_total"] == 250_000
    assert "cost/step_usd" not in usage_metrics(tokens, tokens, None)


def test_the_shipped_table_names_its_source_and_date_for_every_model():
    prices = load_price_table()
    assert "Qwen/Qwen3-8B" in prices
    for model, price in prices.items():
        assert price.source.startswith("https://") and len(price.date) == 10, model
        assert min(price.prefill, price.sample, price.train) > 0, model


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('["m"]\nprefill = 1.0\n', "needs prefill, sample, train"),
        ('["m"]\nprefill = 1\nsample = 1\ntrain = 1\nsource = "s"\ndate = "d"\nfoo = 2\n', "foo"),
        ("not toml [", "--price_table="),
    ],
)
def test_a_bad_price_table_is_one_line(tmp_path, text, message):
    table = tmp_path / "prices.toml"
    table.write_text(text)
    with pytest.raises(PriceTableError, match=message) as error:
        load_price_table(table)
    assert "\n" not in str(error.value)


def test_a_missing_price_table_is_an_error():
    with pytest.raises(PriceTableError, match=r"no/such\.toml"):
        load_price_table("no/such.toml")


class Warnings(RunLogger):
    def __init__(self, config):
        super().__init__(config)
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def replay_golden(log_path: Path, prices) -> tuple[list[dict], list[str]]:
    config = recorded_config(GOLDEN, log_path)
    dataset = REPO / config.dataset_path
    logger = Warnings(config)
    train(
        config,
        ReplayServiceClient(GOLDEN),
        load_problems(config.dataset, "train", dataset),
        load_problems(config.dataset, "test", dataset),
        logger,
        reward_fn=recorded_reward_fn(GOLDEN),
        prices=prices,
    )
    return read_json_lines(log_path / "metrics.jsonl"), logger.warnings


def test_a_priced_run_logs_each_steps_cost_and_the_runs_total(tmp_path):
    rows, warnings = replay_golden(tmp_path, {"fixtures/tiny-qwen3": HAND_PRICE})
    assert not any("no price" in w for w in warnings)
    for row in rows:
        step = Tokens(*(int(row[f"tokens/{k}"]) for k in ("prefill", "sampled", "trained")))
        total = Tokens(*(int(row[f"tokens/{k}_total"]) for k in ("prefill", "sampled", "trained")))
        assert row["cost/step_usd"] == cost_usd(step, HAND_PRICE)
        assert row["cost/total_usd"] == cost_usd(total, HAND_PRICE)
    assert rows[-1]["cost/total_usd"] == pytest.approx(sum(r["cost/step_usd"] for r in rows))


def test_a_model_without_a_price_logs_tokens_and_warns_once(tmp_path):
    rows, warnings = replay_golden(tmp_path, {})
    assert [w for w in warnings if "no price" in w] == [
        "no price for fixtures/tiny-qwen3 in the price table: logging tokens, not dollars "
        "(--price_table=FILE adds one)"
    ]
    assert all("tokens/sampled" in row and "cost/total_usd" not in row for row in rows)
