"""Arithmetic word problems in GSM8K's shape, generated offline from a seed.

A problem tells a short story of 1-3 operations on a count of things and asks for the final
count ("Tom has 3 bags with 8 apples in each bag. He buys 5 more apples. How many apples does
Tom have now?"). Its answer is written as GSM8K writes one: an equation per line, then `#### N`
("3 * 8 = 24", "24 + 5 = 29", "#### 29"), so the GSM8K reward, prompts and loop apply unchanged.

The operations are the two a sub-million-parameter model learns, and then improves by GRPO,
within minutes on a CPU: the 1-digit multiplication table (bags of equal size, first operation
only) and additions of a 1-digit number to the count, chained up to three deep. (Subtraction
and division were tried: such a model learns them several times more slowly, and GRPO barely
moves them in minutes.) The words are ones the tiny fixture tokenizer learned from GSM8K; its
digits are single tokens.

The split is a function of the arithmetic alone: a problem is a test problem when the hash of
its equations says so. No test problem therefore shares its computation, let alone its text,
with a training problem.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

from harness.data.gsm8k import Problem

SEED = 0
N_TRAIN = 20_000
N_TEST = 1_000
TEST_PERCENT = 10
# Probability of 1, 2 and 3 operations: with the per-operation accuracy, it sets how hard the
# task is (a model right on 80% of equations is right on about 60% of problems).
OPS_WEIGHTS = {1: 0.25, 2: 0.4, 3: 0.35}
BAGS_START_PROBABILITY = 0.5

NAMES = {"Tom": "He", "John": "He", "James": "He", "Mike": "He", "Jack": "He", "Sam": "He"}
NAMES |= {"Mary": "She", "Sarah": "She"}
ITEMS = (
    "apples",
    "cookies",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "candies",
    "cards",
    "eggs",
    "oranges",
    "toys",
    "flowers",
    "cupcakes",
)
RELATIVES = ("friend", "sister", "brother")


@dataclass(frozen=True)
class Story:
    """The problem so far: who, what, its sentences, its equations and the current count."""

    name: str
    pronoun: str
    items: str
    sentences: tuple[str, ...] = ()
    equations: tuple[str, ...] = ()
    count: int = 0

    def then(self, sentence: str, equations: tuple[str, ...], count: int) -> Story:
        return Story(
            self.name,
            self.pronoun,
            self.items,
            (*self.sentences, sentence),
            (*self.equations, *equations),
            count,
        )


def bags(rng: random.Random) -> tuple[int, int, str]:
    """A number of bags, the items in each, and the multiplication."""
    n_bags, per_bag = rng.randint(2, 9), rng.randint(2, 9)
    return n_bags, per_bag, f"{n_bags} * {per_bag} = {n_bags * per_bag}"


def start(rng: random.Random) -> Story:
    """The first count: stated outright, or as bags of equal size (one multiplication)."""
    name = rng.choice(sorted(NAMES))
    story = Story(name, NAMES[name], rng.choice(ITEMS))
    if rng.random() >= BAGS_START_PROBABILITY:
        count = rng.randint(10, 99)
        return story.then(f"{name} has {count} {story.items}.", (), count)
    n_bags, per_bag, equation = bags(rng)
    sentence = f"{name} has {n_bags} bags with {per_bag} {story.items} in each bag."
    return story.then(sentence, (equation,), n_bags * per_bag)


def add(rng: random.Random, story: Story) -> Story:
    """One addition of a 1-digit number, bought or given."""
    more = rng.randint(2, 9)
    equation = f"{story.count} + {more} = {story.count + more}"
    if rng.random() < 0.5:
        sentence = f"{story.pronoun} buys {more} more {story.items}."
    else:
        his, him = ("his", "him") if story.pronoun == "He" else ("her", "her")
        giver = f"{his.title()} {rng.choice(RELATIVES)}"
        sentence = f"{giver} gives {him} {more} more {story.items}."
    return story.then(sentence, (equation,), story.count + more)


def make_problem(rng: random.Random) -> Problem:
    """One problem of 1-3 operations (by `OPS_WEIGHTS`)."""
    n_ops = rng.choices(list(OPS_WEIGHTS), weights=list(OPS_WEIGHTS.values()))[0]
    story = start(rng)
    while len(story.equations) < n_ops:
        story = add(rng, story)
    question = f"How many {story.items} does {story.name} have now?"
    answer = "\n".join((*story.equations, f"#### {story.count}"))
    return Problem(question=" ".join((*story.sentences, question)), answer=answer)


def is_test(problem: Problem) -> bool:
    """The split, decided by the equations alone (a stable hash, not Python's salted one)."""
    digest = hashlib.sha256(problem.answer.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT


@functools.cache
def generate_splits(
    seed: int = SEED, n_train: int = N_TRAIN, n_test: int = N_TEST
) -> tuple[tuple[Problem, ...], tuple[Problem, ...]]:
    """(train, test): distinct problems drawn from one seeded stream until both are full."""
    rng = random.Random(seed)
    splits: dict[bool, dict[str, Problem]] = {False: {}, True: {}}
    wanted = {False: n_train, True: n_test}
    while any(len(splits[k]) < wanted[k] for k in splits):
        problem = make_problem(rng)
        test = is_test(problem)
        if len(splits[test]) < wanted[test]:
            splits[test].setdefault(problem.question, problem)
    return tuple(splits[False].values()), tuple(splits[True].values())


def load_arith(split: str, seed: int = SEED) -> list[Problem]:
    """The `split` ("train" or "test") of the arithmetic task."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train, test = generate_splits(seed)
    return list(train if split == "train" else test)
