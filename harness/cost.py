"""Tokens and dollars: what a step's requests read, generate and train on, priced per model.

Counting conventions (one owner, used by the loop and by `--estimate_cost` alike):
- prefill: a sample request's prompt tokens, once per request (its `num_samples` share them);
- sampled: the tokens of every returned sequence;
- trained: the `model_input` tokens of every Datum sent to `forward_backward`.
Dollars are tokens x the model's USD per million tokens from the price table.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import tinker

PER_MILLION = 1_000_000


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Token counts of some requests, by what the service does with them."""

    prefill: int = 0
    sampled: int = 0
    trained: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.prefill + other.prefill,
            self.sampled + other.sampled,
            self.trained + other.trained,
        )


def sampling_tokens(
    prompts: Sequence[tinker.ModelInput], responses: Sequence[tinker.SampleResponse]
) -> Tokens:
    """Tokens of sample requests, one prompt per response."""
    return Tokens(
        prefill=sum(prompt.length for prompt in prompts),
        sampled=sum(len(s.tokens) for r in responses for s in r.sequences),
    )


def training_tokens(datums: Iterable[tinker.Datum]) -> Tokens:
    return Tokens(trained=sum(datum.model_input.length for datum in datums))


@dataclasses.dataclass(frozen=True)
class Price:
    """A model's list prices, USD per million tokens, and where they were read."""

    prefill: float
    sample: float
    train: float
    source: str
    date: str
    storage_gb_month: float | None = None


class PriceTableError(ValueError):
    """A price table that cannot be read; the message is one line."""


def load_price_table(path: str | Path | None = None) -> dict[str, Price]:
    """The price table at `path`, or the one shipped with the package."""
    try:
        if path is None:
            text = resources.files("harness").joinpath("prices.toml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        table = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PriceTableError(f"--price_table={path}: {e}") from None
    fields = {f.name for f in dataclasses.fields(Price)}
    prices = {}
    for model, row in table.items():
        try:
            if not isinstance(row, dict) or set(row) - fields:
                raise TypeError(f"unknown keys {sorted(set(row) - fields)}")
            prices[model] = Price(**row)
        except TypeError as e:
            raise PriceTableError(
                f"--price_table={path}: model {model!r} needs prefill, sample, train (USD per "
                f"million tokens), source and date ({e})"
            ) from None
    return prices


def cost_usd(tokens: Tokens, price: Price) -> float:
    return (
        tokens.prefill * price.prefill
        + tokens.sampled * price.sample
        + tokens.trained * price.train
    ) / PER_MILLION


def usage_metrics(step: Tokens, total: Tokens, price: Price | None) -> dict[str, float]:
    """A row's `tokens/*` (the step's and the run's so far) and, with a price, `cost/*`.

    The run's cost is priced from its token totals, so it is exact after any resume.
    """
    metrics = {
        "tokens/prefill": float(step.prefill),
        "tokens/sampled": float(step.sampled),
        "tokens/trained": float(step.trained),
        "tokens/prefill_total": float(total.prefill),
        "tokens/sampled_total": float(total.sampled),
        "tokens/trained_total": float(total.trained),
    }
    if price is not None:
        metrics["cost/step_usd"] = cost_usd(step, price)
        metrics["cost/total_usd"] = cost_usd(total, price)
    return metrics
